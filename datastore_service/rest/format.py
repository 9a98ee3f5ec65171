"""The REST baseline's file: a whole tokenized corpus and its suffix array, in one flat file.

Layout (all of it is what a lookup needs, so the file size is REST's storage):

    bytes 0..15    MAGIC
    bytes 16..23   header length H, unsigned 64-bit little-endian
    bytes 24..     H bytes of UTF-8 JSON: metadata, and for each array its dtype, offset, length
    then           `tokens` and `suffix_array`, each starting at a multiple of 64 bytes

`tokens` is the corpus, documents in order, each followed by SEPARATOR (the dtype's largest
value, above every token id). Ids are stored big-endian in the narrowest width that holds the
vocabulary and the separator (2 bytes for vocabularies below 65,535, else 4), so comparing raw
bytes compares token sequences, and a match or a continuation never crosses a document end.
`suffix_array[i]` is the start of the i-th smallest suffix of `tokens` (int32, int64 past 2^31).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datastore_service.errors import StoreError

MAGIC = b"CREST-REST-v1\x00\x00\x00"
FORMAT_VERSION = "rest-v1"
_ALIGN = 64


def token_dtype(vocab_size: int) -> np.dtype:
    """Narrowest big-endian unsigned width holding every id and a separator above them."""
    return np.dtype(">u2") if vocab_size < np.iinfo(np.uint16).max else np.dtype(">u4")


def separator_of(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


def is_rest_file(path: Path) -> bool:
    with Path(path).open("rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def write_rest_file(path: Path, metadata: dict[str, Any], tokens: np.ndarray, suffix_array: np.ndarray) -> int:
    """Write the file at `path` (tokens already in the stored dtype); returns its size in bytes."""
    arrays = {"tokens": tokens, "suffix_array": suffix_array}
    # The header holds the arrays' offsets, which depend on the header's own length: fix a point.
    layout: dict[str, dict[str, Any]] = {
        name: {"dtype": a.dtype.str, "length": len(a), "offset": 0} for name, a in arrays.items()
    }
    while True:
        header = json.dumps({**metadata, "format": FORMAT_VERSION, "arrays": layout}).encode()
        offset = _aligned(len(MAGIC) + 8 + len(header))
        changed = False
        for name, array in arrays.items():
            if layout[name]["offset"] != offset:
                layout[name]["offset"], changed = offset, True
            offset = _aligned(offset + array.nbytes)
        if not changed:
            break
    with path.open("wb") as handle:
        handle.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for name, array in arrays.items():
            handle.seek(layout[name]["offset"])
            handle.write(np.ascontiguousarray(array).tobytes())
    return path.stat().st_size


@dataclass
class RestFile:
    """An opened REST file: metadata, and the arrays mapped from disk (nothing is copied)."""

    path: Path
    metadata: dict[str, Any]
    tokens: np.ndarray
    suffix_array: np.ndarray
    raw: mmap.mmap  # the whole file; slicing it gives bytes, compared in C
    tokens_offset: int

    @property
    def token_width(self) -> int:
        return self.tokens.dtype.itemsize

    @property
    def separator(self) -> int:
        return separator_of(self.tokens.dtype)


def open_rest_file(path: Path) -> RestFile:
    with Path(path).open("rb") as handle:
        try:
            raw = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise StoreError(f"{path} is empty, not a REST store") from exc
    try:
        if raw[: len(MAGIC)] != MAGIC:
            raise StoreError(f"{path} is not a REST store file")
        (header_length,) = struct.unpack("<Q", raw[len(MAGIC) : len(MAGIC) + 8])
        start = len(MAGIC) + 8
        metadata = json.loads(raw[start : start + header_length].decode())
        if metadata.get("format") != FORMAT_VERSION:
            raise StoreError(f"{path} is REST format {metadata.get('format')!r}; this crest reads {FORMAT_VERSION}")
        arrays = {}
        for name in ("tokens", "suffix_array"):
            spec = metadata["arrays"][name]
            dtype = np.dtype(spec["dtype"])
            if spec["offset"] + spec["length"] * dtype.itemsize > len(raw):
                raise StoreError(f"{path} is truncated: its {name} array runs past the end of the file")
            arrays[name] = np.frombuffer(raw, dtype, spec["length"], spec["offset"])
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise StoreError(f"{path} has a corrupt REST header: {exc}") from exc
    return RestFile(
        Path(path), metadata, arrays["tokens"], arrays["suffix_array"], raw, metadata["arrays"]["tokens"]["offset"]
    )


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN
