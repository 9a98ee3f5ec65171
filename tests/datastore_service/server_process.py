"""`crest serve` as its own process on a loopback port, as an operator runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from crest_cli.server_process import ServerProcess


def start_server(store: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, str]:
    """The process, its address and its first line ("serving ... on HOST:PORT")."""
    server = ServerProcess(store, flags, env=env).__enter__()
    return server.process, server.address, server.first_line


def stop_server(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
