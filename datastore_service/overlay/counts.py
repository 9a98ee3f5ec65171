"""The overlay's n-gram counts: every n-gram of the observed sequences up to the store's length,
in arrays sorted by key, updated in place a batch at a time (`add`) and evicted oldest first.

A row is one n-gram: its key, its parent's key (the n-gram minus its last token), its last token,
its level (length), its count and the generation that last saw it (33 bytes). A delta also carries,
for the contexts each n-gram drafts from, `prefixes[:, L-1]` = key of its first L tokens and
`heads` = its first `width` tokens; `as_delta` recovers them for the whole table by walking parents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datastore_service.overlay.hashing import ROOT, find, mix

_COLUMNS = ("keys", "parents", "tokens", "levels", "counts", "seen")


@dataclass
class NgramDelta:
    """Distinct n-grams with the occurrences one batch adds (same columns as the table, no `seen`)."""

    keys: np.ndarray  # uint64 [n], sorted, distinct
    parents: np.ndarray  # uint64 [n]; ROOT for unigrams
    tokens: np.ndarray  # int32 [n], the last token
    levels: np.ndarray  # int8 [n]
    counts: np.ndarray  # int64 [n]
    prefixes: np.ndarray  # uint64 [n, width]; column L-1 meaningful for L <= level
    heads: np.ndarray  # int32 [n, width]; -1 past the level

    def __len__(self) -> int:
        return len(self.keys)


def delta_of_sequences(flat: np.ndarray, lengths: np.ndarray, levels: int, width: int) -> NgramDelta:
    """Every n-gram (1..levels tokens) inside each sequence, counted. `flat` holds the sequences back to back."""
    ends = np.repeat(np.cumsum(lengths), lengths)
    remaining = ends - np.arange(len(flat))  # tokens from each position to its sequence's end
    prefixes = np.zeros((len(flat), width), np.uint64)
    heads = np.full((len(flat), width), -1, np.int32)
    alive, state = np.arange(len(flat)), np.full(len(flat), ROOT, np.uint64)
    parts: list[tuple[np.ndarray, ...]] = []
    for level in range(1, levels + 1):
        keep = remaining[alive] >= level
        alive, state = alive[keep], state[keep]
        if len(alive) == 0:
            break
        token = flat[alive + level - 1].astype(np.int32)
        parent, state = state, mix(state, token)
        if level <= width:
            prefixes[alive, level - 1] = state
            heads[alive, level - 1] = token
        parts.append((state, parent, token, np.full(len(alive), level, np.int8), alive))
    keys, parents, tokens, level_of, position = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(keys)  # any occurrence represents its n-gram: no stable sort needed
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, len(keys)))
    first = order[starts]
    keys, where = keys[starts], position[first]
    return NgramDelta(
        keys, parents[first], tokens[first], level_of[first], counts.astype(np.int64), prefixes[where], heads[where]
    )


def delta_of_counts(table: pa.Table, width: int) -> NgramDelta:
    """A shard of counts (level, gid, parent, token, count: a complete n-gram prefix tree) as a delta."""
    level = table.column("level").to_numpy().astype(np.int64)
    gid = table.column("gid").to_numpy().astype(np.int64)
    parent = table.column("parent").fill_null(-1).to_numpy().astype(np.int64)
    token = table.column("token").to_numpy().astype(np.int32)
    order = np.lexsort((gid, level))
    level, gid, parent, token = level[order], gid[order], parent[order], token[order]
    counts = table.column("count").to_numpy().astype(np.int64)[order]
    keys = np.zeros(len(level), np.uint64)
    parents = np.full(len(level), ROOT, np.uint64)
    prefixes = np.zeros((len(level), width), np.uint64)
    heads = np.full((len(level), width), -1, np.int32)
    bounds = np.searchsorted(level, np.arange(1, int(level.max(initial=0)) + 2))
    for n in range(1, len(bounds)):
        rows = np.arange(bounds[n - 1], bounds[n])
        if n > 1:
            above = np.arange(bounds[n - 2], bounds[n - 1])  # level n-1, sorted by gid
            at = above[np.searchsorted(gid[above], parent[rows])]
            parents[rows], prefixes[rows], heads[rows] = keys[at], prefixes[at], heads[at]
        keys[rows] = mix(parents[rows], token[rows])
        if n <= width:
            prefixes[rows, n - 1], heads[rows, n - 1] = keys[rows], token[rows]
    order = np.argsort(keys)
    return NgramDelta(
        keys[order], parents[order], token[order], level[order].astype(np.int8), counts[order],
        prefixes[order], heads[order],
    )  # fmt: skip


class NgramCounts:
    """All n-gram counts of the overlay, sorted by key."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.keys = np.empty(0, np.uint64)
        self.parents = np.empty(0, np.uint64)
        self.tokens = np.empty(0, np.int32)
        self.levels = np.empty(0, np.int8)
        self.counts = np.empty(0, np.int64)
        self.seen = np.empty(0, np.int32)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in _COLUMNS)

    def add(self, delta: NgramDelta, generation: int) -> np.ndarray:
        """Add a delta's counts; returns the rows of the delta's n-grams afterwards, in delta order."""
        where = np.searchsorted(self.keys, delta.keys)
        found = where < len(self.keys)
        found[found] = self.keys[where[found]] == delta.keys[found]
        self.counts[where[found]] += delta.counts[found]
        self.seen[where[found]] = generation
        new = ~found
        if new.any():
            at = where[new]
            added = {
                "keys": delta.keys[new],
                "parents": delta.parents[new],
                "tokens": delta.tokens[new],
                "levels": delta.levels[new],
                "counts": delta.counts[new],
                "seen": np.full(int(new.sum()), generation, np.int32),
            }
            for name, values in added.items():
                setattr(self, name, np.insert(getattr(self, name), at, values))
        return np.searchsorted(self.keys, delta.keys)

    def count_of(self, keys: np.ndarray) -> np.ndarray:
        """Counts of n-grams by key; 0 for keys the overlay does not hold."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), np.int64)
        where, found = find(self.keys, keys)
        return np.where(found, self.counts[where], 0)

    def evict_before(self, generation: int) -> None:
        """Forget the n-grams no batch has seen since `generation` (a prefix outlives its extensions)."""
        keep = self.seen >= generation
        for name in _COLUMNS:
            setattr(self, name, getattr(self, name)[keep])

    def bytes_by_generation(self, generations: int) -> np.ndarray:
        per_row = self.nbytes / max(len(self), 1)
        return np.bincount(self.seen, minlength=generations) * per_row

    def as_delta(self) -> NgramDelta:
        """The whole table as one delta (a rebuild ranks every tree from it), prefixes found level by level."""
        prefixes = np.zeros((len(self), self.width), np.uint64)
        heads = np.full((len(self), self.width), -1, np.int32)
        for level in range(1, int(self.levels.max(initial=0)) + 1):
            rows = np.flatnonzero(self.levels == level)
            if level > 1:
                at = np.searchsorted(self.keys, self.parents[rows])
                prefixes[rows], heads[rows] = prefixes[at], heads[at]
            if level <= self.width:
                prefixes[rows, level - 1], heads[rows, level - 1] = self.keys[rows], self.tokens[rows]
        return NgramDelta(self.keys, self.parents, self.tokens, self.levels, self.counts, prefixes, heads)
