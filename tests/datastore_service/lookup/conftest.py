"""Stores shared by the lookup tests (built once a session: each takes a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datastore_service.lookup.stores import BIG_IDS, EDGE_IDS, publish_zipf_store


@pytest.fixture(scope="session")
def big_id_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_zipf_store(tmp_path_factory.mktemp("big-ids") / "big.duckdb", BIG_IDS, vocab_size=262_144)


@pytest.fixture(scope="session")
def edge_id_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_zipf_store(tmp_path_factory.mktemp("edge-ids") / "edge.duckdb", EDGE_IDS, vocab_size=65_536)
