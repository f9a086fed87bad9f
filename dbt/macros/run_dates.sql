{#-
    The dates a build is for, settings the Luigi task passes (macros/build_settings.sql):
      run_dates      list of report dates, 'YYYY-MM-DD' (the report's as_of_date values)
      snapshot_date  the date the organization snapshot is taken for
    A missing or malformed value fails the run loudly instead of building with a wrong date. While
    dbt only parses (`execute` is false) a missing var is tolerated.
-#}
{% macro checked_date(name, value) -%}
    {%- set value = '' if value is none else value | string | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
        {%- if execute -%}
            {{ exceptions.raise_compiler_error(
                "var " ~ name ~ " needs dates as YYYY-MM-DD (--vars '{" ~ name ~ ": ...}'), got '" ~ value ~ "'") }}
        {%- endif -%}
        {%- set value = '1970-01-01' -%}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}


{% macro run_dates() -%}
    {%- set values = build_setting('run_dates', []) -%}
    {%- if values is string -%}{%- set values = [values] -%}{%- endif -%}
    {%- if execute and not values -%}
        {{ exceptions.raise_compiler_error("var run_dates is required: --vars '{run_dates: [\"YYYY-MM-DD\"]}'") }}
    {%- endif -%}
    {#- a date given twice is one date: the report joins each date once, so a repeat would count twice -#}
    {%- set checked = [] -%}
    {%- for value in values -%}
        {%- set date = checked_date('run_dates', value) -%}
        {%- if date not in checked -%}{%- do checked.append(date) -%}{%- endif -%}
    {%- endfor -%}
    {{ return(checked or ['1970-01-01']) }}
{%- endmacro %}


{#- Usage in SQL: `as_of_date = any({{ run_dates_array() }})` -#}
{% macro run_dates_array() -%}
    array[{%- for value in run_dates() -%}'{{ value }}'::date{{ ", " if not loop.last }}{%- endfor -%}]
{%- endmacro %}


{% macro snapshot_date() -%}
    {{ return(checked_date('snapshot_date', build_setting('snapshot_date'))) }}
{%- endmacro %}
