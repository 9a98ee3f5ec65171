"""Real stores for the lookup tests, and what "the same answer" means for two draft batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from datastore_service.draft import DraftBatch
from datastore_service.lookup.draft_index import DraftIndex
from tests.datastore_service.store_factory import publish_token_store

# Ids on both sides of 16 bits in a 262,144-id vocabulary (Gemma's), and a 65,536-id one whose
# largest id still fits 16 bits.
BIG_IDS = [0, 65_535, 65_536, 131_071, 200_000, 262_143, 7, 99_999]
EDGE_IDS = [0, 1, 65_535, 65_534, 300, 40_000, 7, 12]
ONE_TREE_SELECTIONS = ("scored", "longest", "merged")  # each answered by one lookup (not chained)


def publish_zipf_store(path: Path, alphabet: list[int], vocab_size: int, seed: int = 3) -> Path:
    """Zipf-like choices over a small alphabet: plenty of repeated contexts and real trees."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(alphabet) + 1)
    documents = [[int(t) for t in rng.choice(alphabet, size=400, p=weights / weights.sum())] for _ in range(5)]
    return publish_token_store(path, documents, vocab_size=vocab_size)


def assert_same_answers(got: DraftBatch, expected: DraftBatch) -> None:
    """Equal arrays, equal dtypes, bit for bit (float32 included)."""
    for field in ("tokens", "parents", "probabilities", "offsets", "context_lengths", "scores"):
        a, b = getattr(got, field), getattr(expected, field)
        assert a.dtype == b.dtype, f"{field}: {a.dtype} != {b.dtype}"
        assert np.array_equal(a, b), f"{field}: {a} != {b}"


@st.composite
def queries(draw: st.DrawFn, index: DraftIndex, alphabet: list[int], most: int) -> list[list[int]]:
    """1..most queries: stored contexts (hits), stored contexts behind other tokens, and random ones
    (mostly misses)."""
    ids = st.sampled_from(alphabet) | st.integers(0, index.info.vocab_size - 1)
    rows = []
    for _ in range(draw(st.integers(1, most))):
        kind = draw(st.sampled_from(["stored", "extended", "random"]))
        if kind == "random":
            rows.append(draw(st.lists(ids, min_size=1, max_size=index.width)))
            continue
        stored = draw(st.integers(0, len(index.context_hashes) - 1))
        context = index.context_matrix[stored, index.width - int(index.context_lengths[stored]) :].tolist()
        before = draw(st.lists(ids, max_size=index.width)) if kind == "extended" else []
        rows.append((before + context)[-index.width :])
    return rows
