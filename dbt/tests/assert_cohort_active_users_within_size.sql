-- Report invariant: 0 <= active_users <= cohort_size, cohort_size > 0, and the rate is the rounded ratio.
select *
from {{ ref('cohort_summary') }}
where
    {{ report_dates_only() }}
    and (
        cohort_size <= 0
        or active_users < 0
        or active_users > cohort_size
        or retention_rate <> round(active_users::numeric / cohort_size, 4)
    )
