"""Catalog build (Parquet, shard index, quarantine, summary), SQL queries with DuckDB, and PHI scans."""
