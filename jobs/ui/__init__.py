"""The Campaigns page: an Airflow plugin that serves the published audiences, their segments,
what-if budgets, drivers and realized results from the lake, and its templates."""
