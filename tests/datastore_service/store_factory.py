"""Publish a real store file straight from token documents (any vocabulary size), through the
production pipeline: SQL counting and trees, budgeted writing, atomic publishing."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from datastore_service.build.compact_table import rank_draft_trees
from datastore_service.build.params import BuildParams
from datastore_service.build.store_writer import write_and_publish
from datastore_service.sizes import Budget
from datastore_service.store.publishing import VersionedStore


def publish_token_store(
    path: Path,
    documents: list[list[int]],
    vocab_size: int,
    params: BuildParams | None = None,
    tokenizer: str = "test-vocab",
) -> Path:
    params = params or BuildParams(max_context=3, max_depth=4, top_c=8, budget=Budget(rows=10**9))
    lengths = [len(doc) for doc in documents]
    # DuckDB reads this local by name (replacement scan) in the CREATE below.
    tokens = pa.table(  # noqa: F841
        {
            "doc_id": np.repeat(np.arange(len(documents), dtype=np.int32), lengths),
            "pos": np.arange(sum(lengths), dtype=np.int64),
            "token": np.array([t for doc in documents for t in doc], dtype=np.int32),
        }
    )
    store = VersionedStore(path)
    version = store.new_version()
    with duckdb.connect() as connection:
        connection.execute("CREATE TEMP TABLE tokens AS SELECT * FROM tokens")
        candidates = rank_draft_trees(connection, params, vocab_size, progress=False)
        info = {
            "store_version": version,
            "crest_version": "test",
            "created_at": datetime.now(timezone.utc),
            "tokenizer_name": tokenizer,
            "tokenizer_fingerprint": f"{tokenizer}-{vocab_size}",
            "vocab_size": vocab_size,
            "corpus_name": "tokens",
            "corpus_fingerprint": "-",
            "corpus_documents": len(documents),
            "corpus_tokens": sum(lengths),
            "max_context": params.max_context,
            "max_depth": params.max_depth,
            "policy": params.policy,
            "build_params": params.as_dict(),
        }
        write_and_publish(connection, store, params.budget, candidates, [f"<{i}>" for i in range(vocab_size)], info)
    return path
