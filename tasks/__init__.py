"""Luigi tasks of the product-event ETL: extract, load, transform, export."""
