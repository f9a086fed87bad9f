with

user_event as (
    select * from {{ ref('hist_user_event') }}
),

lifecycle_event as (
    select
        *,
        case event_type
            when 'user_created' then 1
            when 'user_updated' then 2
            when 'user_deleted' then 3
        end as event_rank,
        -- which attributes the event sets: a creation sets all four (absent = null), an update only
        -- the fields present, a deletion none
        event_type = 'user_created' or (event_type = 'user_updated' and has_organization_key)
            as sets_organization_key,
        event_type = 'user_created' or (event_type = 'user_updated' and has_username) as sets_username,
        event_type = 'user_created' or (event_type = 'user_updated' and has_user_email) as sets_user_email,
        event_type = 'user_created' or (event_type = 'user_updated' and has_user_type) as sets_user_type,
        case event_type
            when 'user_created' then 'active'
            when 'user_deleted' then 'deleted'
        end as status_set
    from user_event
    where event_type in ('user_created', 'user_updated', 'user_deleted')
),

ordered_version as (
    select
        *,
        row_number() over (
            partition by user_id order by received_at, event_rank, event_id
        ) as version_number
    from lifecycle_event
),

-- "last non-absent value": a running count of setting events numbers the groups; each group starts
-- with the event that set the value, and every later version of the group inherits it
grouped_version as (
    select
        *,
        count(*) filter (where sets_organization_key) over user_history as organization_key_group,
        count(*) filter (where sets_username) over user_history as username_group,
        count(*) filter (where sets_user_email) over user_history as user_email_group,
        count(*) filter (where sets_user_type) over user_history as user_type_group,
        count(status_set) over user_history as status_group
    from ordered_version
    window user_history as (partition by user_id order by version_number rows unbounded preceding)
),

filled_version as (
    select
        user_id,
        event_id,
        received_at,
        version_number,
        max(organization_key) filter (where sets_organization_key)
            over (partition by user_id, organization_key_group) as organization_key,
        max(username) filter (where sets_username) over (partition by user_id, username_group) as username,
        max(user_email) filter (where sets_user_email)
            over (partition by user_id, user_email_group) as user_email,
        max(user_type) filter (where sets_user_type) over (partition by user_id, user_type_group) as user_type,
        -- before any creation or deletion (an update of an unknown user) the user counts as active
        coalesce(max(status_set) over (partition by user_id, status_group), 'active') as status
    from grouped_version
),

final as (
    select
        md5(user_id || '|' || event_id) as user_key,
        user_id,
        event_id as opened_by_event_id,
        organization_key,
        username,
        user_email,
        user_type,
        status,
        lead(received_at) over user_versions is null as is_current,
        received_at as valid_from,
        lead(received_at) over user_versions as valid_to
    from filled_version
    window user_versions as (partition by user_id order by version_number)
)

select * from final
