"""Run the named .sql files in `sql/`.

Values travel as DuckDB parameters (`$name`). The few parts that are SQL text (column lists that
depend on the level, a policy's ORDER BY) are filled in with `{name}` placeholders; each file says
in its header what it reads and writes.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Protocol


class SqlConnection(Protocol):
    """What the build needs of an engine: DuckDB's connection, or spark_sql.SparkConnection."""

    def execute(self, query: str, parameters: dict[str, Any] | None = None) -> Any: ...


@cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath("sql", name).read_text(encoding="utf-8")


def statements(name: str, **fragments: Any) -> list[str]:
    code = "\n".join(line for line in _text(name).splitlines() if not line.lstrip().startswith("--"))
    code = code.format(**fragments) if fragments else code
    return [statement.strip() for statement in code.split(";") if statement.strip()]


def run_sql(connection: SqlConnection, name: str, params: dict[str, Any] | None = None, **fragments: Any) -> None:
    """Execute every statement of `sql/<name>`, passing only the parameters each one uses."""
    for statement in statements(name, **fragments):
        used = {key: value for key, value in (params or {}).items() if f"${key}" in statement}
        connection.execute(statement, used or None)
