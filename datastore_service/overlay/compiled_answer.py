"""The learning store's LONGEST and MERGED answers in one compiled call (merged_answer.c).

`trees.answer` states the rule in numpy and stays its reference: tests hold the two bit-identical.
The extension is built by the package install (optional: without a C compiler the install still
succeeds and `answer` runs the numpy rule, ~5x slower for a batch of 64). The call releases the
GIL, so the server's ingestion threads run beside a lookup's answer.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from datastore_service.draft import DraftBatch, QueryBatch, answer_buffers, filled_answers

if TYPE_CHECKING:  # trees.py imports this module
    from datastore_service.overlay.trees import TreeView

try:
    from datastore_service.overlay import _merged_answer
except ImportError:  # built without a C compiler: the numpy rule answers
    _merged_answer = None


def kernel() -> ModuleType | None:
    """The compiled extension, or None when the install could not build it."""
    return _merged_answer


def learned_answers(view: TreeView, batch: QueryBatch, static: DraftBatch, merge: bool) -> DraftBatch | None:
    """`trees.answer` for LONGEST (merge False) or MERGED (True) with `view`'s learned trees; None
    when no query takes a learned tree (the answer is then `static` itself)."""
    assert _merged_answer is not None, "the compiled answer is not built"
    rows, queries = view.rows, len(batch.lengths)
    capacity = len(static.tokens) + int(batch.max_nodes.sum())  # each answer: the store's or <= max_nodes
    out = answer_buffers(capacity, queries)
    written, replaced = _merged_answer.answers(
        queries,
        batch.tails.shape[1],
        np.ascontiguousarray(batch.tails, np.int64),
        np.ascontiguousarray(batch.lengths, np.int64),
        np.ascontiguousarray(batch.max_nodes, np.int64),
        np.ascontiguousarray(batch.max_depth, np.int64),
        len(view.keys),
        view.keys,
        view.starts,
        view.sizes,
        rows.tokens,
        rows.parents,
        rows.depths,
        rows.probabilities,
        np.ascontiguousarray(static.tokens, np.int32),
        np.ascontiguousarray(static.parents, np.int32),
        np.ascontiguousarray(static.probabilities, np.float32),
        np.ascontiguousarray(static.offsets, np.int64),
        np.ascontiguousarray(static.context_lengths, np.int32),
        np.ascontiguousarray(static.scores, np.float32),
        int(merge),
        *out,
        capacity,
    )
    if written == -2:
        raise MemoryError("the compiled answer could not allocate its scratch")
    if written < 0:
        raise RuntimeError("the compiled answer ran out of room: a bug, its capacity is an upper bound")
    if replaced == 0:
        return None
    return filled_answers(out, written)
