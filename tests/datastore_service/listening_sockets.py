"""Which addresses our processes listen on, sampled while something runs (psutil)."""

from __future__ import annotations

import ipaddress
import os
import threading

import psutil


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as a JVM's IPv6 socket shows it
    return (mapped or address).is_loopback


class ListeningSockets:
    """While entered, records every listening TCP socket of this process and its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seen: set[tuple[str, int, str, int]] = set()  # (ip, port, process name, pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> ListeningSockets:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # once more, after the last interval

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        me = psutil.Process(os.getpid())
        processes = {me.pid: me.name()}
        for child in me.children(recursive=True):
            try:
                processes[child.pid] = child.name()
            except psutil.NoSuchProcess:
                continue
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
                self.seen.add((connection.laddr.ip, connection.laddr.port, processes[connection.pid], connection.pid))

    def not_loopback(self) -> list[tuple[str, int, str, int]]:
        return sorted(entry for entry in self.seen if not is_loopback(entry[0]))
