{{
    config(
        materialized='incremental',
        incremental_strategy='hist_replace_affected',
        unique_key='event_id',
        full_refresh=false,
        on_schema_change='fail',
        indexes=[
            {'columns': ['event_id'], 'unique': true},
            {'columns': ['partition_date']},
        ],
        pre_hook="{{ hist_user_event_begin() }}",
        post_hook="{{ hist_user_event_end() }}",
    )
}}

-- depends_on: {{ source('etl', 'marker') }}
-- (read by the pre-hook, see macros/hist_user_event_partitions.sql and docs.md hist_incremental)

with

staging_event as not materialized (
    select * from {{ source('staging', 'event') }}
),

{% if is_incremental() %}

current_history as (
    select * from {{ this }}
),

-- the same definition the incremental strategy deletes by (macros/hist_user_event_partitions.sql)
changed_partition as (
    {{ hist_user_event_changed_partitions() }}
),

affected_event as (
    select staging_event.event_id
    from staging_event
    where staging_event.date in (select changed_partition.partition_date from changed_partition)
    union
    select current_history.event_id
    from current_history
    where current_history.partition_date in (select changed_partition.partition_date from changed_partition)
),

delivery as (
    select *
    from staging_event
    where event_id in (select affected_event.event_id from affected_event)
),

{% else %}

delivery as (
    select * from staging_event
),

{% endif %}

first_delivery as (
    select distinct on (event_id) *
    from delivery
    order by event_id, date, source_key, line_number
),

final as (
    select
        event_id,
        json_content ->> 'user_id' as user_id,
        json_content ->> 'organization_id' as organization_key,
        json_content ->> 'event_type' as event_type,
        json_content ->> 'username' as username,
        json_content ->> 'user_email' as user_email,
        json_content ->> 'user_type' as user_type,
        json_content ? 'organization_id' as has_organization_key,
        json_content ? 'username' as has_username,
        json_content ? 'user_email' as has_user_email,
        json_content ? 'user_type' as has_user_type,
        received_at,
        date as partition_date,
        source_key,
        line_number,
        load_id
    from first_delivery
)

select * from final
