"""Corpus -> token ids in columnar form: a Parquet file (doc_id, pos, token), cached by content.

The cache key joins the corpus content fingerprint and the tokenizer fingerprint, so a rebuild with
other counting parameters skips tokenization, and any change of text or tokenizer re-tokenizes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datastore_service.build.caches import mark_used
from datastore_service.build.corpus import CorpusReport, CorpusSpec, read_documents
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.errors import CorpusError
from datastore_service.paths import cache_dir

TOKEN_SCHEMA = pa.schema([("doc_id", pa.int32()), ("pos", pa.int64()), ("token", pa.int32())])


@dataclass(frozen=True)
class TokenizedCorpus:
    parquet: Path
    tokens: int
    report: CorpusReport
    from_cache: bool


def tokenize_corpus(
    spec: CorpusSpec, tokenizer: TargetTokenizer, batch_documents: int = 128, progress: bool = True
) -> TokenizedCorpus:
    """Tokens of `spec`, from the cache when the same text was tokenized by the same tokenizer.

    Streams: a first pass only fingerprints the documents (the cache key), a second tokenizes them
    a batch at a time into Parquet, so memory stays flat whatever the corpus's size."""
    report = CorpusReport()
    for _ in read_documents(spec, report):
        pass
    if report.documents == 0:
        raise CorpusError(f"corpus {spec.path} holds no non-empty document ({len(report.skipped)} files skipped)")
    key = hashlib.sha256(f"{report.fingerprint}:{tokenizer.fingerprint}".encode()).hexdigest()[:24]
    target = cache_dir("tokens") / f"{spec.display_name}-{key}.parquet"
    if target.exists():
        mark_used(target)
        return TokenizedCorpus(target, pq.read_metadata(target).num_rows, report, from_cache=True)

    partial = target.with_suffix(f".partial-{os.getpid()}")
    second_pass = CorpusReport()
    position = 0
    try:
        with (
            pq.ParquetWriter(partial, TOKEN_SCHEMA) as writer,
            tqdm(total=report.documents, unit="doc", desc="tokenize", disable=not progress) as bar,
        ):
            for first, batch in _batches(read_documents(spec, second_pass), batch_documents):
                batch_ids = tokenizer.encode_batch(batch)
                lengths = np.fromiter((len(ids) for ids in batch_ids), dtype=np.int64, count=len(batch_ids))
                tokens = np.fromiter((t for ids in batch_ids for t in ids), dtype=np.int32, count=int(lengths.sum()))
                doc_ids = np.repeat(np.arange(first, first + len(batch_ids), dtype=np.int32), lengths)
                positions = np.arange(position, position + len(tokens), dtype=np.int64)
                writer.write_table(pa.table([doc_ids, positions, tokens], schema=TOKEN_SCHEMA))
                position += len(tokens)
                bar.update(len(batch_ids))
                bar.set_postfix(tokens=f"{position:,}")
        if second_pass.fingerprint != report.fingerprint:
            raise CorpusError(f"corpus {spec.path} changed while it was being tokenized; build again")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return TokenizedCorpus(target, position, report, from_cache=False)


def _batches(documents: Iterator[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the batch's first document, up to `size` documents)."""
    batch: list[str] = []
    first = 0
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield first, batch
            first, batch = first + size, []
    if batch:
        yield first, batch
