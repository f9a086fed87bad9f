{#-
    Pre-hook: fail unless etl.marker says partition run_date of `target` is loaded. Guards the
    organization snapshot: an unloaded (empty) list would invalidate every organization.
-#}
{% macro require_loaded_partition(target) %}
    do $$
    begin
        if not exists (
            select 1 from {{ source('etl', 'marker') }}
            where target = '{{ target }}' and partition_date = '{{ run_date() }}'::date
        ) then
            raise exception '{{ this }}: partition {{ run_date() }} of {{ target }} is not loaded (no etl.marker row)';
        end if;
    end
    $$
{% endmacro %}
