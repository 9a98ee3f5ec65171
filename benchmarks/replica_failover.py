"""Several `crest serve` replicas sharing one published store: a replica killed mid-run, then a new version published.

    python benchmarks/replica_failover.py [--replicas 3] [--clients 8] [--seconds 30] [--write]

Replicas run as processes on loopback ports and serve the same store path. Client threads (one
DraftClient each, given every replica's address: round-robin with retries) send lookups back to
back. After a third of `--seconds`, one replica is killed (SIGKILL); after another third, a new
version of the store (built beforehand) is published once at the same path, and every surviving
replica is polled until it serves it; the clients then run for a last third. Reports calls per second over time, failed calls (after the client's retries; must
be 0), and how long the new version took to reach every replica. Exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _report import write_section

from crest_cli.server_process import ServerProcess
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.serve.client import DraftClient, ServiceError
from datastore_service.sizes import Budget
from datastore_service.store.publishing import VersionedStore
from datastore_service.store.reader import open_store, resolve_store

COMMAND = "python benchmarks/replica_failover.py " + " ".join(sys.argv[1:])
CORPUS = Path(sysconfig.get_paths()["stdlib"]) / "email"


def publish_version(store: Path, rows: int) -> str:
    summary = build_store(
        corpus_spec(str(CORPUS), glob="*.py"), "smollm2", store, BuildParams(budget=Budget(rows=rows)), progress=False
    )
    return summary.version_file.stem


def stored_contexts(store: Path, count: int) -> list[list[int]]:
    with open_store(store) as connection:
        contexts = [row[0] for row in connection.execute("SELECT context FROM drafts").fetchall()]
    picks = np.random.default_rng(0).choice(len(contexts), size=count)
    return [contexts[i] for i in picks]


class Clients:
    """Threads calling Lookup back to back; every success is timestamped, every failure kept."""

    def __init__(self, addresses: list[str], threads: int, contexts: list[list[int]]) -> None:
        self.addresses, self.contexts = addresses, contexts
        self.successes: list[tuple[float, str]] = []  # (time, store version answered)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(seed,), daemon=True) for seed in range(threads)]

    def run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with DraftClient(self.addresses, timeout=5.0, retries=5) as client:
            while not self.stop.is_set():
                batch = [self.contexts[i] for i in rng.integers(len(self.contexts), size=8)]
                try:
                    client.lookup(batch, max_nodes=16)
                    version = client.last_store_version
                    with self.lock:
                        self.successes.append((time.monotonic(), version))
                except ServiceError as error:
                    with self.lock:
                        self.failures.append(str(error))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store, upcoming = Path(folder) / "shared.duckdb", Path(folder) / "upcoming.duckdb"
        first_version = publish_version(store, rows=4000)
        second_version = publish_version(upcoming, rows=6000)
        replicas = [ServerProcess(store, ("--reload-interval", "0.2")).__enter__() for _ in range(args.replicas)]
        try:
            clients = Clients([r.address for r in replicas], args.clients, stored_contexts(store, 2000))
            started = time.monotonic()
            for thread in clients.threads:
                thread.start()
            time.sleep(args.seconds / 3)
            killed_at = time.monotonic() - started
            replicas[0].process.kill()
            time.sleep(args.seconds / 3 - (time.monotonic() - started - killed_at))
            published_at = time.monotonic() - started
            _publish_copy(upcoming, store, second_version)
            reached = _wait_for_version(replicas[1:], second_version)
            reached_at = time.monotonic() - started
            time.sleep(args.seconds / 3)
            duration = time.monotonic() - started
            clients.stop.set()
            for thread in clients.threads:
                thread.join(timeout=30)
        finally:
            for replica in replicas:
                replica.stop()

    times = np.array([t - started for t, _ in clients.successes])
    after_publish = [v for t, v in clients.successes if t - started > reached_at]
    per_second = np.bincount(times.astype(int), minlength=int(duration) + 1)[: int(duration)]
    phases = {
        "all replicas up": per_second[: int(killed_at)],
        "one replica killed": per_second[int(killed_at) + 1 : int(published_at)],
        "new version on every surviving replica": per_second[int(reached_at) + 1 :],
    }
    lines = [
        "## Replicas sharing one store: failover and publishing (issue 6)",
        "",
        f"Command: `{COMMAND}`. {args.replicas} `crest serve` processes on 127.0.0.1 serve one published store "
        f"path (stdlib `email` package, SmolLM2 tokenizer, hot reload polled every 0.2 s); {args.clients} client "
        "threads, each a `DraftClient` given all replica addresses (round-robin, up to 5 retries), send batches of "
        "8 lookups back to back. Clients and servers share this 2-core machine, so the rates are floors.",
        "",
        f"- Replica killed (SIGKILL) at {killed_at:.1f} s; new version published at {published_at:.1f} s; every "
        f"surviving replica served it {reached_at - published_at:.2f} s after publishing "
        f"({'reached' if reached else 'NOT reached'}).",
        f"- Calls: {len(clients.successes):,} answered, **{len(clients.failures)} failed** (after retries).",
        f"- Versions answered after the new one reached every replica: "
        f"{sorted(set(after_publish)) == [second_version]} (only `{second_version}`; the first was `{first_version}`).",
        "",
        "| phase | calls/s (median of whole seconds) |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {np.median(rates):.0f} |" for name, rates in phases.items() if len(rates)]
    lines += ["", "Calls per second over the run: " + ", ".join(str(int(r)) for r in per_second) + "."]
    markdown = "\n".join(lines)
    print(markdown)
    if clients.failures:
        print("failures:", *clients.failures[:5], sep="\n  ", file=sys.stderr)
    if args.write:
        write_section("replicas", markdown)
    return 1 if clients.failures or not reached else 0


def _publish_copy(built: Path, store: Path, version: str) -> None:
    """Publish the file of another store's current version as the shared store's next version."""
    shared = VersionedStore(store)
    partial = shared.scratch(version, "partial")
    shutil.copyfile(resolve_store(built), partial)
    shared.publish(partial, version)


def _wait_for_version(replicas: list[ServerProcess], version: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    pending = {replica.address for replica in replicas}
    while pending and time.monotonic() < deadline:
        for address in list(pending):
            with DraftClient(address, timeout=2.0) as client:
                if client.info().store_version == version:
                    pending.discard(address)
        time.sleep(0.05)
    return not pending


if __name__ == "__main__":
    sys.exit(main())
