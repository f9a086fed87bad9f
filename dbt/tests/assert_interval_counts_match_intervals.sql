-- active_interval_count holds exactly the counts of user_active_interval's groups: every group whose
-- count differs (docs.md, block interval_counts). It reads every interval, so a build's tests leave
-- it to make test-warehouse and the check that ends a backfill (whole_warehouse_only).
with

counted as (
    select * from {{ ref('active_interval_count') }}
),

recounted as (
    {{ interval_group_counts(ref('user_active_interval')) }}
)

select
    counted.interval_count as counted_intervals,
    recounted.interval_count as recounted_intervals,
    coalesce(counted.epoch_from, recounted.epoch_from) as epoch_from,
    coalesce(counted.epoch_to, recounted.epoch_to) as epoch_to,
    coalesce(counted.signup_date, recounted.signup_date) as signup_date,
    coalesce(counted.start_date, recounted.start_date) as start_date,
    coalesce(counted.end_date, recounted.end_date) as end_date,
    coalesce(counted.is_signup, recounted.is_signup) as is_signup
from counted
full outer join recounted
    on
        counted.epoch_from = recounted.epoch_from
        and counted.epoch_to = recounted.epoch_to
        and counted.signup_date = recounted.signup_date
        and counted.start_date = recounted.start_date
        and counted.end_date = recounted.end_date
        and counted.is_signup = recounted.is_signup
where
    {{ whole_warehouse_only() }}
    and counted.interval_count is distinct from recounted.interval_count
