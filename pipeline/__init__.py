"""Data and statistics for vae-anomaly: schema, ingest, preprocessing, calibration, scoring, reports.

No orchestration here: nothing in this package imports prefect or mlflow.
"""
