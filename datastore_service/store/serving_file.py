"""The serving file format: named arrays behind a small JSON header, each array with its CRC-32,
laid out so that a reader maps the file and uses the arrays in place (no parsing, no copies).

Format version 1 (integers little-endian):

    bytes 0..7      magic b"CRESTSRV"
    bytes 8..11     u32  format version (1)
    bytes 12..15    u32  H, the length of the JSON header
    bytes 16..19    u32  CRC-32 of the JSON header
    bytes 20..20+H  JSON header, UTF-8:
                    {"metadata": {what the arrays describe},
                     "sections": [{"name", "dtype" (numpy's, e.g. "<u2"), "shape", "offset", "nbytes", "crc32"}]}
    zero padding, then each section's raw C-order bytes at its offset; every offset is a multiple of 64.

A reader checks the magic, the version, the header's CRC and every section's bounds and CRC-32
before it hands out an array, so a damaged or cut file is refused with one line
(`DamagedServingFile`), never served. The arrays are read-only views of a shared mapping: every
process that maps the same file shares its pages in the page cache.

Why raw arrays and not Arrow IPC: Arrow IPC maps without copies too, but it has no checksums (a
flipped bit would be served), its arrays of different lengths (per context, per node, offsets)
would need one record batch each, and opening it builds pyarrow objects where `np.frombuffer` on
the mapping is all this needs. The same shape as safetensors: a JSON header, then aligned bytes.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datastore_service.errors import StoreError

MAGIC = b"CRESTSRV"
FORMAT_VERSION = 1
ALIGNMENT = 64
_PREFIX = struct.Struct("<8sIII")  # magic, format version, header length, header CRC-32


class DamagedServingFile(StoreError):
    """The serving file is cut short, garbled or of another format: rebuild it from the DuckDB file."""


@dataclass(frozen=True)
class ServingFile:
    origin: str  # the file's path, or a note that it lives in memory
    metadata: dict[str, Any]
    arrays: dict[str, np.ndarray]  # read-only views of the mapping, in the file's order


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _header(metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """The JSON header and where the first section starts (sections follow each other, aligned)."""
    checksums = {name: zlib.crc32(array) for name, array in arrays.items()}
    start = 0
    while True:  # offsets are written in the header, so its length depends on them: settle both
        sections, offset = [], start
        for name, array in arrays.items():
            sections.append(
                {
                    "name": name,
                    "dtype": array.dtype.str,
                    "shape": list(array.shape),
                    "offset": offset,
                    "nbytes": array.nbytes,
                    "crc32": checksums[name],
                }
            )
            offset = _aligned(offset + array.nbytes)
        header = json.dumps({"metadata": metadata, "sections": sections}, separators=(",", ":")).encode()
        needed = _aligned(_PREFIX.size + len(header))
        if needed <= start:
            return header, start
        start = needed


def serving_bytes(metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytearray:
    """The whole file's content (arrays are made C-contiguous)."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    header, offset = _header(metadata, arrays)
    content = bytearray(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header)) + header)
    for array in arrays.values():
        content += bytes(offset - len(content))
        content += array.tobytes()
        offset = _aligned(offset + array.nbytes)
    return content


def write_serving_file(path: Path, metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write and fsync `path` (a private name: publishing renames it into place)."""
    content = serving_bytes(metadata, arrays)
    with path.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def map_serving_file(path: Path) -> ServingFile:
    """Map `path` read-only and check it whole; FileNotFoundError if it is missing."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise DamagedServingFile(f"serving file {path} is damaged: empty")
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return parse_serving(mapping, str(path))


def parse_serving(buffer: mmap.mmap | bytes | bytearray, origin: str) -> ServingFile:
    """Check a serving file's bytes and view its arrays in place."""

    def damaged(what: str) -> DamagedServingFile:
        return DamagedServingFile(f"serving file {origin} is damaged: {what}")

    view = memoryview(buffer)
    if len(view) < _PREFIX.size:
        raise damaged(f"{len(view)} bytes, shorter than its header")
    magic, version, length, checksum = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise damaged("not a CREST serving file (bad magic)")
    if version != FORMAT_VERSION:
        raise damaged(f"format version {version}, this crest reads {FORMAT_VERSION}")
    header = bytes(view[_PREFIX.size : _PREFIX.size + length])
    if len(header) != length or zlib.crc32(header) != checksum:
        raise damaged("header checksum mismatch")
    try:
        layout = json.loads(header)
        metadata, sections = layout["metadata"], layout["sections"]
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(f"unreadable header ({exc})") from exc
    arrays = {}
    for section in sections:
        try:
            name, offset, nbytes = str(section["name"]), int(section["offset"]), int(section["nbytes"])
            dtype, shape, expected = np.dtype(section["dtype"]), tuple(map(int, section["shape"])), section["crc32"]
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(f"unreadable section entry ({exc})") from exc
        if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
            raise damaged(f"section {name}: shape {shape} of {dtype} is not {nbytes} bytes")
        if offset % ALIGNMENT or offset + nbytes > len(view):
            raise damaged(f"section {name} lies outside the file (cut short?)")
        if zlib.crc32(view[offset : offset + nbytes]) != expected:
            raise damaged(f"section {name} checksum mismatch")
        array = np.frombuffer(buffer, dtype, nbytes // dtype.itemsize, offset).reshape(shape)
        array.flags.writeable = False
        arrays[name] = array
    return ServingFile(origin, metadata, arrays)
