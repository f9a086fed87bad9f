{{
    config(
        materialized='incremental',
        unique_key='event_id',
        incremental_strategy='replace_keys',
        on_schema_change='fail',
        indexes=[
            {'columns': ['user_id']},
            {'columns': ['changed_at']},
        ],
        post_hook="{{ analyze_changed() }}",
    )
}}

-- A lifecycle event is the version it opened, so its row comes from dim_user as it is; any other
-- event type is linked to the version in effect at the event. A build writes the facts of the
-- versions whose contents dim_user computed since this model's rows, the other events written
-- since, and the other events at or after the first such version of its user (their version in
-- effect may have changed; earlier ones keep theirs), and every event of a user a rework of the
-- history touched: docs.md, block changed_users. replace_keys replaces exactly those, and every
-- stored fact of those users.
-- depends_on: {{ ref('hist_user_event_partition') }}

with

-- not materialized: each use below reads only the rows it needs, through the indexes
user_version as not materialized (
    select * from {{ ref('dim_user') }}
),

other_event as not materialized (
    select * from {{ ref('hist_user_event') }}
    where event_type not in {{ sql_list(lifecycle_event_types()) }}
),

{% if adds_to_this() %}

-- a version only closed by a later one keeps its contents, so its fact stays as it is
changed_version as (
    select * from user_version
    where content_changed_at > {{ last_written() }}
),

relink_from as (
    select
        user_id,
        min(valid_from) as relink_from_at
    from changed_version
    group by user_id
),

-- a union, not an "or": the new events come through the index on changed_at, which an "or" with
-- the relink join would give up
relinked_event as (
    select * from other_event
    where changed_at > {{ last_written() }}
    union
    select other_event.*
    from other_event
    inner join relink_from
        on
            other_event.user_id = relink_from.user_id
            and other_event.received_at >= relink_from.relink_from_at
    {%- if has_reworked_users() %}
    -- every event of a user a rework touched: their stored facts are all replaced
    union
    select other_event.*
    from other_event
    where other_event.user_id = any(array({{ reworked_users() }}))
    {%- endif %}
),

{% else %}

changed_version as (
    select * from user_version
),

relinked_event as (
    select * from other_event
),

{% endif %}

lifecycle_fact as (
    select
        opened_by_event_id as event_id,
        user_id,
        user_key,
        organization_key,
        opened_by_event_type as event_type,
        valid_from as event_at,
        partition_date
    from changed_version
),

other_fact as (
    select
        relinked_event.event_id,
        relinked_event.user_id,
        user_version.user_key,
        -- the user's organization in the version in effect; the event's own without a version
        case
            when user_version.user_key is not null then user_version.organization_key
            else relinked_event.organization_key
        end as organization_key,
        relinked_event.event_type,
        relinked_event.received_at as event_at,
        relinked_event.partition_date
    from relinked_event
    left join user_version
        on
            relinked_event.user_id = user_version.user_id
            and relinked_event.received_at >= user_version.valid_from
            and (user_version.valid_to is null or relinked_event.received_at < user_version.valid_to)
),

candidate_fact as (
    select * from lifecycle_fact
    union all
    select * from other_fact
),

final as (
    select
        event_id,
        user_id,
        user_key,
        organization_key,
        event_type,
        event_at,
        (event_at at time zone 'UTC')::date as event_date,
        partition_date,
        {{ build_stamp() }} as changed_at
    from candidate_fact
)

select * from final
