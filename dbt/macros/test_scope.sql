{#-
    Data tests of a build check what the build changed, so their cost follows the new data, not
    the history. When the pipeline's build sets test_scope to changed (macros/build_settings.sql),
    a test's `where` placeholders become:
    - `__changed_rows__`: rows no build has tested yet (changed_at, macro changed_rows_only);
    - `__changed_contents__`: rows whose contents no build has tested yet (content_changed_at),
      for tests of columns that closing a version leaves as they were;
    - `__report_dates__`: rows of the build's report dates.
    By default (by hand, make test-warehouse) every test checks every row.
    dbt calls get_where_subquery to apply a test's `where`; this override fills the placeholders.
-#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if not where -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- set where = where | replace('__changed_rows__', changed_rows_only()) -%}
    {%- set where = where | replace('__changed_contents__', changed_rows_only('content_changed_at')) -%}
    {%- if '__report_dates__' in where -%}
        {%- set where = where | replace('__report_dates__', report_dates_only()) -%}
    {%- endif -%}
    {%- set filtered -%}
        (select * from {{ relation }} where {{ where }}) as dbt_subquery
    {%- endset -%}
    {{ return(filtered) }}
{%- endmacro %}


{#-
    Rows no build has tested yet (by `stamp_column`): those written after the setting
    tested_through, the stamp of the last build whose tests passed (the pipeline passes it, or
    -infinity before any). So the rows of a build that failed its tests are tested again by the
    next, which may write nothing new, until one passes. Without the setting (by hand), the rows
    this invocation wrote; every row with test_scope all.
-#}
{% macro changed_rows_only(stamp_column='changed_at') -%}
    {%- set tested_through = build_setting('tested_through') -%}
    {%- if build_setting('test_scope', 'all') == 'all' -%}
        {{ return('true') }}
    {%- elif tested_through is none -%}
        {{ return(stamp_column ~ " >= " ~ build_stamp()) }}
    {%- endif -%}
    {{ return(stamp_column ~ " > '" ~ tested_through ~ "'::timestamptz") }}
{%- endmacro %}


{#- Report rows of the build's dates, or every row with test_scope all. -#}
{% macro report_dates_only() -%}
    {{ return('true' if build_setting('test_scope', 'all') == 'all' else 'as_of_date = any(' ~ run_dates_array() ~ ')') }}
{%- endmacro %}


{#- A condition that holds with test_scope all only: a test too costly for every build (it reads the
    whole of a table) selects nothing then, and the planner skips its reads altogether. -#}
{% macro whole_warehouse_only() -%}
    {{ return('true' if build_setting('test_scope', 'all') == 'all' else 'false') }}
{%- endmacro %}
