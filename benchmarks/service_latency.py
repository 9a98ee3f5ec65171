"""Service benchmark: in-process engine throughput and latency, gRPC round trips on loopback,
throughput with concurrent clients, index load time and memory.

    python benchmarks/service_latency.py [--store PATH] [--seconds 5] [--write]

The store defaults to the default stdlib store (built if missing). Queries are the real last-3-token
contexts of HumanEval-like code: every position of the stdlib's json package, shuffled.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from _report import write_section

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.pipeline import default_store_path
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.serve.service import SERVER_TIME_KEY

COMMAND = "python benchmarks/service_latency.py " + " ".join(sys.argv[1:])
DECODE_STEP_MS = 36.0  # SmolLM2 on this CPU, one decode step (shared/RESOURCES.md)


def query_contexts(width: int, count: int = 20_000) -> list[list[int]]:
    tokenizer = TargetTokenizer.load("smollm2")
    text = "".join(p.read_text() for p in sorted((stdlib_corpus().path / "json").glob("*.py")))
    ids = tokenizer.encode_batch([text])[0]
    rng = np.random.default_rng(0)
    ends = rng.integers(width, len(ids), count)
    return [ids[end - width : end] for end in ends]


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def engine_figures(index: DraftIndex, queries: list[list[int]], seconds: float) -> dict:
    # Throughput: batches of 256, all work included (validation, hashing, choice, gather).
    batch = queries[:256]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        index.lookup(batch, max_nodes=32)
        done += len(batch)
    throughput = done / (time.perf_counter() - start)
    # Latency of a single-sequence lookup.
    single = []
    for query in queries[:5000]:
        t = time.perf_counter()
        index.lookup([query], max_nodes=32)
        single.append((time.perf_counter() - t) * 1e6)
    return {"throughput": throughput, "single_us": percentiles(single)}


def grpc_figures(address: str, queries: list[list[int]], batch_sizes: list[int], calls: int) -> dict:
    figures = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DraftStoreStub(channel)
        for size in batch_sizes:
            requests = []
            for i in range(calls):
                request = pb.LookupRequest(selection=pb.SCORED)
                for tokens in queries[(i * size) % (len(queries) - size) :][:size]:
                    request.sequences.add(tokens=tokens, max_nodes=32)
                requests.append(request)
            stub.Lookup(requests[0])  # warm
            round_trip, server = [], []
            for request in requests:
                t = time.perf_counter()
                _, call = stub.Lookup.with_call(request)
                round_trip.append((time.perf_counter() - t) * 1e3)
                server.append(int(dict(call.trailing_metadata())[SERVER_TIME_KEY]) / 1e3)
            figures[size] = {"round_trip": percentiles(round_trip), "server": percentiles(server)}
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
    results = multiprocessing.get_context("fork").Queue()
    processes = [
        multiprocessing.get_context("fork").Process(
            target=_client_process, args=(address, queries, size, seconds, results)
        )
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    rates = [results.get(timeout=seconds * 10 + 60) for _ in processes]
    for process in processes:
        process.join()
    return sum(rates)


def load_figures(store: Path) -> dict:
    code = (
        "import os, time, sys\n"
        "from datastore_service.lookup.draft_index import DraftIndex\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
        "before = rss()\n"
        "t = time.perf_counter(); index = DraftIndex.load(sys.argv[1]); seconds = time.perf_counter() - t\n"
        "print(seconds, before, rss())\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    values = [list(map(float, run.stdout.split())) for run in runs]
    return {"seconds": statistics.median(v[0] for v in values), "rss_before": values[0][1], "rss_after": values[0][2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=default_store_path("stdlib"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=300, help="calls per batch size for gRPC latency")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()
    if not args.store.exists():
        subprocess.run([sys.executable, "-m", "crest_cli", "build", "--output", str(args.store), "--quiet"], check=True)

    index = DraftIndex.load(args.store)
    queries = query_contexts(index.width)
    os.sched_setaffinity(0, {0})  # one core for the in-process engine figures
    engine = engine_figures(index, queries, args.seconds)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    loading = load_figures(args.store)

    server = subprocess.Popen(
        [sys.executable, "-m", "crest_cli", "serve", str(args.store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = server.stdout.readline().rsplit(" ", 1)[1].strip()
        sizes = [1, 8, 64, 256]
        latency = grpc_figures(address, queries, sizes, args.calls)
        throughput = concurrent_throughput(address, queries, clients=8, size=64, seconds=args.seconds)
    finally:
        server.terminate()
        server.wait()

    info = index.info
    lines = [
        "## Service (issue 3)",
        "",
        f"Command: `{COMMAND}`. Store: `{args.store.name}` ({info.contexts:,} contexts, {info.nodes:,} nodes, "
        f"max context {info.max_context}). Queries: real 3-token contexts from the stdlib `json` package; "
        "every lookup asks for up to 32 nodes, scored selection.",
        "",
        f"- In-process engine, one core, batches of 256: **{engine['throughput']:,.0f} lookups/s**; a single-sequence "
        f"lookup takes p50 **{engine['single_us'][0]:.0f} µs**, p99 {engine['single_us'][1]:.0f} µs.",
        f"- Index load from the DuckDB file: median **{loading['seconds']:.2f} s**; process RSS "
        f"{loading['rss_before']:.0f} MB before, **{loading['rss_after']:.0f} MB** after.",
        f"- 8 concurrent client processes, batch 64, one server (8 worker threads) on this 2-core machine: "
        f"**{throughput:,.0f} calls/s** ({throughput * 64:,.0f} sequences/s).",
        "",
        "| batch | round trip p50 ms | round trip p99 ms | server p50 ms | server p99 ms | round trip p50 / 36 ms decode step |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        (rt50, rt99), (sv50, sv99) = latency[size]["round_trip"], latency[size]["server"]
        lines.append(
            f"| {size} | {rt50:.2f} | {rt99:.2f} | {sv50:.2f} | {sv99:.2f} | {100 * rt50 / DECODE_STEP_MS:.1f}% |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("service", markdown)


if __name__ == "__main__":
    main()
