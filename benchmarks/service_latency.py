"""Service benchmark, old path against new in one run: the index as it was before serving files
(built in memory from the DuckDB file at every load, numpy for every batch size; taken from git at
OLD_PATH_COMMIT) and the mapped serving file with its small-batch path.

    python benchmarks/service_latency.py [--store PATH] [--seconds 5] [--calls 300] [--write]

Measured, for each path: load (open + first lookup) and the memory it adds, in fresh processes;
in-process single-sequence latency and batch-256 throughput on one core (the two paths alternate,
so both see the same machine); gRPC round trips and server time for batches of 1..256 (two
servers, blocks of calls alternating); throughput under 8 concurrent clients; and two replicas on one host:
what the second adds to the host's memory, as the sum of the replicas' proportional set sizes
(PSS; summing RSS would count shared pages twice). The store defaults to the default stdlib store
(built if missing). Queries are real last-3-token contexts from the stdlib's json package.

`--serve old|new STORE` is this script's own server child (a `crest serve` with the chosen index).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import grpc
import numpy as np
from _memory import memory_mb
from _report import write_section

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.pipeline import default_store_path
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.lookup.small_batch import SMALL_BATCH
from datastore_service.paths import cache_dir
from datastore_service.serve.service import SERVER_TIME_KEY, drafts_to_proto
from datastore_service.store.reader import resolve_store

COMMAND = "python benchmarks/service_latency.py " + " ".join(sys.argv[1:])
ROOT = Path(__file__).resolve().parent.parent
OLD_PATH_COMMIT = "225f906"  # main before serving files: the in-memory index of issue 3
OLD_MODULE = "old_draft_index"
DECODE_STEP_MS = 36.0  # SmolLM2 on this CPU, one decode step (shared/RESOURCES.md)
PATHS = ("old", "new")
GRPC_BLOCKS = 10  # blocks of calls per path and batch size in the gRPC latency figures


def old_path_folder() -> Path:
    """A folder holding the old index module, extracted from git (its imports still resolve)."""
    folder = cache_dir("benchmarks", f"old-path-{OLD_PATH_COMMIT}")
    source = subprocess.run(
        ["git", "show", f"{OLD_PATH_COMMIT}:datastore_service/lookup/draft_index.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (folder / f"{OLD_MODULE}.py").write_text(source)
    return folder


def index_class(path: str, old_folder: Path) -> type:
    if path == "new":
        return DraftIndex
    sys.path.insert(0, str(old_folder))
    return __import__(OLD_MODULE).DraftIndex


def query_contexts(width: int, count: int = 20_000) -> list[list[int]]:
    tokenizer = TargetTokenizer.load("smollm2")
    text = "".join(p.read_text() for p in sorted((stdlib_corpus().path / "json").glob("*.py")))
    ids = tokenizer.encode_batch([text])[0]
    rng = np.random.default_rng(0)
    ends = rng.integers(width, len(ids), count)
    return [ids[end - width : end] for end in ends]


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


# -- load and memory, in fresh processes ------------------------------------------------------

# A fresh process that imports only the index (and the memory reader), then answers commands on
# stdin: "memory" (its memory now) or "load" (load the store and look one query up, timed).
_LOADER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from _memory import memory_mb
started = time.perf_counter()
if sys.argv[3] == "old":
    sys.path.insert(0, sys.argv[2])
    from old_draft_index import DraftIndex
else:
    from datastore_service.lookup.draft_index import DraftIndex
imported = time.perf_counter() - started
while command := sys.stdin.readline().strip():
    if command == "load":
        started = time.perf_counter()
        index = DraftIndex.load(sys.argv[4])
        index.lookup([json.loads(sys.argv[5])], max_nodes=32)
        print(json.dumps({"import": imported, "seconds": time.perf_counter() - started}), flush=True)
    else:
        print(json.dumps(memory_mb()), flush=True)
"""


class Loader:
    """A loader child for one path."""

    def __init__(self, path: str, store: Path, query: list[int], old_folder: Path) -> None:
        arguments = [str(Path(__file__).parent), str(old_folder), path, str(store), json.dumps(query)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOADER, *arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def load_figures(store: Path, query: list[int], old_folder: Path, runs: int = 3) -> dict:
    """Per path, medians over fresh processes (the paths alternate)."""
    results: dict[str, list[dict]] = {path: [] for path in PATHS}
    for _ in range(runs):
        for path in PATHS:
            loader = Loader(path, store, query, old_folder)
            before = loader.ask("memory")
            timing = loader.ask("load")
            results[path].append({**timing, "before": before, "after": loader.ask("memory")})
            loader.close()
    figures = {}
    for path, runs_of_path in results.items():
        added = {
            key: statistics.median(r["after"][key] - r["before"][key] for r in runs_of_path)
            for key in ("rss", "anon", "file", "pss")
        }
        figures[path] = {
            "seconds": statistics.median(r["seconds"] for r in runs_of_path),
            "import": statistics.median(r["import"] for r in runs_of_path),
            "before": statistics.median(r["before"]["rss"] for r in runs_of_path),
            "added": added,
        }
    return figures


def replica_figures(store: Path, query: list[int], old_folder: Path) -> dict:
    """Two replicas of each path, both started first: the host's memory (sum of PSS) before either
    loads, after the first loads, after the second loads."""
    figures = {}
    for path in PATHS:
        replicas = [Loader(path, store, query, old_folder) for _ in range(2)]
        host = [sum(r.ask("memory")["pss"] for r in replicas)]
        for replica in replicas:
            replica.ask("load")
            host.append(sum(r.ask("memory")["pss"] for r in replicas))
        rss = [replica.ask("memory")["rss"] for replica in replicas]
        for replica in replicas:
            replica.close()
        figures[path] = {
            "alone": host[1] - host[0],
            "together": host[2] - host[0],
            "second_adds": host[2] - host[1],
            "rss": rss,
        }
    return figures


# -- in process ------------------------------------------------------------------------------


def engine_figures(indexes: dict, queries: list[list[int]], seconds: float, selection: str = "scored") -> dict:
    """Single-sequence latency and batch-256 throughput, the paths alternating on one core."""
    single: dict[str, list[float]] = {path: [] for path in indexes}
    for query in queries[:5000]:
        for path, index in indexes.items():
            started = time.perf_counter()
            index.lookup([query], max_nodes=32, selection=selection)
            single[path].append((time.perf_counter() - started) * 1e6)
    # Throughput by the wall clock and by this thread's CPU time (what the lookups cost, whoever
    # else the shared machine runs meanwhile), in slices that alternate between the paths.
    batch, done = queries[:256], dict.fromkeys(indexes, 0)
    wall, cpu = dict.fromkeys(indexes, 0.0), dict.fromkeys(indexes, 0.0)
    slices = 20
    for _ in range(slices):
        for path, index in indexes.items():
            started, started_cpu = time.perf_counter(), time.thread_time()
            while time.perf_counter() - started < seconds / slices:
                index.lookup(batch, max_nodes=32, selection=selection)
                done[path] += len(batch)
            wall[path] += time.perf_counter() - started
            cpu[path] += time.thread_time() - started_cpu
    return {
        path: {
            "single_us": percentiles(single[path]),
            "throughput": done[path] / wall[path],
            "throughput_cpu": done[path] / cpu[path],
        }
        for path in indexes
    }


def server_split(index: DraftIndex, queries: list[list[int]], sizes: list[int]) -> dict:
    """Where a Lookup's server time goes on the new path (CPU µs, best of 7): the request to a
    query batch, the lookup, the answer to protobuf, as service.py does them."""
    split = {}
    for size in sizes:
        request = pb.LookupRequest(selection=pb.SCORED)
        for tokens in queries[:size]:
            request.sequences.add(tokens=tokens, max_nodes=32)
        split[size] = _server_steps(index, request)
    return split


def _server_steps(index: DraftIndex, request: pb.LookupRequest) -> dict:
    sequences = request.sequences

    def prepare():
        nodes = np.fromiter((q.max_nodes for q in sequences), np.int64, len(sequences))
        depths = np.fromiter((q.max_depth for q in sequences), np.int64, len(sequences))
        return index.prepare([q.tokens for q in sequences], nodes, depths)

    batch = prepare()
    drafts = index.lookup_batch(batch, "scored")
    stages = {
        "prepare": prepare,
        "lookup": lambda: index.lookup_batch(batch, "scored"),
        "to proto": lambda: drafts_to_proto(drafts, index.info.store_version),
    }
    steps = {
        name: min(timeit.Timer(stage, timer=time.thread_time).repeat(repeat=7, number=20)) / 20 * 1e6
        for name, stage in stages.items()
    }
    return {**steps, "nodes": len(drafts.tokens)}


# -- over gRPC -------------------------------------------------------------------------------


class _EmptyLookup(pb_grpc.DraftStoreServicer):
    """The gRPC floor: a Lookup handler that answers an empty response at once."""

    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        context.set_trailing_metadata(((SERVER_TIME_KEY, "0"),))
        return pb.LookupResponse()


def serve(path: str, store: Path) -> None:
    """The server child: `crest serve`'s RunningServer answering from the chosen path's index, or
    ("floor") a plain gRPC server with as many threads and an empty Lookup: what gRPC alone costs."""
    from concurrent import futures

    from datastore_service.serve.server import RunningServer, ServerSettings

    settings = ServerSettings(port=0)
    if path == "floor":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers))
        pb_grpc.add_DraftStoreServicer_to_server(_EmptyLookup(), server)
        port = server.add_insecure_port(f"{settings.host}:0")
        server.start()
        print(f"serving floor on {settings.host}:{port}", flush=True)
        sys.stdin.readline()
        server.stop(0)
        return
    running = RunningServer(store, settings)
    if path == "old":
        running.holder.index = index_class("old", old_path_folder()).load(store)
    running.start()
    print(f"serving {path} on {running.address}", flush=True)
    sys.stdin.readline()  # until the benchmark closes our stdin
    running.stop(grace=0)


def start_server(path: str, store: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", path, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return process, process.stdout.readline().rsplit(" ", 1)[1].strip()


def grpc_figures(
    addresses: dict[str, str], queries: list[list[int]], batch_sizes: list[int], calls: int, selection=pb.SCORED
) -> dict:
    figures = {path: {} for path in addresses}
    channels = {path: grpc.insecure_channel(address) for path, address in addresses.items()}
    stubs = {path: pb_grpc.DraftStoreStub(channel) for path, channel in channels.items()}
    for size in batch_sizes:
        requests = []
        for i in range(calls):
            request = pb.LookupRequest(selection=selection)
            for tokens in queries[(i * size) % (len(queries) - size) :][:size]:
                request.sequences.add(tokens=tokens, max_nodes=32)
            requests.append(request)
        samples = {path: ([], []) for path in addresses}
        for stub in stubs.values():
            for request in requests[:20]:  # warm
                stub.Lookup(request)
        # Each path answers a block of calls alone, as a client talks to one server; the blocks
        # alternate between the paths, so a drift of the shared machine's load reaches them all.
        # (Alternating call by call woke a different server process every call: in one such run even
        # the empty floor took 0.57 ms, against 0.40 ms in an earlier one.)
        block = max(calls // GRPC_BLOCKS, 1)
        for first in range(0, calls, block):
            for path, stub in stubs.items():
                for request in requests[first : first + block]:
                    started = time.perf_counter()
                    _, call = stub.Lookup.with_call(request)
                    samples[path][0].append((time.perf_counter() - started) * 1e3)
                    samples[path][1].append(int(dict(call.trailing_metadata())[SERVER_TIME_KEY]) / 1e3)
        for path, (round_trip, server) in samples.items():
            figures[path][size] = {"round_trip": percentiles(round_trip), "server": percentiles(server)}
    for channel in channels.values():
        channel.close()
    return figures


def _client_process(address: str, queries: list[list[int]], size: int, seconds: float, results) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DraftStoreStub(channel)
        request = pb.LookupRequest(selection=pb.SCORED)
        for tokens in queries[:size]:
            request.sequences.add(tokens=tokens, max_nodes=32)
        stub.Lookup(request)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            stub.Lookup(request)
            done += 1
        results.put(done / (time.perf_counter() - start))


def concurrent_throughput(address: str, queries: list[list[int]], clients: int, size: int, seconds: float) -> float:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [
        context.Process(target=_client_process, args=(address, queries, size, seconds, results)) for _ in range(clients)
    ]
    for process in processes:
        process.start()
    rates = [results.get(timeout=seconds * 10 + 60) for _ in processes]
    for process in processes:
        process.join()
    return sum(rates)


# -- report ----------------------------------------------------------------------------------


def report(store: Path, info, file_mb: float, serving_mb: float, figures: dict, loads: tuple) -> str:
    load, engine, latency, throughput, replicas, servers, split = (
        figures[k] for k in ("load", "engine", "grpc", "concurrent", "replicas", "servers", "split")
    )
    lines = [
        "## Service, memory-mapped serving file and small-batch path (issue 15)",
        "",
        f"Command: `{COMMAND}`. Store: `{store.name}` ({info.contexts:,} contexts, {info.nodes:,} nodes, max context "
        f"{info.max_context}): DuckDB file **{file_mb:.1f} MB**, serving file {serving_mb:.1f} MB. Old path: the index "
        f"at commit {OLD_PATH_COMMIT} (arrays built in memory from DuckDB at every load, numpy for every batch); new path: "
        f"the serving file mapped, plain Python for batches up to {SMALL_BATCH}. Both run in this one invocation, alternating. "
        "Queries: real 3-token contexts from the stdlib `json` package, up to 32 nodes each, scored selection. "
        f"1-minute load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end (2 cores, shared).",
        "",
        "| figure | old path | new path | target |",
        "| --- | ---: | ---: | --- |",
    ]
    old, new = load["old"], load["new"]
    rows = [
        (
            "load: open + first lookup, median of 3 fresh processes",
            f"{old['seconds']:.3f} s",
            f"{new['seconds']:.3f} s",
            "≤ 0.2 s",
        ),
        (
            "RSS added by loading (anonymous + file-backed)",
            f"{old['added']['rss']:.1f} MB ({old['added']['anon']:.1f} + {old['added']['file']:.1f})",
            f"{new['added']['rss']:.1f} MB ({new['added']['anon']:.1f} + {new['added']['file']:.1f})",
            f"≤ 2x file = {2 * file_mb:.1f} MB",
        ),
        (
            "RSS added / DuckDB file",
            f"{old['added']['rss'] / file_mb:.1f}x",
            f"{new['added']['rss'] / file_mb:.2f}x",
            "≤ 2x",
        ),
        ("process RSS before loading (imports done)", f"{old['before']:.0f} MB", f"{new['before']:.0f} MB", ""),
        ("import of the index module (once a process)", f"{old['import']:.2f} s", f"{new['import']:.2f} s", ""),
        (
            "single sequence in process, p50 / p99",
            "{:.0f} / {:.0f} µs".format(*engine["old"]["single_us"]),
            "{:.1f} / {:.1f} µs".format(*engine["new"]["single_us"]),
            "≤ 20 / 60 µs",
        ),
        (
            "the same with MERGED, today's default lookup: single p50 / p99; batch 256 by the wall clock",
            "(no MERGED)",
            "{:.1f} / {:.1f} µs; ".format(*engine["merged"]["single_us"])
            + f"{engine['merged']['throughput']:,.0f} lookups/s",
            "",
        ),
        (
            "batch 256 in process, one core: by the wall clock (by CPU time)",
            f"{engine['old']['throughput']:,.0f} ({engine['old']['throughput_cpu']:,.0f}) lookups/s",
            f"{engine['new']['throughput']:,.0f} ({engine['new']['throughput_cpu']:,.0f}) lookups/s",
            "≥ old",
        ),
        (
            "gRPC batch 1 round trip p50",
            f"{latency['old'][1]['round_trip'][0]:.3f} ms",
            f"{latency['new'][1]['round_trip'][0]:.3f} ms",
            "≤ 0.5 ms",
        ),
        (
            "gRPC batch 64 server time p50",
            f"{latency['old'][64]['server'][0]:.3f} ms",
            f"{latency['new'][64]['server'][0]:.3f} ms",
            "≤ 0.8 ms",
        ),
        (
            "the same two with MERGED, today's default lookup: batch 1 round trip / batch 64 server time p50",
            "(no MERGED)",
            f"{figures['merged'][1]['round_trip'][0]:.3f} / {figures['merged'][64]['server'][0]:.3f} ms",
            "",
        ),
        (
            "8 concurrent clients, batch 64, one server",
            f"{throughput['old']:,.0f} calls/s",
            f"{throughput['new']:,.0f} calls/s",
            "",
        ),
        (
            "index memory of one replica (PSS added)",
            f"{replicas['old']['alone']:.1f} MB",
            f"{replicas['new']['alone']:.1f} MB",
            "",
        ),
        (
            "two replicas: index memory in all (sum of PSS added)",
            f"{replicas['old']['together']:.1f} MB",
            f"{replicas['new']['together']:.1f} MB",
            "",
        ),
        (
            "the second replica adds",
            f"{replicas['old']['second_adds']:.1f} MB ({100 * replicas['old']['second_adds'] / file_mb:.0f}% of file)",
            f"{replicas['new']['second_adds']:.1f} MB ({100 * replicas['new']['second_adds'] / file_mb:.1f}% of file)",
            f"≤ 10% of file = {0.1 * file_mb:.1f} MB",
        ),
        (
            "the two replicas' RSS",
            " + ".join(f"{m:.0f}" for m in replicas["old"]["rss"]) + " MB",
            " + ".join(f"{m:.0f}" for m in replicas["new"]["rss"]) + " MB",
            "",
        ),
        (
            "a gRPC server process after the gRPC runs: RSS (anonymous)",
            f"{servers['old']['rss']:.0f} MB ({servers['old']['anon']:.0f})",
            f"{servers['new']['rss']:.0f} MB ({servers['new']['anon']:.0f})",
            "",
        ),
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += [
        "",
        "gRPC, one server per path on 127.0.0.1 (8 worker threads), blocks of calls alternating between them; the floor is a "
        "plain gRPC server with 8 threads whose Lookup answers an empty response at once (what gRPC alone costs here):",
        "",
        "| batch | floor round trip p50 / p99 ms | old round trip p50 / p99 ms | new round trip p50 / p99 ms | old server p50 / p99 ms | new server p50 / p99 ms | new round trip p50 / 36 ms decode step |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in latency["new"]:
        f, o, n = latency["floor"][size], latency["old"][size], latency["new"][size]
        lines.append(
            f"| {size} | {f['round_trip'][0]:.2f} / {f['round_trip'][1]:.2f} "
            f"| {o['round_trip'][0]:.2f} / {o['round_trip'][1]:.2f} | {n['round_trip'][0]:.2f} / {n['round_trip'][1]:.2f} "
            f"| {o['server'][0]:.2f} / {o['server'][1]:.2f} | {n['server'][0]:.2f} / {n['server'][1]:.2f} "
            f"| {100 * n['round_trip'][0] / DECODE_STEP_MS:.1f}% |"
        )
    lines += [
        "",
        "Where the new path's server time goes (in process, CPU time, best of 7; the steps of `service.py`'s Lookup):",
        "",
        "| batch | nodes answered | request to query batch µs | lookup µs | answer to protobuf µs |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, steps in split.items():
        lines.append(
            f"| {size} | {steps['nodes']:,} | {steps['prepare']:.0f} | {steps['lookup']:.0f} | {steps['to proto']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--store", type=Path, default=default_store_path("stdlib"), help="the store to serve (default: stdlib)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per path for each throughput figure")
    parser.add_argument("--calls", type=int, default=300, help="gRPC calls per batch size and path for latency")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    parser.add_argument(
        "--serve", choices=(*PATHS, "floor"), help="(internal) run as this benchmark's server child for a path"
    )
    args, rest = parser.parse_known_args()
    if args.serve:
        serve(args.serve, Path(rest[0]))
        return
    if not args.store.exists():
        subprocess.run([sys.executable, "-m", "crest_cli", "build", "--output", str(args.store), "--quiet"], check=True)

    start_load = os.getloadavg()[0]
    old_folder = old_path_folder()
    index = DraftIndex.load(args.store)  # builds the serving file if the store predates it
    info, queries = index.info, query_contexts(index.width)
    del index  # unmapped: the replicas' memory is measured with no other process sharing the file
    gc.collect()
    assert ".serving" not in Path("/proc/self/maps").read_text(), "this process still maps the serving file"
    load = load_figures(args.store, queries[0], old_folder)
    replicas = replica_figures(args.store, queries[0], old_folder)

    indexes = {"old": index_class("old", old_folder).load(args.store), "new": DraftIndex.load(args.store)}
    os.sched_setaffinity(0, {0})  # one core for the in-process engine figures
    engine = engine_figures(indexes, queries, args.seconds)
    # MERGED, today's default lookup, which the old path lacks: the new path alone
    engine["merged"] = engine_figures({"new": indexes["new"]}, queries, args.seconds, "merged")["new"]
    split = server_split(indexes["new"], queries, [1, 64])
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    del indexes

    servers = {path: start_server(path, args.store) for path in (*PATHS, "floor")}
    try:
        addresses = {path: address for path, (_, address) in servers.items()}
        latency = grpc_figures(addresses, queries, [1, 8, 64, 256], args.calls)
        # The default lookup since the old path's time (MERGED, which it lacks): the new path only.
        merged = grpc_figures({"new": addresses["new"]}, queries, [1, 64], args.calls, selection=pb.MERGED)["new"]
        concurrent = {path: concurrent_throughput(addresses[path], queries, 8, 64, args.seconds) for path in PATHS}
        server_memory = {path: memory_mb(servers[path][0].pid) for path in PATHS}
    finally:
        for process, _ in servers.values():
            process.stdin.close()
            process.wait(timeout=60)

    version = resolve_store(args.store)
    file_mb, serving_mb = version.stat().st_size / 1e6, version.with_suffix(".serving").stat().st_size / 1e6
    figures = {
        "load": load,
        "engine": engine,
        "grpc": latency,
        "merged": merged,
        "concurrent": concurrent,
        "replicas": replicas,
        "servers": server_memory,
        "split": split,
    }
    markdown = report(args.store, info, file_mb, serving_mb, figures, (start_load, os.getloadavg()[0]))
    print(markdown)
    if args.write:
        write_section("service-mapped", markdown)


if __name__ == "__main__":
    main()
