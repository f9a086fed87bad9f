{#-
    A value tagged with the version that set it, for "latest value so far" as a running max
    (dim_user): the version number zero-padded to 10 digits, then '=' and the value, or '~' when
    the version sets null. `versioned` makes the tag from a column next to version_number,
    `unversioned` reads the value back (null for '~' and for no tag at all).
-#}
{% macro versioned(column) -%}
    lpad(version_number::text, 10, '0') || coalesce('=' || {{ column }}, '~')
{%- endmacro %}

{% macro unversioned(tagged) -%}
    case when substr({{ tagged }}, 11, 1) = '=' then substr({{ tagged }}, 12) end
{%- endmacro %}

{#- The columns dim_user's ways to a version chain share, in one order (a union needs it). -#}
{% macro version_columns() -%}
    user_id, event_id, event_type, organization_key, username, user_email, user_type, event_rank,
    sets_organization_key, sets_username, sets_user_email, sets_user_type, status_set, received_at,
    partition_date, version_number, content_changed_at
{%- endmacro %}
