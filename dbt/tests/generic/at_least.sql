{#- Fails for every row whose `column_name` is below `min_value`. -#}
{% test at_least(model, column_name, min_value) %}

select {{ column_name }}
from {{ model }}
where {{ column_name }} < {{ min_value }}

{% endtest %}
