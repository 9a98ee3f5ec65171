"""A process's memory as Linux counts it, in MB (10^6 bytes), without importing anything heavy
(the benchmarks' loader children import it before measuring their baseline)."""

from __future__ import annotations

from pathlib import Path


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """RSS, its anonymous and file-backed parts, and PSS (each shared page split among its sharers)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    rollup_fields = dict(line.split(":", 1) for line in rollup if ":" in line)

    def mb(text: str) -> float:
        return int(text.split()[0]) * 1024 / 1e6  # the kernel's kB are KiB

    return {
        "rss": mb(status["VmRSS"]),
        "anon": mb(status["RssAnon"]),
        "file": mb(status["RssFile"]),
        "pss": mb(rollup_fields["Pss"]),
    }
