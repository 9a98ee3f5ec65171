"""The store file's schema: created and evolved only by the Alembic migrations in `migrations/`."""

from __future__ import annotations

from pathlib import Path

import duckdb
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from datastore_service.errors import StoreError


def alembic_config(store: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", f"duckdb:///{store}")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config(Path("unused"))).get_current_head()
    assert head is not None, "migrations/ has no revision"
    return head


def known_revisions() -> list[str]:
    """Revision ids from oldest to newest."""
    script = ScriptDirectory.from_config(alembic_config(Path("unused")))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def upgrade(store: Path, revision: str = "head") -> None:
    command.upgrade(alembic_config(store), revision)


def downgrade(store: Path, revision: str) -> None:
    command.downgrade(alembic_config(store), revision)


def schema_revision(connection: duckdb.DuckDBPyConnection) -> str | None:
    """The file's Alembic revision, or None when it has none (not a CREST store)."""
    tables = {row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "alembic_version" not in tables:
        return None
    rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if rows else None


def check_schema(connection: duckdb.DuckDBPyConnection, store: Path) -> None:
    """Raise a StoreError that says what to do when the file's schema is not this crest's."""
    revision, head = schema_revision(connection), head_revision()
    if revision == head:
        return
    if revision is None:
        raise StoreError(f"{store} is not a CREST datastore (no schema version)")
    if revision in known_revisions():
        raise StoreError(f"{store} has schema {revision}, this crest reads {head}: run `crest migrate {store}`")
    raise StoreError(f"{store} has schema {revision}, newer than this crest knows ({head}): upgrade crest")
