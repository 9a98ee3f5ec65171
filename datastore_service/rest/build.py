"""`crest build --kind rest`: the REST baseline's datastore, a corpus (or a fraction) and its suffix array.

The tokens come from the same cached tokenization as a CREST build, so both kinds see exactly the
same text. A fraction keeps whole documents, drawn in a seeded random order until the fraction of
the corpus's tokens is reached, so small REST stores sample the whole corpus rather than its first
files. The suffix array is built with divsufsort (`pydivsufsort`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from datastore_service import __version__
from datastore_service.build.corpus import CorpusSpec
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.errors import CrestError, StoreError
from datastore_service.paths import cache_dir
from datastore_service.rest.format import open_rest_file, separator_of, token_dtype, write_rest_file
from datastore_service.rest.index import RestParams
from datastore_service.store.publishing import VersionedStore, remove_path

REST_SUFFIX = ".rest"
FRACTION_SEED = 20231114
# What makes two REST files serve the same drafts, besides their arrays.
IDENTITY_KEYS = ("format", "kind", "tokenizer_fingerprint", "corpus_fingerprint", "build_params", "lookup_params")


@dataclass(frozen=True)
class RestBuildSummary:
    store: Path
    version_file: Path
    documents: int
    tokens: int
    corpus_tokens: int
    file_bytes: int
    seconds: dict[str, float]
    unchanged: bool = False  # equal to the published version, which stays: nothing was published


def corpus_with_separators(
    doc_ids: np.ndarray, tokens: np.ndarray, fraction: float, separator: int, dtype: np.dtype
) -> tuple[np.ndarray, int]:
    """Kept documents' tokens in corpus order, each followed by `separator`; and the document count.

    `doc_ids` must be non-decreasing (the token table's order)."""
    starts = np.flatnonzero(np.concatenate([[True], doc_ids[1:] != doc_ids[:-1]])) if len(doc_ids) else np.empty(0, int)
    lengths = np.diff(np.concatenate([starts, [len(doc_ids)]]))
    keep = np.ones(len(starts), bool)
    if fraction < 1.0:
        order = np.random.default_rng(FRACTION_SEED).permutation(len(starts))
        taken = np.cumsum(lengths[order]) <= max(fraction * len(tokens), lengths[order][0])
        keep = np.zeros(len(starts), bool)
        keep[order[taken]] = True
    row_keep = np.repeat(keep, lengths)
    kept_lengths = lengths[keep]
    # Each kept document shifts by the separators of the kept documents before it.
    shift = np.repeat(np.arange(len(kept_lengths)), kept_lengths)
    output = np.full(int(kept_lengths.sum()) + len(kept_lengths), separator, dtype=dtype.newbyteorder("="))
    output[np.arange(len(shift)) + shift] = tokens[row_keep]
    return output, int(keep.sum())


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    try:
        from pydivsufsort import divsufsort
    except ImportError as exc:
        raise CrestError("the REST baseline needs pydivsufsort: run scripts/setup") from exc
    return divsufsort(np.ascontiguousarray(tokens))


def build_rest_store(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    output: Path,
    fraction: float = 1.0,
    progress: bool = True,
    keep: int | None = None,
    lookup: RestParams = RestParams(),
) -> RestBuildSummary:
    """`lookup`: the k/n/m/c the store serves with unless a server overrides them."""
    if not 0.0 < fraction <= 1.0:
        raise CrestError(f"--fraction must be in (0, 1], got {fraction}")
    started = time.perf_counter()
    tokenizer = TargetTokenizer.load(tokenizer_spec)
    tokenized = tokenize_corpus(corpus, tokenizer, progress=progress)
    table = pq.read_table(tokenized.parquet, columns=["doc_id", "pos", "token"]).sort_by("pos")
    identity = {
        "tokenizer_name": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "corpus_name": corpus.display_name,
        "corpus_fingerprint": tokenized.report.fingerprint,
    }
    tokenize_seconds = time.perf_counter() - started
    summary = publish_rest_store(
        table.column("doc_id").to_numpy(), table.column("token").to_numpy(), fraction, output, identity, keep, lookup
    )
    summary.seconds["tokenize"] = tokenize_seconds
    summary.seconds["total"] = time.perf_counter() - started
    return summary


def same_rest_content(published: Path, candidate: Path) -> bool:
    """True when both files hold the same tokenizer, corpus, fraction, tokens and suffix array."""
    try:
        old, new = open_rest_file(published), open_rest_file(candidate)
    except StoreError:
        return False  # a damaged published file: publish the new one
    return (
        all(old.metadata.get(key) == new.metadata.get(key) for key in IDENTITY_KEYS)
        and np.array_equal(old.tokens, new.tokens)
        and np.array_equal(old.suffix_array, new.suffix_array)
    )


def publish_rest_store(
    doc_ids: np.ndarray,
    tokens: np.ndarray,
    fraction: float,
    output: Path,
    identity: dict[str, Any],
    keep: int | None = None,
    lookup: RestParams = RestParams(),
) -> RestBuildSummary:
    """Suffix-index the (fraction of the) token table and publish it as a new version of `output`,
    unless the published version holds exactly the same (then the summary says `unchanged`).

    `identity` names the tokenizer (name, fingerprint, vocab_size) and the corpus (name, fingerprint)."""
    seconds: dict[str, float] = {}
    phase = time.perf_counter()
    dtype = token_dtype(int(identity["vocab_size"]))
    corpus_tokens, documents = corpus_with_separators(doc_ids, tokens, fraction, separator_of(dtype), dtype)
    suffixes = suffix_array(corpus_tokens)
    seconds["suffix_array"] = time.perf_counter() - phase

    phase = time.perf_counter()
    store = VersionedStore(output, suffix=REST_SUFFIX, keep=keep)
    store.remove_stale_scratch()
    version = store.new_version()
    partial = store.scratch(version, "partial")
    kept_tokens = int(len(corpus_tokens) - documents)
    metadata = {
        **identity,
        "store_version": version,
        "crest_version": __version__,
        "kind": "rest",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "corpus_documents": documents,
        "corpus_tokens": kept_tokens,
        "build_params": {"fraction": fraction, "fraction_seed": FRACTION_SEED},
        "lookup_params": asdict(lookup),
    }
    try:
        file_bytes = write_rest_file(partial, metadata, corpus_tokens.astype(dtype), suffixes)
        final, new = store.publish_unless_identical(partial, version, same_rest_content)
    finally:
        remove_path(partial)
    seconds["write"] = time.perf_counter() - phase
    return RestBuildSummary(
        store.path, final, documents, kept_tokens, len(tokens), file_bytes, seconds, unchanged=not new
    )


def default_rest_path(corpus_name: str, fraction: float = 1.0) -> Path:
    suffix = "" if fraction == 1.0 else f"-{fraction:g}"
    return cache_dir("stores") / f"{corpus_name}{suffix}{REST_SUFFIX}"
