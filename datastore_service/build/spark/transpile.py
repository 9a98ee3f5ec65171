"""Run the build's DuckDB SQL files on Apache Spark, unchanged: one SQL text serves both engines.

`SparkConnection` answers the part of DuckDB's connection API the build uses (`execute(sql,
params).fetchall()`). Each statement is parsed as DuckDB SQL by sqlglot; its query is transpiled
to Spark SQL (QUALIFY, SEMI JOIN, `<<`, `$name` parameters all map), and the statement itself is
played on Spark's catalog: a table is a temp view over a checkpointed DataFrame, so a level-wise
loop never grows one huge lazy plan, and an INSERT re-checkpoints the union.

The one DuckDB construct sqlglot maps wrongly is an ordered list aggregate, `list(x ORDER BY k)`:
it drops the ORDER BY. Here it becomes Spark's equivalent, the values sorted by key in a struct.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp

from datastore_service.errors import CrestError

READ, WRITE = "duckdb", "spark"


def _ordered_list_to_spark(node: exp.Expression) -> exp.Expression:
    """`list(v ORDER BY k1, k2)` -> `TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT(k1, k2, v))), e -> e.v)`."""
    if not (isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order)):
        return node
    keys = node.this.expressions
    if any(key.args.get("desc") for key in keys):
        raise CrestError("an ordered list aggregate with DESC keys has no Spark translation here")
    fields = [f"{key.this.sql(WRITE)} AS k{i}" for i, key in enumerate(keys)] + [f"{node.this.this.sql(WRITE)} AS v"]
    return sqlglot.parse_one(f"TRANSFORM(ARRAY_SORT(COLLECT_LIST(STRUCT({', '.join(fields)}))), e -> e.v)", read=WRITE)


def to_spark(query: exp.Expression) -> str:
    """Spark SQL for one DuckDB query (parameters stay as `:name` markers)."""
    return query.transform(_ordered_list_to_spark).sql(dialect=WRITE)


def _table_name(node: exp.Expression) -> str:
    table = node.this if isinstance(node, exp.Schema) else node
    return table.name


class SparkResult:
    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple]:
        return self._rows


class SparkConnection:
    """DuckDB-style `execute` over a SparkSession; tables live as temp views."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def execute(self, sql: str, parameters: dict[str, Any] | None = None) -> SparkResult:
        rows: list[tuple] = []
        for statement in sqlglot.parse(sql, read=READ):
            if statement is not None:
                rows = self._run(statement, parameters or {})
        return SparkResult(rows)

    def table(self, name: str) -> Any:
        return self.session.table(name)

    def register(self, name: str, frame: Any) -> None:
        """Materialise `frame` (cuts its lineage) and make it table `name`."""
        frame.localCheckpoint(eager=True).createOrReplaceTempView(name)

    def _query(self, query: exp.Expression, parameters: dict[str, Any]) -> Any:
        text = to_spark(query)
        used = {key: value for key, value in parameters.items() if f":{key}" in text}
        return self.session.sql(text, args=used or None)

    def _run(self, statement: exp.Expression, parameters: dict[str, Any]) -> list[tuple]:
        if isinstance(statement, exp.Create):
            name = _table_name(statement.this)
            if statement.expression is not None:
                self.register(name, self._query(statement.expression, parameters))
            else:  # an empty table of the declared columns, made in the JVM (no Python worker)
                columns = ", ".join(
                    f"CAST(NULL AS {column.args['kind'].sql(WRITE)}) AS {column.name}"
                    for column in statement.this.expressions
                )
                self.register(name, self.session.sql(f"SELECT {columns} LIMIT 0"))
        elif isinstance(statement, exp.Insert):
            name = _table_name(statement.this)
            target = self.table(name)
            # INSERT is positional: give the new rows the target's names and types.
            rows = self._query(statement.expression, parameters).toDF(*target.columns)
            rows = rows.select(*(rows[field.name].cast(field.dataType) for field in target.schema.fields))
            self.register(name, target.unionByName(rows))
        elif isinstance(statement, exp.Drop):
            for table in statement.args["tables"]:
                self.session.catalog.dropTempView(table.name)
        elif isinstance(statement, exp.Alter) and isinstance(statement.args["actions"][0], exp.AlterRename):
            old, new = statement.this.name, statement.args["actions"][0].this.name
            self.table(old).createOrReplaceTempView(new)
            self.session.catalog.dropTempView(old)
        elif isinstance(statement, exp.Query):
            return [tuple(row) for row in self._query(statement, parameters).collect()]
        else:
            raise CrestError(f"no Spark translation for statement: {statement.sql(READ)[:80]}")
        return []
