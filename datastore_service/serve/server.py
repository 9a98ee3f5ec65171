"""`crest serve`: the DraftStore service over gRPC, with health checking, reflection and hot reload.

Binds to loopback unless told otherwise; with `ServerSecurity` it speaks TLS (mutual TLS when a
client CA is given) and asks every call but health checks for the shared token (security.py).
SIGTERM or SIGINT stop accepting calls, let the calls in flight finish (up to `grace` seconds),
then exit. It logs refused calls and one summary line per `summary_interval` (activity.py), and
keeps a lease in the store's versions folder naming the version it serves (lease_keeper.py).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from crest.v1 import datastore_pb2 as pb
from crest.v1 import datastore_pb2_grpc as pb_grpc
from datastore_service.overlay.overlay import OverlaySettings
from datastore_service.serve.activity import CallLog, CallStats, SummaryLogger
from datastore_service.serve.index_holder import IndexHolder, ReloadWatcher
from datastore_service.serve.lease_keeper import LeaseKeeper
from datastore_service.serve.logs import fields
from datastore_service.serve.metrics import ServiceMetrics
from datastore_service.serve.request_decoding import DecodeInHandler
from datastore_service.serve.security import ServerSecurity, StoreAccess
from datastore_service.serve.service import DraftStoreService
from datastore_service.serve.stores import DEFAULT_NAME, StoreSet, StoreSpec

log = logging.getLogger("crest.serve")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DraftStore"].full_name


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = any free port
    workers: int = 8
    max_message_bytes: int = 4 * 1024 * 1024
    reload_interval: float = 1.0  # seconds between checks for a newly published version
    grace: float = 10.0  # seconds in-flight calls get at shutdown
    summary_interval: float = 60.0  # seconds between summary log lines; 0 = none
    security: ServerSecurity = ServerSecurity()
    learn: OverlaySettings | None = None  # given: stores learn from Observe calls (datastore_service/overlay/)
    metrics_port: int | None = None  # given: Prometheus metrics on http://host:port/metrics (0 = any free port)
    rest_overrides: Mapping[str, int] = field(default_factory=dict)  # REST stores: k/n/m/c replacing the stored ones


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RunningServer:
    """A started server: its port, its index holder, and a clean stop."""

    def __init__(self, stores: Path | list[StoreSpec], settings: ServerSettings) -> None:
        specs = [StoreSpec(DEFAULT_NAME, stores)] if isinstance(stores, Path) else stores
        self.stores = StoreSet(specs, settings.learn, settings.rest_overrides)
        self.settings = settings
        self.calls = CallStats()
        security = settings.security
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="crest-rpc"),
            # CallLog first: the outermost, it sees refusals by the token check too
            interceptors=[CallLog(self.calls), *security.interceptors(), DecodeInHandler()],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", 16 * settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.metrics = ServiceMetrics(self.stores) if settings.metrics_port is not None else None
        service = DraftStoreService(self.stores, StoreAccess(security), self.metrics)
        pb_grpc.add_DraftStoreServicer_to_server(service, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        bind = f"{settings.host}:{settings.port}"
        if security.tls:
            self.port = self.server.add_secure_port(bind, security.credentials())
        else:
            self.port = self.server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"cannot bind {settings.host}:{settings.port}")
        if not is_loopback(settings.host):
            if not (security.token or security.tls_client_ca):
                log.warning(
                    "serving on %s with neither a token nor client certificates: any host that reaches "
                    "this port can call it",
                    settings.host,
                )
            elif security.token and not security.tls:
                log.warning("serving on %s without TLS: the token crosses the network in clear text", settings.host)
        self.watcher = ReloadWatcher(self.stores, settings.reload_interval)
        self.metrics_port: int | None = None
        self._metrics_server = None
        self.leases = [LeaseKeeper(store.holder, self.address) for store in self.stores]
        self.summary = SummaryLogger(self.calls, settings.summary_interval, self.versions)

    @property
    def holder(self) -> IndexHolder:
        """The default store's (or the only store's) index holder."""
        return self.stores.get(self.stores.resolve("") or next(iter(self.stores.stores))).holder

    def versions(self) -> str:
        """The version each store serves, for the log."""
        return ", ".join(
            s.holder.index.info.store_version
            if s.name == DEFAULT_NAME
            else f"{s.name}={s.holder.index.info.store_version}"
            for s in self.stores
        )

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> RunningServer:
        self.server.start()
        for name in ("", SERVICE_NAME, *(f"{SERVICE_NAME}/{store.name}" for store in self.stores)):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.watcher.start()
        if self.metrics is not None:
            self._metrics_server, self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)
        for lease in self.leases:
            lease.refresh()
            lease.start()
        if self.settings.summary_interval > 0:
            self.summary.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self.watcher.stop()
        self.server.stop(self.settings.grace if grace is None else grace).wait()
        self.stores.stop()  # a last snapshot of what the overlays observed
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.summary.stop()
        for lease in self.leases:
            lease.stop()


def serve_forever(stores: Path | list[StoreSpec], settings: ServerSettings) -> None:
    running = RunningServer(stores, settings).start()
    security = settings.security
    mode = ("mutual TLS" if security.tls_client_ca else "TLS") if security.tls else "plain TCP"
    mode += ", token required" if security.token or security.tenants else ""
    mode += ", learning" if settings.learn else ""
    if running.metrics_port is not None:
        mode += f", metrics on port {running.metrics_port}"
    served = ", ".join(f"{s.path}" if s.name == DEFAULT_NAME else f"{s.name}={s.path}" for s in running.stores)
    versions = ", ".join(s.holder.index.info.store_version for s in running.stores)
    print(f"serving {served} version {versions} ({mode}) on {running.address}", flush=True)
    log.info(
        "started: %d workers, new versions checked every %g s, a summary every %g s",
        settings.workers,
        settings.reload_interval,
        settings.summary_interval,
        extra=fields(event="start", stores=served, store_version=versions, address=running.address),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: draining calls in flight (up to %.0f s)", settings.grace)
    running.stop()
    print("stopped", flush=True)
