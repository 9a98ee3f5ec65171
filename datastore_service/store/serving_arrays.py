"""What a CREST store's serving file holds, derived from its `drafts` table, and writing it beside
the DuckDB file (`<version>.duckdb` -> `<version>.serving`). The DuckDB file stays the source of
truth: the serving file can always be rebuilt from it.

Arrays (serving_file.py lays them out; K contexts in hash order, M draft nodes, W = max_context;
T = uint16 when the vocabulary has at most 65,536 ids, else uint32):

    context_hashes   uint64 [K]         ascending; hash of each stored context (context_hash.py, seed below)
    context_tokens   T [K, W]           each context right-aligned (newest token last), 0 padded
    context_lengths  uint8 [K]
    context_counts   uint32|uint64 [K]  how often the context occurs in the corpus
    tree_offsets     int32|int64 [K+1]  context i's draft tree is nodes tree_offsets[i]:tree_offsets[i+1]
    node_tokens      T [M]              in the store's order (best first; a parent precedes its children)
    node_parents     int8|16|32 [M]     index of the parent inside its tree; -1 = the context
    node_cumulative  uint32|uint64 [M]  running sum of node counts inside each tree

Metadata: `store_info` (the DuckDB file's StoreInfo, so loading need not open DuckDB at all),
`store_file` (the DuckDB file's size and CRC-32: the serving file belongs to exactly those bytes),
width, hash_seed, max_tree_depth, max_tree_size.

Why cumulative counts rather than probabilities: node i's probability is (cum[i] - cum[i-1]) /
context count, exactly the store's count ratio, and what a tree's first k nodes expect to get
accepted is cum[k-1] / context count: one division of exact integers, so every lookup path ranks
trees the same way, ties included. Depths are not stored: a lookup derives them from the parents
when a query limits depth below `max_tree_depth`. For the default stdlib store (124,286 contexts,
3.35M nodes) this is 7 bytes a node, 26 MB for a 15.8 MB DuckDB file.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from datastore_service.draft import right_aligned
from datastore_service.errors import StoreError
from datastore_service.store.context_hash import HASH_SEEDS, suffix_hashes
from datastore_service.store.info import StoreInfo
from datastore_service.store.reader import open_store, reading
from datastore_service.store.serving_file import write_serving_file

SERVING_SUFFIX = ".serving"
FETCH_DRAFTS = "SELECT context, context_count, tokens, parents, counts FROM drafts"
SECTIONS = (
    "context_hashes",
    "context_tokens",
    "context_lengths",
    "context_counts",
    "tree_offsets",
    "node_tokens",
    "node_parents",
    "node_cumulative",
)


def serving_path(store_file: Path) -> Path:
    """The serving file of a resolved store file: same folder, same version, `.serving`."""
    return store_file.with_suffix(SERVING_SUFFIX)


def store_fingerprint(store_file: Path) -> dict[str, int]:
    """Size and CRC-32 of a DuckDB file, read through a small buffer (page cache, not this process's memory)."""
    checksum, buffer = 0, bytearray(1 << 20)
    with store_file.open("rb", buffering=0) as handle:
        while read := handle.readinto(buffer):
            checksum = zlib.crc32(memoryview(buffer)[:read], checksum)
    return {"bytes": store_file.stat().st_size, "crc32": checksum}


def write_serving_for(store_file: Path, target: Path) -> None:
    """Derive the serving file of the DuckDB file `store_file` and write it (fsynced) to `target`."""
    metadata, arrays = serving_content(store_file)
    write_serving_file(target, metadata, arrays)


def rebuild_serving_file(store_file: Path, replace: bool = True) -> Path:
    """Write the serving file beside `store_file` under a private name, then move it into place.
    With `replace=False` (it was missing) a file another process put there first is kept, so
    replicas that start together on an old store end up sharing one file's pages."""
    final = serving_path(store_file)
    private = final.with_name(f"{final.name}-{os.getpid()}")  # a scratch name VersionedStore cleans up
    try:
        write_serving_for(store_file, private)
        if not replace:
            try:
                os.link(private, final)  # fails if it exists, where rename would silently replace
                return final
            except FileExistsError:
                return final
            except OSError:  # no hard links on this file system: fall back to a rename
                pass
        os.replace(private, final)
    finally:
        private.unlink(missing_ok=True)
    return final


def serving_content(store_file: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The serving file's metadata and arrays, read from the DuckDB file (one columnar fetch)."""
    with open_store(store_file) as connection, reading(store_file):
        info = StoreInfo.read(connection, store_file)
        table = connection.sql(FETCH_DRAFTS).to_arrow_table()
    if table.num_rows == 0:
        raise StoreError(f"{store_file} holds no drafts")
    table = table.combine_chunks()
    lists = {name: table.column(name).chunk(0) for name in ("context", "tokens", "parents", "counts")}
    width, vocab_size = max(info.max_context, 1), info.vocab_size
    context_offsets = lists["context"].offsets.to_numpy().astype(np.int64)
    lengths = np.diff(context_offsets)
    if lengths.min() < 1 or lengths.max() > width:
        raise StoreError(f"{store_file}: a stored context has {lengths.max()} tokens, outside 1..{width}")
    context_values = lists["context"].values.to_numpy().astype(np.int64)
    matrix = right_aligned(context_values, lengths, width)
    seed, hashes = _collision_free_hashes(matrix, lengths, store_file)
    order = np.argsort(hashes, kind="stable")

    # Trees in hash order, each tree's nodes contiguous and in stored order.
    source_offsets = lists["tokens"].offsets.to_numpy().astype(np.int64)
    sizes = np.diff(source_offsets)[order]
    if sizes.min() < 1:
        raise StoreError(f"{store_file}: a stored context has an empty draft tree")
    gather = concatenated_ranges(source_offsets[:-1][order], sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    starts = np.repeat(offsets[:-1], sizes)
    parents = lists["parents"].values.to_numpy()[gather].astype(np.int64)
    if ((parents < -1) | (parents >= np.arange(len(parents)) - starts)).any():
        raise StoreError(f"{store_file}: a draft node's parent does not precede it")
    running = np.cumsum(lists["counts"].values.to_numpy()[gather].astype(np.int64))
    cumulative = running - np.repeat(np.concatenate([[0], running])[offsets[:-1]], sizes)
    tokens = lists["tokens"].values.to_numpy()[gather]
    context_counts = table.column("context_count").to_numpy()[order]
    if max(int(tokens.max()), int(context_values.max())) >= vocab_size or min(tokens.min(), context_values.min()) < 0:
        raise StoreError(f"{store_file}: a stored token id is outside the vocabulary [0, {vocab_size})")

    token_type = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    metadata = {
        "store_info": dataclasses.asdict(info),
        "store_file": store_fingerprint(store_file),
        "width": width,
        "hash_seed": seed,
        "max_tree_depth": int(depths_within(parents, starts).max()),
        "max_tree_size": int(sizes.max()),
    }
    arrays = {
        "context_hashes": hashes[order],
        "context_tokens": np.maximum(matrix[order], 0).astype(token_type),
        "context_lengths": lengths[order].astype(np.uint8 if width < 256 else np.uint16),
        "context_counts": context_counts.astype(_unsigned_for(int(context_counts.max()))),
        "tree_offsets": offsets.astype(np.int32 if offsets[-1] < 2**31 else np.int64),
        "node_tokens": tokens.astype(token_type),
        "node_parents": parents.astype(_signed_for(int(sizes.max()))),
        "node_cumulative": cumulative.astype(_unsigned_for(int(cumulative.max()))),
    }
    return metadata, arrays


def concatenated_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + size) for each pair, without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(sizes)
    return np.repeat(starts - ends + sizes, sizes) + np.arange(total)


def depths_within(parents: np.ndarray, tree_starts: np.ndarray) -> np.ndarray:
    """Depth of every node (1 = after the context); `tree_starts[i]` = flat index of node i's tree's
    first node. Parents precede children, so a few vectorised passes settle it."""
    depths = np.ones(len(parents), np.int32)
    has_parent = parents >= 0
    parent_flat = tree_starts + np.where(has_parent, parents, 0)
    while True:
        updated = np.where(has_parent, depths[parent_flat] + 1, 1)
        if np.array_equal(updated, depths):
            return depths
        depths = updated


def _unsigned_for(largest: int) -> type:
    return np.uint32 if largest < 2**32 else np.uint64


def _signed_for(tree_size: int) -> type:
    """Parents index into a tree of `tree_size` nodes (-1 = the context)."""
    return np.int8 if tree_size <= 128 else np.int16 if tree_size <= 32_768 else np.int32


def _collision_free_hashes(matrix: np.ndarray, lengths: np.ndarray, store_file: Path) -> tuple[int, np.ndarray]:
    """Hash every stored context; pick a seed under which no two stored contexts collide."""
    for seed in HASH_SEEDS:
        hashes = suffix_hashes(matrix, seed)[np.arange(len(lengths)), lengths - 1]
        if len(np.unique(hashes)) == len(hashes):
            return seed, hashes
    raise StoreError(f"{store_file}: stored contexts collide under every hash seed (duplicate contexts?)")
