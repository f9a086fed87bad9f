{#-
    An md5 key of several text columns, unambiguous: each value is prefixed with its length, so no
    two different tuples make the same text ('u' + 'x|e1' and 'u|x' + 'e1' stay apart).
-#}
{% macro surrogate_key(columns) -%}
    md5(
        {%- for column in columns %}
        length(({{ column }})::text)::text || ':' || ({{ column }})::text{{ " ||" if not loop.last }}
        {%- endfor %}
    )
{%- endmacro %}
