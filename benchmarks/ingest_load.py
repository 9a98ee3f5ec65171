"""Learning-store benchmark: ingestion while lookups continue, overlay memory, replica lag, metrics cost.

    python benchmarks/ingest_load.py [--store PATH] [--flood-seconds 60] [--overlay-mb 256] [--write]

Every server is `crest serve` as its own process on 127.0.0.1, on the default stdlib store.
1. Batch-64 lookups (one client, back to back; server time from the `crest-server-us` trailer) on
   the static server, then on a learning server while another process floods it with Observe
   calls (stdlib documents, 64 KiB of tokens a call) for --flood-seconds. Ingestion = tokens the
   server counted into its overlay per second; overlay bytes are scraped every 5 s.
2. Two learning replicas of one store: a fresh sequence observed by one is drafted by the other
   after (snapshot interval + refresh); the lag of 5 sequences.
3. Lookup throughput of 4 client processes, alternating 10 s periods without and with a /metrics
   scrape every second.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
from _report import write_section

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from crest_cli.server_process import ServerProcess
from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.pipeline import default_store_path
from datastore_service.build.token_table import tokenize_corpus
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.serve.client import DraftClient
from datastore_service.serve.service import SERVER_TIME_KEY

COMMAND = "python benchmarks/ingest_load.py " + " ".join(sys.argv[1:])


def corpus_documents() -> list[np.ndarray]:
    tokens = tokenize_corpus(stdlib_corpus(), TargetTokenizer.load("smollm2"), progress=False).parquet
    table = pq.read_table(tokens)
    doc, token = table.column("doc_id").to_numpy(), table.column("token").to_numpy()
    bounds = np.flatnonzero(np.diff(doc)) + 1
    return [d for d in np.split(token, bounds) if len(d)]


def queries(documents: list[np.ndarray], count: int = 4096) -> list[list[int]]:
    rng = np.random.default_rng(0)
    picked = [documents[i] for i in rng.integers(0, len(documents), count)]
    return [d[max(0, e - 3) : e].tolist() for d in picked for e in [int(rng.integers(1, len(d) + 1))]]


def lookup_request(batch: list[list[int]]) -> pb.LookupRequest:
    request = pb.LookupRequest()
    for tokens in batch:
        request.sequences.add(tokens=tokens, max_nodes=32)
    return request


def server_times(address: str, batches: list[pb.LookupRequest], seconds: float) -> list[float]:
    """Server milliseconds of batch-64 lookups sent back to back for `seconds`."""
    samples = []
    with grpc.insecure_channel(address) as channel:
        lookup = pb_grpc.DraftStoreStub(channel).Lookup
        start, i = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            _, call = lookup.with_call(batches[i % len(batches)], timeout=10)
            samples.append(int(dict(call.trailing_metadata())[SERVER_TIME_KEY]) / 1000)
            i += 1
    return samples


def flood(address: str, documents: list[np.ndarray], seconds: float, sent) -> None:
    """Observe calls back to back: documents cut into 1024-token sequences, 16 per call."""
    pieces = [d[i : i + 1024] for d in documents for i in range(0, len(d), 1024)]
    requests = []
    for first in range(0, len(pieces), 16):
        request = pb.ObserveRequest()
        for piece in pieces[first : first + 16]:
            request.sequences.add(tokens=piece.tolist())
        requests.append(request.SerializeToString())
    with grpc.insecure_channel(address) as channel:
        observe = channel.unary_unary("/crest.v1.DraftStore/Observe")
        start, i = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            try:
                observe(requests[i % len(requests)], timeout=60)
            except grpc.RpcError as error:  # reported in the figures as tokens not taken
                print(f"observe failed: {error.code().name}", file=sys.stderr)
            i += 1
            sent.value = i


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, _, value in [line.rpartition(" ")]
    }


def metric(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def ingest_phase(store: Path, documents, batches, seconds: float, overlay_mb: float) -> dict:
    with ServerProcess(store) as static:
        time.sleep(1)
        server_times(static.address, batches, 2)  # warm up
        static_ms = server_times(static.address, batches, 15)
    flags = ["--learn", "--overlay-mb", str(overlay_mb), "--snapshot-interval", "5", "--metrics-port", "0"]
    with ServerProcess(store, flags) as learning:
        port = int(learning.first_line.split("metrics on port ")[1].split(")")[0])
        server_times(learning.address, batches, 2)
        sent = multiprocessing.Value("q", 0)
        flooder = multiprocessing.Process(target=flood, args=(learning.address, documents, seconds, sent))
        started = time.perf_counter()
        flooder.start()
        learning_ms, memory = [], []
        next_scrape = started
        while flooder.is_alive():
            learning_ms += server_times(learning.address, batches, 1)
            if time.perf_counter() >= next_scrape:
                values = scrape(port)
                memory.append((time.perf_counter() - started, metric(values, "crest_overlay_bytes")))
                next_scrape += 5
        flooder.join()
        elapsed = time.perf_counter() - started
        values = scrape(port)
        with DraftClient(learning.address, timeout=30) as client:
            observed = client.info().observed_tokens
        counted = metric(values, "crest_overlay_counted_tokens")  # folded into lookups by the end
        evictions = metric(values, "crest_overlay_evictions")
    return {
        "static_ms": static_ms,
        "learning_ms": learning_ms,
        "observed_tokens": observed,
        "counted_tokens": counted,
        "seconds": elapsed,
        "memory": memory,
        "evictions": evictions,
        "cap": overlay_mb * 2**20,
    }


def replica_phase(store: Path, snapshot_interval: float = 2.0) -> list[float]:
    flags = ["--learn", "--snapshot-interval", str(snapshot_interval), "--refresh-interval", "0.25"]
    lags = []
    with ServerProcess(store, flags) as first, ServerProcess(store, flags) as second:
        with DraftClient(first.address, timeout=10) as a, DraftClient(second.address, timeout=10) as b:
            for trial in range(5):
                marker = [49000 + trial * 10 + k for k in range(6)] * 2
                a.observe([marker])
                sent = time.perf_counter()
                while b.lookup([marker[:1]], max_nodes=4)[0].tokens.tolist()[:1] != [marker[1]]:
                    time.sleep(0.02)
                lags.append(time.perf_counter() - sent)
    return lags


def load_client(address: str, batches, stop_at: float, counter) -> None:
    with grpc.insecure_channel(address) as channel:
        lookup = pb_grpc.DraftStoreStub(channel).Lookup
        i = 0
        while time.time() < stop_at:
            lookup(batches[i % len(batches)], timeout=10)
            i += 1
            with counter.get_lock():
                counter.value += 1


def metrics_phase(store: Path, batches, period: float = 10.0, rounds: int = 3) -> tuple[list[float], list[float]]:
    without, with_scrape = [], []
    with ServerProcess(store, ["--metrics-port", "0"]) as server:
        port = int(server.first_line.split("metrics on port ")[1].split(")")[0])
        counter = multiprocessing.Value("q", 0)
        stop_at = time.time() + 2 * period * rounds + 2
        clients = [
            multiprocessing.Process(target=load_client, args=(server.address, batches, stop_at, counter))
            for _ in range(4)
        ]
        for client in clients:
            client.start()
        time.sleep(2)
        for _ in range(rounds):
            for scraping, rates in ((False, without), (True, with_scrape)):
                before, start = counter.value, time.perf_counter()
                while time.perf_counter() - start < period:
                    if scraping:
                        scrape(port)
                    time.sleep(1.0)
                rates.append((counter.value - before) / (time.perf_counter() - start))
        for client in clients:
            client.join()
    return without, with_scrape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=default_store_path("stdlib"))
    parser.add_argument("--flood-seconds", type=float, default=60.0)
    parser.add_argument("--overlay-mb", type=float, default=256.0)
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()
    # A private copy: snapshots are written beside the store, never beside the shared cache's.
    scratch = Path(tempfile.mkdtemp(prefix="crest-ingest-"))
    shutil.copy(args.store.resolve(), scratch / args.store.name)
    args.store = scratch / args.store.name
    load_before = os.getloadavg()[0]
    documents = corpus_documents()
    batches = [lookup_request(list(b)) for b in (queries(documents)[i : i + 64] for i in range(0, 4096, 64))]
    ingest = ingest_phase(args.store, documents, batches, args.flood_seconds, args.overlay_mb)
    lags = replica_phase(args.store)
    without, with_scrape = metrics_phase(args.store, batches)
    static_p50 = statistics.median(ingest["static_ms"])
    learning_p50 = statistics.median(ingest["learning_ms"])
    rate = ingest["counted_tokens"] / ingest["seconds"]
    peak = max(bytes_ for _, bytes_ in ingest["memory"])
    scrape_cost = 1 - statistics.median(with_scrape) / statistics.median(without)
    lines = [
        "## Learning store: ingestion, lookups, replicas, metrics (issue 14)",
        "",
        f"Command: `{COMMAND}`. Store `{args.store.name}`; every server is `crest serve` on 127.0.0.1; "
        f"this 2-core machine is shared (1-minute load average {load_before:.1f} before the run).",
        "",
        f"- Ingestion: one process sent Observe calls back to back for {ingest['seconds']:.0f} s: the server counted "
        f"**{rate:,.0f} tokens/s** into its overlay ({ingest['counted_tokens']:,.0f} of {ingest['observed_tokens']:,} "
        "tokens taken) while a client ran batch-64 lookups.",
        f"- Batch-64 lookup, server time p50: static store **{static_p50:.2f} ms** "
        f"(p99 {np.percentile(ingest['static_ms'], 99):.2f}), learning store during the flood **{learning_p50:.2f} ms** "
        f"(p99 {np.percentile(ingest['learning_ms'], 99):.2f}): ratio **{learning_p50 / static_p50:.2f}**.",
        f"- Overlay memory (scraped every 5 s) peaked at **{peak / 2**20:.1f} MiB** under a cap of "
        f"{ingest['cap'] / 2**20:.0f} MiB ({ingest['evictions']:.0f} evictions): "
        + ", ".join(f"{t:.0f} s: {b / 2**20:.0f}" for t, b in ingest["memory"])
        + " MiB.",
        f"- Replicas (snapshot interval 2 s, refresh 0.25 s): a sequence observed by one was drafted by the other "
        f"after median **{statistics.median(lags):.2f} s**, max {max(lags):.2f} s (5 sequences).",
        f"- Metrics: 4 lookup clients, 10 s periods alternating: median {statistics.median(without):,.0f} calls/s "
        f"without scraping, {statistics.median(with_scrape):,.0f} with a /metrics scrape every second: "
        f"cost **{100 * scrape_cost:.1f}%** (periods: {', '.join(f'{r:.0f}' for r in without)} vs "
        f"{', '.join(f'{r:.0f}' for r in with_scrape)}).",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if args.write:
        write_section("ingest", markdown)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
