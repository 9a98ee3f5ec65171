"""A store's identity and build parameters, as the service and clients see them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from datastore_service.store.reader import store_info
from datastore_service.store.schema import schema_revision


@dataclass(frozen=True)
class StoreInfo:
    store_version: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int
    max_depth: int
    max_nodes: int
    contexts: int
    nodes: int
    corpus_name: str
    corpus_tokens: int
    policy: str
    build_params: dict[str, Any]
    schema_version: str
    crest_version: str

    @classmethod
    def read(cls, connection: duckdb.DuckDBPyConnection, path: Path) -> StoreInfo:
        info = store_info(connection, path)
        return cls(
            store_version=info["store_version"],
            tokenizer_name=info["tokenizer_name"],
            tokenizer_fingerprint=info["tokenizer_fingerprint"],
            vocab_size=int(info["vocab_size"]),
            max_context=int(info["max_context"]),
            max_depth=int(info["max_depth"]),
            max_nodes=int(info["build_params"]["top_c"]),
            contexts=int(info["contexts_kept"]),
            nodes=int(info["nodes_kept"]),
            corpus_name=info["corpus_name"],
            corpus_tokens=int(info["corpus_tokens"]),
            policy=info["policy"],
            build_params=info["build_params"],
            schema_version=schema_revision(connection) or "",
            crest_version=info["crest_version"],
        )
