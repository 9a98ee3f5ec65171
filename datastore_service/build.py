"""`crest build`: corpus -> tokens -> n-gram counts -> draft trees -> selection -> published store."""

from __future__ import annotations

import errno
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import replace as replace_params
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import duckdb

from . import __version__
from .build_params import BuildParams
from .corpus import CorpusSpec
from .draft_trees import build_candidate_trees
from .errors import CrestError, StoreError
from .ngram_counting import count_ngrams
from .paths import cache_dir
from .publishing import VersionedStore, remove_path
from .selection import CostModel, rank_contexts
from .sizes import Budget
from .store_reader import read_store_info
from .store_writer import write_and_publish
from .token_table import tokenize_corpus
from .tokenizer import TargetTokenizer


@dataclass(frozen=True)
class EngineSettings:
    """DuckDB resources for the build; None leaves DuckDB's default."""

    threads: int | None = None
    memory_limit: str | None = None
    max_temp_size: str | None = None


@dataclass
class BuildSummary:
    store: Path
    version_file: Path
    documents: int
    skipped: list[tuple[str, str]]  # (file, reason) for every file the readers skipped
    tokens: int
    candidate_contexts: int
    contexts_kept: int
    nodes_kept: int
    file_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bytes_per_context(self) -> float:
        return self.file_bytes / max(self.contexts_kept, 1)


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start


# How a full disk, a quota or a file-size limit reads in DuckDB's and the OS's messages.
_DISK_FULL = ("no space left", "file too large", "disk quota")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _disk_full(exc: OSError | duckdb.Error) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return any(sign in str(exc).lower() for sign in _DISK_FULL)  # DuckDB and Arrow keep only the text


@contextmanager
def _disk_full_as_user_error() -> Iterator[None]:
    """Whatever was writing (tokens, spill files, the new version), say so in one line."""
    try:
        yield
    except (OSError, duckdb.Error) as exc:
        if not _disk_full(exc):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CrestError(f"out of disk space (or over a file-size limit) while building: {first}; "
                         "the version being written was not published, the last published one stays") from exc


@contextmanager
def _duckdb_errors_as_user_errors(settings: EngineSettings) -> Iterator[None]:
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        raise CrestError(
            f"DuckDB ran out of memory (memory limit {settings.memory_limit or 'default'}): "
            "raise --memory-limit, lower --max-context/--max-depth, or raise --min-count"
        ) from exc
    except RuntimeError as exc:
        if "interrupted" in str(exc).lower():  # DuckDB turns Ctrl-C inside a query into this
            raise KeyboardInterrupt from exc
        raise
    except duckdb.IOException as exc:
        if "space" in str(exc).lower() or "temp" in str(exc).lower():
            raise CrestError(f"DuckDB ran out of disk or temp space: {str(exc).splitlines()[0]}") from exc
        raise


def _open_work_database(work_dir: Path, settings: EngineSettings) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("SET preserve_insertion_order = false")
    connection.execute("SET enable_progress_bar = false")
    connection.execute("SET temp_directory = $dir", {"dir": str(work_dir)})
    if settings.threads:
        connection.execute(f"SET threads = {int(settings.threads)}")
    if settings.memory_limit:
        connection.execute("SET memory_limit = $limit", {"limit": settings.memory_limit})
    if settings.max_temp_size:
        connection.execute("SET max_temp_directory_size = $size", {"size": settings.max_temp_size})
    return connection


def _refuse_other_tokenizer(store: VersionedStore, tokenizer: TargetTokenizer, replace: bool) -> None:
    published = store.published()
    if published is None or replace:
        return
    try:
        info = read_store_info(published)
    except StoreError:
        return  # an unreadable old version is simply replaced
    if info["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise CrestError(
            f"{store.path} was built with tokenizer {info['tokenizer_name']!r} (another vocabulary than "
            f"{tokenizer.name!r}); choose another --output or pass --replace"
        )


def rank_draft_trees(
    connection: duckdb.DuckDBPyConnection, params: BuildParams, vocab_size: int, clock: _Stopwatch | None = None,
    progress: bool = True,
) -> int:
    """From table `tokens` to ranked candidate trees (see selection.py); returns the candidate count."""
    clock = clock or _Stopwatch()
    with clock.phase("count"):
        count_ngrams(connection, params, vocab_size, progress)
    with clock.phase("trees"):
        build_candidate_trees(connection, params, progress)
        return rank_contexts(connection, params.policy, CostModel())


@dataclass(frozen=True)
class StoreTarget:
    """One store to publish from a build's ranked trees: where, within which budget, by which policy."""

    output: Path
    budget: Budget
    policy: str


def build_store(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    output: Path,
    params: BuildParams,
    settings: EngineSettings = EngineSettings(),
    replace: bool = False,
    progress: bool = True,
) -> BuildSummary:
    target = StoreTarget(output, params.budget, params.policy)
    return build_stores(corpus, tokenizer_spec, params, [target], settings, replace, progress)[0]


def build_stores(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    params: BuildParams,
    targets: Sequence[StoreTarget],
    settings: EngineSettings = EngineSettings(),
    replace: bool = False,
    progress: bool = True,
) -> list[BuildSummary]:
    """Count once, then publish one store per target (budgets and policies only change the selection).

    Each summary's seconds hold the shared phases (tokenize, count, trees with the first ranking)
    plus its own re-ranking and write: about what building that store alone would take."""
    with _disk_full_as_user_error():
        return _build_stores(corpus, tokenizer_spec, params, targets, settings, replace, progress)


def _build_stores(corpus: CorpusSpec, tokenizer_spec: str, params: BuildParams, targets: Sequence[StoreTarget],
                  settings: EngineSettings, replace: bool, progress: bool) -> list[BuildSummary]:
    clock = _Stopwatch()
    started = time.perf_counter()
    stores = [VersionedStore(target.output) for target in targets]
    tokenizer = TargetTokenizer.load(tokenizer_spec)
    for store in stores:
        _refuse_other_tokenizer(store, tokenizer, replace)

    with clock.phase("tokenize"):
        tokenized = tokenize_corpus(corpus, tokenizer, progress=progress)

    for store in stores:
        store.remove_stale_scratch()
    work_dir = stores[0].scratch(stores[0].new_version(), "work")
    work_dir.mkdir()
    summaries = []
    try:
        with _duckdb_errors_as_user_errors(settings), _open_work_database(work_dir, settings) as connection:
            connection.execute("CREATE TEMP TABLE tokens AS SELECT * FROM read_parquet($path)", {"path": str(tokenized.parquet)})
            candidates = rank_draft_trees(connection, params, tokenizer.vocab_size, clock, progress)
            ranked_policy = params.policy
            for store, target in zip(stores, targets):
                own = _Stopwatch()
                if target.policy != ranked_policy:
                    with own.phase("rank"):
                        rank_contexts(connection, target.policy, CostModel())
                    ranked_policy = target.policy
                store_params = replace_params(params, budget=target.budget, policy=target.policy)
                version = store.new_version()
                with own.phase("write"):
                    info = {
                        "store_version": version,
                        "crest_version": __version__,
                        "created_at": datetime.now(timezone.utc),
                        "tokenizer_name": tokenizer.name,
                        "tokenizer_fingerprint": tokenizer.fingerprint,
                        "vocab_size": tokenizer.vocab_size,
                        "corpus_name": corpus.display_name,
                        "corpus_fingerprint": tokenized.report.fingerprint,
                        "corpus_documents": tokenized.report.documents,
                        "corpus_tokens": tokenized.tokens,
                        "max_context": store_params.max_context,
                        "max_depth": store_params.max_depth,
                        "policy": store_params.policy,
                        "build_params": store_params.as_dict(),
                    }
                    written, final = write_and_publish(connection, store, target.budget, candidates,
                                                       tokenizer.pieces(), info)
                seconds = {**clock.seconds, **own.seconds}
                seconds["total"] = sum(seconds.values())
                summaries.append(BuildSummary(
                    store=store.path,
                    version_file=final,
                    documents=tokenized.report.documents,
                    skipped=tokenized.report.skipped,
                    tokens=tokenized.tokens,
                    candidate_contexts=candidates,
                    contexts_kept=written.contexts,
                    nodes_kept=written.nodes,
                    file_bytes=written.file_bytes,
                    seconds=seconds,
                ))
    finally:
        remove_path(work_dir)
    if len(summaries) == 1:  # one store: its total is simply the wall time
        summaries[0].seconds["total"] = time.perf_counter() - started
    return summaries


def default_store_path(corpus_name: str) -> Path:
    return cache_dir("stores") / f"{corpus_name}.duckdb"
