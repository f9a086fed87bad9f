{#-
    How the history is kept incremental, and how the layers after it learn what changed. The rules
    are in docs.md, blocks hist_incremental and changed_users.
-#}

{#-
    The stamp of this build, as a SQL literal: every row a build writes carries it as changed_at, and
    later builds find what changed by comparing with it. The pipeline passes the database server's
    clock (setting build_stamp, taken under the build lock), so that builds run on different machines
    stay in order whatever their own clocks say; by hand, dbt's own start time.
-#}
{% macro build_stamp() -%}
    '{{ build_setting("build_stamp", run_started_at) }}'::timestamptz
{%- endmacro %}


{#- Partitions whose current load the history does not reflect yet (new, reloaded or removed). -#}
{% macro changed_event_partitions() -%}
    select partition_date
    from {{ ref('hist_user_event_partition') }}
    where load_id is distinct from processed_load_id
{%- endmacro %}


{#-
    The same partitions as a list of dates, earliest first, read when the model runs: as literals
    (date_array), the planner reads just those partitions through the BRIN index on staging.event's
    date (with a subquery it scans the whole table, whatever the index).
-#}
{% macro changed_event_partition_dates() -%}
    {{ return(run_query(changed_event_partitions() ~ " order by partition_date").columns[0].values() if execute else []) }}
{%- endmacro %}


{#- `dates` as a SQL date array literal. -#}
{% macro date_array(dates) -%}
    array[{%- for day in dates -%}'{{ day }}'{{ ", " if not loop.last }}{%- endfor -%}]::date[]
{%- endmacro %}


{#- Post-hook of hist_user_event, in the same transaction as its rows: the loads are processed. -#}
{% macro hist_user_event_mark_processed() %}
    update {{ ref('hist_user_event_partition') }}
    set processed_load_id = load_id, processed_at = {{ build_stamp() }}
    where load_id is distinct from processed_load_id
{% endmacro %}


{#-
    Incremental strategy of hist_user_event. Rows whose winning delivery came from a changed
    partition are recomputed (the model's rows hold them, unless their id left staging); those
    that say what they said stay, with their changed_at, and the others are deleted. Every new row
    then enters, or replaces an existing row of its id only when it is an earlier delivery. The
    statements touch only the changed partitions' ids, through the indexes on partition_date and
    event_id, never the whole history.
-#}
{% macro get_incremental_first_delivery_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set temp = arg_dict['temp_relation'] -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='name') | list -%}
    {#- where a row's delivery lies, which the layers after the history never read -#}
    {%- set place = ['load_id', 'source_key', 'line_number'] -%}
    {#- what a row says to those layers -#}
    {%- set contents = columns | reject('in', place + ['changed_at']) | list -%}
    {#- the order of deliveries: the first of an id wins -#}
    {%- set position = ['partition_date', 'source_key', 'line_number'] -%}
    {{ create_reworked_user_log(target) }};

    -- The users of the rows deleted or replaced here may have lost events: they are logged, and the
    -- models after the history recompute them whole (reworked_users). A daily build deletes none,
    -- and a reload only the rows its correction changed: the others, and their users, stay.
    -- = any(array(…)): the changed partitions are found once, then looked up in the index
    with deleted_row as (
        delete from {{ target }} as history
        where
            history.partition_date = any(array({{ changed_event_partitions() }}))
            and not exists (
                select from {{ temp }} as delivered
                where
                    delivered.event_id = history.event_id
                    and {{ row_of('delivered', contents) }} is not distinct from {{ row_of('history', contents) }}
            )
        returning history.user_id
    )
    insert into {{ reworked_user_log(target) }} (user_id, changed_at)
    select distinct user_id, {{ build_stamp() }} from deleted_row
    -- a row without a user (its not_null test failed: no load writes one) names none to recompute,
    -- and a reload that removes it must not fail
    where user_id is not null;
    {%- if history_reworked_now() %}

    -- the rows that stay take their delivery's place in the partition's current load
    update {{ target }} as history
    set {% for column in place %}{{ column }} = delivered.{{ column }}{{ ", " if not loop.last }}{% endfor %}
    from {{ temp }} as delivered
    where
        delivered.event_id = history.event_id
        and history.partition_date = any(array({{ changed_event_partitions() }}))
        and {{ row_of('delivered', place) }} is distinct from {{ row_of('history', place) }};

    -- only a rework can replace a row (a delivery earlier than the stored one): its old user
    insert into {{ reworked_user_log(target) }} (user_id, changed_at)
    select distinct history.user_id, {{ build_stamp() }}
    from {{ temp }} as delivered
    inner join {{ target }} as history
        on delivered.event_id = history.event_id
    where {{ row_of('delivered', position) }} < {{ row_of('history', position) }} and history.user_id is not null;
    {%- endif %}

    insert into {{ target }} as history ({{ columns | join(', ') }})
    select {{ columns | join(', ') }}
    from {{ temp }}
    on conflict (event_id) do update set
        {%- for column in columns if column != 'event_id' %}
        {{ column }} = excluded.{{ column }}{{ "," if not loop.last }}
        {%- endfor %}
    where {{ row_of('excluded', position) }} < {{ row_of('history', position) }};
{% endmacro %}


{#- `columns` of the relation named `alias`, as a row: (alias.a, alias.b). -#}
{% macro row_of(alias, columns) -%}
    ({%- for column in columns -%}{{ alias }}.{{ column }}{{ ", " if not loop.last }}{%- endfor -%})
{%- endmacro %}


{#- When this model's rows were last written (its latest changed_at), as a SQL literal. -#}
{% macro last_written() -%}
    {%- set result = run_query("select coalesce(max(changed_at), '-infinity')::text from " ~ this) -%}
    {{ return("'" ~ result.columns[0].values()[0] ~ "'::timestamptz") }}
{%- endmacro %}


{#-
    Whether this build of the history reworks it: a changed partition was processed before, or is
    older than one that was (hist_user_event_partition.is_rework). Only then can rows it already
    holds be deleted or replaced.
-#}
{% macro history_reworked_now() -%}
    {%- if not execute -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set query -%}
        select exists (
            select from {{ ref('hist_user_event_partition') }}
            where is_rework and load_id is distinct from processed_load_id
        )
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}


{#- The history's log of reworked users: whose rows a rework deleted or replaced, and when. Beside
    `history`, the history's relation (the history itself passes its own: it cannot ref itself). -#}
{% macro reworked_user_log(history=none) -%}
    {%- set history = history if history is not none else ref('hist_user_event') -%}
    {{ return(history.incorporate(path={'identifier': history.identifier ~ '__reworked_user'})) }}
{%- endmacro %}


{% macro create_reworked_user_log(history) %}
    create table if not exists {{ reworked_user_log(history) }} (
        user_id text collate "C" not null,
        changed_at timestamptz not null
    );
    create index if not exists {{ history.identifier }}__reworked_user__changed_at
    on {{ reworked_user_log(history) }} (changed_at)
{% endmacro %}


{#-
    The users a rework of the history touched since this model's rows were last written (a query of
    user_id): the model recomputes each of them whole, and its strategy deletes every stored row of
    theirs first, since a user may have lost events, or all of them.
-#}
{% macro reworked_users() -%}
    select reworked.user_id from {{ reworked_user_log() }} as reworked
    where reworked.changed_at > {{ last_written() }}
{%- endmacro %}


{#- Whether some user was reworked since this model's rows were last written. -#}
{% macro has_reworked_users() -%}
    {%- if not execute or not is_incremental() -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set exists_query -%}
        select to_regclass('{{ reworked_user_log().include(database=false) }}') is not null
    {%- endset -%}
    {%- if not run_query(exists_query).columns[0].values()[0] -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set query -%}
        select exists ({{ reworked_users() }})
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{%- endmacro %}


{#-
    Whether this build adds to the model's rows (an incremental build), rather than computing them
    all (the first build, a full refresh).
-#}
{% macro adds_to_this() -%}
    {{ return(execute and is_incremental()) }}
{%- endmacro %}


{#-
    The users with history rows written since this model's rows were last written, of
    `event_types` when the model reads only those: a query of user_id, a user once per such row.
    The time is a literal, so the planner sees how few rows it selects and uses the index on
    changed_at. Outside a rework a build only adds history rows, so a user whose new rows are of
    other types keeps the model's rows (a rework's users are recomputed whole: reworked_users).
-#}
{% macro changed_users(event_types=none) -%}
    select changed.user_id from {{ ref('hist_user_event') }} as changed
    where
        changed.changed_at > {{ last_written() }}
        {%- if event_types %}
        and changed.event_type in {{ sql_list(event_types) }}
        {%- endif %}
{%- endmacro %}


{#-
    A condition on `column` (a user_id) selecting the users whose rows a model must recompute: the
    changed_users when the build adds to the model's rows, every user (true) on a first build or a
    full refresh.
-#}
{% macro changed_user(column, event_types=none) -%}
    {%- if adds_to_this() -%}
        {{ column }} in ({{ changed_users(event_types) }})
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}


{#-
    Pre-hook of dim_user (an incremental build): the current versions of the users with lifecycle
    events written since dim_user's last write, each with where it is stored (`stored_ctid`, its
    ctid), in a temporary table that lives until the model's transaction ends. The model continues
    the chains from these rows and writes each of them again, so replace_keys deletes them where
    they are stored (model config `stages_current_versions`) instead of looking their keys up among
    millions of rows.

    A day touches about as many users however long the history, but dim_user keeps every version,
    so a scan of it grows with each day kept. Once the table has more pages than the day has users
    (a lookup reads about one page, a scan every page), the pre-hook looks each user's current
    version up instead, in a partial index of the current versions it makes the first time. The
    lookups are a lateral subquery kept from becoming a join ("offset 0"): the planner, misled by
    `user_id`'s statistics over all versions, would scan (docs/performance-notes.md).
-#}
{% macro stage_current_versions() %}
    {%- if execute and is_incremental() -%}
        {%- if looks_up_current_versions() %}
        create index if not exists {{ this.identifier }}__current_user_id on {{ this }} (user_id) where is_current;
        create temporary table {{ current_version_table() }} on commit drop as
        select current_version.*
        from (
            select distinct changed.user_id from ({{ changed_users(lifecycle_event_types()) }}) as changed
        ) as changed_user
        cross join lateral (
            select stored.ctid as stored_ctid, stored.*
            from {{ this }} as stored
            where stored.user_id = changed_user.user_id and stored.is_current
            offset 0
        ) as current_version;
        {%- else %}
        create temporary table {{ current_version_table() }} on commit drop as
        select stored.ctid as stored_ctid, stored.*
        from {{ this }} as stored
        where
            stored.is_current
            and {{ changed_user('stored.user_id', lifecycle_event_types()) }};
        {%- endif %}
        analyze {{ current_version_table() }}
    {%- endif -%}
{% endmacro %}


{#- Whether stage_current_versions looks the changed users up: when this build adds to dim_user and
    the table has more pages than the build has changed users. -#}
{% macro looks_up_current_versions() %}
    {%- if not adds_to_this() -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set query -%}
        select
            (select relpages from pg_class where oid = to_regclass('{{ this.include(database=false) }}'))
            > (select count(distinct changed.user_id) from ({{ changed_users(lifecycle_event_types()) }}) as changed)
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{% endmacro %}


{#- The temporary table of stage_current_versions. -#}
{% macro current_version_table() -%}
    {{ this.identifier }}__current_version
{%- endmacro %}


{#-
    Post-hook of the models a build changes in place: fresh statistics for the next model of the
    same build. Autovacuum analyzes them only later, and a planner that still believes a table holds
    yesterday's rows can pick a nested loop over today's (seen: a join of 5 s took 60).
-#}
{% macro analyze_changed() %}
    analyze {{ this }}
{% endmacro %}


{#- The event types that change a user's state (the contract's lifecycle events). -#}
{% macro lifecycle_event_types() -%}
    {{ return(['user_created', 'user_updated', 'user_deleted']) }}
{%- endmacro %}


{#- The event types an active interval opens or closes at (an update changes no interval). -#}
{% macro interval_event_types() -%}
    {{ return(['user_created', 'user_deleted']) }}
{%- endmacro %}


{#- A list of strings as a SQL list literal: ('a', 'b'). -#}
{% macro sql_list(values) -%}
    ('{{ values | join("', '") }}')
{%- endmacro %}


{#- The order of lifecycle events at the same instant: created, then updated, then deleted. -#}
{% macro lifecycle_rank(event_type) -%}
    case {{ event_type }}
        when 'user_created' then 1
        when 'user_updated' then 2
        when 'user_deleted' then 3
    end
{%- endmacro %}


{#-
    Incremental strategy `replace_keys` of the models after the history: the rows of every key the
    build wrote are replaced by the new ones. The rows are found through the index on user_id (every
    such model has one; a key belongs to one user), not through an index on the key: keys such as
    user_key are hashes, and an index on random keys costs a random page per row written. The new
    rows are analysed first (autovacuum never analyses a temporary table), so the planner sees how
    few users they name. With model config `logs_replaced_intervals` (user_active_interval), the
    rows the delete replaces (in the same statement) and the rows inserted are logged by
    log_interval_changes (macros/interval_counts.sql).
-#}
{% macro get_incremental_replace_keys_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set temp = arg_dict['temp_relation'] -%}
    {%- set key = arg_dict['unique_key'] -%}
    {%- set columns = arg_dict['dest_columns'] | map(attribute='name') | join(', ') -%}
    {%- set match = ['user_id', key] | unique | list -%}
    {%- set has_partition = 'partition_date' in arg_dict['dest_columns'] | map(attribute='name') | list -%}
    {%- set stored = current_version_table() if config.get('stages_current_versions') else none -%}
    {%- set logs_replaced = config.get('logs_replaced_intervals') -%}
    analyze {{ temp }};
    {%- if stored %}

    -- the stored rows the model read and wrote again, straight where they are stored
    delete from {{ target }}
    where ctid = any(array(select stored_ctid from {{ stored }}));
    {%- endif %}
    {%- if has_reworked_users() %}

    -- every stored row of the users a rework touched, which the model computed whole
    {%- if logs_replaced %}
    with reworked_row as (
    {%- endif %}
    delete from {{ target }} as stored_row
    where stored_row.user_id = any(array({{ reworked_users() }}))
    {%- if logs_replaced %}
    returning stored_row.*
    )
    {{ log_interval_changes('reworked_row', -1) }}
    {%- endif %};
    {%- endif %}

    {%- if logs_replaced %}
    with replaced_row as (
    {%- endif %}
    delete from {{ target }} as stored_row
    using (
        select distinct {{ match | join(', ') }} from {{ temp }} as written_row
        {%- if has_partition %}
        -- rows of partitions new to the history since this model's last write are new keys
        -- (docs.md, changed_users): their events are new. A reworked partition's rows are looked
        -- up, since a reload keeps the rows it did not change.
        where not exists (
            select from {{ ref('hist_user_event_partition') }} as taken_partition
            where
                taken_partition.partition_date = written_row.partition_date
                and taken_partition.processed_at > {{ last_written() }}
                and not taken_partition.is_rework
        )
        {%- endif %}
        {%- if stored %}
        except
        select {{ match | join(', ') }} from {{ stored }}
        {%- endif %}
    ) as written
    where
        {%- for column in match %}
        stored_row.{{ column }} = written.{{ column }}{{ " and" if not loop.last }}
        {%- endfor %}
    {%- if logs_replaced %}
    returning stored_row.*
    )
    {{ log_interval_changes('replaced_row', -1) }}
    {%- endif %};

    insert into {{ target }} ({{ columns }})
    select {{ columns }} from {{ temp }};
    {%- if logs_replaced %}

    {{ log_interval_changes(temp, 1) }};
    {%- endif %}
{% endmacro %}
