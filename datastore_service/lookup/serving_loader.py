"""Open the serving file of a store version for the index: map it if it is sound and belongs to the
DuckDB file, else rebuild it from the DuckDB file (one log line says why), never serve it wrong.

- Missing (a store published before serving files, or copied without it): built and written beside.
- Damaged (a checksum, bound or format check fails) or another version's: rebuilt and replaced.
- It can't be written (read-only folder, full disk): built in this process's memory (one warning:
  replicas won't share it).
- The DuckDB file itself is damaged: the StoreError from reading it (one line) refuses the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datastore_service.store.info import StoreInfo
from datastore_service.store.serving_arrays import (
    IDENTITY,
    SECTIONS,
    rebuild_serving_file,
    serving_content,
    serving_path,
)
from datastore_service.store.serving_file import (
    DamagedServingFile,
    ServingFile,
    map_serving_file,
    parse_serving,
    serving_bytes,
)

log = logging.getLogger("crest.lookup")


def open_serving_file(store_file: Path, info: StoreInfo) -> ServingFile:
    path = serving_path(store_file)
    rebuilding = f"rebuilding it from {store_file.name}"
    try:
        serving = map_serving_file(path)
        problem = _mismatch(serving, info)
        if problem is None:
            return serving
        log.warning("%s; %s", problem, rebuilding)
    except FileNotFoundError:
        log.info("building %s from %s (no serving file yet)", path.name, store_file.name)
    except DamagedServingFile as exc:
        log.warning("%s; %s", exc, rebuilding)
    except OSError as exc:  # there, but not a file this process can read
        log.warning("serving file %s is unreadable (%s); %s", path, exc.strerror or exc, rebuilding)
    try:
        return map_serving_file(rebuild_serving_file(store_file))
    except OSError as exc:  # read-only folder, full disk: serve from memory rather than not at all
        log.warning("cannot write %s (%s); serving from memory, unshared with other replicas", path, exc)
        metadata, arrays = serving_content(store_file)
        return parse_serving(serving_bytes(metadata, arrays), f"{path.name} (in memory)")


def _mismatch(serving: ServingFile, info: StoreInfo) -> str | None:
    """Why a sound serving file does not belong to this DuckDB file, or None if it does."""
    expected = {
        "store_version": info.store_version,
        "contexts": info.contexts,
        "nodes": info.nodes,
        "vocab_size": info.vocab_size,
    }
    missing = [name for name in SECTIONS if name not in serving.arrays]
    if missing:
        return f"serving file {serving.origin} lacks sections {', '.join(missing)}"
    found = {key: serving.metadata.get(key) for key in IDENTITY}
    if found != expected or serving.metadata.get("width") != max(info.max_context, 1):
        return f"serving file {serving.origin} belongs to another store ({found}, expected {expected})"
    return None
