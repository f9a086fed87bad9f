with

organization_snapshot as (
    select * from {{ ref('snap_organization') }}
),

-- a version opened and closed by snapshots of the same run_date (a partition re-run with corrected
-- organizations) was never in effect at the end of any day: it is left out
effective_version as (
    select *
    from organization_snapshot
    where dbt_valid_to is null or dbt_valid_to > dbt_valid_from
),

final as (
    select
        {{ surrogate_key(['organization_key', "to_char(dbt_valid_from, 'YYYY-MM-DD\"T\"HH24:MI:SS')"]) }}
            as organization_version_key,
        organization_key,
        organization_name,
        organization_tier,
        dbt_valid_to is null as is_current,
        created_at,
        -- snapshot times are run dates at 00:00 UTC (macros/snapshot_get_time.sql)
        dbt_valid_from at time zone 'UTC' as valid_from,
        dbt_valid_to at time zone 'UTC' as valid_to
    from effective_version
)

select * from final
