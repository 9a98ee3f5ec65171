"""The index a server answers from, and hot reload when a new store version is published.

Requests take `holder.index` once and use that object to the end, so a swap never changes the
store under a running request; the old index is freed when its last request finishes. A CREST
index is a pair, the version's DuckDB file and its mapped serving file, and the swap replaces
both at once: one reference, one assignment. A new version is loaded completely and checked
before the swap (its serving file rebuilt first if missing or damaged): a corrupt file, one of
another schema or one built for another tokenizer is refused (logged) and the old version keeps
serving. The old serving file stays mapped until the last request using it finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from datastore_service.errors import CrestError
from datastore_service.lookup.index_loader import load_index
from datastore_service.store.reader import resolve_store

log = logging.getLogger("crest.serve")


class IndexHolder:
    def __init__(self, store: Path, rest_overrides: Mapping[str, int] | None = None) -> None:
        self.store, self.rest_overrides = store, rest_overrides  # REST's k/n/m/c, kept across reloads
        started = time.perf_counter()
        self.index = load_index(store, rest_overrides)
        self.load_seconds, self.loaded_at = time.perf_counter() - started, time.time()
        self.reloads = self.refusals = 0  # for metrics
        self._refused: Path | None = None
        self._lock = threading.Lock()

    def reload_if_published(self) -> bool:
        """Swap to the store's newly published version, if there is one and it is sound."""
        with self._lock:
            try:
                target = resolve_store(self.store)
            except CrestError as exc:
                log.warning("store path unreadable, keeping version %s: %s", self.index.info.store_version, exc)
                return False
            if target in (self.index.path, self._refused):
                return False
            try:
                started = time.perf_counter()
                candidate = load_index(target, self.rest_overrides)
                load_seconds = time.perf_counter() - started
            except Exception as exc:  # any failure to load means: keep serving the old version
                self._refused = target
                self.refusals += 1
                log.error("refusing %s, keeping version %s: %s", target.name, self.index.info.store_version, exc)
                return False
            current = self.index.info
            if candidate.info.tokenizer_fingerprint != current.tokenizer_fingerprint:
                self._refused = target
                self.refusals += 1
                log.error(
                    "refusing %s: built for tokenizer %r, this server serves %r; keeping version %s",
                    target.name,
                    candidate.info.tokenizer_name,
                    current.tokenizer_name,
                    current.store_version,
                )
                return False
            self.index, self._refused = candidate, None
            self.load_seconds, self.loaded_at, self.reloads = load_seconds, time.time(), self.reloads + 1
            log.info(
                "now serving version %s (%d contexts) from %s",
                candidate.info.store_version,
                candidate.info.contexts,
                target.name,
            )
            return True


class Reloadable(Protocol):
    def reload_if_published(self) -> object: ...


class ReloadWatcher(threading.Thread):
    """Polls the published store paths and hot-reloads new versions."""

    def __init__(self, holder: Reloadable, interval: float) -> None:
        super().__init__(name="crest-reload", daemon=True)
        self.holder, self.interval = holder, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.holder.reload_if_published()

    def stop(self) -> None:
        self.stopped.set()
