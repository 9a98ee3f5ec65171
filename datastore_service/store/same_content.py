"""Whether a freshly written store holds exactly what the published version holds already.

An identical rebuild (same corpus, tokenizer, parameters and code) writes a file that differs
from the published one only in its version id and timestamps. Publishing it would add a version
that changes nothing and push an older, different version out of the kept ones, so the build
compares first: same schema revision, same store_info but for the per-build columns, and the same
draft rows. The cheap metadata comparison runs first; the rows are compared only when it agrees.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

# Columns that differ between two builds of the same content.
PER_BUILD_COLUMNS = ("store_version", "created_at", "crest_version")

SAME_SCHEMA = "SELECT (SELECT version_num FROM old.alembic_version) = (SELECT version_num FROM new.alembic_version)"

# store_info holds one row: equal rows leave nothing after EXCEPT.
SAME_INFO = f"""
SELECT count(*) = 0 FROM (
    SELECT * EXCLUDE ({", ".join(PER_BUILD_COLUMNS)}) FROM old.store_info
    EXCEPT ALL
    SELECT * EXCLUDE ({", ".join(PER_BUILD_COLUMNS)}) FROM new.store_info
)
"""

# Equal row counts and an empty one-way EXCEPT ALL: the two multisets of rows are equal.
SAME_DRAFTS = """
SELECT (SELECT count(*) FROM old.drafts) = (SELECT count(*) FROM new.drafts)
   AND (SELECT count(*) FROM (SELECT * FROM new.drafts EXCEPT ALL SELECT * FROM old.drafts)) = 0
"""


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def same_store_content(published: Path, candidate: Path) -> bool:
    """True when `candidate` would serve exactly what `published` serves (drafts, metadata, schema)."""
    try:
        with duckdb.connect() as connection:
            connection.execute(f"ATTACH {_quoted(published)} AS old (READ_ONLY)")
            connection.execute(f"ATTACH {_quoted(candidate)} AS new (READ_ONLY)")
            return all(connection.execute(query).fetchone()[0] for query in (SAME_SCHEMA, SAME_INFO, SAME_DRAFTS))
    except duckdb.Error:
        return False  # another schema, a damaged published file: not the same, so publish
