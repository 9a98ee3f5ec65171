"""Prometheus metrics of `crest generate --metrics-port`: accepted draft tokens and wall time per step."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

ACCEPTED_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class DecodeMetrics:
    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Histogram(
            "crest_decode_accepted_tokens", "Draft tokens accepted per step (the bonus token not counted)",
            buckets=ACCEPTED_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "crest_decode_step_seconds", "Wall time of a decode step", buckets=STEP_BUCKETS, registry=self.registry
        )
        self.tokens = Counter("crest_decode_tokens", "Tokens emitted", registry=self.registry)
        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_address[1]

    def step(self, emitted: int, seconds: float) -> None:
        self.accepted.observe(max(emitted - 1, 0))
        self.step_seconds.observe(seconds)
        self.tokens.inc(emitted)

    def close(self) -> None:
        self.server.shutdown()
