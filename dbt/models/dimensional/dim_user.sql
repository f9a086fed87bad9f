{{
    config(
        materialized='incremental',
        unique_key='user_key',
        incremental_strategy='replace_keys',
        on_schema_change='fail',
        indexes=[
            {'columns': ['user_id']},
            {'columns': ['changed_at']},
            {'columns': ['content_changed_at']},
        ],
        stages_current_versions=true,
        pre_hook="{{ stage_current_versions() }}",
        post_hook="{{ analyze_changed() }}",
    )
}}

-- A build writes the versions its new lifecycle events open, and the version before them that they
-- close (docs.md, block changed_users). A user whose new events all come after their current
-- version continues the chain from it; a user with a new event that sorts before it (a late event)
-- has the whole chain computed again, as has every user on a first build, and every user a rework
-- of the history touched (reworked_users), whose stored versions replace_keys deletes first. The
-- current versions come from the pre-hook stage_current_versions, with where they are stored; the
-- replace_keys strategy (macros/history_changes.sql) replaces exactly the versions written.
-- depends_on: {{ ref('hist_user_event_partition') }}

with

user_event as not materialized (
    select * from {{ ref('hist_user_event') }}
),

-- not materialized: each use below reads only the rows it needs, through the indexes
lifecycle_event as not materialized (
    select
        user_id,
        event_id,
        event_type,
        organization_key,
        username,
        user_email,
        user_type,
        {{ lifecycle_rank('event_type') }} as event_rank,
        -- which attributes the event sets: a creation sets all four (absent = null), an update only
        -- the fields present, a deletion none
        event_type = 'user_created'
        or (event_type = 'user_updated' and has_organization_key) as sets_organization_key,
        event_type = 'user_created' or (event_type = 'user_updated' and has_username) as sets_username,
        event_type = 'user_created' or (event_type = 'user_updated' and has_user_email) as sets_user_email,
        event_type = 'user_created' or (event_type = 'user_updated' and has_user_type) as sets_user_type,
        case event_type
            when 'user_created' then 'active'
            when 'user_deleted' then 'deleted'
        end as status_set,
        received_at,
        partition_date,
        changed_at
    from user_event
    where event_type in {{ sql_list(lifecycle_event_types()) }}
),

{% if adds_to_this() %}

new_event as (
    select * from lifecycle_event
    where changed_at > {{ last_written() }}
),

-- the current versions of the users with new events (pre-hook stage_current_versions)
current_version as (
    select * from {{ current_version_table() }}
),

late_user as (
    select distinct new_event.user_id
    from new_event
    inner join current_version
        on new_event.user_id = current_version.user_id
    where
        (new_event.received_at, new_event.event_rank, new_event.event_id)
        < (
            current_version.valid_from,
            {{ lifecycle_rank('current_version.opened_by_event_type') }},
            current_version.opened_by_event_id
        )
    {%- if has_reworked_users() %}
    -- a user a rework touched may have lost events: their chain is computed again, as a late one
    union
    select reworked.user_id from ({{ reworked_users() }}) as reworked
    {%- endif %}
),

-- the current version stands for every event before the new ones: it sets all it holds
continued_version as (
    select
        user_id,
        opened_by_event_id as event_id,
        opened_by_event_type as event_type,
        organization_key,
        username,
        user_email,
        user_type,
        {{ lifecycle_rank('opened_by_event_type') }} as event_rank,
        true as sets_organization_key,
        true as sets_username,
        true as sets_user_email,
        true as sets_user_type,
        status as status_set,
        valid_from as received_at,
        partition_date,
        version_number,
        -- closing the version changes valid_to and is_current only
        content_changed_at
    from current_version
    -- not exists, not `not in`: an anti-join stays a join however many users are late, where
    -- `not in` falls back to a scan of late_user per row once late_user outgrows work_mem
    where not exists (select from late_user where late_user.user_id = current_version.user_id)
),

appended_event as (
    select
        new_event.*,
        coalesce(continued_version.version_number, 0) + row_number() over (
            partition by new_event.user_id order by new_event.received_at, new_event.event_rank, new_event.event_id
        ) as version_number,
        {{ build_stamp() }} as content_changed_at
    from new_event
    left join continued_version
        on new_event.user_id = continued_version.user_id
    where not exists (select from late_user where late_user.user_id = new_event.user_id)
),

recomputed_event as (
    select
        *,
        row_number() over (partition by user_id order by received_at, event_rank, event_id) as version_number,
        {{ build_stamp() }} as content_changed_at
    from lifecycle_event
    where user_id in (select late_user.user_id from late_user)
),

ordered_version as (
    select {{ version_columns() }} from continued_version
    union all
    select {{ version_columns() }} from appended_event
    union all
    select {{ version_columns() }} from recomputed_event
),

{% else %}

ordered_version as (
    select
        *,
        row_number() over (partition by user_id order by received_at, event_rank, event_id) as version_number,
        {{ build_stamp() }} as content_changed_at
    from lifecycle_event
),

{% endif %}

-- "last non-absent value" in one pass: each setting event writes its version number (zero-padded,
-- so text order is version order) in front of its value ('=' value, or '~' for a null it sets);
-- the running max over the versions so far is the latest setting event's, and every later version
-- inherits it. One window, one sort, whatever the number of attributes. The window orders by the
-- columns version_number counts in, not by the number, so a first build sorts once for both.
latest_setting as (
    select
        user_id,
        event_id,
        event_type,
        received_at,
        partition_date,
        version_number,
        content_changed_at,
        -- the next version's start closes this one; lead ignores the frame, so it shares this pass
        lead(received_at) over user_history as valid_to,
        max(case when sets_organization_key then {{ versioned('organization_key') }} end) over user_history
            as latest_organization_key,
        max(case when sets_username then {{ versioned('username') }} end) over user_history as latest_username,
        max(case when sets_user_email then {{ versioned('user_email') }} end) over user_history
            as latest_user_email,
        max(case when sets_user_type then {{ versioned('user_type') }} end) over user_history as latest_user_type,
        max(case when status_set is not null then {{ versioned('status_set') }} end) over user_history
            as latest_status
    from ordered_version
    window user_history as (partition by user_id order by received_at, event_rank, event_id rows unbounded preceding)
),

filled_version as (
    select
        user_id,
        event_id,
        event_type,
        received_at,
        partition_date,
        version_number,
        content_changed_at,
        valid_to,
        {{ unversioned('latest_organization_key') }} as organization_key,
        {{ unversioned('latest_username') }} as username,
        {{ unversioned('latest_user_email') }} as user_email,
        {{ unversioned('latest_user_type') }} as user_type,
        -- before any creation or deletion (an update of an unknown user) the user counts as active
        coalesce({{ unversioned('latest_status') }}, 'active') as status
    from latest_setting
),

final as (
    select
        {{ surrogate_key(['user_id', 'event_id']) }} as user_key,
        user_id,
        event_id as opened_by_event_id,
        event_type as opened_by_event_type,
        version_number,
        organization_key,
        username,
        user_email,
        user_type,
        status,
        valid_to is null as is_current,
        received_at as valid_from,
        valid_to,
        partition_date,
        {{ build_stamp() }} as changed_at,
        content_changed_at
    from filled_version
)

select * from final
