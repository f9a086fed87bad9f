{#-
    SCD2 versions of one key (`column_name`, the entity id) do not overlap: every version has
    valid_from <= valid_to, only the last one is open (valid_to null), and each closed version ends
    at or before the start of the next one. Without allow_gaps it must end exactly there (a history
    without holes). Zero-length versions (valid_from = valid_to) are allowed: never in effect.
-#}
{% test scd2_no_overlap(model, column_name, valid_from='valid_from', valid_to='valid_to', allow_gaps=false) %}

with

version as (
    select
        {{ column_name }} as entity_key,
        {{ valid_from }} as valid_from,
        {{ valid_to }} as valid_to,
        lead({{ valid_from }}) over entity_versions as next_valid_from,
        count(*) over entity_versions_after as later_versions
    from {{ model }}
    window
        entity_versions as (
            partition by {{ column_name }}
            order by {{ valid_from }}, {{ valid_to }} nulls last
        ),
        entity_versions_after as (entity_versions rows between 1 following and unbounded following)
),

final as (
    select *
    from version
    where
        valid_from is null
        or valid_to < valid_from
        or (
            later_versions > 0
            and (
                valid_to is null
                or valid_to {{ '>' if allow_gaps else '<>' }} next_valid_from
            )
        )
)

select * from final

{% endtest %}
