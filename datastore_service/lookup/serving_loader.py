"""Open the serving file of a store version for the index: map it if it is sound and was derived
from exactly this DuckDB file, else rebuild it from the DuckDB file (one log line says why); never
serve it wrong. A sound serving file carries the store's metadata, so loading reads the DuckDB
file's bytes once (its CRC-32, through the page cache) but never opens it with DuckDB.

- Missing (a store published before serving files, or copied without it): built and written beside.
- Damaged (a checksum, bound or format check fails), derived from other bytes or for another
  schema: rebuilt and replaced.
- It can't be written (read-only folder, full disk): built in this process's memory (one warning:
  replicas won't share it).
- The DuckDB file is damaged, or of a schema this crest doesn't read: the StoreError from opening
  it (one line) refuses the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datastore_service.store.info import StoreInfo
from datastore_service.store.schema import head_revision
from datastore_service.store.serving_arrays import (
    SECTIONS,
    rebuild_serving_file,
    serving_content,
    serving_path,
    store_fingerprint,
)
from datastore_service.store.serving_file import (
    DamagedServingFile,
    ServingFile,
    map_serving_file,
    parse_serving,
    serving_bytes,
)

log = logging.getLogger("crest.lookup")


def open_serving_file(store_file: Path) -> tuple[StoreInfo, ServingFile]:
    """The store's metadata and its serving file, mapped and checked. Why it was rebuilt is logged
    once the rebuild succeeded; a rebuild that fails raises its one-line StoreError alone."""
    path = serving_path(store_file)
    info, serving, problem = _sound(path, store_file)
    if info is not None:
        return info, serving
    try:
        # Missing: keep one that a replica starting beside us may have just published; else replace.
        info, serving, _ = _sound(rebuild_serving_file(store_file, replace=bool(problem)), store_file)
        if info is None:
            info, serving, _ = _sound(rebuild_serving_file(store_file), store_file)
    except OSError as exc:  # read-only folder, full disk: serve from memory rather than not at all
        metadata, arrays = serving_content(store_file)
        serving = parse_serving(serving_bytes(metadata, arrays), f"{path.name} (in memory)")
        info = StoreInfo(**serving.metadata["store_info"])
        log.warning("cannot write %s (%s); serving from memory, unshared with other replicas", path, exc)
    if info is None:
        raise DamagedServingFile(f"serving file {path} was rebuilt from {store_file.name} but does not check")
    if problem:
        log.warning("%s; rebuilt it from %s", problem, store_file.name)
    else:
        log.info("built %s from %s (it had no serving file)", path.name, store_file.name)
    return info, serving


def _sound(path: Path, store_file: Path) -> tuple[StoreInfo | None, ServingFile | None, str]:
    """(metadata, mapping, "") for a sound serving file derived from `store_file`; else (None, None,
    why not), where why is "" for a missing file."""
    try:
        serving = map_serving_file(path)
    except FileNotFoundError:
        return None, None, ""
    except DamagedServingFile as exc:
        return None, None, str(exc)
    except OSError as exc:  # there, but not a file this process can read
        return None, None, f"serving file {path} is unreadable ({exc.strerror or exc})"
    info, problem = _belonging(serving, store_file)
    return info, (serving if info is not None else None), problem


def _belonging(serving: ServingFile, store_file: Path) -> tuple[StoreInfo | None, str]:
    """The store's metadata if this sound serving file was derived from `store_file`, else why not."""
    missing = [name for name in SECTIONS if name not in serving.arrays]
    if missing:
        return None, f"serving file {serving.origin} lacks sections {', '.join(missing)}"
    try:
        info = StoreInfo(**serving.metadata["store_info"])
    except (KeyError, TypeError) as exc:
        return None, f"serving file {serving.origin} has no readable store metadata ({exc})"
    if info.schema_version != head_revision():
        return None, f"serving file {serving.origin} is of schema {info.schema_version}, not {head_revision()}"
    if serving.metadata.get("store_file") != store_fingerprint(store_file):
        return None, f"serving file {serving.origin} was derived from another file than {store_file.name}"
    return info, ""
