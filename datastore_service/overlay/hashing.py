"""64-bit keys of token sequences, folded one token at a time, so a sequence's key extends its prefix's.

key(()) = ROOT; key(s + [t]) = mix(key(s), t). The overlay names every n-gram, context and draft
node by its key: a node of context c with path p has key(c + p), whichever side (store or
overlay) drafted it. Keys are hashes, not ids: two sequences share a key with probability about
2**-64 per pair, which at worst merges two drafts' counts (drafts are verified, output never changes).
"""

from __future__ import annotations

import numpy as np

ROOT = np.uint64(0x853C49E6748FEA9B)
_MULTIPLIER = np.uint64(0xD6E8FEB86659FD93)
_SHIFT = np.uint64(32)


def mix(keys: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """key(s + [t]) for arrays of key(s) and t."""
    with np.errstate(over="ignore"):
        state = (keys ^ (tokens.astype(np.uint64) + np.uint64(1))) * _MULTIPLIER
        return state ^ (state >> _SHIFT)


def find(sorted_keys: np.ndarray, needles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each needle is in `sorted_keys` (clipped to the last row when absent) and whether it is there.

    The needles are probed in sorted order: walking a big table in order is several times faster
    than probing it at random (about 20x for 600k needles into 3M keys)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(needles), np.int64), np.zeros(len(needles), bool)
    order = np.argsort(needles)
    where = np.empty(len(needles), np.int64)
    where[order] = np.searchsorted(sorted_keys, needles[order])
    np.minimum(where, len(sorted_keys) - 1, out=where)
    return where, sorted_keys[where] == needles


def suffix_keys(tails: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """keys[:, L-1] = key of each row's last L tokens (rows right-aligned, -1 padded); 0 past a row's length."""
    rows, width = tails.shape
    keys = np.zeros((rows, width), np.uint64)
    for length in range(1, width + 1):
        state = np.full(rows, ROOT, np.uint64)
        for column in range(width - length, width):
            state = mix(state, np.maximum(tails[:, column], 0))
        keys[:, length - 1] = np.where(lengths >= length, state, 0)
    return keys


def path_keys(context_keys: np.ndarray, tokens: np.ndarray, parents: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Key of every draft node: key(context + path to the node).

    Nodes of many trees, flat: node i belongs to the tree starting at starts[i] (flat index of its
    first node), has parent `parents[i]` local to that tree (-1 = the context, whose key is
    context_keys[i]); parents precede children, so a few vectorized passes settle every key."""
    keys = np.zeros(len(tokens), np.uint64)
    has_parent = parents >= 0
    parent_flat = starts + np.where(has_parent, parents, 0)
    known = ~has_parent
    keys[known] = mix(context_keys[known], tokens[known])
    while not known.all():
        ready = ~known & known[parent_flat]
        keys[ready] = mix(keys[parent_flat[ready]], tokens[ready])
        known |= ready
    return keys
