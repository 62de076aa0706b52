"""Reading inputs: tables (CSV/Parquet), schema inference and checks, preprocessing, splits, images."""
