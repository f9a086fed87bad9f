with

user_event as (
    select * from {{ ref('hist_user_event') }}
),

user_version as (
    select * from {{ ref('dim_user') }}
),

-- a lifecycle event belongs to the version it opened
opened_version as (
    select
        user_event.event_id,
        user_version.user_key,
        user_version.organization_key
    from user_event
    inner join user_version
        on user_event.event_id = user_version.opened_by_event_id
),

-- any other event type belongs to the version in effect at the event, if there is one
effective_version as (
    select
        user_event.event_id,
        user_version.user_key,
        user_version.organization_key
    from user_event
    inner join user_version
        on
            user_event.user_id = user_version.user_id
            and user_event.received_at >= user_version.valid_from
            and (user_version.valid_to is null or user_event.received_at < user_version.valid_to)
    where user_event.event_type not in ('user_created', 'user_updated', 'user_deleted')
),

event_version as (
    select * from opened_version
    union all
    select * from effective_version
),

final as (
    select
        user_event.event_id,
        user_event.user_id,
        event_version.user_key,
        -- the user's organization in the linked version; the event's own without a version
        case
            when event_version.user_key is not null then event_version.organization_key
            else user_event.organization_key
        end as organization_key,
        user_event.event_type,
        user_event.received_at as event_at,
        (user_event.received_at at time zone 'UTC')::date as event_date,
        user_event.partition_date
    from user_event
    left join event_version
        on user_event.event_id = event_version.event_id
)

select * from final
