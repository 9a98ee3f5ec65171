"""The build's memory cap: what DuckDB may hold of it, the default for this machine, and the peak
of what DuckDB spilled to the scratch folder to stay under it.

The cap bounds the build process's peak resident memory. DuckDB gets the cap minus a reserve for
the rest of the process (interpreter, tokenizer, Arrow batches, the store being written); when
its data outgrows that, it spills to the scratch folder next to the store (`temp_directory`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from datastore_service.errors import CrestError
from datastore_service.sizes import format_bytes, parse_budget

# What the process holds besides DuckDB's buffers: measured ~0.4 GB (Python, tokenizer, Arrow).
PROCESS_RESERVE = 700_000_000
# DuckDB also goes past its own memory_limit, more with bigger limits: back-off builds peaked 0.1-0.3
# GB over the cap with the fixed reserve alone (stdlib at a 3 GB cap: 3.12 GB; ShareGPT at 4.2 GB:
# 4.5 GB), so DuckDB is also kept this share of the cap below it.
RESERVE_SHARE = 0.12
# Below this DuckDB can't hold one level's hash tables for a real corpus, spilling or not.
MIN_ENGINE_MEMORY = 200_000_000


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_cap() -> int:
    """A sixth of the machine's memory (machines are shared), at least 2 GB, at most 16 GB."""
    return min(max(machine_memory() // 6, 2_000_000_000), 16_000_000_000)


def parse_memory(text: str) -> int:
    try:
        budget = parse_budget(text)
    except ValueError as exc:
        raise CrestError(f"--memory-limit: {exc}") from exc
    if budget.bytes is None or budget.bytes <= 0:
        raise CrestError(f"--memory-limit takes a size such as 4GB, not {text!r}")
    return budget.bytes


def engine_memory(cap: int) -> int:
    """DuckDB's memory_limit under a cap of `cap` bytes for the whole build."""
    reserve = PROCESS_RESERVE + int(RESERVE_SHARE * cap)
    engine = cap - reserve
    if engine < MIN_ENGINE_MEMORY:
        smallest = (PROCESS_RESERVE + MIN_ENGINE_MEMORY) / (1 - RESERVE_SHARE)
        raise CrestError(
            f"memory limit {format_bytes(cap)} is too small to build: the process needs about "
            f"{format_bytes(reserve)} besides DuckDB, which needs at least {format_bytes(MIN_ENGINE_MEMORY)}; "
            f"give at least {format_bytes(smallest)}"
        )
    return engine


class SpillMeter:
    """Samples the scratch folder's size in a background thread; `peak` is the most DuckDB spilled."""

    def __init__(self, folder: Path, interval: float = 0.25) -> None:
        self.folder, self.interval, self.peak = folder, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpillMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _folder_bytes(self.folder))


def _folder_bytes(folder: Path) -> int:
    total = 0
    try:
        for entry in os.scandir(folder):
            try:
                total += entry.stat(follow_symlinks=False).st_size if entry.is_file(follow_symlinks=False) else 0
            except FileNotFoundError:
                continue  # DuckDB removed it meanwhile
    except FileNotFoundError:
        pass
    return total


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
