"""Keeps this replica's lease (store/replicas.py) current: the version it serves, a heartbeat.

`crest versions` reads the leases to say which replicas serve which version, and pruning never
removes a version a live lease names. A swap to a new version is written within a second; the
heartbeat every `LEASE_REFRESH` seconds otherwise. A store folder this process cannot write (a
read-only mount) is logged once and the replica serves on without a lease.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from datastore_service.serve.index_holder import IndexHolder
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.replicas import LEASE_REFRESH, ReplicaLease

log = logging.getLogger("crest.serve")


class LeaseKeeper(threading.Thread):
    def __init__(self, holder: IndexHolder, address: str, tick: float = 1.0) -> None:
        super().__init__(name="crest-lease", daemon=True)
        store = VersionedStore(holder.store)
        versions, self.suffix = store.versions, store.suffix
        self.holder, self.tick = holder, tick
        # A plain store file (no versions folder) has no versions to protect.
        self.lease = ReplicaLease(versions, address) if versions.is_dir() else None
        self.stopped = threading.Event()
        self._written: tuple[str, float] | None = None  # (version, when)

    def refresh(self) -> None:
        if self.lease is None:
            return
        # The file's name, not store_info's id: a migrated version keeps the id of the one it was copied from.
        version = Path(self.holder.index.path).name.removesuffix(self.suffix)
        now = time.monotonic()
        if self._written and self._written[0] == version and now - self._written[1] < LEASE_REFRESH:
            return
        try:
            self.lease.write(version)
        except OSError as exc:
            log.warning(
                "cannot write replica lease %s (%s): `crest versions` will not see this replica", self.lease.path, exc
            )
            self.lease = None
            return
        self._written = (version, now)

    def run(self) -> None:
        while not self.stopped.wait(self.tick):
            self.refresh()

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join()
        if self.lease is not None:
            self.lease.remove()
