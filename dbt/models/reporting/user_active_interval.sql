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
        pre_hook="{{ clear_when_history_reworked() }}",
        post_hook="{{ analyze_changed() }}",
    )
}}

-- The periods each user is active (macros/active_intervals.sql), the building block of the
-- cohort report, kept per user so that a build recomputes only the users it changed. An event
-- delivered in a partition after its own UTC day is seen by a report only from that partition on,
-- so such a user has one set of intervals per "visibility epoch" (docs.md, block cohort_rules).

-- depends_on: {{ ref('hist_user_event_partition') }}

with

lifecycle_event as (
    select
        user_event.user_id,
        user_event.event_id,
        user_event.received_at,
        user_event.partition_date,
        user_event.event_type = 'user_deleted' as is_deletion,
        -- delivered after its own UTC day: invisible to reports of the days in between
        (user_event.received_at at time zone 'UTC')::date < user_event.partition_date as is_late
    from {{ ref('hist_user_event') }} as user_event
    where
        user_event.event_type in ('user_created', 'user_deleted')
        and {{ changed_user('user_event.user_id', ['user_created', 'user_deleted']) }}
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
