{{
    config(
        materialized='incremental',
        incremental_strategy='add_interval_changes',
        on_schema_change='fail',
        indexes=[
            {'columns': ['epoch_from', 'epoch_to', 'signup_date', 'start_date', 'end_date', 'is_signup'], 'unique': true},
            {'columns': ['changed_at']},
        ],
        pre_hook="{{ lock_interval_change_log() }}",
        post_hook=["{{ clear_interval_change_log() }}", "{{ analyze_changed() }}"],
    )
}}

-- How many intervals of user_active_interval share their epoch and dates: all the cohort report
-- reads, kept from the changes user_active_interval logs, so that a daily build costs the users it
-- changed, not every user (macros/interval_counts.sql; docs.md, block interval_counts).

with

{% if is_incremental() and not interval_counts_reset() %}

logged_change as (
    select * from {{ interval_change_log(ref('user_active_interval')) }}
    where not is_reset
),

counted_group as (
    select
        {{ interval_group_key() | join(', ') }},
        sum(interval_change)::bigint as interval_count
    from logged_change
    group by {{ interval_group_key() | join(', ') }}
),

{% else %}

active_interval as (
    select * from {{ ref('user_active_interval') }}
),

counted_group as (
    {{ interval_group_counts('active_interval') }}
),

{% endif %}

final as (
    select
        epoch_from,
        epoch_to,
        signup_date,
        start_date,
        end_date,
        is_signup,
        interval_count,
        {{ build_stamp() }} as changed_at
    from counted_group
)

select * from final
