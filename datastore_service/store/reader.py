"""Open a published store for reading: resolve its version, check its schema, read its metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from datastore_service.errors import StoreError
from datastore_service.store.schema import check_schema


def resolve_store(path: Path) -> Path:
    """The versioned file behind a published store path (or the path itself if it is a plain file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StoreError(f"datastore not found: {path}")
    return path.resolve()


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """DuckDB failing while it reads a store means a damaged file (checksums, short reads): one line."""
    try:
        yield
    except duckdb.Error as exc:
        raise StoreError(f"{path} is damaged (corrupt or truncated): {str(exc).splitlines()[0]}") from exc


def open_store(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store's current version, schema checked."""
    resolved = resolve_store(path)
    try:
        connection = duckdb.connect(str(resolved), read_only=True)
    except duckdb.Error as exc:  # not DuckDB at all, cut short, or a corrupt header block
        raise StoreError(
            f"{path} is not a readable DuckDB file (damaged, truncated or not DuckDB at all): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    try:
        with reading(path):
            check_schema(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection


def store_info(connection: duckdb.DuckDBPyConnection, path: Path) -> dict[str, Any]:
    cursor = connection.execute("SELECT * FROM store_info")
    rows = cursor.fetchall()
    if not rows:
        raise StoreError(f"{path} has no store_info row (an unfinished build?)")
    info = dict(zip([column[0] for column in cursor.description], rows[0]))
    info["build_params"] = json.loads(info["build_params"])
    return info


def read_store_info(path: Path) -> dict[str, Any]:
    with open_store(path) as connection, reading(path):
        return store_info(connection, path)
