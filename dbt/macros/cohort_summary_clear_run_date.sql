{#-
    Pre-hook of cohort_summary: a run for D replaces D's rows only. The DELETE runs in the same
    transaction as the append of the new rows, and also when D now yields no row at all (which
    delete+insert alone would not clean up). On the first run the table does not exist yet and
    nothing is deleted.
-#}
{% macro cohort_summary_clear_run_date() %}
    {%- if is_incremental() -%}
        delete from {{ this }} where as_of_date = '{{ run_date() }}'::date
    {%- endif -%}
{% endmacro %}
