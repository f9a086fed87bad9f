{{
    config(
        materialized='incremental',
        unique_key='partition_date',
        incremental_strategy='delete+insert',
        full_refresh=false,
        on_schema_change='fail',
    )
}}

-- The history's bookkeeping (docs.md, block hist_incremental): which load of each staging.event
-- partition the history reflects. Built before the history; the history's post-hook marks the
-- captured loads processed in the same transaction as its rows.

with

loaded_partition as (
    select * from {{ source('staging', 'event_partition') }}
),

{% if is_incremental() %}

known_partition as (
    select * from {{ this }}
),

{% else %}

known_partition as (
    select
        null::date as partition_date,
        null::bigint as processed_load_id,
        null::boolean as is_rework,
        null::timestamptz as processed_at
    where false
),

{% endif %}

latest_processed as (
    select max(partition_date) as partition_date
    from known_partition
    where processed_load_id is not null
),

final as (
    select
        coalesce(loaded_partition.partition_date, known_partition.partition_date) as partition_date,
        loaded_partition.load_id,
        known_partition.processed_load_id,
        -- a change that can alter rows the history already has: a reload or removal of a partition
        -- processed before (even as removed: a build may have run between FORCE's removal of its
        -- ledger row and the reload), or a partition older than one already processed
        case
            -- (parenthesised: sqlfluff's parser trips over a bare "is not distinct from" here)
            when (loaded_partition.load_id is not distinct from known_partition.processed_load_id)
                then coalesce(known_partition.is_rework, false)
            else
                known_partition.processed_at is not null
                or coalesce(loaded_partition.partition_date <= latest_processed.partition_date, false)
        end as is_rework,
        known_partition.processed_at
    from loaded_partition
    full outer join known_partition
        on loaded_partition.partition_date = known_partition.partition_date
    cross join latest_processed
)

select * from final
