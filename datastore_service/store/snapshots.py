"""What a learning server keeps beside a store: snapshots of the n-gram counts it observed, and
which of them a published version already holds.

`S.duckdb.overlay/` (next to `S.duckdb.versions/`) holds one Parquet file per snapshot,
`<writer>.<sequence>.counts.parquet`: a complete n-gram prefix tree `(level, gid, parent, token,
count)` of the sequences that writer (one server process) observed in one interval, the format
of a build's shard counts, so a compaction sums them with the corpus's. A file is written under a
private name, fsynced and renamed, so a crash mid-snapshot leaves no half file under a real name.
A version built from snapshots records, per writer, the highest sequence it holds (`folded`), and
servers skip those files; `ingested-*.counts.parquet` holds the summed counts of every snapshot
folded so far (the next compaction starts from it).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datastore_service.store.publishing import fsync_dir, fsync_file

SUFFIX = ".counts.parquet"
_NAME = re.compile(r"^(?P<writer>[A-Za-z0-9_-]+)\.(?P<sequence>\d{9})\.counts\.parquet$")


def new_writer_id() -> str:
    """A name no other server process uses: host, process id and start time."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{int(time.time() * 1000)}"


@dataclass(frozen=True)
class Snapshot:
    writer: str
    sequence: int
    path: Path


def folded_of(build_params: dict) -> dict[str, int]:
    """Per writer, the last snapshot a version's build included."""
    return {str(k): int(v) for k, v in build_params.get("overlay", {}).get("folded", {}).items()}


class SnapshotFolder:
    def __init__(self, store: Path) -> None:
        store = Path(store).expanduser().absolute()
        self.folder = store.with_name(store.name + ".overlay")

    def write(self, writer: str, sequence: int, fill: Callable[[Path], None]) -> Path:
        """Have `fill` write a snapshot at a private path, then publish it under its real name."""
        return self.write_file(f"{writer}.{sequence:09d}{SUFFIX}", fill)

    def write_file(self, name: str, fill: Callable[[Path], None]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / name
        partial = self.folder / f".{final.name}.partial-{os.getpid()}"
        try:
            fill(partial)
            fsync_file(partial)
            os.replace(partial, final)
            fsync_dir(self.folder)
        finally:
            partial.unlink(missing_ok=True)
        return final

    def snapshots(self) -> list[Snapshot]:
        if not self.folder.is_dir():
            return []
        found = []
        for entry in self.folder.iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.append(Snapshot(match["writer"], int(match["sequence"]), entry))
        return sorted(found, key=lambda s: (s.sequence, s.writer))

    def unfolded(self, folded: dict[str, int]) -> list[Snapshot]:
        """Snapshots a version with this `folded` record does not hold yet."""
        return [s for s in self.snapshots() if s.sequence > folded.get(s.writer, 0)]

    def remove_partials(self) -> None:
        """Private files of snapshot writers that died mid-write."""
        if not self.folder.is_dir():
            return
        for entry in self.folder.glob(".*.partial-*"):
            pid = entry.name.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
