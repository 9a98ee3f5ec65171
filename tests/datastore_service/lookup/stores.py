"""Real stores for the lookup tests, and what "the same answer" means for two draft batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datastore_service.draft import DraftBatch
from tests.datastore_service.store_factory import publish_token_store

# Ids on both sides of 16 bits in a 262,144-id vocabulary (Gemma's), and a 65,536-id one whose
# largest id still fits 16 bits.
BIG_IDS = [0, 65_535, 65_536, 131_071, 200_000, 262_143, 7, 99_999]
EDGE_IDS = [0, 1, 65_535, 65_534, 300, 40_000, 7, 12]


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
