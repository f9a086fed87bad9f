{{
    config(
        materialized='incremental',
        unique_key='user_id',
        incremental_strategy='replace_keys',
        on_schema_change='fail',
        indexes=[
            {'columns': ['user_id']},
            {'columns': ['changed_at']},
        ],
        logs_replaced_intervals=true,
        pre_hook="{{ log_interval_reset() }}",
        post_hook="{{ analyze_changed() }}",
    )
}}

-- The periods each user is active (macros/active_intervals.sql), the building block of the
-- cohort report, kept per user so that a build recomputes only the users it changed. An event
-- delivered in a partition after its own UTC day is seen by a report only from that partition on,
-- so such a user has one set of intervals per "visibility epoch" (docs.md, block active_intervals).
-- What a build changes is logged for active_interval_count (macros/interval_counts.sql): the rows
-- its replace_keys strategy deletes and inserts, or a reset.

-- depends_on: {{ ref('hist_user_event_partition') }}

with

history as not materialized (
    select * from {{ ref('hist_user_event') }}
),

{% if adds_to_this() %}

-- the changed users with a new creation or deletion (docs.md, changed_users)
recomputed_user as (
    select distinct user_id from ({{ changed_users(interval_event_types()) }}) as changed
    {%- if has_reworked_users() %}
    -- a user a rework touched may have lost events: their intervals are computed again
    union
    select reworked.user_id from ({{ reworked_users() }}) as reworked
    {%- endif %}
),

-- each changed user's events looked up on their own, through the index on user_id: "offset 0"
-- keeps the subquery from becoming a join, which the planner would make a scan of the whole history
-- (day 30 of the bench, 73k users: the model took 5.3 to 5.9 s before, 3.9 to 4.6 s after)
user_event as (
    select user_event.*
    from recomputed_user
    cross join lateral (
        select * from history
        where
            history.user_id = recomputed_user.user_id
            and history.event_type in {{ sql_list(interval_event_types()) }}
        offset 0
    ) as user_event
),

{% else %}

user_event as (
    select * from history
    where event_type in {{ sql_list(interval_event_types()) }}
),

{% endif %}

lifecycle_event as (
    select
        user_id,
        event_id,
        received_at,
        partition_date,
        event_type = 'user_deleted' as is_deletion,
        -- delivered after its own UTC day: invisible to reports of the days in between
        (received_at at time zone 'UTC')::date < partition_date as is_late
    from user_event
),

-- a user's epochs start at -infinity and at each partition that delivered a late event
epoch_start as (
    select distinct
        user_id,
        '-infinity'::date as epoch_from
    from lifecycle_event
    union
    select
        user_id,
        partition_date as epoch_from
    from lifecycle_event
    where is_late
),

epoch as (
    select
        user_id,
        epoch_from,
        coalesce(lead(epoch_from) over (partition by user_id order by epoch_from), 'infinity'::date) as epoch_to
    from epoch_start
),

-- in an epoch, a report sees every event but the late ones delivered after the epoch starts
epoch_event as (
    select
        epoch.epoch_from,
        epoch.epoch_to,
        lifecycle_event.*
    from epoch
    inner join lifecycle_event
        on epoch.user_id = lifecycle_event.user_id
    where not (lifecycle_event.is_late and lifecycle_event.partition_date > epoch.epoch_from)
),

active_interval as (
    {{ active_intervals('epoch_event', ['user_id', 'epoch_from', 'epoch_to']) }}
),

final as (
    select
        user_id,
        epoch_from,
        epoch_to,
        signup_at,
        active_from,
        active_to,
        {{ build_stamp() }} as changed_at
    from active_interval
)

select * from final
