"""`crest build`: corpus -> tokens -> n-gram counts -> draft trees -> selection -> published store."""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import replace as replace_params
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from datastore_service import __version__
from datastore_service.build.compact_table import Stopwatch, rank_counted_trees, rank_draft_trees, rerank_compact_table
from datastore_service.build.corpus import CorpusSpec
from datastore_service.build.interrupts import InterruptGuard
from datastore_service.build.params import BuildParams
from datastore_service.build.shard_counts import merge_shard_counts
from datastore_service.build.spark.engine import SparkSettings
from datastore_service.build.store_writer import write_and_publish
from datastore_service.build.token_table import TokenizedCorpus, tokenize_corpus
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.errors import CorpusError, CrestError, StoreError
from datastore_service.paths import cache_dir
from datastore_service.sizes import Budget
from datastore_service.store.publishing import VersionedStore, remove_path
from datastore_service.store.reader import read_store_info


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
    unchanged: bool = False  # the build equalled the published version, which stays: nothing was published

    @property
    def bytes_per_context(self) -> float:
        return self.file_bytes / max(self.contexts_kept, 1)


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
        raise CrestError(
            f"out of disk space (or over a file-size limit) while building: {first}; "
            "the version being written was not published, the last published one stays"
        ) from exc


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


def _compact_table_on_spark(
    connection: duckdb.DuckDBPyConnection,
    spark: SparkSettings,
    parts: list[TokenizedCorpus],
    params: BuildParams,
    vocab_size: int,
    work_dir: Path,
    clock: Stopwatch,
    progress: bool,
) -> int:
    """Run the SQL on Spark (shards: counted apart and summed there), then load its compact table."""
    from datastore_service.build.spark.engine import build_compact_table, build_sharded_compact_table, spark_session

    exported = work_dir / "compact_drafts"
    with spark_session(spark) as session:
        if len(parts) > 1:
            candidates = build_sharded_compact_table(session, parts, params, vocab_size, exported, clock, progress)
        else:
            candidates = build_compact_table(session, parts[0].parquet, params, vocab_size, exported, clock, progress)
    with clock.phase("load"):
        connection.execute(
            "CREATE TEMP TABLE compact_drafts AS SELECT * FROM read_parquet($files)",
            {"files": str(exported / "*.parquet")},
        )
    return candidates


def _compact_table(
    connection: duckdb.DuckDBPyConnection,
    parts: list[TokenizedCorpus],
    params: BuildParams,
    vocab_size: int,
    spark: SparkSettings | None,
    work_dir: Path,
    clock: Stopwatch,
    progress: bool,
    counted: tuple[Path, ...] = (),
) -> int:
    """Fill `compact_drafts` in the work database by the chosen engine; returns the candidate count."""
    if spark is not None:
        return _compact_table_on_spark(connection, spark, parts, params, vocab_size, work_dir, clock, progress)
    if len(parts) + len(counted) > 1:  # shards: counts summed in DuckDB
        with clock.phase("count"):
            merge_shard_counts(connection, parts, params.levels, params.min_count, vocab_size, progress, counted)
        return rank_counted_trees(connection, params, clock, progress)
    connection.execute("CREATE TEMP TABLE tokens AS SELECT * FROM read_parquet($path)", {"path": str(parts[0].parquet)})
    return rank_draft_trees(connection, params, vocab_size, clock, progress)


@dataclass(frozen=True)
class ObservedCounts:
    """Counts a learning server observed (one complete count file) and the snapshots they sum."""

    path: Path
    tokens: int
    folded: dict[str, int]  # per snapshot writer, the last snapshot included
    fingerprint: str
    base_fingerprint: str | None  # the corpus the store was built from; another corpus is refused


@dataclass(frozen=True)
class StoreTarget:
    """One store to publish from a build's ranked trees: where, within which budget, by which policy,
    and how many older versions to keep besides the published, pinned and served ones."""

    output: Path
    budget: Budget
    policy: str
    keep: int | None = None  # None: as last given for this store, else KEEP_OLD_VERSIONS


def build_store(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    output: Path,
    params: BuildParams,
    settings: EngineSettings = EngineSettings(),
    replace: bool = False,
    progress: bool = True,
    spark: SparkSettings | None = None,
    shards: tuple[CorpusSpec, ...] = (),
    observed: ObservedCounts | None = None,
    keep: int | None = None,
) -> BuildSummary:
    target = StoreTarget(output, params.budget, params.policy, keep)
    return build_stores(corpus, tokenizer_spec, params, [target], settings, replace, progress, spark, shards, observed)[
        0
    ]


def build_stores(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    params: BuildParams,
    targets: Sequence[StoreTarget],
    settings: EngineSettings = EngineSettings(),
    replace: bool = False,
    progress: bool = True,
    spark: SparkSettings | None = None,
    shards: tuple[CorpusSpec, ...] = (),
    observed: ObservedCounts | None = None,
) -> list[BuildSummary]:
    """Count once, then publish one store per target (budgets and policies only change the selection).

    Each summary's seconds hold the shared phases (tokenize, count, trees with the first ranking)
    plus its own re-ranking and write: about what building that store alone would take.

    `spark` runs counting and ranking on Spark instead of in DuckDB. With `shards`, `corpus` and
    each shard are counted apart (cached per shard) and the counts summed: the stores equal those
    built from the union of their documents. `observed` adds counts a learning server snapshotted
    (compaction.py) the same way, and records in the store which snapshots it holds."""
    if observed and spark is not None:
        raise CrestError("folding observed counts (crest compact) runs on --engine duckdb only")
    if spark is not None and any(target.policy != params.policy for target in targets):
        raise CrestError("a Spark build ranks by one policy; build other policies separately")
    for spec in (corpus, *shards):  # before tokenizing the others: a mistyped shard fails in a second
        if not spec.path.exists():
            raise CorpusError(f"corpus not found: {spec.path}")
    with _disk_full_as_user_error(), InterruptGuard() as interrupts:
        return _build_stores(
            corpus, tokenizer_spec, params, targets, settings, replace, progress, spark, shards, interrupts, observed
        )


def _build_stores(
    corpus: CorpusSpec,
    tokenizer_spec: str,
    params: BuildParams,
    targets: Sequence[StoreTarget],
    settings: EngineSettings,
    replace: bool,
    progress: bool,
    spark: SparkSettings | None,
    shards: tuple[CorpusSpec, ...],
    interrupts: InterruptGuard,
    observed: ObservedCounts | None = None,
) -> list[BuildSummary]:
    clock = Stopwatch()
    started = time.perf_counter()
    stores = [VersionedStore(target.output, keep=target.keep) for target in targets]
    tokenizer = TargetTokenizer.load(tokenizer_spec)
    for store in stores:
        _refuse_other_tokenizer(store, tokenizer, replace)

    with clock.phase("tokenize"):
        parts = [tokenize_corpus(spec, tokenizer, progress=progress) for spec in (corpus, *shards)]
    documents = sum(part.report.documents for part in parts)
    tokens = sum(part.tokens for part in parts)
    # order-free, so the same set of shards is the same corpus
    fingerprint = (
        parts[0].report.fingerprint
        if not shards
        else hashlib.sha256(":".join(sorted(part.report.fingerprint for part in parts)).encode()).hexdigest()
    )
    corpus_fingerprint, corpus_name, extra_params = fingerprint, "+".join(s.display_name for s in (corpus, *shards)), {}
    if observed is not None:
        if observed.base_fingerprint not in (None, fingerprint):
            raise CrestError(
                "this corpus is not the one the store was built from (other content): compaction "
                "adds observed counts to the same corpus, give its --corpus and --add-shard again"
            )
        tokens += observed.tokens
        corpus_name += "+observed"
        corpus_fingerprint = hashlib.sha256(f"{fingerprint}:{observed.fingerprint}".encode()).hexdigest()
        extra_params = {
            "overlay": {"folded": observed.folded, "counts": observed.path.name, "base_corpus_fingerprint": fingerprint}
        }

    for store in stores:
        store.remove_stale_scratch()
    work_dir = stores[0].scratch(stores[0].new_version(), "work")
    work_dir.mkdir()
    summaries = []
    try:
        with _duckdb_errors_as_user_errors(settings), _open_work_database(work_dir, settings) as connection:
            candidates = _compact_table(
                connection,
                parts,
                params,
                tokenizer.vocab_size,
                spark,
                work_dir,
                clock,
                progress,
                (observed.path,) if observed is not None else (),
            )
            ranked_policy = params.policy
            for store, target in zip(stores, targets):
                own = Stopwatch()
                if target.policy != ranked_policy:
                    with own.phase("rank"):
                        rerank_compact_table(connection, target.policy)
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
                        "corpus_name": corpus_name,
                        "corpus_fingerprint": corpus_fingerprint,
                        "corpus_documents": documents,
                        "corpus_tokens": tokens,
                        "max_context": store_params.max_context,
                        "max_depth": store_params.max_depth,
                        "policy": store_params.policy,
                        "build_params": {**store_params.as_dict(), **extra_params},
                    }
                    written, final = write_and_publish(
                        connection, store, target.budget, candidates, tokenizer.pieces(), info, interrupts.check
                    )
                seconds = {**clock.seconds, **own.seconds}
                seconds["total"] = sum(seconds.values())
                summaries.append(
                    BuildSummary(
                        store=store.path,
                        version_file=final,
                        documents=documents,
                        skipped=[skip for part in parts for skip in part.report.skipped],
                        tokens=tokens,
                        candidate_contexts=candidates,
                        contexts_kept=written.contexts,
                        nodes_kept=written.nodes,
                        file_bytes=written.file_bytes,
                        seconds=seconds,
                        unchanged=final.name != f"{version}{store.suffix}",
                    )
                )
    finally:
        remove_path(work_dir)
    if len(summaries) == 1:  # one store: its total is simply the wall time
        summaries[0].seconds["total"] = time.perf_counter() - started
    return summaries


def default_store_path(corpus_name: str) -> Path:
    return cache_dir("stores") / f"{corpus_name}.duckdb"
