{#-
    The date D of the run, from the required var `run_date` (YYYY-MM-DD). Fails the run loudly when
    the var is missing or malformed instead of building with a wrong date. While dbt only parses
    (dbt parse, dbt ls: `execute` is false) a missing var is tolerated.
    Usage in SQL: '{{ run_date() }}'::date
-#}
{% macro run_date() -%}
    {%- set value = var('run_date', none) -%}
    {%- set value = '' if value is none else value | string | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
        {%- if execute -%}
            {{ exceptions.raise_compiler_error(
                "var run_date is required as YYYY-MM-DD (--vars '{run_date: \"YYYY-MM-DD\"}'), got '"
                ~ value ~ "'") }}
        {%- endif -%}
        {%- set value = '1970-01-01' -%}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}
