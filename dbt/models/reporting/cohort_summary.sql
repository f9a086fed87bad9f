{{
    config(
        incremental_strategy='append',
        full_refresh=false,
        on_schema_change='fail',
        pre_hook="{{ cohort_summary_clear_run_date() }}",
    )
}}

with

user_event as (
    select * from {{ ref('hist_user_event') }}
),

report_window as (
    select
        '{{ run_date() }}'::date as as_of_date,
        -- T: D + 1 day at 00:00 UTC
        ('{{ run_date() }}'::date + 1)::timestamp at time zone 'UTC' as report_end_at
),

-- the events the report sees: partitions up to D, received before T (hist holds each id once,
-- as its first delivery, so an id with a delivery up to D is filtered on that delivery)
lifecycle_event as (
    select
        user_event.user_id,
        user_event.event_type,
        user_event.received_at
    from user_event
    cross join report_window
    where
        user_event.partition_date <= report_window.as_of_date
        and user_event.received_at < report_window.report_end_at
        and user_event.event_type in ('user_created', 'user_deleted')
),

signup as (
    select
        user_id,
        min(received_at) as signup_at
    from lifecycle_event
    where event_type = 'user_created'
    group by user_id
),

cohort_user as (
    select
        user_id,
        to_char(signup_at at time zone 'UTC', 'YYYY-MM') as cohort_month,
        date_trunc('month', signup_at at time zone 'UTC') as cohort_start_at_utc
    from signup
),

cohort as (
    select
        cohort_month,
        cohort_start_at_utc,
        count(*) as cohort_size
    from cohort_user
    group by cohort_month, cohort_start_at_utc
),

-- one row per k = 0 .. months from the cohort month to D's month, measured at the start of month
-- (cohort month + k + 1) or at T if that is earlier
cohort_period as (
    select
        cohort.cohort_month,
        cohort.cohort_size,
        months.months_since_signup,
        least(
            (cohort.cohort_start_at_utc + (months.months_since_signup + 1) * interval '1 month')
            at time zone 'UTC',
            report_window.report_end_at
        ) as measured_at
    from cohort
    cross join report_window
    cross join lateral generate_series(
        0,
        (
            (extract(year from report_window.as_of_date) - extract(year from cohort.cohort_start_at_utc)) * 12
            + extract(month from report_window.as_of_date) - extract(month from cohort.cohort_start_at_utc)
        )::int
    ) as months (months_since_signup)
),

-- a user is active at t when the latest creation/deletion received strictly before t is a
-- creation; at equal received_at the deletion counts as the later one
user_period_state as (
    select
        cohort_period.cohort_month,
        cohort_period.months_since_signup,
        cohort_user.user_id,
        max(lifecycle_event.received_at) filter (where lifecycle_event.event_type = 'user_created')
            as last_created_at,
        max(lifecycle_event.received_at) filter (where lifecycle_event.event_type = 'user_deleted')
            as last_deleted_at
    from cohort_period
    inner join cohort_user
        on cohort_period.cohort_month = cohort_user.cohort_month
    left join lifecycle_event
        on
            cohort_user.user_id = lifecycle_event.user_id
            and cohort_period.measured_at > lifecycle_event.received_at
    group by cohort_period.cohort_month, cohort_period.months_since_signup, cohort_user.user_id
),

period_activity as (
    select
        cohort_month,
        months_since_signup,
        count(*) filter (
            where last_created_at is not null
            and (last_deleted_at is null or last_created_at > last_deleted_at)
        ) as active_users
    from user_period_state
    group by cohort_month, months_since_signup
),

final as (
    select
        report_window.as_of_date,
        cohort_period.cohort_month,
        cohort_period.months_since_signup::int as months_since_signup,
        cohort_period.cohort_size::int as cohort_size,
        period_activity.active_users::int as active_users,
        -- numeric round() rounds half away from zero, i.e. half up for these non-negative ratios
        round(period_activity.active_users::numeric / cohort_period.cohort_size, 4)::numeric(6, 4)
            as retention_rate
    from cohort_period
    cross join report_window
    inner join period_activity
        on
            cohort_period.cohort_month = period_activity.cohort_month
            and cohort_period.months_since_signup = period_activity.months_since_signup
)

select * from final
