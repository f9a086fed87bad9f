{{
    config(
        materialized='incremental',
        incremental_strategy='first_delivery',
        unique_key='event_id',
        full_refresh=false,
        on_schema_change='fail',
        indexes=[
            {'columns': ['event_id'], 'unique': true},
            {'columns': ['partition_date']},
            {'columns': ['user_id']},
            {'columns': ['changed_at']},
        ],
        post_hook=["{{ hist_user_event_mark_processed() }}", "{{ analyze_changed() }}"],
    )
}}

-- One row per distinct event id, its first delivery. Incremental over partitions: see docs.md,
-- block hist_incremental, and macros/history_changes.sql for the strategy.
-- depends_on: {{ ref('hist_user_event_partition') }}

with

staging_event as not materialized (
    select * from {{ source('staging', 'event') }}
),

source_object as (
    select * from {{ source('staging', 'event_source_object') }}
),

{% if is_incremental() %}

{% set changed_dates = changed_event_partition_dates() %}
{% set changed_partitions = date_array(changed_dates) %}

stored_history as not materialized (
    select * from {{ this }}
),

taken_partition as not materialized (
    select * from {{ ref('hist_user_event_partition') }}
),

-- events whose winning delivery came from a changed partition (a reload): their first delivery is
-- recomputed from their deliveries in staging
reworked_event as (
    select history.event_id
    from stored_history as history
    where history.partition_date = any({{ changed_partitions }})
),

delivery as (
    select staging_event.*
    from staging_event
    where staging_event.date = any({{ changed_partitions }})
    union all
    select staging_event.*
    from staging_event
    inner join reworked_event
        on staging_event.event_id = reworked_event.event_id
    where
        staging_event.date != all({{ changed_partitions }})
        -- A reworked event's other deliveries come after the one it lost, the first of all: in
        -- later partitions. With the bound a literal, only those are read (BRIN), not all history.
        and staging_event.date > '{{ changed_dates[0] if changed_dates else "infinity" }}'
        -- not from a partition loaded since this build took the partitions in: the history holds
        -- rows of the partitions it took in only
        and staging_event.date in (select taken.partition_date from taken_partition as taken)
        -- evaluated once: without reworked events, staging is not read at all
        and exists (select from reworked_event as any_reworked_event)  -- noqa: AL05
),

{% else %}

delivery as (
    select * from staging_event
),

{% endif %}

first_delivery as (
    select distinct on (event_id) *
    from delivery
    -- a partition's objects are numbered in key order: this is the order of (source_key, line_number)
    order by event_id, date, object_number, line_number
),

-- left: a row whose object is missing keeps a null key, which the not_null test reports
first_delivery_with_key as (
    select
        first_delivery.*,
        source_object.source_key
    from first_delivery
    left join source_object
        on
            first_delivery.date = source_object.date
            and first_delivery.object_number = source_object.object_number
),

final as (
    select
        event_id,
        (json_content ->> 'user_id') collate "C" as user_id,
        (json_content ->> 'organization_id') collate "C" as organization_key,
        (json_content ->> 'event_type') collate "C" as event_type,
        (json_content ->> 'username') collate "C" as username,
        (json_content ->> 'user_email') collate "C" as user_email,
        (json_content ->> 'user_type') collate "C" as user_type,
        json_content ? 'organization_id' as has_organization_key,
        json_content ? 'username' as has_username,
        json_content ? 'user_email' as has_user_email,
        json_content ? 'user_type' as has_user_type,
        received_at,
        date as partition_date,
        source_key,
        line_number,
        load_id,
        {{ build_stamp() }} as changed_at
    from first_delivery_with_key
)

select * from final
