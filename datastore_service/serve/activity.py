"""What the server does, in its log: refused calls with their peer, one summary line per interval,
and (at debug level) one line per call.

`CallLog` is the outermost interceptor, so it sees each call as the client does: refused by the
token check (UNAUTHENTICATED, logged with the peer address and the reason), undecodable
(INVALID_ARGUMENT), answered. A failed TLS handshake never reaches Python (grpc core drops the
connection before any call exists), so it cannot be logged or counted here; the client sees
UNAVAILABLE. `SummaryLogger` logs, every interval, the calls by method, the sequences looked up,
Lookup's server-side p50/p99, errors by status and refused calls, then starts counting afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from datastore_service.serve.logs import fields

log = logging.getLogger("crest.serve")
REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
LOOKUP_METHOD = "/crest.v1.DraftStore/Lookup"


@dataclass
class Interval:
    """The counts of one summary interval."""

    calls: Counter = field(default_factory=Counter)  # short method name -> calls
    errors: Counter = field(default_factory=Counter)  # status name -> calls that ended with it (not OK)
    refused: int = 0
    sequences: int = 0  # sequences answered by Lookup calls
    lookup_seconds: list[float] = field(default_factory=list)

    def summary(self, seconds: float, version: str) -> tuple[str, dict]:
        """The summary line and its fields."""
        p50, p99 = (np.percentile(self.lookup_seconds, [50, 99]) * 1e3).tolist() if self.lookup_seconds else (0, 0)
        total = sum(self.calls.values())
        methods = ", ".join(f"{name} {count}" for name, count in self.calls.most_common())
        errors = ", ".join(f"{name} {count}" for name, count in self.errors.most_common()) or "none"
        latency = f"Lookup p50 {p50:.2f} ms p99 {p99:.2f} ms" if self.lookup_seconds else "no Lookup"
        text = (
            f"last {seconds:.3g} s: {total} calls" + (f" ({methods})" if methods else "") + f", {self.sequences} "
            f"sequences looked up, {latency}, errors: {errors}, refused: {self.refused}; serving version {version}"
        )
        values = dict(
            event="summary",
            interval_s=round(seconds, 3),
            calls=total,
            calls_by_method=dict(self.calls),
            sequences=self.sequences,
            lookup_p50_ms=round(p50, 3) if self.lookup_seconds else None,
            lookup_p99_ms=round(p99, 3) if self.lookup_seconds else None,
            errors_by_status=dict(self.errors),
            refused=self.refused,
            store_version=version,
        )
        return text, values


class CallStats:
    """Counts calls from the gRPC threads; `take` hands over the interval's counts and starts anew."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interval = Interval()

    def record(self, method: str, code: grpc.StatusCode, seconds: float, sequences: int) -> None:
        with self._lock:
            interval = self._interval
            interval.calls[method.rsplit("/", 1)[-1]] += 1
            if code != grpc.StatusCode.OK:
                interval.errors[code.name] += 1
            if code in REFUSALS:
                interval.refused += 1
            if sequences:
                interval.sequences += sequences
                interval.lookup_seconds.append(seconds)

    def take(self) -> Interval:
        with self._lock:
            taken, self._interval = self._interval, Interval()
        return taken


def _details(context: grpc.ServicerContext) -> str:
    details = context.details()
    return details.decode("utf-8", "replace") if isinstance(details, bytes) else details or ""


class CallLog(grpc.ServerInterceptor):
    def __init__(self, stats: CallStats) -> None:
        self.stats = stats

    def _finished(self, method: str, context: grpc.ServicerContext, started: float, failed: bool, response) -> None:
        code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
        seconds = time.perf_counter() - started
        sequences = len(response.drafts) if method == LOOKUP_METHOD and response is not None else 0
        self.stats.record(method, code, seconds, sequences)
        if code in REFUSALS:
            log.warning(
                "refused %s from %s: %s",
                method,
                context.peer(),
                _details(context),
                extra=fields(event="refused", method=method, peer=context.peer(), status=code.name),
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s from %s in %.2f ms",
                method,
                code.name,
                context.peer(),
                seconds * 1e3,
                extra=fields(event="call", method=method, peer=context.peer(), status=code.name, ms=seconds * 1e3),
            )

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def answer(request, context):
            started = time.perf_counter()
            try:
                response = behavior(request, context)
            except BaseException:
                self._finished(method, context, started, True, None)
                raise
            self._finished(method, context, started, False, response)
            return response

        return answer

    def _streamed(self, method: str, behavior: Callable) -> Callable:
        def answer(request, context) -> Iterator:
            started, failed = time.perf_counter(), True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                self._finished(method, context, started, failed, None)

        return answer

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        make = {
            (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary, self._unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream, self._streamed),
            (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary, self._unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream, self._streamed),
        }
        factory, behavior, wrap = make[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrap(method, behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class SummaryLogger(threading.Thread):
    """Logs one summary line per `interval` seconds, and a last one at stop."""

    def __init__(self, stats: CallStats, interval: float, version: Callable[[], str]) -> None:
        super().__init__(name="crest-summary", daemon=True)
        self.stats, self.interval, self.version = stats, interval, version
        self.stopped = threading.Event()
        self._since = time.monotonic()

    def log_summary(self) -> None:
        now = time.monotonic()
        text, values = self.stats.take().summary(now - self._since, self.version())
        self._since = now
        log.info(text, extra=fields(**values))

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.log_summary()

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join()
            self.log_summary()
