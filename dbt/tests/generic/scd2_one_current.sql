{#-
    Exactly one current version per key (`column_name`), and is_current agrees with an open
    valid_to. With allow_none, at most one: an entity may have no current version (an organization
    that left the list).
-#}
{% test scd2_one_current(model, column_name, is_current='is_current', valid_to='valid_to', allow_none=false) %}

with

version as (
    select
        {{ column_name }} as entity_key,
        {{ is_current }} as is_current,
        {{ valid_to }} is null as is_open
    from {{ model }}
),

entity as (
    select
        entity_key,
        count(*) filter (where is_current) as current_versions,
        count(*) filter (where is_current is distinct from is_open) as inconsistent_versions
    from version
    group by entity_key
),

final as (
    select *
    from entity
    where
        current_versions {{ '>' if allow_none else '<>' }} 1
        or inconsistent_versions > 0
)

select * from final

{% endtest %}
