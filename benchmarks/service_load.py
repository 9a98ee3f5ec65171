"""Load test of `crest serve`: concurrent clients on loopback for a fixed time, then it stops.

    python benchmarks/service_load.py [--store PATH] [--clients 16] [--seconds 60] [--batch 8] [--write]

The server runs as its own process, bound to 127.0.0.1. Each client is a process with its own
DraftClient sending batched lookups back to back; a batch holds contexts drawn from the store
itself in proportion to their corpus counts (what decoding workers ask for most is what the
corpus holds most). Reports throughput, call latency p50/p99/p99.9, the error count (must be 0)
and the server's RSS sampled over the run. Exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import write_section

from datastore_service.build.pipeline import default_store_path
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.store.reader import open_store

COMMAND = "python benchmarks/service_load.py " + " ".join(sys.argv[1:])


def weighted_contexts(store: Path, count: int, seed: int = 0) -> list[list[int]]:
    """`count` stored contexts, drawn with probability proportional to their corpus counts."""
    with open_store(store) as connection:
        table = connection.sql("SELECT context, context_count FROM drafts").to_arrow_table()
    counts = table.column("context_count").to_numpy().astype(np.float64)
    rows = np.random.default_rng(seed).choice(len(counts), size=count, p=counts / counts.sum())
    contexts = table.column("context").to_pylist()
    return [contexts[i] for i in rows]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def client(address: str, batches: list[list[list[int]]], max_nodes: int, stop_at: float, results) -> None:
    latencies, errors, sequences = [], [], 0
    with DraftClient(address, timeout=5.0) as draft_client:
        draft_client.lookup(batches[0], max_nodes=max_nodes)  # connect before the clock starts
        i = 0
        while time.time() < stop_at:
            batch = batches[i % len(batches)]
            started = time.perf_counter()
            try:
                draft_client.lookup(batch, max_nodes=max_nodes)
                latencies.append(time.perf_counter() - started)
                sequences += len(batch)
            except ServiceError as error:
                errors.append(str(error))
            i += 1
    results.put((np.array(latencies), errors, sequences))


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "crest_cli", "serve", str(store), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    if "serving" not in line:
        server.kill()
        raise SystemExit(f"crest serve did not start: {line!r}")
    return server, line.rsplit(" ", 1)[1].strip()


def run_load(address: str, server_pid: int, args: argparse.Namespace, contexts: list[list[int]]) -> dict:
    batches = [contexts[i : i + args.batch] for i in range(0, len(contexts) - args.batch + 1, args.batch)]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 3.0  # every client connected and warmed before the clock starts
    stop_at = start_at + args.seconds
    processes = [
        context.Process(
            target=client, args=(address, batches[k :: args.clients], args.max_nodes, stop_at, results), daemon=True
        )
        for k in range(args.clients)
    ]
    for process in processes:
        process.start()
    while time.time() < start_at:
        time.sleep(0.05)
    rss = [(0.0, rss_mib(server_pid))]
    while (now := time.time()) < stop_at:
        time.sleep(min(args.sample_every, stop_at - now))
        rss.append((time.time() - start_at, rss_mib(server_pid)))
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    latencies = np.concatenate([o[0] for o in outcomes])
    errors = [e for o in outcomes for e in o[1]]
    return {"latencies": latencies, "errors": errors, "sequences": sum(o[2] for o in outcomes), "rss": rss}


def report(store: Path, args: argparse.Namespace, figures: dict) -> str:
    latencies, seconds = figures["latencies"] * 1e3, args.seconds
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    lines = [
        "## Service under load (issue 7)",
        "",
        f"Command: `{COMMAND}`. Server: `crest serve` as its own process on 127.0.0.1 (8 worker threads), store "
        f"`{store.name}`. {args.clients} client processes, each with its own `DraftClient`, send lookups back to back "
        f"for {seconds:g} s: batches of {args.batch} stored contexts drawn in proportion to their corpus counts, up "
        f"to {args.max_nodes} nodes each. Clients and server share this machine's {os.cpu_count()} cores with other "
        f"engineers' work (1-minute load average {figures['load_before']:.1f} before the run), so these are floor "
        "figures for a dedicated host.",
        "",
        f"- Throughput: **{len(latencies) / seconds:,.0f} calls/s** ({figures['sequences'] / seconds:,.0f} sequences/s), "
        f"{len(latencies):,} calls in all.",
        f"- Call latency (client side, round trip): p50 **{p50:.2f} ms**, p99 **{p99:.2f} ms**, "
        f"p99.9 **{p999:.2f} ms**, max {latencies.max():.2f} ms.",
        f"- Errors: **{len(figures['errors'])}**.",
        "",
        "| seconds into the run | server RSS MiB |",
        "| ---: | ---: |",
    ]
    lines += [f"| {at:.0f} | {mib:.1f} |" for at, mib in figures["rss"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=default_store_path("stdlib"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=8, help="sequences per lookup (a decoding batch)")
    parser.add_argument("--max-nodes", type=int, default=32)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between server RSS samples")
    parser.add_argument("--write", action="store_true", help="write the section into docs/BENCHMARKS.md")
    args = parser.parse_args()
    if not args.store.exists():
        subprocess.run([sys.executable, "-m", "crest_cli", "build", "--output", str(args.store), "--quiet"], check=True)
    contexts = weighted_contexts(args.store, 200_000)
    load_before = os.getloadavg()[0]
    server, address = start_server(args.store)
    try:
        figures = {**run_load(address, server.pid, args, contexts), "load_before": load_before}
    finally:
        server.terminate()
        server.wait(timeout=60)
    markdown = report(args.store, args, figures)
    print(markdown)
    for error in figures["errors"][:5]:
        print("error:", error, file=sys.stderr)
    if args.write:
        write_section("service-load", markdown)
    sys.exit(1 if figures["errors"] else 0)


if __name__ == "__main__":
    main()
