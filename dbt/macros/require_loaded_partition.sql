{#-
    Pre-hook of the organization snapshot: fail unless partition snapshot_date of the organization
    list is loaded (has a row in its partition ledger). An unloaded, empty list would look as if
    every organization had left.
-#}
{% macro require_loaded_partition(ledger) %}
    do $$
    begin
        if not exists (
            select from {{ ledger }} where partition_date = '{{ snapshot_date() }}'::date
        ) then
            raise exception '{{ this }}: partition {{ snapshot_date() }} is not loaded (no row in {{ ledger }})';
        end if;
    end
    $$
{% endmacro %}
