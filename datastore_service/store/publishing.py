"""Versioned, atomic publishing of store files.

A store path `S` (e.g. `stdlib.duckdb`) is a symlink to `S.versions/<version>.duckdb`. A build
writes `S.versions/<version>.partial-<pid>`, checkpoints and fsyncs it, renames it to its final
name, then atomically swaps the symlink. Readers resolve `S` once and open the versioned file, so
a reader never sees a half-written file, and a killed build leaves the old version published.
"""

from __future__ import annotations

import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

KEEP_OLD_VERSIONS = 2


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VersionedStore:
    """The published path of a store and the folder holding its versions."""

    def __init__(self, path: Path, suffix: str = ".duckdb") -> None:
        self.path = path.expanduser().absolute()
        self.versions = self.path.with_name(self.path.name + ".versions")
        self.suffix = suffix  # of published version files: .duckdb (CREST) or .rest (the REST baseline)

    def new_version(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)

    def scratch(self, version: str, kind: str) -> Path:
        """A private path for an unpublished file of this process (partial store, work files)."""
        self.versions.mkdir(parents=True, exist_ok=True)
        return self.versions / f"{version}.{kind}-{os.getpid()}"

    def remove_stale_scratch(self) -> None:
        """Delete scratch files of builds whose process is gone (killed mid-build)."""
        if not self.versions.exists():
            return
        for entry in self.versions.iterdir():
            _, _, pid = entry.name.removesuffix(".wal").rpartition("-")  # DuckDB's log of a scratch file too
            if (
                "." in entry.name
                and pid.isdigit()
                and not entry.name.endswith(self.suffix)
                and not _pid_alive(int(pid))
            ):
                remove_path(entry)

    def published(self) -> Path | None:
        """The file readers open now, or None if nothing is published."""
        return self.path.resolve() if self.path.exists() else None

    def publish(self, partial: Path, version: str) -> Path:
        fsync_file(partial)
        final = self.versions / f"{version}{self.suffix}"
        os.replace(partial, final)
        fsync_dir(self.versions)
        link = self.path.with_name(f".{self.path.name}.link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(final.relative_to(self.path.parent))
        os.replace(link, self.path)
        fsync_dir(self.path.parent)
        self._prune_old(final)
        return final

    def _prune_old(self, current: Path) -> None:
        older = sorted(p for p in self.versions.glob(f"*{self.suffix}") if p != current)
        for stale in older[: max(0, len(older) - KEEP_OLD_VERSIONS)]:
            stale.unlink(missing_ok=True)


def remove_path(path: Path) -> None:
    """Remove a file or folder, and the write-ahead log DuckDB may have left beside a file."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
