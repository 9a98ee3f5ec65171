"""How the serving file keys stored contexts: a 64-bit hash of a context's tokens, newest first.

The hash of the last n tokens extends the hash of the last n-1, so one pass over a query yields the
hashes of all its suffixes. Two spellings of the same function: vectorised over a batch (numpy,
for building the serving file and for big batches) and scalar (plain Python ints, for one
sequence). Both wrap at 64 bits, so they agree bit for bit (tests/datastore_service/store/
test_serving_file.py checks it). A hash only finds a candidate; lookups verify the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HASH_MULTIPLIER = 0x9E3779B97F4A7C15
# Tried in turn until one gives every stored context a distinct hash.
HASH_SEEDS = (0x2545F4914F6CDD1D, 0x6A09E667F3BCC909, 0xBB67AE8584CAA73B)
_MASK = (1 << 64) - 1


def suffix_hashes(tails: np.ndarray, seed: int) -> np.ndarray:
    """hashes[:, n-1] = hash of each row's last n tokens (rows right-aligned, newest token last)."""
    rows, width = tails.shape
    hashes = np.empty((rows, width), np.uint64)
    state = np.full(rows, seed, np.uint64)
    multiplier = np.uint64(HASH_MULTIPLIER)
    with np.errstate(over="ignore"):
        for n in range(1, width + 1):
            state = (state ^ (tails[:, width - n].astype(np.uint64) + np.uint64(1))) * multiplier
            state ^= state >> np.uint64(31)
            hashes[:, n - 1] = state
    return hashes


def suffix_hashes_of(tokens: Sequence[int], seed: int) -> list[int]:
    """[hash of the last 1 token, of the last 2, ...] of one sequence, as `suffix_hashes` computes them."""
    state, hashes = seed, []
    for token in reversed(tokens):
        state = ((state ^ (token + 1)) * HASH_MULTIPLIER) & _MASK
        state ^= state >> 31
        hashes.append(state)
    return hashes
