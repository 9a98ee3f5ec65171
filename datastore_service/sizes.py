"""Parsing and printing of byte sizes and budgets (`64MB`, `1.5GiB`, `100000rows`)."""

import re
from dataclasses import dataclass

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """A limit on the published store: total bytes on disk, or number of kept contexts (rows)."""

    bytes: int | None = None
    rows: int | None = None

    def __str__(self) -> str:
        return f"{self.rows} rows" if self.rows is not None else format_bytes(self.bytes or 0)


def parse_budget(text: str) -> Budget:
    """`64MB` / `512KiB` / `2000000` (bytes) or `100000rows` (contexts)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"cannot read budget {text!r}: use e.g. 64MB, 512KiB or 100000rows")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit in ("rows", "row", "contexts"):
        return Budget(rows=int(number))
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {match.group(2)!r} in budget {text!r}")
    return Budget(bytes=int(number * _UNITS[unit]))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
