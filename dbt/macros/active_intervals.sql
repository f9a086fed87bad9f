{#-
    The periods during which a user is active (data contract, section 6), from a relation of
    lifecycle events with columns (keys..., event_id, received_at, is_deletion), one row per
    interval (keys..., signup_at, active_from, active_to): the user is active at instant t when
    active_from < t <= active_to (active_to null: still active).

    A user is active at t when their latest user_created/user_deleted before t is a creation; at
    equal received_at the deletion counts as the later one. So the events are ordered by
    (received_at, is_deletion); an interval opens at a creation that follows no creation, and
    closes at the first deletion after it. signup_at is the earliest creation.
-#}
{% macro active_intervals(lifecycle_event, keys) -%}
    {%- set key_list = keys | join(', ') -%}
    with

    ordered_event as (
        select
            *,
            lag(is_deletion) over (
                partition by {{ key_list }} order by received_at, is_deletion, event_id
            ) as previous_is_deletion
        from {{ lifecycle_event }}
    ),

    state_change as (
        select *
        from ordered_event
        where
            (not is_deletion and coalesce(previous_is_deletion, true))
            or (is_deletion and not previous_is_deletion)
    ),

    interval_bound as (
        select
            {{ key_list }},
            is_deletion,
            min(received_at) over (partition by {{ key_list }}) as signup_at,
            received_at as active_from,
            lead(received_at) over (
                partition by {{ key_list }} order by received_at, is_deletion, event_id
            ) as active_to
        from state_change
    )

    select
        {{ key_list }},
        signup_at,
        active_from,
        active_to
    from interval_bound
    where not is_deletion
{%- endmacro %}
