"""The REST baseline's retrieval: longest matching suffix in a suffix array, continuations as a trie.

For a query (the newest tokens of a sequence), REST looks for the longest suffix of n tokens,
n = n_max down to n_min, that occurs in the corpus. Occurrences of an n-gram are one contiguous
range of the suffix array, found by binary search. The first k of them (in suffix-array order,
as REST does) each give a continuation: the next m tokens, cut at the document's end. Every prefix
of every continuation is counted, and the c most frequent prefixes form the draft tree, with
probability count / (continuations retrieved).

Example: corpus documents "a b c d" and "x b c e", query [q, b, c], n_min 2. The longest
matching suffix is [b, c] (2 occurrences); continuations [d] and [e]; the tree drafts d and e,
each with probability 0.5.

A suffix that occurs for n tokens also occurs for every shorter n (it is a suffix of that
occurrence), so a binary search over n finds REST's longest match with ~log2(15) range searches
instead of up to 15.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from datastore_service.draft import DraftBatch, DraftTree, QueryBatch, prepare_queries
from datastore_service.errors import CrestError, StoreError
from datastore_service.rest.format import RestFile, open_rest_file
from datastore_service.store.info import StoreInfo
from datastore_service.store.reader import resolve_store


@dataclass(frozen=True)
class RestParams:
    """REST's lookup parameters; the defaults are REST's published ones.

    A REST file stores the values it was built with (`crest build --kind rest --rest-k ...`) as
    its defaults; `crest serve --rest-k ...` overrides them for one server."""

    n_max: int = 16  # longest suffix of the query tried first
    n_min: int = 2  # shortest suffix tried last
    k: int = 5000  # occurrences read per lookup
    m: int = 10  # continuation length (tokens); the deepest draft node
    c: int = 64  # draft nodes kept (the most frequent continuation prefixes)

    def __post_init__(self) -> None:
        if not 1 <= self.n_min <= self.n_max:
            raise CrestError(f"REST needs 1 <= n_min <= n_max, got n_min {self.n_min} and n_max {self.n_max}")
        if min(self.k, self.m, self.c) < 1:
            raise CrestError(f"REST's k, m and c must be positive, got k {self.k}, m {self.m}, c {self.c}")

    def overridden(self, overrides: Mapping[str, int] | None) -> RestParams:
        """These parameters with the given ones replaced (names: n_max, n_min, k, m, c)."""
        unknown = set(overrides or {}) - {field.name for field in fields(self)}
        if unknown:
            raise CrestError(f"unknown REST parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **(overrides or {}))


class RestIndex:
    """Answers the same queries as DraftIndex, from a REST file (memory-mapped)."""

    def __init__(self, rest: RestFile, params: RestParams) -> None:
        self.rest, self.params, self.path = rest, params, rest.path
        self.width = params.n_max
        meta = rest.metadata
        self.info = StoreInfo(
            store_version=meta["store_version"],
            tokenizer_name=meta["tokenizer_name"],
            tokenizer_fingerprint=meta["tokenizer_fingerprint"],
            vocab_size=int(meta["vocab_size"]),
            max_context=params.n_max,
            max_depth=params.m,
            max_nodes=params.c,
            contexts=0,
            nodes=0,
            corpus_name=meta["corpus_name"],
            corpus_tokens=int(meta["corpus_tokens"]),
            policy="rest",
            build_params={**meta["build_params"], **asdict(params)},
            schema_version=meta["format"],
            crest_version=meta["crest_version"],
        )

    @classmethod
    def load(cls, path: Path, overrides: Mapping[str, int] | None = None) -> RestIndex:
        """Open a REST store with its stored lookup parameters, `overrides` replacing some of them."""
        resolved = resolve_store(path)
        rest = open_rest_file(resolved)
        if len(rest.suffix_array) != len(rest.tokens):
            raise StoreError(f"{path}: suffix array and corpus differ in length (corrupt file)")
        return cls(rest, RestParams(**rest.metadata.get("lookup_params", {})).overridden(overrides))

    # -- queries (the DraftIndex interface) -------------------------------------------------------

    def prepare(
        self, sequences: Sequence[Sequence[int]], max_nodes: Sequence[int] | int = 0, max_depth: Sequence[int] | int = 0
    ) -> QueryBatch:
        return prepare_queries(
            sequences, max_nodes, max_depth, self.width, self.info.vocab_size, default_nodes=self.params.c
        )

    def lookup(
        self,
        sequences: Sequence[Sequence[int]],
        max_nodes: Sequence[int] | int = 0,
        max_depth: Sequence[int] | int = 0,
        selection: str = "longest",
    ) -> DraftBatch:
        return self.lookup_batch(self.prepare(sequences, max_nodes, max_depth), selection)

    def lookup_trees(
        self, sequences: Sequence[Sequence[int]], max_nodes: int = 0, selection: str = "longest"
    ) -> list[DraftTree]:
        """`lookup(...).trees()`, as DraftIndex offers it."""
        return self.lookup(sequences, max_nodes, selection=selection).trees()

    def lookup_batch(self, batch: QueryBatch, selection: str = "longest") -> DraftBatch:
        """REST always drafts from the longest match; `selection` is accepted for the common interface."""
        trees = []
        for row in range(len(batch.lengths)):
            query = batch.tails[row, self.width - batch.lengths[row] :]
            trees.append(self.draft(query, int(batch.max_nodes[row]), int(batch.max_depth[row])))
        return _as_batch(trees)

    def draft(self, query: np.ndarray, max_nodes: int, max_depth: int) -> DraftTree:
        n, low, high = self.longest_match(query)
        if n == 0:
            return DraftTree.empty()
        positions = self.rest.suffix_array[low : min(high, low + self.params.k)].astype(np.int64)
        return continuation_trie(
            self._continuations(positions + n), min(max_nodes, self.params.c), n, min(max_depth, self.params.m)
        )

    # -- suffix-array search ----------------------------------------------------------------------

    def longest_match(self, query: np.ndarray) -> tuple[int, int, int]:
        """(n, low, high): the longest matching suffix length and its suffix-array range; n = 0: none."""
        shortest = self.params.n_min
        longest = min(self.params.n_max, len(query))
        if longest < shortest or self._range(query[-shortest:]) is None:
            return 0, 0, 0
        while shortest < longest:  # invariant: a suffix of `shortest` tokens occurs
            middle = (shortest + longest + 1) // 2
            if self._range(query[-middle:], first_only=True) is None:
                longest = middle - 1
            else:
                shortest = middle
        low, high = self._range(query[-shortest:])
        return shortest, low, high

    def _range(self, ngram: np.ndarray, first_only: bool = False) -> tuple[int, int] | None:
        """Suffix-array range of suffixes starting with `ngram`, or None if it does not occur."""
        width, base, raw = self.rest.token_width, self.rest.tokens_offset, self.rest.raw
        pattern = ngram.astype(self.rest.tokens.dtype).tobytes()
        span = len(pattern)

        def prefix(start: np.integer) -> bytes:
            offset = base + int(start) * width
            return raw[offset : offset + span]

        suffixes = self.rest.suffix_array
        low = bisect.bisect_left(suffixes, pattern, key=prefix)
        if low == len(suffixes) or prefix(suffixes[low]) != pattern:
            return None
        if first_only:
            return low, low + 1
        return low, bisect.bisect_right(suffixes, pattern, lo=low, key=prefix)

    def _continuations(self, starts: np.ndarray) -> np.ndarray:
        """[P, m] tokens following each start, -1 from the first document end on."""
        tokens = self.rest.tokens
        index = np.minimum(starts[:, None] + np.arange(self.params.m)[None, :], len(tokens) - 1)
        values = tokens[index].astype(np.int64)
        ended = np.cumsum(values == self.rest.separator, axis=1) > 0
        return np.where(ended, -1, values)


def continuation_trie(continuations: np.ndarray, max_nodes: int, context_length: int, max_depth: int) -> DraftTree:
    """The `max_nodes` most frequent prefixes of the rows (-1 padded), as a best-first draft tree.

    Rows must be in lexicographic order, so that rows sharing a prefix are contiguous: a suffix
    array range gives exactly that order. Ties break by depth, then lexicographically, so the
    kept set is always prefix-closed (a prefix counts at least as often as its extensions).
    """
    rows, depth_limit = continuations.shape[0], min(continuations.shape[1], max_depth)
    counts, depths, first_rows, group_ids = [], [], [], []
    new_group = np.zeros(rows, bool)
    new_group[:1] = True
    group_of_row = []  # per depth: group id of every row
    for depth in range(1, depth_limit + 1):
        column = continuations[:, depth - 1]
        new_group = new_group | np.concatenate([[True], column[1:] != column[:-1]])
        group = np.cumsum(new_group) - 1
        group_of_row.append(group)
        valid = column >= 0
        if not valid.any():
            break
        count = np.bincount(group[valid], minlength=group[-1] + 1)
        starts = np.flatnonzero(new_group & valid)
        counts.append(count[group[starts]])
        depths.append(np.full(len(starts), depth))
        first_rows.append(starts)
        group_ids.append(group[starts])
    if not counts:
        return DraftTree.empty()
    count, depth, first, gid = (np.concatenate(a) for a in (counts, depths, first_rows, group_ids))
    order = np.lexsort((first, depth, -count))[:max_nodes]
    count, depth, first, gid = count[order], depth[order], first[order], gid[order]
    index_of = {(int(d), int(g)): i for i, (d, g) in enumerate(zip(depth, gid))}
    parents = np.array(
        [-1 if d == 1 else index_of[(int(d) - 1, int(group_of_row[d - 2][r]))] for d, r in zip(depth, first)], np.int32
    )
    probabilities = (count / rows).astype(np.float32)
    return DraftTree(
        continuations[first, depth - 1].astype(np.int32),
        parents,
        probabilities,
        context_length,
        float(probabilities.sum()),
    )


def _as_batch(trees: list[DraftTree]) -> DraftBatch:
    sizes = np.array([len(t) for t in trees], np.int64)

    def joined(name: str, dtype: type) -> np.ndarray:
        parts = [getattr(t, name) for t in trees]
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    return DraftBatch(
        joined("tokens", np.int32),
        joined("parents", np.int32),
        joined("probabilities", np.float32),
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        np.array([t.context_length for t in trees], np.int32),
        np.array([t.score for t in trees], np.float32),
    )
