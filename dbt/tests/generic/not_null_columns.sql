{#- Fails for every row where one of `columns` is null: several not_null checks in one scan. -#}
{% test not_null_columns(model, columns) %}

select *
from {{ model }}
where
{%- for column in columns %}
    {{ column }} is null{{ " or" if not loop.last }}
    {%- endfor %}

{% endtest %}
