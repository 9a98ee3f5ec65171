"""What the build caches weigh, and pruning the ones a later build can always make again.

`tokens/` (a corpus's token ids, keyed by content and tokenizer) and `counts/` (a shard's complete
n-gram counts) grow with every corpus and shard ever built and are rebuilt when missing, so they
can be pruned: a file not used for a while goes. A cache hit marks its file used by setting its
access time (the modification time stays the time it was written), so a mount without access
times still prunes by use. Scratch files of builds that died (`*.partial-<pid>`) go at once.
The other folders (converted models and tokenizers, stores, references) are listed, never pruned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from datastore_service.paths import cache_root
from datastore_service.store.replicas import pid_alive

PRUNABLE = ("tokens", "counts")


def mark_used(path: Path) -> None:
    """Record a cache hit: the access time moves, the modification time stays."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))  # in ns: the mtime stays exact
    except OSError:
        pass  # a read-only cache still serves; it just cannot record the use


@dataclass(frozen=True)
class CacheFile:
    path: Path
    bytes: int
    last_used: float  # the later of its access and modification times

    @property
    def writer(self) -> int | None:
        """The process writing this scratch file (`*.partial-<pid>`), None for a finished file."""
        _, _, pid = self.path.name.rpartition(".partial-")
        return int(pid) if pid.isdigit() else None

    def stale(self, cutoff: float) -> bool:
        if self.writer is not None:
            return not pid_alive(self.writer)
        return self.last_used < cutoff


@dataclass(frozen=True)
class CacheFolder:
    name: str
    files: int
    bytes: int
    prunable: bool


def _sizes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def cache_folders() -> list[CacheFolder]:
    root = cache_root()
    if not root.exists():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    return [CacheFolder(p.name, *_sizes(p), prunable=p.name in PRUNABLE) for p in folders]


def prunable_files() -> list[CacheFile]:
    found = []
    for name in PRUNABLE:
        folder = cache_root() / name
        for path in folder.iterdir() if folder.exists() else ():
            stat = path.stat()
            found.append(CacheFile(path, stat.st_size, max(stat.st_atime, stat.st_mtime)))
    return found


def prune_caches(unused_days: float, dry_run: bool = False) -> list[CacheFile]:
    """Remove token and count files not used for `unused_days` days, and orphaned scratch files."""
    cutoff = time.time() - unused_days * 86_400
    stale = [f for f in prunable_files() if f.stale(cutoff)]
    if not dry_run:
        for cache_file in stale:
            cache_file.path.unlink(missing_ok=True)
    return stale
