"""`crest serve` as its own process on a loopback port, as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_server(store: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, str]:
    """The process, its address and its first line ("serving ... on HOST:PORT")."""
    process = subprocess.Popen(
        [sys.executable, "-m", "datastore_service.cli", "serve", str(store), "--port", "0", "--grace", "1", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        process.wait()
        raise AssertionError(f"crest serve did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip(), line


def stop_server(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
