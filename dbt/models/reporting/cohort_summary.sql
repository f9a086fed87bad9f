{{
    config(
        incremental_strategy='append',
        full_refresh=false,
        on_schema_change='fail',
        pre_hook="{{ cohort_summary_clear_run_dates() }}",
    )
}}

-- The cohort report (data contract, section 6) of every date in var run_dates, from the counts of
-- the users' active intervals (active_interval_count). Rules restated next to the SQL: docs.md,
-- block cohort_rules.

with

interval_count as (
    select * from {{ ref('active_interval_count') }}
),

report_date as (
    select
        run_date.as_of_date,
        extract(year from run_date.as_of_date)::int * 12 + extract(month from run_date.as_of_date)::int
            as as_of_month
    from unnest({{ run_dates_array() }}) as run_date (as_of_date)
),

-- intervals that start and end on the same days count alike (active_interval_count); an open
-- interval's end is null again, as below
interval_group as (
    select
        epoch_from,
        epoch_to,
        signup_date,
        start_date,
        nullif(end_date, 'infinity') as end_date,
        is_signup,
        interval_count
    from interval_count
),

-- what the report of each date sees, T = D + 1 day at 00:00 UTC: the intervals of the users'
-- epoch at D that start before T (start_date <= D); months counted from year 0
dated_interval as (
    select
        report_date.as_of_date,
        report_date.as_of_month,
        extract(year from interval_group.signup_date)::int * 12 + extract(month from interval_group.signup_date)::int
            as cohort_month_index,
        extract(year from interval_group.start_date)::int * 12 + extract(month from interval_group.start_date)::int
            as start_month_index,
        extract(year from interval_group.end_date)::int * 12 + extract(month from interval_group.end_date)::int
            as end_month_index,
        interval_group.end_date,
        interval_group.signup_date,
        interval_group.is_signup,
        interval_group.interval_count
    from interval_group
    inner join report_date
        on
            interval_group.epoch_from <= report_date.as_of_date
            and interval_group.epoch_to > report_date.as_of_date
            and interval_group.start_date <= report_date.as_of_date
),

cohort as (
    select
        as_of_date,
        as_of_month,
        cohort_month_index,
        sum(interval_count) filter (where is_signup) as cohort_size
    from dated_interval
    group by as_of_date, as_of_month, cohort_month_index
),

-- an interval (active_from, active_to] covers the start of month m when
-- start month < m <= end month; k = m - cohort month - 1 runs over the months before D's month
covered_month as (
    select
        dated_interval.as_of_date,
        dated_interval.cohort_month_index,
        months.months_since_signup,
        dated_interval.interval_count
    from dated_interval
    cross join
        lateral generate_series(
            dated_interval.start_month_index - dated_interval.cohort_month_index,
            least(
                coalesce(dated_interval.end_month_index, dated_interval.as_of_month) - 1,
                dated_interval.as_of_month - 1
            ) - dated_interval.cohort_month_index
        ) as months (months_since_signup)
    union all
    -- the last row, D's month, is measured at T: active when the interval ends at or after T
    select
        as_of_date,
        cohort_month_index,
        as_of_month - cohort_month_index as months_since_signup,
        interval_count
    from dated_interval
    where end_date is null or end_date > as_of_date
),

month_activity as (
    select
        as_of_date,
        cohort_month_index,
        months_since_signup,
        sum(interval_count) as active_users
    from covered_month
    group by as_of_date, cohort_month_index, months_since_signup
),

cohort_month as (
    select
        cohort.as_of_date,
        cohort.cohort_month_index,
        cohort.cohort_size,
        months.months_since_signup
    from cohort
    cross join
        lateral generate_series(0, cohort.as_of_month - cohort.cohort_month_index) as months (months_since_signup)
    where cohort.cohort_size > 0
),

final as (
    select
        cohort_month.as_of_date,
        to_char(
            make_date((cohort_month.cohort_month_index - 1) / 12, (cohort_month.cohort_month_index - 1) % 12 + 1, 1),
            'YYYY-MM'
        )
            as cohort_month,
        cohort_month.months_since_signup::int as months_since_signup,
        cohort_month.cohort_size::int as cohort_size,
        coalesce(month_activity.active_users, 0)::int as active_users,
        -- numeric round() rounds half away from zero, i.e. half up for these non-negative ratios
        round(coalesce(month_activity.active_users, 0)::numeric / cohort_month.cohort_size, 4)::numeric(6, 4)
            as retention_rate
    from cohort_month
    left join month_activity
        on
            cohort_month.as_of_date = month_activity.as_of_date
            and cohort_month.cohort_month_index = month_activity.cohort_month_index
            and cohort_month.months_since_signup = month_activity.months_since_signup
)

select * from final
