{#-
    Fails for every row whose non-null `column_name` names no row of `to` (by `field`) of the same
    user_id: dbt's relationships test, stricter, for models whose keys belong to one user.
    dbt's form joins the rows to the whole parent. When the rows to check are few next to the
    parent (a daily build's changed rows: test_scope changed), those whose parent row the build
    wrote too are joined to the rows it wrote (macro changed_rows_only, on the parent's changed_at),
    and each of the rest is looked up through an index of the parent (on user_id, or on `field`),
    so the test costs what the build wrote. On a first build every row is new, and one join is
    cheaper than a lookup per row (1M facts: 0.5 s against 2.2 s).
    `to` must have changed_at, stamped by build_stamp() and indexed (dim_user, hist_user_event):
    only a daily build's test reads it, so a parent without it fails first in production.
-#}
{% test relationships_by_user(model, column_name, to, field) %}

{%- set look_up = false -%}
{%- if execute and build_setting('test_scope', 'all') != 'all' -%}
    {%- set sizes = run_query(
        "select (select count(*) from " ~ model ~ "), (select reltuples from pg_class where oid = '"
        ~ to ~ "'::regclass)"
    ).rows[0] -%}
    {#- a lookup costs about twenty times a parent row's share of the join; rows whose parent the
        build wrote are joined anyway, so this bounds the cost of the rest -#}
    {%- set look_up = sizes[0] * 20 < sizes[1] -%}
{%- endif %}

with

child as (
    select
        user_id,
        {{ column_name }} as from_field
    from {{ model }}
    where {{ column_name }} is not null
),

{% if look_up %}

-- Most rows point at a parent row this build wrote too (a fact follows the version it links to,
-- a new version the new event that opened it): they are matched in one join with those rows.
-- Materialized: the lookups below must see only the rest, not be pushed under the join.
unmatched as materialized (
    select child.*
    from child
    where not exists (
        select from {{ to }} as written_parent
        where
            written_parent.user_id = child.user_id
            and written_parent.{{ field }} = child.from_field
            and {{ changed_rows_only('written_parent.changed_at') }}
    )
),

-- a scalar subquery runs once per row, through the index; the planner cannot make it a join
final as (
    select unmatched.*
    from unmatched
    where (
        select true from {{ to }} as parent
        where parent.user_id = unmatched.user_id and parent.{{ field }} = unmatched.from_field
        limit 1
    ) is null
)

{% else %}

final as (
    select child.*
    from child
    where not exists (
        select from {{ to }} as parent
        where parent.user_id = child.user_id and parent.{{ field }} = child.from_field
    )
)

{% endif %}

select * from final

{% endtest %}
