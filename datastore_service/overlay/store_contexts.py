"""How often the store's corpus saw each stored context: the denominator that makes a stored
tree's probabilities counts again, so store and overlay counts add up in one ranking.

Read from the store file's `drafts` table (context, context_count), not from the lookup index:
the index answers probabilities, which is all a lookup needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datastore_service.overlay.hashing import ROOT, find, mix
from datastore_service.store.reader import open_store, reading

FETCH_CONTEXT_COUNTS = "SELECT context, context_count FROM drafts"


class StoreContexts:
    def __init__(self, keys: np.ndarray, counts: np.ndarray) -> None:
        order = np.argsort(keys)
        self.keys, self.counts = keys[order], counts[order]

    @classmethod
    def load(cls, path: Path) -> StoreContexts:
        with open_store(path) as connection, reading(path):
            table = connection.sql(FETCH_CONTEXT_COUNTS).to_arrow_table().combine_chunks()
        contexts = table.column("context").chunk(0) if table.num_rows else None
        if contexts is None:
            return cls(np.empty(0, np.uint64), np.empty(0, np.int64))
        values = contexts.values.to_numpy().astype(np.int64)
        offsets = contexts.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(offsets)
        keys = np.zeros(len(lengths), np.uint64)
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            state = np.full(len(rows), ROOT, np.uint64)
            for position in range(int(length)):
                state = mix(state, values[offsets[rows] + position])
            keys[rows] = state
        return cls(keys, table.column("context_count").to_numpy().astype(np.int64))

    def count_of(self, keys: np.ndarray) -> np.ndarray:
        """The corpus count of each stored context; 0 for contexts the store does not hold."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), np.int64)
        where, found = find(self.keys, keys)
        return np.where(found, self.counts[where], 0)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.counts.nbytes
