"""The `crest` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crest_cli.help_format import CrestParser
from crest_cli.versions import with_default_action
from datastore_service import __version__
from datastore_service.build.corpus import FORMATS
from datastore_service.build.corpus import PRESETS as CORPUS_PRESETS
from datastore_service.build.params import POLICIES, BuildParams
from datastore_service.build.tokenizer import DEFAULT_TOKENIZER
from datastore_service.build.tokenizer import PRESETS as TOKENIZER_PRESETS
from datastore_service.errors import CrestError
from datastore_service.sizes import format_bytes, parse_budget
from datastore_service.store.publishing import KEEP_OLD_VERSIONS

if TYPE_CHECKING:
    from datastore_service.build.spark.engine import SparkSettings

DEFAULTS = BuildParams()
# REST's lookup parameters, as flags: (field of RestParams, flag, what it sets).
REST_FLAGS = (
    ("n_max", "--rest-n-max", "longest query suffix REST tries first (n)"),
    ("n_min", "--rest-n-min", "shortest query suffix REST tries last"),
    ("k", "--rest-k", "occurrences of the matched suffix read per lookup (k)"),
    ("m", "--rest-m", "continuation length in tokens: the deepest draft node (m)"),
    ("c", "--rest-c", "draft nodes kept: the most frequent continuation prefixes (c)"),
)


def _add_rest_flags(parser: argparse.ArgumentParser, title: str, description: str, show_defaults: bool) -> None:
    """REST's k/n/m/c; a flag not given is absent from the namespace (REST's default, or the store's)."""
    from datastore_service.rest.index import RestParams

    group = parser.add_argument_group(title, description)
    for name, flag, what in REST_FLAGS:
        shown = f"{what} (default: {getattr(RestParams(), name)})" if show_defaults else what
        group.add_argument(flag, dest=f"rest_{name}", type=int, default=argparse.SUPPRESS, metavar="N", help=shown)


def _rest_overrides(args: argparse.Namespace) -> dict[str, int]:
    """REST's k/n/m/c from the flags given on the command line."""
    return {name: getattr(args, f"rest_{name}") for name, _, _ in REST_FLAGS if hasattr(args, f"rest_{name}")}


def _add_build(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build",
        help="build a datastore from a corpus and publish it",
        description="Tokenize a corpus, count its n-grams in DuckDB, keep the best contexts with their "
        "precomputed draft trees within a budget, and publish the store atomically: the store path is a symlink "
        "to <store>.versions/<version>.duckdb, swapped only once the new version is complete. A build equal to "
        "the published version publishes nothing. --kind rest builds the REST baseline instead (a .rest store: "
        "the tokenized corpus, or a fraction of it, with its suffix array), which `crest serve`, `crest generate "
        "--store` and `crest eval` read like a CREST store.",
    )
    source = parser.add_argument_group("corpus")
    source.add_argument(
        "--corpus",
        default="stdlib",
        help=f"a preset ({', '.join(CORPUS_PRESETS)}) or a path (folder, .json, .jsonl, text file)",
    )
    source.add_argument("--format", choices=FORMATS, default=None, help="corpus format (auto: from the path)")
    source.add_argument("--glob", default=None, help="file pattern inside a folder (default: * or the preset's)")
    source.add_argument("--text-field", default=None, help="JSONL field holding the text (default: text)")
    source.add_argument(
        "--on-bad-file", choices=("skip", "fail"), default="skip", help="what to do with unreadable or non-UTF-8 files"
    )
    source.add_argument(
        "--add-shard",
        action="append",
        default=[],
        metavar="PATH",
        help="another corpus counted as its own shard (repeatable; same --format/--glob/--text-field): "
        "shard counts are cached by content and summed, so the store equals one build over all "
        "shards, and re-running with one more --add-shard counts only the new shard",
    )
    source.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        help=f"target model tokenizer: {', '.join(TOKENIZER_PRESETS)}, a .gguf file or a tokenizer.json",
    )

    kind = parser.add_argument_group("store kind")
    kind.add_argument(
        "--kind",
        choices=("crest", "rest"),
        default="crest",
        help="crest: the compact n-gram table; rest: the REST baseline (whole corpus + suffix array)",
    )
    kind.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="rest only: index this fraction of the corpus's tokens (whole documents, seeded draw)",
    )
    _add_rest_flags(
        parser,
        "REST lookups (rest)",
        "How the REST store looks drafts up, stored in the file as its defaults (crest serve --rest-* can "
        "override them); the defaults are REST's published values.",
        show_defaults=True,
    )

    counting = parser.add_argument_group("counting and selection (crest)")
    counting.add_argument("--max-context", type=int, default=DEFAULTS.max_context, help="longest context (tokens)")
    counting.add_argument("--max-depth", type=int, default=DEFAULTS.max_depth, help="deepest draft node (tokens)")
    counting.add_argument("--top-c", type=int, default=DEFAULTS.top_c, help="nodes per draft tree")
    counting.add_argument("--min-count", type=int, default=DEFAULTS.min_count, help="drop n-grams seen fewer times")
    counting.add_argument(
        "--min-probability",
        type=float,
        default=DEFAULTS.min_probability,
        help="prune nodes whose count / context count is below this",
    )
    counting.add_argument(
        "--backoff",
        type=float,
        default=DEFAULTS.backoff,
        help="how much a context's tree leans on its shorter suffix's (Witten-Bell weight x this; "
        "0: raw counts, as in the paper)",
    )
    counting.add_argument(
        "--policy",
        choices=POLICIES,
        default=DEFAULTS.policy,
        help="frequency: the paper's top-t per length; benefit: corpus-accepted tokens per byte first; "
        "gain: accepted tokens added beyond the shorter suffix's tree, per byte (docs/RESULTS.md)",
    )
    counting.add_argument(
        "--budget",
        default=str(DEFAULTS.budget),
        help="size of the published file (e.g. 16MB, 512KiB) or contexts (e.g. 100000rows)",
    )

    output = parser.add_argument_group("output and resources")
    output.add_argument(
        "--output",
        type=Path,
        default=None,
        help="published store path (default: $CREST_CACHE/stores/<corpus>.duckdb, $CREST_CACHE defaulting to "
        "~/.cache/crest; <corpus> is the preset or the corpus path's name, with the --add-shard names joined by + "
        "for a sharded build, e.g. repo_a+repo_b.duckdb; --kind rest: <corpus>.rest, or <corpus>-<fraction>.rest)",
    )
    output.add_argument(
        "--keep",
        type=int,
        default=None,
        help="older versions to keep besides the published, pinned and served ones (default: as last given for "
        f"this store, else {KEEP_OLD_VERSIONS}); remembered for later builds; see `crest versions`",
    )
    output.add_argument("--replace", action="store_true", help="replace a store built with another tokenizer")
    output.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    output.add_argument(
        "--memory-limit",
        default=None,
        help="cap on the build's peak memory, e.g. 4GB; DuckDB spills to the scratch folder beside the store "
        "to stay under it (default: a sixth of this machine's memory, 2-16 GB)",
    )
    output.add_argument("--max-temp-size", default=None, help="DuckDB spill limit on disk, e.g. 20GB")
    output.add_argument("--quiet", action="store_true", help="no progress bars, and no Spark start-up lines")

    engine = parser.add_argument_group(
        "engine",
        "Where counting, tree ranking and selection run. `spark` runs the same SQL (transpiled) on "
        "Apache Spark from the tokenized Parquet and loads its compact table (Parquet) into the store; it needs "
        "pyspark (`pip install '.[spark]'` in the checkout; scripts/setup installs it) and Java 17+.",
    )
    engine.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb", help="build engine")
    engine.add_argument(
        "--master",
        default=None,
        help="Spark master URL, e.g. spark://host:7077 (default: local[*]); only with --engine spark",
    )
    engine.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable (e.g. spark.driver.memory=8g); only with --engine spark",
    )
    engine.add_argument(
        "--spark-bind-address",
        default=None,
        metavar="ADDRESS",
        help="address the Spark driver and its block manager listen on (default: $SPARK_LOCAL_IP, else "
        "127.0.0.1 with a local or loopback master, else Spark's choice: a remote cluster must reach the driver)",
    )
    parser.set_defaults(run=_run_build)


def _spark_settings(args: argparse.Namespace) -> SparkSettings | None:
    from datastore_service.build.spark.engine import SparkSettings

    if args.engine != "spark":
        if args.master or args.spark_conf or args.spark_bind_address:
            raise CrestError("--master, --spark-conf and --spark-bind-address need --engine spark")
        return None
    pairs = [item.partition("=") for item in args.spark_conf]
    for item, (key, _, value) in zip(args.spark_conf, pairs):
        if not (key and value):
            raise CrestError(f"--spark-conf takes KEY=VALUE, got {item!r}")
    return SparkSettings(
        master=args.master or SparkSettings.master,
        conf=tuple((key, value) for key, _, value in pairs),
        bind_address=args.spark_bind_address,
        quiet=args.quiet,
    )


def _run_build(args: argparse.Namespace) -> int:
    from datastore_service.build.corpus import corpus_spec
    from datastore_service.build.pipeline import EngineSettings, build_store, default_store_path

    corpus = corpus_spec(
        args.corpus,
        format=args.format,
        glob=args.glob,
        text_field=args.text_field,
        skip_bad_files=args.on_bad_file == "skip",
    )
    if args.kind == "rest":
        if args.engine != "duckdb" or args.add_shard:
            raise CrestError("--engine spark and --add-shard build crest stores, not --kind rest")
        return _run_rest_build(args, corpus)
    if _rest_overrides(args):
        raise CrestError("--rest-n-max/--rest-n-min/--rest-k/--rest-m/--rest-c set a --kind rest store")
    try:
        params = BuildParams(
            max_context=args.max_context,
            max_depth=args.max_depth,
            top_c=args.top_c,
            min_count=args.min_count,
            min_probability=args.min_probability,
            backoff=args.backoff,
            policy=args.policy,
            budget=parse_budget(args.budget),
        )
    except ValueError as exc:
        raise CrestError(str(exc)) from exc
    shards = tuple(
        corpus_spec(
            path,
            format=args.format,
            glob=args.glob,
            text_field=args.text_field,
            skip_bad_files=args.on_bad_file == "skip",
        )
        for path in args.add_shard
    )
    spark = _spark_settings(args)
    output = args.output or default_store_path("+".join(spec.display_name for spec in (corpus, *shards)))
    settings = EngineSettings(threads=args.threads, memory_limit=args.memory_limit, max_temp_size=args.max_temp_size)
    summary = build_store(
        corpus,
        args.tokenizer,
        output,
        params,
        settings,
        replace=args.replace,
        progress=not args.quiet,
        spark=spark,
        shards=shards,
        keep=args.keep,
    )
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in summary.seconds.items())
    _print_published(summary.store, summary.version_file, summary.unchanged)
    print(
        f"corpus      {summary.documents:,} documents ({len(summary.skipped)} files skipped), {summary.tokens:,} tokens"
    )
    for path, reason in summary.skipped[:5]:
        print(f"  skipped   {path}: {reason}")
    if len(summary.skipped) > 5:
        print(f"  skipped   ... and {len(summary.skipped) - 5} more")
    print(
        f"contexts    {summary.contexts_kept:,} kept of {summary.candidate_contexts:,} candidates, "
        f"{summary.nodes_kept:,} draft nodes"
    )
    print(
        f"size        {format_bytes(summary.file_bytes)} ({summary.bytes_per_context:.1f} bytes per context, "
        f"{summary.file_bytes / max(summary.nodes_kept, 1):.2f} per node)"
    )
    print(f"time        {phases}")
    print(
        f"memory      peak {format_bytes(summary.peak_rss)} under a cap of {format_bytes(summary.memory_cap)}, "
        f"{format_bytes(summary.spilled)} spilled to disk"
    )
    return 0


def _print_published(store: Path, version_file: Path, unchanged: bool) -> None:
    if unchanged:
        print(f"unchanged   {store} -> {version_file.name}: the build equals the published version; nothing published")
    else:
        print(f"published   {store} -> {version_file.name}")


def _run_rest_build(args: argparse.Namespace, corpus) -> int:
    from datastore_service.rest.build import build_rest_store, default_rest_path
    from datastore_service.rest.index import RestParams

    lookup = RestParams(**_rest_overrides(args))
    output = args.output or default_rest_path(corpus.display_name, args.fraction)
    summary = build_rest_store(
        corpus, args.tokenizer, output, args.fraction, progress=not args.quiet, keep=args.keep, lookup=lookup
    )
    phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in summary.seconds.items())
    _print_published(summary.store, summary.version_file, summary.unchanged)
    print(f"corpus      {summary.documents:,} documents, {summary.tokens:,} of {summary.corpus_tokens:,} tokens")
    print(
        f"size        {format_bytes(summary.file_bytes)} (tokens + suffix array, "
        f"{summary.file_bytes / max(summary.tokens, 1):.2f} bytes per token)"
    )
    print(f"lookups     n {lookup.n_max}..{lookup.n_min}, k {lookup.k}, m {lookup.m}, c {lookup.c}")
    print(f"time        {phases}")
    return 0


def _add_inspect(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "inspect",
        help="show a store's metadata and most common drafts",
        description="Print a store's metadata and its most common contexts with their drafts.",
    )
    parser.add_argument("store", type=Path, help="published store path")
    parser.add_argument("--top", type=int, default=10, help="contexts to show")
    parser.add_argument("--sql", default=None, help="run this SQL on the store instead and print the result")
    parser.set_defaults(run=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    if args.sql:
        from datastore_service.store.reader import open_store

        with open_store(args.store) as connection:
            connection.sql(args.sql).show(max_width=160)
        return 0
    from crest_cli.inspect_store import inspect_store

    inspect_store(args.store, limit=args.top)
    return 0


def _add_migrate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "migrate",
        help="upgrade a store file to this crest's schema",
        description="Copy the store's current version, apply the schema migrations "
        "and publish the result as a new version.",
    )
    parser.add_argument("store", type=Path, help="published store path")
    parser.add_argument("--revision", default="head", help="target schema revision")
    parser.add_argument(
        "--keep",
        type=int,
        default=None,
        help=f"older versions to keep besides the published, pinned and served ones (default: as last given, "
        f"else {KEEP_OLD_VERSIONS})",
    )
    parser.set_defaults(run=_run_migrate)


def _run_migrate(args: argparse.Namespace) -> int:
    from datastore_service.store.migrate import migrate_store

    before, after = migrate_store(args.store, args.revision, keep=args.keep)
    print(
        f"{args.store}: schema {before} -> {after}" if before != after else f"{args.store}: already at schema {after}"
    )
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from datastore_service.overlay.overlay import OverlaySettings
    from datastore_service.serve.logs import FORMATS, LEVELS
    from datastore_service.serve.server import ServerSettings

    defaults = ServerSettings()
    parser = commands.add_parser(
        "serve",
        help="serve a store over gRPC (batched lookups, health, reflection, hot reload)",
        description="Serve a published store to decoding workers over gRPC. The server hot-reloads new "
        "versions published at the same path, refusing corrupt ones and ones of another tokenizer. "
        "SIGTERM drains calls in flight, then exits.",
    )
    parser.add_argument(
        "store", type=Path, nargs="?", default=None, help="published store path, served as the default store"
    )
    parser.add_argument(
        "--store",
        dest="named_stores",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another store, served under NAME (repeatable); requests name it, an empty name means the default",
    )
    parser.add_argument("--host", default=defaults.host, help="address to bind (loopback unless told otherwise)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (0: any free port, printed at start)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="threads answering calls")
    parser.add_argument(
        "--max-message-mb", type=float, default=defaults.max_message_bytes / 2**20, help="largest request accepted"
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=defaults.reload_interval,
        help="seconds between checks for a newly published version",
    )
    parser.add_argument("--grace", type=float, default=defaults.grace, help="seconds in-flight calls get at shutdown")
    logging_flags = parser.add_argument_group(
        "logging",
        "The log (stderr) shows start, reloads, refused calls with the peer's address (wrong or missing token), "
        "and one summary line per interval: calls by method, sequences looked up, Lookup p50/p99, errors by "
        "status, refused calls. A failed TLS handshake never reaches the server's code: the client sees UNAVAILABLE.",
    )
    logging_flags.add_argument("--log-level", choices=LEVELS, default="info", help="debug also logs every call")
    logging_flags.add_argument(
        "--log-format", choices=FORMATS, default="text", help="text lines, or one JSON object per line"
    )
    logging_flags.add_argument(
        "--summary-interval",
        type=float,
        default=defaults.summary_interval,
        help="seconds between summary lines (0: none)",
    )
    security = parser.add_argument_group(
        "security",
        "TLS and a shared token, so a store shared across hosts answers only its clients. "
        "Health checks stay open without a token.",
    )
    security.add_argument("--tls-cert", type=Path, default=None, help="server certificate chain (PEM): serve TLS")
    security.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert (PEM)")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="CA (PEM) that signs client certificates: clients without one are refused (mutual TLS)",
    )
    security.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the shared token every call must send (default: $CREST_TOKEN, if set)",
    )
    security.add_argument(
        "--tenant-tokens",
        type=Path,
        default=None,
        help='JSON file of tokens scoped to stores, {"TENANT": {"token": "...", "stores": ["NAME", ...]}}: '
        "a tenant's token reaches its own stores only (PERMISSION_DENIED otherwise)",
    )
    learn_defaults = OverlaySettings()
    learn = parser.add_argument_group(
        "learning",
        "With --learn, Observe calls send emitted tokens; their n-gram counts live in an in-memory overlay that "
        "every Lookup merges with the store, are snapshotted beside the store, and `crest compact` folds them "
        "into a new version.",
    )
    learn.add_argument("--learn", action="store_true", help="accept Observe calls and learn from them")
    learn.add_argument(
        "--overlay-mb", type=float, default=learn_defaults.max_bytes / 2**20, help="memory cap of each store's overlay"
    )
    learn.add_argument(
        "--refresh-interval",
        type=float,
        default=learn_defaults.refresh_interval,
        help="seconds between folding observed tokens (and other replicas' snapshots) into lookups",
    )
    learn.add_argument(
        "--snapshot-interval",
        type=float,
        default=learn_defaults.snapshot_interval,
        help="the most a crash can lose of observed counts, and the most replicas lag behind each other "
        "(seconds; snapshots are written a little more often)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (0: any free port)"
    )
    _add_rest_flags(
        parser,
        "REST stores",
        "Override the served REST stores' k/n/m/c (default: the values each was built with); CREST stores "
        "ignore them, and giving them with no REST store served is an error.",
        show_defaults=False,
    )
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from datastore_service.overlay.overlay import OverlaySettings
    from datastore_service.serve.credentials import load_token
    from datastore_service.serve.logs import configure_logging
    from datastore_service.serve.security import ServerSecurity, TenantTokens
    from datastore_service.serve.server import ServerSettings, serve_forever
    from datastore_service.serve.stores import DEFAULT_NAME, StoreSpec

    stores = ([StoreSpec(DEFAULT_NAME, args.store)] if args.store else []) + [
        StoreSpec.parse(text) for text in args.named_stores
    ]
    if not stores:
        raise CrestError("give a store to serve (STORE, or --store NAME=PATH)")

    configure_logging(args.log_level, args.log_format)
    security = ServerSecurity(
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=load_token(args.token_file),
        tenants=TenantTokens.load(args.tenant_tokens) if args.tenant_tokens else None,
    )
    learn = None
    if args.learn:
        try:
            learn = OverlaySettings(
                max_bytes=int(args.overlay_mb * 2**20),
                refresh_interval=args.refresh_interval,
                snapshot_interval=args.snapshot_interval,
            )
        except ValueError as exc:
            raise CrestError(f"--refresh-interval: {exc}") from None
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_message_bytes=int(args.max_message_mb * 2**20),
        reload_interval=args.reload_interval,
        grace=args.grace,
        summary_interval=args.summary_interval,
        security=security,
        learn=learn,
        metrics_port=args.metrics_port,
        rest_overrides=_rest_overrides(args),
    )
    try:
        serve_forever(stores, settings)
    except (RuntimeError, OSError) as exc:  # grpc, or our own check, reports a port it cannot bind
        raise CrestError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    return 0


def _add_versions(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "versions",
        help="list a store's versions; pin, unpin, roll back (publish), prune",
        description="A store path is a symlink to <store>.versions/<version>. `crest versions STORE` lists the "
        "versions: which is published, which are pinned, which live replicas (`crest serve`) report serving "
        "them. Pruning never removes the published version, a pinned one or one a live replica serves.",
    )
    from crest_cli.versions import add_arguments

    add_arguments(parser)
    parser.set_defaults(run=_run_versions)


def _run_versions(args: argparse.Namespace) -> int:
    from crest_cli.versions import run

    return run(args)


def _add_cache(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "cache",
        help="what the cache holds ($CREST_CACHE, default ~/.cache/crest); `crest cache prune` trims it",
        description="List the cache folders under $CREST_CACHE (default ~/.cache/crest) with their sizes. "
        "`crest cache prune` removes cached token and count files no build used for a while.",
    )
    from crest_cli.cache import add_arguments

    add_arguments(parser)
    parser.set_defaults(run=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from crest_cli.cache import run

    return run(args)


def _add_compact(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compact",
        help="fold a learning store's snapshots into a new published version",
        description="Sum the snapshots `crest serve --learn` wrote beside STORE (those its published version does "
        "not hold yet) with the counts of the corpus it was built from, and publish a new version with exact "
        "counts and the same build parameters. Every replica hot-reloads it and drops what it holds from its "
        "overlay. Give the same corpus options as the build.",
    )
    parser.add_argument("store", type=Path, help="published store path (the one `crest serve --learn` serves)")
    parser.add_argument("--corpus", default="stdlib", help="the corpus the store was built from (preset or path)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="corpus format (auto: from the path)")
    parser.add_argument("--glob", default=None, help="file pattern inside a folder")
    parser.add_argument("--text-field", default=None, help="JSONL field holding the text")
    parser.add_argument("--add-shard", action="append", default=[], metavar="PATH", help="a shard of the build")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="the store's tokenizer")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="cap on the build's peak memory, e.g. 4GB (default: a sixth of this machine's memory, 2-16 GB)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_compact)


def _run_compact(args: argparse.Namespace) -> int:
    from datastore_service.build.compaction import compact_store
    from datastore_service.build.corpus import corpus_spec
    from datastore_service.build.pipeline import EngineSettings

    options = {"format": args.format, "glob": args.glob, "text_field": args.text_field}
    summary = compact_store(
        args.store,
        corpus_spec(args.corpus, **options),
        args.tokenizer,
        tuple(corpus_spec(path, **options) for path in args.add_shard),
        EngineSettings(threads=args.threads, memory_limit=args.memory_limit),
        progress=not args.quiet,
    )
    print(f"published   {summary.build.store} -> {summary.build.version_file.name}")
    print(f"folded      {summary.snapshots} snapshots; the store now holds {summary.observed_tokens:,} observed tokens")
    print(f"contexts    {summary.build.contexts_kept:,} kept, {summary.build.nodes_kept:,} draft nodes")
    print(f"removed     {summary.removed_files} files every kept version holds")
    return 0


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="generate text with speculative decoding (drafts from a store or server)",
        description="Stream a completion from the target model, verifying drafts from a store (in process) or "
        "from `crest serve` replicas in one tree-attention pass per step. Greedy output equals plain greedy "
        "decoding. Prints tokens, steps, accepted tokens per step and tokens/s at the end.",
    )
    from crest_cli.generate_args import add_arguments

    add_arguments(parser)
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from crest_cli.generate import run

    return run(args)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="REST vs CREST: accepted length across storage sizes (HumanEval, MT-Bench)",
        description="Build REST stores over corpus fractions and CREST stores over byte budgets, replay the "
        "target's cached greedy outputs against each (exact, no model forward), check the replay against real "
        "decoding on a few prompts, and write a table (Markdown + CSV) and a plot into the output folder.",
    )
    from crest_cli.evaluation.args import add_arguments

    add_arguments(parser)
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from crest_cli.evaluation.run import run

    return run(args)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="build, serve and decode end to end on this machine (the README's first command)",
        description="Build the default code store (stdlib) and chat store (ShareGPT) if they are not cached, serve "
        "both from one `crest serve` process on a free loopback port, decode a few HumanEval prompts through the code "
        "store and MT-Bench questions through the chat store with SmolLM2 (accepted drafts in green), each four ways "
        "in the same engine (plain, store, prompt lookup, both), then compare them in a table. The server is stopped "
        "on exit, Ctrl-C included.",
    )
    parser.add_argument("--humaneval", type=int, default=2, help="HumanEval prompts to decode")
    parser.add_argument("--mtbench", type=int, default=1, help="MT-Bench questions to decode (chat template)")
    # Short completions keep a rerun within a minute on a 2-core CPU (each prompt is decoded four times).
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-color", action="store_true", help="do not mark accepted draft tokens")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from crest_cli.demo import run

    return run(args)


def parser() -> argparse.ArgumentParser:
    root = CrestParser(
        prog="crest",
        description="CREST: compact n-gram draft datastore for retrieval-based speculative decoding.",
    )
    root.add_argument("--version", action="version", version=f"crest {__version__}")
    commands = root.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_build(commands)
    _add_inspect(commands)
    _add_migrate(commands)
    _add_serve(commands)
    _add_versions(commands)
    _add_cache(commands)
    _add_compact(commands)
    _add_generate(commands)
    _add_eval(commands)
    _add_demo(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(with_default_action(sys.argv[1:] if argv is None else argv))
    try:
        return args.run(args)
    except CrestError as exc:
        print(f"crest: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crest: interrupted; nothing was published", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
