-- Report invariant: per (as_of_date, cohort_month), months_since_signup runs 0 .. (months from the
-- cohort month to as_of_date's month) without gaps, and no cohort lies after as_of_date's month.
with

report as (
    select * from {{ ref('cohort_summary') }}
    where {{ report_dates_only() }}
),

cohort as (
    select
        as_of_date,
        cohort_month,
        count(*) as month_rows,
        min(months_since_signup) as min_months,
        max(months_since_signup) as max_months,
        (extract(year from as_of_date) * 12 + extract(month from as_of_date))
        - (left(cohort_month, 4)::int * 12 + right(cohort_month, 2)::int) as expected_max_months
    from report
    group by as_of_date, cohort_month
),

final as (
    select *
    from cohort
    where
        min_months <> 0
        or max_months + 1 <> month_rows
        or max_months <> expected_max_months
)

select * from final
