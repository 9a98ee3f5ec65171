"""Prometheus metrics of a server (`crest serve --metrics-port`), per store.

Per call: lookup latency and batch size (histograms), sequences answered by matched context
length (0 = no draft: the hit rate), nodes returned, observed tokens, errors by method and code.
Read at scrape time, so they cost the calls nothing: each store's version, load time and
duration, reloads and refused reloads, and its overlay's size, contexts, counts and snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServiceMetrics:
    def __init__(self, stores: Iterable, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.lookup_seconds = Histogram(
            "crest_lookup_seconds", "Server time of a Lookup call", ["store"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "crest_lookup_batch_size", "Sequences in a Lookup call", ["store"], buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.sequences = Counter(
            "crest_lookup_sequences",
            "Sequences answered, by the length of the matched context (0 = no draft)",
            ["store", "matched_length"],
            registry=self.registry,
        )
        self.nodes = Counter("crest_lookup_nodes_returned", "Draft nodes returned", ["store"], registry=self.registry)
        self.observed = Counter(
            "crest_observed_tokens", "Tokens taken by Observe calls", ["store"], registry=self.registry
        )
        self.errors = Counter(
            "crest_errors", "Calls refused or failed, by status code", ["store", "method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(StoreCollector(list(stores)))
        self._per_store: dict[str, tuple] = {}

    def lookup(self, store: str, seconds: float, context_lengths: np.ndarray, nodes: int) -> None:
        children = self._per_store.get(store)
        if children is None:
            children = (
                self.lookup_seconds.labels(store),
                self.batch_size.labels(store),
                self.nodes.labels(store),
                [self.sequences.labels(store, str(length)) for length in range(17)],
            )
            self._per_store[store] = children
        latency, batch, returned, by_length = children
        latency.observe(seconds)
        batch.observe(len(context_lengths))
        returned.inc(nodes)
        counts = np.bincount(context_lengths, minlength=1)
        for length in np.flatnonzero(counts).tolist():
            by_length[min(length, 16)].inc(int(counts[length]))

    def error(self, store: str, method: str, code: str) -> None:
        self.errors.labels(store, method, code).inc()

    def serve(self, host: str, port: int):
        """Serve /metrics over HTTP on host:port (0 = any free port); returns (server, port)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_address[1]


class StoreCollector(Collector):
    """Each store's state, read when scraped."""

    def __init__(self, stores: list) -> None:
        self.stores = stores

    def collect(self):
        version = GaugeMetricFamily("crest_store_info", "The version each store serves", labels=["store", "version"])
        loaded = GaugeMetricFamily(
            "crest_store_loaded_timestamp_seconds", "When the version was loaded", labels=["store"]
        )
        load_seconds = GaugeMetricFamily("crest_store_load_seconds", "How long loading it took", labels=["store"])
        reloads = CounterMetricFamily("crest_reloads", "Hot reloads, by outcome", labels=["store", "outcome"])
        overlay_bytes = GaugeMetricFamily("crest_overlay_bytes", "Memory of the learning overlay", labels=["store"])
        contexts = GaugeMetricFamily("crest_overlay_contexts", "Contexts with a merged tree", labels=["store"])
        ngrams = GaugeMetricFamily("crest_overlay_ngrams", "N-grams counted in the overlay", labels=["store"])
        snapshots = CounterMetricFamily("crest_overlay_snapshots", "Snapshots written", labels=["store"])
        evictions = CounterMetricFamily("crest_overlay_evictions", "Evictions past the byte cap", labels=["store"])
        counted = CounterMetricFamily("crest_overlay_counted_tokens", "Observed tokens lookups see", labels=["store"])
        ingest_cpu = CounterMetricFamily(
            "crest_overlay_ingest_cpu_seconds", "CPU time spent checking, counting and evicting observed tokens",
            labels=["store"],
        )  # fmt: skip
        for store in self.stores:
            holder, name = store.holder, store.name
            version.add_metric([name, holder.index.info.store_version], 1)
            loaded.add_metric([name], holder.loaded_at)
            load_seconds.add_metric([name], holder.load_seconds)
            reloads.add_metric([name, "loaded"], holder.reloads)
            reloads.add_metric([name, "refused"], holder.refusals)
            overlay = store.overlay
            if overlay is not None:
                overlay_bytes.add_metric([name], overlay.nbytes)
                contexts.add_metric([name], len(overlay.trees.view.keys))
                ngrams.add_metric([name], len(overlay.table))
                snapshots.add_metric([name], overlay.stats.snapshots)
                evictions.add_metric([name], overlay.stats.evictions)
                counted.add_metric([name], overlay.stats.counted_tokens)
                ingest_cpu.add_metric([name], overlay.stats.ingest_cpu_seconds)
        yield from (
            version,
            loaded,
            load_seconds,
            reloads,
            overlay_bytes,
            contexts,
            ngrams,
            snapshots,
            evictions,
            counted,
            ingest_cpu,
        )
