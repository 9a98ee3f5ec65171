"""Alembic migrations of the CREST datastore file schema (DuckDB via duckdb-engine)."""
