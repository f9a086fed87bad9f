-- Report invariant: one cohort_size per (as_of_date, cohort_month).
select
    as_of_date,
    cohort_month,
    count(distinct cohort_size) as distinct_sizes
from {{ ref('cohort_summary') }}
where {{ report_dates_only() }}
group by as_of_date, cohort_month
having count(distinct cohort_size) <> 1
