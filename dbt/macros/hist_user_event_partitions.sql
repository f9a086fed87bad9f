{#-
    Bookkeeping of historical.hist_user_event: which (partition_date, load_id) of the manifest
    etl.marker (target 'staging.event') the history reflects. See docs.md, block hist_incremental.

    Table <hist>_partition (historical.hist_user_event_partition), one row per processed partition:
      partition_date   the staging partition
      load_id          the manifest load_id the history reflects (0 = marker without load_id)
      pending_load_id  working column: the manifest's load_id captured by the running build
                       (null = the partition left the manifest); equal to load_id after every commit
      processed_at     when the history last took this partition into account

    The pre-hook, the model's SELECT, the strategy's DELETE/INSERT and the post-hook run in ONE
    transaction of one connection, so the set of changed partitions the model recomputes is exactly
    the set the post-hook records, even when a load commits meanwhile (it is then seen next run).
-#}

{% macro hist_user_event_partition_log() -%}
    {{ return(api.Relation.create(database=this.database, schema=this.schema,
                                  identifier=this.identifier ~ '_partition', type='table')) }}
{%- endmacro %}


{% macro hist_user_event_changed_partitions() -%}
    select partition_date
    from {{ hist_user_event_partition_log() }}
    where pending_load_id is distinct from load_id
{%- endmacro %}


{% macro hist_user_event_begin() %}
    {%- set log = hist_user_event_partition_log() -%}
    -- one build of the history at a time: a concurrent dbt run waits here
    select pg_advisory_xact_lock(hashtext('{{ this }}'));

    create table if not exists {{ log }} (
        partition_date date primary key,
        load_id bigint,
        pending_load_id bigint,
        processed_at timestamptz
    );

    -- capture the manifest once for this build
    insert into {{ log }} (partition_date, pending_load_id)
    select partition_date, coalesce(load_id, 0)
    from {{ source('etl', 'marker') }}
    where target = 'staging.event'
    on conflict (partition_date) do update set pending_load_id = excluded.pending_load_id;

    update {{ log }} set pending_load_id = null
    where partition_date not in (
        select partition_date from {{ source('etl', 'marker') }} where target = 'staging.event'
    );
{% endmacro %}


{% macro hist_user_event_end() %}
    {%- set log = hist_user_event_partition_log() -%}
    delete from {{ log }} where pending_load_id is null;

    update {{ log }}
    set load_id = pending_load_id, processed_at = now()
    where load_id is distinct from pending_load_id;
{% endmacro %}


{#-
    Incremental strategy `hist_replace_affected` (custom, used by hist_user_event only).
    The model's new rows are the recomputed first deliveries of every affected event id. Deleted
    first: every target row of those ids, and every target row whose winning delivery came from a
    changed partition (such an id is affected too, so it is in the new rows unless it vanished from
    staging: exactly the rows that must disappear). Then the new rows are inserted.
-#}
{% macro get_incremental_hist_replace_affected_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set temp = arg_dict['temp_relation'] -%}
    {%- set unique_key = arg_dict['unique_key'] -%}
    {%- set columns_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ target }}
    where {{ unique_key }} in (select {{ unique_key }} from {{ temp }})
        or partition_date in ({{ hist_user_event_changed_partitions() }});

    insert into {{ target }} ({{ columns_csv }})
    select {{ columns_csv }}
    from {{ temp }};
{% endmacro %}
