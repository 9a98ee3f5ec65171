"""`crest migrate`: bring a store file to this crest's schema, publishing the result as a new version.

The current version is copied, upgraded by the Alembic migrations, and published atomically with
its serving file, so readers of the old version are never disturbed and a failed migration
publishes nothing. A store already at the target schema gets its serving file if it lacks one (a
store published before serving files).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from datastore_service.errors import StoreError
from datastore_service.store import schema as store_schema
from datastore_service.store.publishing import VersionedStore, remove_path
from datastore_service.store.reader import resolve_store
from datastore_service.store.serving_arrays import SERVING_SUFFIX, rebuild_serving_file, serving_path, write_serving_for


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
        if target == store_schema.head_revision() and not serving_path(source).exists():
            rebuild_serving_file(source)
        return before, target
    store = VersionedStore(path, keep=keep)
    version = store.new_version()
    partial, serving = store.scratch(version, "partial"), store.scratch(version, "serving")
    try:
        shutil.copyfile(source, partial)
        if store_schema.known_revisions().index(target) > store_schema.known_revisions().index(before):
            store_schema.upgrade(partial, target)
        else:
            store_schema.downgrade(partial, target)
        # Only this crest's schema can be read to derive a serving file; a downgrade publishes none.
        companions = {}
        if target == store_schema.head_revision():
            write_serving_for(partial, serving)
            companions[SERVING_SUFFIX] = serving
        store.publish(partial, version, companions)
    finally:
        remove_path(partial)
        remove_path(serving)
    return before, target
