"""Alembic environment for CREST store files.

Alembic ships no DuckDB dialect implementation; DuckDB DDL is transactional, so the default
implementation with transactional DDL is all it needs.
"""

from alembic import context
from alembic.ddl.impl import DefaultImpl
from sqlalchemy import create_engine


class DuckDBImpl(DefaultImpl):
    __dialect__ = "duckdb"
    transactional_ddl = True


def run_migrations_online() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=None)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("CREST migrations run online only: use `crest migrate STORE`")
run_migrations_online()
