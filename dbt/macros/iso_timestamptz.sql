{#-
    Parse an ISO-8601 text defensively into timestamptz: NULL (never an error) unless the text is
    YYYY-MM-DD, optionally followed by [T or space]HH:MM[:SS[.fff]] and optionally a Z or +HH[[:]MM]
    offset, with in-range fields (the day is checked against the month's length; nested CASEs fix the
    order of evaluation, so a cast only ever sees valid text). A text without offset is UTC, whatever
    the session time zone.
-#}
{% macro iso_timestamptz(expr) -%}
    {%- set iso_pattern = '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])'
        ~ '([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]+)?)?([Zz]|[+-](0[0-9]|1[0-4])(:?[0-5][0-9])?)?)?$' -%}
    case
        when ({{ expr }}) ~ '{{ iso_pattern }}' and substr(({{ expr }}), 1, 4) <> '0000' then
            case
                when substr(({{ expr }}), 9, 2)::int <= extract(
                    day from make_date(substr(({{ expr }}), 1, 4)::int, substr(({{ expr }}), 6, 2)::int, 1)
                    + interval '1 month - 1 day'
                ) then
                    case
                        when substr(({{ expr }}), 11) ~ '[Zz+-]' then ({{ expr }})::timestamptz
                        else ({{ expr }})::timestamp at time zone 'UTC'
                    end
            end
    end
{%- endmacro %}
