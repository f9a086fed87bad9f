{#-
    dbt snapshots stamp changes with the wall clock (now()). Here the change time of a snapshot is
    the date it is taken for: var snapshot_date at 00:00 UTC, as a timestamp without time zone like
    dbt's own. dbt calls this through adapter.dispatch('snapshot_get_time', 'dbt'), which looks in
    the root project first, so this override is used for new versions (dbt_valid_from), closed
    versions (dbt_valid_to) and hard-delete invalidations alike. See docs.md, block snapshot_time.
-#}
{% macro postgres__snapshot_get_time() -%}
    '{{ snapshot_date() }}'::timestamp without time zone
{%- endmacro %}
