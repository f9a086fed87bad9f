{#-
    How active_interval_count follows user_active_interval without reading it whole (docs.md, block
    interval_counts). The report needs only how many intervals share their dates, and a daily build
    replaces the intervals of the users it changed, a few percent of them. So user_active_interval
    logs, in the transaction that replaces a user's rows, what that did to each group of intervals
    (minus the rows it replaced, plus the rows it wrote), in a table of its own beside it; the next
    build of active_interval_count adds the logged changes to its counts and empties the log. A
    build that writes user_active_interval whole (the first, a full refresh) logs a reset instead:
    active_interval_count then counts every interval again.
-#}

{#- The log beside `intervals` (the relation of user_active_interval). -#}
{% macro interval_change_log(intervals) -%}
    {{ intervals.incorporate(path={'identifier': intervals.identifier ~ '__count_change'}) }}
{%- endmacro %}


{#- The group of an interval of user_active_interval: the dates the report reads, end 'infinity' while
    the interval is open (so that every column of the key is comparable with =). -#}
{% macro interval_group_columns() -%}
    epoch_from,
    epoch_to,
    (signup_at at time zone 'UTC')::date as signup_date,
    (active_from at time zone 'UTC')::date as start_date,
    coalesce((active_to at time zone 'UTC')::date, 'infinity') as end_date,
    active_from = signup_at as is_signup
{%- endmacro %}


{#- The key of active_interval_count, in one order. -#}
{% macro interval_group_key() -%}
    {{ return(['epoch_from', 'epoch_to', 'signup_date', 'start_date', 'end_date', 'is_signup']) }}
{%- endmacro %}


{#- How many intervals of `intervals` (a relation or CTE with user_active_interval's columns) fall in
    each group: a query of the key and interval_count. -#}
{% macro interval_group_counts(intervals) -%}
    select
        {{ interval_group_key() | join(', ') }},
        count(*) as interval_count
    from (select {{ interval_group_columns() }} from {{ intervals }}) as interval_group
    group by {{ interval_group_key() | join(', ') }}
{%- endmacro %}


{% macro create_interval_change_log(intervals) %}
    create table if not exists {{ interval_change_log(intervals) }} (
        epoch_from date,
        epoch_to date,
        signup_date date,
        start_date date,
        end_date date,
        is_signup boolean,
        interval_change bigint,
        is_reset boolean not null default false
    )
{% endmacro %}


{#-
    Pre-hook of user_active_interval: the log exists, and a build that does not add to the model
    (the first, a full refresh) logs a reset.
-#}
{% macro log_interval_reset() %}
    {{ create_interval_change_log(this) }};
    {%- if not adds_to_this() %}
    insert into {{ interval_change_log(this) }} (is_reset) values (true)
    {%- endif %}
{% endmacro %}


{#-
    The statement that logs rows of user_active_interval's build, from its replace_keys strategy
    (config logs_replaced_intervals): `intervals` names them, `sign` is -1 for the rows its delete
    returns (replaced) and 1 for the new rows it inserts from its temporary table (written). Taken
    where the strategy has them, they cost nothing more to look up. Nothing is logged while a reset
    is pending: active_interval_count then counts everything anyway.
-#}
{% macro log_interval_changes(intervals, sign) %}
    insert into {{ interval_change_log(this) }} ({{ interval_group_key() | join(', ') }}, interval_change)
    select {{ interval_group_key() | join(', ') }}, {{ sign }} * interval_count
    from ({{ interval_group_counts(intervals) }}) as changed_group
    where not exists (select from {{ interval_change_log(this) }} as pending where pending.is_reset)
{% endmacro %}


{#- Whether active_interval_count must count every interval again: a reset is logged. -#}
{% macro interval_counts_reset() %}
    {%- if not execute -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set query -%}
        select exists (select from {{ interval_change_log(ref('user_active_interval')) }} where is_reset)
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{% endmacro %}


{#-
    Pre-hook of active_interval_count: the log exists (a warehouse built before it had none), and
    no other transaction writes to it until this one, which reads and then empties it, commits (a
    `make dbt` run by hand meanwhile waits instead of logging rows the post-hook would delete unread).
-#}
{% macro lock_interval_change_log() %}
    {{ create_interval_change_log(ref('user_active_interval')) }};
    lock table {{ interval_change_log(ref('user_active_interval')) }} in share row exclusive mode
{% endmacro %}


{#- Post-hook of active_interval_count, in the transaction of its counts: the log is consumed. -#}
{% macro clear_interval_change_log() %}
    delete from {{ interval_change_log(ref('user_active_interval')) }}
{% endmacro %}


{#-
    Incremental strategy `add_interval_changes` of active_interval_count: the new rows are the
    logged changes summed per group, added to the counts; a group whose count falls to zero goes.
    After a reset the new rows are every count, and they replace the table's.
-#}
{% macro get_incremental_add_interval_changes_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set temp = arg_dict['temp_relation'] -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='name') | join(', ') -%}
    {%- set key = interval_group_key() -%}
    {%- if interval_counts_reset() %}
    delete from {{ target }};

    insert into {{ target }} ({{ columns }})
    select {{ columns }} from {{ temp }};
    {%- else %}
    insert into {{ target }} as stored ({{ columns }})
    select {{ columns }} from {{ temp }}
    on conflict ({{ key | join(', ') }}) do update set
        interval_count = stored.interval_count + excluded.interval_count,
        changed_at = excluded.changed_at;

    delete from {{ target }} as stored
    using {{ temp }} as changed
    where
        {%- for column in key %}
        stored.{{ column }} = changed.{{ column }} and
        {%- endfor %}
        stored.interval_count = 0;
    {%- endif %}
{% endmacro %}
