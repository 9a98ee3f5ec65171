"""A `crest serve` child process on a free loopback port, for tools that need a real server and
must never leave one behind (the demo). Its own session, so a Ctrl-C reaches only the parent,
which then stops the server cleanly; on Linux the kernel also stops it if the parent dies
without cleaning up (SIGKILL)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from datastore_service.errors import CrestError

START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child, before exec: ask for SIGTERM when the parent dies (Linux prctl; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ServerProcess:
    def __init__(self, store: Path, extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.command = [
            sys.executable,
            "-m",
            "crest_cli",
            "serve",
            str(store),
            "--port",
            "0",
            "--grace",
            "1",
            *extra_args,
        ]
        self.env = env
        self.process: subprocess.Popen | None = None
        self.address = self.first_line = ""
        # The server logs to stderr for as long as it runs: a file, since an unread pipe fills and blocks it.
        self.log = tempfile.TemporaryFile(mode="w+")

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=self.env,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        line = first_line[0] if first_line else ""
        if not line.startswith("serving "):
            self.stop()
            self.log.seek(0)
            errors = self.log.read().strip().splitlines()
            raise CrestError(f"crest serve did not start: {errors[-1] if errors else line or 'no output'}")
        self.first_line, self.address = line, line.rsplit(" ", 1)[1].strip()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: the server drains calls in flight, then exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
