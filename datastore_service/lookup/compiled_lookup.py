"""A store's LONGEST, SCORED and MERGED answers for a whole batch in one compiled call
(store_answer.c). small_batch.py and the numpy path in draft_index.py state the same rule and stay
its references: tests hold the three bit-identical. The extension is built by the package install
(optional: without a C compiler the install still succeeds and the Python paths answer)."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from datastore_service.draft import DraftBatch, DraftTree, QueryBatch, answer_buffers, filled_answers
from datastore_service.store.serving_arrays import SECTIONS

try:
    from datastore_service.lookup import _store_answer
except ImportError:  # built without a C compiler: the Python paths answer
    _store_answer = None

SELECTION_CODES = {"longest": 0, "scored": 1, "merged": 2}
# The serving arrays after `context_hashes`, as store_answer.c reads them (each in its own integer width).
SERVING_COLUMNS = tuple(name for name in SECTIONS if name != "context_hashes")


def kernel() -> ModuleType | None:
    """The compiled extension, or None when the install could not build it."""
    return _store_answer


class CompiledLookup:
    """One serving file's arrays, bound once to the kernel as they are mapped (nothing is copied)."""

    def __init__(self, arrays: dict[str, np.ndarray], width: int, seed: int, max_tree_depth: int) -> None:
        assert _store_answer is not None, "the compiled lookup is not built"
        self.hashes = np.ascontiguousarray(arrays["context_hashes"], np.uint64)
        self.columns = tuple(np.ascontiguousarray(arrays[name]) for name in SERVING_COLUMNS)
        self.sizes = tuple(column.dtype.itemsize for column in self.columns)
        self.bound = _store_answer.bind(
            self.hashes, *self.columns, self.sizes, len(self.hashes), width, seed, max_tree_depth
        )

    def answers(self, batch: QueryBatch, selection: str) -> DraftBatch:
        """Every query's tree for `selection` (longest, scored or merged)."""
        queries = len(batch.lengths)
        max_nodes = np.ascontiguousarray(batch.max_nodes, np.int64)
        capacity = int(max_nodes.sum())  # an answer holds at most its max_nodes
        out = answer_buffers(capacity, queries)
        written = _store_answer.answers(
            self.bound,
            SELECTION_CODES[selection],
            queries,
            np.ascontiguousarray(batch.tails, np.int64),
            np.ascontiguousarray(batch.lengths, np.int64),
            max_nodes,
            np.ascontiguousarray(batch.max_depth, np.int64),
            *out,
            capacity,
        )
        if written == -2:
            raise MemoryError("the compiled lookup could not allocate its scratch")
        if written < 0:
            raise RuntimeError("the compiled lookup ran out of room: a bug, its capacity is an upper bound")
        return filled_answers(out, written)

    def tree(self, tokens: list[int], max_nodes: int, max_depth: int, selection: str, vocab: int) -> DraftTree | None:
        """One sequence's tree straight from a list of ints (limits already resolved, > 0); None when
        the list is not plainly valid (1..width ids in the vocabulary): the general path then says why."""
        out = np.empty(max_nodes, np.int32), np.empty(max_nodes, np.int32), np.empty(max_nodes, np.float32)
        answer = _store_answer.tree(self.bound, SELECTION_CODES[selection], tokens, max_nodes, max_depth, vocab, *out)
        if answer is None:
            return None
        size, context_length, score = answer
        return DraftTree(out[0][:size], out[1][:size], out[2][:size], context_length, score)
