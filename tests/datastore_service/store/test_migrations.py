"""Schema lives in Alembic migrations: up, down, `crest migrate`, and clear errors on mismatch."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.errors import StoreError
from datastore_service.sizes import Budget
from datastore_service.store import schema as store_schema
from datastore_service.store.migrate import migrate_store
from datastore_service.store.reader import open_store, read_store_info, resolve_store
from datastore_service.store.serving_file import map_serving_file


def objects(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as connection:
        tables = connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        views = connection.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return {name for (name,) in tables + views}


def test_upgrade_and_downgrade_every_revision(tmp_path: Path):
    path = tmp_path / "schema.duckdb"
    store_schema.upgrade(path, "0001")
    assert objects(path) == {"alembic_version", "store_info", "vocab", "drafts"}
    store_schema.upgrade(path)
    assert {"contexts_text", "drafts_text"} <= objects(path)
    store_schema.downgrade(path, "0001")
    assert "drafts_text" not in objects(path)
    store_schema.downgrade(path, "base")
    assert objects(path) == {"alembic_version"}


@pytest.fixture(scope="module")
def small_store(code_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("migrate") / "code.duckdb"
    build_store(
        corpus_spec(str(code_corpus / "json")), "smollm2", output, BuildParams(budget=Budget(rows=50)), progress=False
    )
    return output


def test_old_schema_is_refused_then_migrated(small_store: Path, tmp_path: Path):
    old = tmp_path / "old.duckdb"
    shutil.copyfile(resolve_store(small_store), old)
    store_schema.downgrade(old, "0001")
    with pytest.raises(StoreError, match="has schema 0001, this crest reads 0002: run `crest migrate"):
        open_store(old).close()
    assert migrate_store(old) == ("0001", "0002")
    assert read_store_info(old)["contexts_kept"] == 50
    assert old.is_symlink()  # migrated copy published as a new version
    map_serving_file(resolve_store(old).with_suffix(".serving"))  # published with its serving file


def test_migrate_gives_a_current_store_without_a_serving_file_one(small_store: Path, tmp_path: Path):
    published_before = tmp_path / "before.duckdb"  # as a crest without serving files left it
    shutil.copyfile(resolve_store(small_store), published_before)
    head = store_schema.head_revision()
    assert migrate_store(published_before) == (head, head)
    assert not published_before.is_symlink()  # nothing to migrate: the same file
    assert map_serving_file(tmp_path / "before.serving").metadata["store_info"]["contexts"] == 50


def test_newer_schema_is_refused(small_store: Path, tmp_path: Path):
    newer = tmp_path / "newer.duckdb"
    shutil.copyfile(resolve_store(small_store), newer)
    with duckdb.connect(str(newer)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer than this crest knows"):
        open_store(newer)


def test_not_a_store_and_not_duckdb_are_refused(tmp_path: Path):
    plain = tmp_path / "plain.duckdb"
    duckdb.connect(str(plain)).close()
    with pytest.raises(StoreError, match="not a CREST datastore"):
        open_store(plain)
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"\x00not a database" * 1000)
    with pytest.raises(StoreError, match="not a readable DuckDB file"):
        open_store(garbage)
