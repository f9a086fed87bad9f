{#-
    Pre-hook of cohort_summary: a build for dates R replaces the rows of those dates only. The
    DELETE runs in the same transaction as the append of the new rows, and also when a date now
    yields no row at all (which delete+insert alone would not clean up). On the first build the
    table does not exist yet and nothing is deleted.
-#}
{% macro cohort_summary_clear_run_dates() %}
    {%- if is_incremental() -%}
        delete from {{ this }} where as_of_date = any({{ run_dates_array() }})
    {%- endif -%}
{% endmacro %}
