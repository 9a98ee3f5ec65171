"""One store's learning overlay: observe sequences, count them, keep merged trees, snapshot, rebase.

Life of an observed sequence:
1. `observe` queues it (cheap, in the caller's thread) and keeps it for the next snapshot;
2. `refresh` (every `refresh_interval` s, a thread) counts the queued sequences' n-grams into the
   count table, re-ranks the trees they touch (trees.py) and swaps in a new view: lookups see
   it from then on. It also reads snapshots other servers of the same store wrote (replicas
   converge within a snapshot interval: see `snapshot_period`), and evicts the oldest counts past
   `max_bytes`;
3. `snapshot` (another thread, a little more often than every `snapshot_interval` s) writes the
   sequences observed since the last snapshot as a count file (store/snapshots.py): a SIGKILL
   loses at most that interval;
4. when a new store version is published, `rebase` rebuilds everything against it from the
   snapshots that version does not hold (its `folded` record) plus what is not snapshotted yet,
   so counts a compaction folded into the store are never counted twice.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from datastore_service.build.observed_counts import write_sequence_counts
from datastore_service.draft import DraftBatch, QueryBatch
from datastore_service.lookup.index_loader import LookupIndex
from datastore_service.overlay.counts import NgramCounts, NgramDelta, delta_of_counts, delta_of_sequences
from datastore_service.overlay.store_contexts import StoreContexts
from datastore_service.overlay.trees import MergedTrees, TreeParams, answer
from datastore_service.store.snapshots import SnapshotFolder, folded_of, new_writer_id

log = logging.getLogger("crest.overlay")
EVICT_TO = 0.7  # of max_bytes, so evictions come in batches, not every refresh
BACKGROUND_NICENESS = 10  # added to the refresh and snapshot threads' nice value


def yield_to_lookups() -> None:
    """Lower the calling thread's CPU priority (Linux keeps a nice value per thread), so that on a
    busy core the threads answering lookups run first and a refresh waits, not a lookup."""
    if sys.platform.startswith("linux"):
        thread = threading.get_native_id()
        niceness = min(os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICENESS, 19)
        os.setpriority(os.PRIO_PROCESS, thread, niceness)


@dataclass(frozen=True)
class OverlaySettings:
    max_bytes: int = 256 * 2**20
    refresh_interval: float = 0.5  # seconds between folding queued sequences in (and reading peers' snapshots)
    snapshot_interval: float = 10.0  # the most a SIGKILL loses, and the most replicas lag behind each other
    max_queued_tokens: int = 262_144  # an observe past this waits for a refresh (backpressure)

    def __post_init__(self) -> None:
        if not 0 < self.refresh_interval <= self.snapshot_interval / 4:
            raise ValueError(
                f"the refresh interval ({self.refresh_interval:g} s) must be above 0 and at most a quarter of the "
                f"snapshot interval ({self.snapshot_interval:g} s), so replicas agree within a snapshot interval"
            )

    @property
    def snapshot_period(self) -> float:
        """Seconds between snapshot writes. A sequence observed just after one waits a period to be
        written, then up to a refresh until a peer reads it: writing a period of `interval - 2 x
        refresh` leaves one refresh of room for the write and the read, so peers agree within the
        interval (and a SIGKILL loses less than it)."""
        return self.snapshot_interval - 2 * self.refresh_interval


@dataclass
class OverlayStats:
    observed_tokens: int = 0
    counted_tokens: int = 0
    peer_tokens: int = 0
    snapshots: int = 0
    evictions: int = 0
    rebases: int = 0
    # CPU time of the threads that ingest (checking and queueing calls, counting, evicting): what
    # learning costs, apart from the lookups served meanwhile
    ingest_cpu_seconds: float = 0.0


class Overlay:
    def __init__(
        self,
        store: Path | None,
        index: LookupIndex,
        settings: OverlaySettings = OverlaySettings(),
        writer: str | None = None,
    ) -> None:
        """`store` None: in memory only (no snapshots, no peers), as the online evaluation uses it."""
        self.settings = settings
        self.folder = SnapshotFolder(store) if store is not None else None
        self.writer = writer or new_writer_id()
        self.stats = OverlayStats()
        self._queue: list[np.ndarray] = []
        self._queued_tokens = 0
        self._unsnapshotted: list[np.ndarray] = []
        self._unsnapshotted_tokens = 0
        self._sequence = 0
        self._queue_lock = threading.Lock()  # the queue and the unsnapshotted list
        self._state_lock = threading.Lock()  # table, trees, generation (refresh, rebase)
        self._snapshot_lock = threading.Lock()  # a snapshot and a rebase never interleave
        self._stop = threading.Event()
        self._snapshot_due = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rebuild(index)

    # -- the caller's side ------------------------------------------------------------------------

    def observe(self, sequences: list[np.ndarray], checking_cpu: float = 0.0) -> int:
        """Queue validated sequences (int token ids, each non-empty); returns the tokens taken.
        `checking_cpu`: the caller's CPU seconds spent validating them, charged to ingestion."""
        started = time.thread_time()
        tokens = sum(len(s) for s in sequences)
        with self._queue_lock:
            self._queue.extend(sequences)
            if self.folder is not None:
                self._unsnapshotted.extend(sequences)
                self._unsnapshotted_tokens += tokens
            self._queued_tokens += tokens
            self.stats.observed_tokens += tokens
            backlog, unsnapshotted = self._queued_tokens, self._unsnapshotted_tokens
            self.stats.ingest_cpu_seconds += checking_cpu + time.thread_time() - started
        if unsnapshotted * 4 > self.settings.max_bytes // 4:  # int32 ids
            self._snapshot_due.set()
        if backlog > self.settings.max_queued_tokens:
            self.refresh()
        return tokens

    def lookup(self, index: LookupIndex, batch: QueryBatch, static: DraftBatch, selection: str) -> DraftBatch:
        """The store's answer `static` (from `index`), with merged trees where they rank higher."""
        trees = self.trees
        if trees.index is not index:  # a new version is being rebased onto: the store answers alone
            return static
        return answer(trees.view, batch, static, selection)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self.trees.nbytes + 4 * (self._unsnapshotted_tokens + self._queued_tokens)

    # -- maintenance ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fold queued sequences and peers' new snapshots in; evict past the byte cap."""
        started = time.thread_time()
        with self._state_lock:
            with self._queue_lock:
                queued, self._queue, self._queued_tokens = self._queue, [], 0
            self.generation += 1
            if queued:
                lengths = np.fromiter(map(len, queued), np.int64, len(queued))
                flat = np.concatenate(queued)
                self._count(delta_of_sequences(flat, lengths, self.params.levels, self.params.width))
                self.stats.counted_tokens += len(flat)
            for snapshot in self._new_snapshots(include_own=False):
                delta = delta_of_counts(pq.read_table(snapshot.path), self.params.width)
                self._count(delta)
                self.stats.peer_tokens += int(delta.counts[delta.levels == 1].sum())
            self._evict_if_over()
        with self._queue_lock:
            self.stats.ingest_cpu_seconds += time.thread_time() - started

    def _count(self, delta: NgramDelta) -> None:
        # Room first, so the cap holds while the delta is counted too, not only after the refresh:
        # at most one table row per delta n-gram, and trees grow about as they did last time.
        table_row = self.table.nbytes // max(len(self.table), 1) or 33
        self._evict_if_over(len(delta) * (table_row + self._tree_bytes_per_ngram))
        trees_before = self.trees.nbytes
        rows = self.table.add(delta, self.generation)
        self.trees.update(delta, self.table, self.table.counts[rows], self.generation)
        if len(delta):
            self._tree_bytes_per_ngram = max(self.trees.nbytes - trees_before, 0) / len(delta)

    def _new_snapshots(self, include_own: bool) -> list:
        if self.folder is None:
            return []
        found = []
        for snapshot in self.folder.unfolded(self.folded):
            if snapshot.path.name in self._applied or (snapshot.writer == self.writer and not include_own):
                continue
            self._applied.add(snapshot.path.name)
            found.append(snapshot)
        return found

    def _evict_if_over(self, incoming: float = 0.0) -> None:
        """Evict the oldest generations if `incoming` more bytes would take the overlay past its cap."""
        if self.table.nbytes + self.trees.nbytes + incoming <= self.settings.max_bytes:
            return
        generations = self.generation + 1
        by_generation = self.table.bytes_by_generation(generations) + self.trees.bytes_by_generation(generations)
        newest_first = np.cumsum(by_generation[::-1])
        room = max(EVICT_TO * self.settings.max_bytes - incoming, 0.0)
        keep = int(np.searchsorted(newest_first, room, side="right"))
        oldest_kept = max(generations - max(keep, 1), 0)
        self.table.evict_before(oldest_kept)
        self.trees.forget_before(oldest_kept)
        self.stats.evictions += 1

    def snapshot(self) -> Path | None:
        """Write what was observed since the last snapshot as one count file (None: nothing new)."""
        if self.folder is None:
            return None
        with self._snapshot_lock:
            with self._queue_lock:
                taken, self._unsnapshotted, self._unsnapshotted_tokens = self._unsnapshotted, [], 0
            if not taken:
                return None
            self._sequence += 1
            try:
                path = self.folder.write(
                    self.writer,
                    self._sequence,
                    lambda target: write_sequence_counts(taken, self.params.levels, self.vocab_size, target),
                )
            except Exception:
                with self._queue_lock:  # keep them for the next try
                    self._unsnapshotted = taken + self._unsnapshotted
                    self._unsnapshotted_tokens += sum(len(s) for s in taken)
                raise
            self.stats.snapshots += 1
            return path

    def rebase(self, index: LookupIndex) -> None:
        """Rebuild against a newly published version: drop what it holds, keep what it does not."""
        with self._snapshot_lock, self._state_lock:
            self._rebuild(index)
            self.stats.rebases += 1

    def _rebuild(self, index: LookupIndex) -> None:
        self.index, self.params, self.vocab_size = index, TreeParams.of(index), index.info.vocab_size
        self.folded = folded_of(index.info.build_params)
        self.table = NgramCounts(self.params.width)
        self.generation, self._applied = 0, set()
        self._tree_bytes_per_ngram = 0.0  # trees' growth per counted n-gram in the last batch (eviction)
        store = StoreContexts.load(index.path)
        if self.folder is not None:
            self.folder.remove_partials()
            for snapshot in self._new_snapshots(include_own=True):
                self.table.add(delta_of_counts(pq.read_table(snapshot.path), self.params.width), 0)
        with self._queue_lock:
            unsnapshotted, self._queue, self._queued_tokens = list(self._unsnapshotted), [], 0
        if unsnapshotted:
            lengths = np.fromiter(map(len, unsnapshotted), np.int64, len(unsnapshotted))
            flat = np.concatenate(unsnapshotted)
            self.table.add(delta_of_sequences(flat, lengths, self.params.levels, self.params.width), 0)
        trees = MergedTrees(self.params, index, store)
        if len(self.table):
            trees.update(self.table.as_delta(), self.table, self.table.counts, 0)
        self.trees = trees

    # -- threads ----------------------------------------------------------------------------------

    def start(self) -> Overlay:
        for name, interval, work in (
            ("refresh", self.settings.refresh_interval, self.refresh),
            ("snapshot", self.settings.snapshot_period, self.snapshot),
        ):
            thread = threading.Thread(target=self._every, args=(interval, work), name=f"crest-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _every(self, interval: float, work) -> None:
        """Run `work` at a fixed rate: the time work takes does not push the next round later."""
        yield_to_lookups()
        due = self._snapshot_due if work == self.snapshot else threading.Event()
        next_round = time.monotonic() + interval
        while not self._stop.is_set():
            if due.wait(max(next_round - time.monotonic(), 0.0)):
                due.clear()  # an early snapshot (memory pressure): the schedule stays as it was
            else:
                next_round = max(next_round + interval, time.monotonic())
            if self._stop.is_set():
                return
            try:
                work()
            except Exception:  # keep serving; the next round tries again
                log.exception("overlay %s failed", work.__name__)

    def stop(self, final_snapshot: bool = True) -> None:
        """Stop the threads; a clean stop snapshots what is left, so only a crash loses an interval."""
        self._stop.set()
        self._snapshot_due.set()
        for thread in self._threads:
            thread.join()
        if final_snapshot:
            self.snapshot()
