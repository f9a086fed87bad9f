{#-
    A setting of this build (run_dates, snapshot_date, build_stamp, test_scope): from --vars when
    given (by hand), else from the JSON object in the environment variable ETL_DBT_BUILD, which
    the pipeline sets for its builds (tasks/transform.py). The pipeline does not pass --vars
    because dbt parses the whole project again whenever they change, and a build's dates and stamp
    change every time; read only while executing, the environment leaves dbt's saved parse valid.
-#}
{% macro build_setting(name, default=none) -%}
    {%- set given = var(name, none) -%}
    {%- if given is none and execute -%}
        {%- set given = fromjson(env_var('ETL_DBT_BUILD', '{}')).get(name) -%}
    {%- endif -%}
    {{ return(default if given is none else given) }}
{%- endmacro %}
