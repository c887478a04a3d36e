-- Databases of the compose stack next to Airflow's metadata database (POSTGRES_DB=airflow).
CREATE DATABASE mlflow;
CREATE DATABASE audience;
