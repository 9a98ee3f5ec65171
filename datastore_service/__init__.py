"""CREST datastore: build a compact n-gram draft store in DuckDB and serve it."""

__version__ = "0.1.0"
