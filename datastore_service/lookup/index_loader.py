"""Open a published store of either kind as an index that answers lookups.

A CREST store is a DuckDB file; a REST baseline store is a flat file (rest_format.py). Both
indexes take the same queries and return the same draft batches, so the service, the decoder and
the evaluation serve either without knowing which.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.rest.format import is_rest_file
from datastore_service.rest.index import RestIndex
from datastore_service.store.reader import resolve_store

LookupIndex = DraftIndex | RestIndex


def load_index(path: Path, rest_overrides: Mapping[str, int] | None = None) -> LookupIndex:
    """`rest_overrides` replace a REST store's stored k/n/m/c (a CREST store has none to replace)."""
    resolved = resolve_store(path)
    if resolved.is_file() and is_rest_file(resolved):
        return RestIndex.load(resolved, rest_overrides)
    return DraftIndex.load(resolved)
