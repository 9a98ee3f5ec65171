"""The REST baseline's file: a whole tokenized corpus and its suffix array, in one flat file.

Layout (all of it is what a lookup needs, so the file size is REST's storage):

    bytes 0..15    MAGIC
    bytes 16..23   header length H, unsigned 64-bit little-endian
    bytes 24..55   SHA-256 of the header's H bytes
    bytes 56..     H bytes of UTF-8 JSON: metadata, and for each array its dtype, offset, length
                   and the SHA-256 of its bytes
    then           `tokens` and `suffix_array`, each starting at a multiple of 64 bytes

`tokens` is the corpus, documents in order, each followed by SEPARATOR (the dtype's largest
value, above every token id). Ids are stored big-endian in the narrowest width that holds the
vocabulary and the separator (2 bytes for vocabularies below 65,535, else 4), so comparing raw
bytes compares token sequences, and a match or a continuation never crosses a document end.
`suffix_array[i]` is the start of the i-th smallest suffix of `tokens` (int32, int64 past 2^31).

Every section has a checksum, verified whenever the file is opened (about 30 ms for the whole
9M-token stdlib corpus): a flipped byte in the suffix array would otherwise only make lookups
silently wrong. Version 1 files (no checksums) are refused with a request to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datastore_service.errors import StoreError

MAGIC_PREFIX = b"CREST-REST-"
MAGIC = MAGIC_PREFIX + b"v2\x00\x00\x00"
FORMAT_VERSION = "rest-v2"
ARRAYS = ("tokens", "suffix_array")
_DIGEST_BYTES = 32
_PREAMBLE = len(MAGIC) + 8 + _DIGEST_BYTES
_ALIGN = 64


def token_dtype(vocab_size: int) -> np.dtype:
    """Narrowest big-endian unsigned width holding every id and a separator above them."""
    return np.dtype(">u2") if vocab_size < np.iinfo(np.uint16).max else np.dtype(">u4")


def separator_of(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


def is_rest_file(path: Path) -> bool:
    """A REST file of any format version (opening it tells a version this crest cannot read)."""
    with Path(path).open("rb") as handle:
        return handle.read(len(MAGIC_PREFIX)) == MAGIC_PREFIX


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def write_rest_file(path: Path, metadata: dict[str, Any], tokens: np.ndarray, suffix_array: np.ndarray) -> int:
    """Write the file at `path` (tokens already in the stored dtype); returns its size in bytes."""
    # The bytes as stored (any byte order), for the checksum and the write.
    arrays = {name: np.ascontiguousarray(array).view(np.uint8) for name, array in zip(ARRAYS, (tokens, suffix_array))}
    # The header holds the arrays' offsets, which depend on the header's own length: fix a point.
    layout: dict[str, dict[str, Any]] = {
        name: {"dtype": a.dtype.str, "length": len(a), "offset": 0, "sha256": _sha256(arrays[name].data)}
        for name, a in zip(ARRAYS, (tokens, suffix_array))
    }
    while True:
        header = json.dumps({**metadata, "format": FORMAT_VERSION, "arrays": layout}).encode()
        offset = _aligned(_PREAMBLE + len(header))
        changed = False
        for name, array in arrays.items():
            if layout[name]["offset"] != offset:
                layout[name]["offset"], changed = offset, True
            offset = _aligned(offset + array.nbytes)
        if not changed:
            break
    with path.open("wb") as handle:
        handle.write(MAGIC + struct.pack("<Q", len(header)) + hashlib.sha256(header).digest() + header)
        for name, array in arrays.items():
            handle.seek(layout[name]["offset"])
            handle.write(array.data)
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
    """Map the file and verify every section's checksum; StoreError (one line) if anything is off."""
    with Path(path).open("rb") as handle:
        try:
            raw = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise StoreError(f"{path} is empty, not a REST store") from exc
    magic = raw[: len(MAGIC)]
    if not magic.startswith(MAGIC_PREFIX):
        raise StoreError(f"{path} is not a REST store file")
    if magic != MAGIC:
        version = magic[len(MAGIC_PREFIX) :].rstrip(b"\x00").decode("ascii", "replace")
        raise StoreError(
            f"{path} is REST format {version!r}; this crest reads {FORMAT_VERSION} (with checksums): "
            "rebuild it with crest build --kind rest"
        )
    try:
        (header_length,) = struct.unpack("<Q", raw[len(MAGIC) : len(MAGIC) + 8])
        header = raw[_PREAMBLE : _PREAMBLE + header_length]
        if hashlib.sha256(header).digest() != raw[len(MAGIC) + 8 : _PREAMBLE]:
            raise StoreError(f"{path} has a corrupt REST header (its checksum does not match)")
        metadata = json.loads(header.decode())
        arrays = {name: _mapped_array(path, raw, name, metadata["arrays"][name]) for name in ARRAYS}
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise StoreError(f"{path} has a corrupt REST header: {exc}") from exc
    return RestFile(
        Path(path), metadata, arrays["tokens"], arrays["suffix_array"], raw, metadata["arrays"]["tokens"]["offset"]
    )


def _mapped_array(path: Path, raw: mmap.mmap, name: str, spec: dict[str, Any]) -> np.ndarray:
    """Section `name` as an array over the mapping, once its bytes match their checksum."""
    dtype = np.dtype(spec["dtype"])
    start, end = spec["offset"], spec["offset"] + spec["length"] * dtype.itemsize
    if end > len(raw):
        raise StoreError(f"{path} is truncated: its {name} array runs past the end of the file")
    with memoryview(raw)[start:end] as section:  # hashed in place, never copied
        if _sha256(section) != spec["sha256"]:
            raise StoreError(f"{path} is corrupt: its {name} section does not match its checksum")
    return np.frombuffer(raw, dtype, spec["length"], start)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN
