"""Which replicas serve which version: a small lease file per running `crest serve`.

Each replica writes `S.versions/replicas/<host>-<pid>.json` (its address, the version it serves,
a heartbeat time) when it starts and refreshes it while it runs; a clean stop removes it. A lease
counts as live while its heartbeat is younger than `LEASE_TTL` seconds and, on this host, while
its process exists, so a replica killed with SIGKILL stops protecting its version at once here
and after `LEASE_TTL` seconds elsewhere. `crest versions` shows the live leases and pruning never
removes a version a live lease names. A replica that cannot write its lease (a read-only mount)
serves anyway; its version is then protected only while it is the published or a pinned one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LEASE_TTL = 30.0  # seconds without a heartbeat after which a lease no longer counts
LEASE_REFRESH = 5.0  # seconds between heartbeats (a changed version is written at once)
LEASES_FOLDER = "replicas"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Lease:
    host: str
    pid: int
    address: str
    version: str
    started_at: float
    heartbeat_at: float

    def live(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.heartbeat_at > LEASE_TTL:
            return False
        return self.host != socket.gethostname() or pid_alive(self.pid)

    @property
    def replica(self) -> str:
        return f"{self.host}:{self.pid} ({self.address})"


class ReplicaLease:
    """The lease file of this process for one store's versions folder."""

    def __init__(self, versions: Path, address: str) -> None:
        self.folder = versions / LEASES_FOLDER
        self.host, self.pid, self.address = socket.gethostname(), os.getpid(), address
        self.path = self.folder / f"{self.host}-{self.pid}.json"
        self.started_at = time.time()

    def write(self, version: str) -> None:
        """Write (or refresh) the lease atomically: readers never see half a file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lease = Lease(self.host, self.pid, self.address, version, self.started_at, time.time())
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps(asdict(lease)))
        os.replace(partial, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_leases(versions: Path) -> list[Lease]:
    """Every readable lease in the folder, live or not (see `Lease.live`)."""
    leases = []
    for path in sorted((versions / LEASES_FOLDER).glob("*.json")):
        try:
            leases.append(Lease(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # being replaced, or not ours: it protects nothing
    return leases


def remove_dead_leases(versions: Path) -> None:
    """Delete leases whose replica is gone, so the folder does not grow with every restart."""
    now = time.time()
    for lease in read_leases(versions):
        if not lease.live(now):
            (versions / LEASES_FOLDER / f"{lease.host}-{lease.pid}.json").unlink(missing_ok=True)
