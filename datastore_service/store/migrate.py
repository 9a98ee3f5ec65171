"""`crest migrate`: bring a store file to this crest's schema, publishing the result as a new version.

The current version is copied, upgraded by the Alembic migrations, and published atomically, so
readers of the old version are never disturbed and a failed migration publishes nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from datastore_service.errors import StoreError
from datastore_service.store import schema as store_schema
from datastore_service.store.publishing import VersionedStore, remove_path
from datastore_service.store.reader import resolve_store


def migrate_store(path: Path, revision: str = "head", keep: int | None = None) -> tuple[str | None, str]:
    """Return (revision before, revision after)."""
    source = resolve_store(path)
    with duckdb.connect(str(source), read_only=True) as connection:
        before = store_schema.schema_revision(connection)
    if before is None:
        raise StoreError(f"{path} is not a CREST datastore (no schema version)")
    if before not in store_schema.known_revisions():
        raise StoreError(f"{path} has schema {before}, newer than this crest knows: upgrade crest")
    target = store_schema.head_revision() if revision == "head" else revision
    if before == target:
        return before, target
    store = VersionedStore(path, keep=keep)
    version = store.new_version()
    partial = store.scratch(version, "partial")
    try:
        shutil.copyfile(source, partial)
        if store_schema.known_revisions().index(target) > store_schema.known_revisions().index(before):
            store_schema.upgrade(partial, target)
        else:
            store_schema.downgrade(partial, target)
        store.publish(partial, version)
    finally:
        remove_path(partial)
    return before, target
