{% snapshot snap_organization %}

{{
    config(
        unique_key='organization_key',
        strategy='check',
        check_cols=['organization_name', 'organization_tier', 'created_at'],
        hard_deletes='invalidate',
        pre_hook="{{ require_loaded_partition(source('staging', 'organization_partition')) }}",
    )
}}

with

staging_organization as (
    select * from {{ source('staging', 'organization') }}
    where date = '{{ snapshot_date() }}'::date
),

-- the loader keeps keys unique; should a list repeat one, its first line wins
first_line as (
    select distinct on (organization_key) *
    from staging_organization
    order by organization_key, object_number, line_number
),

final as (
    select
        organization_key,
        json_content ->> 'organization_name' as organization_name,
        json_content ->> 'organization_tier' as organization_tier,
        {{ iso_timestamptz("json_content ->> 'created_at'") }} as created_at
    from first_line
)

select * from final

{% endsnapshot %}
