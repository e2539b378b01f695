"""Fixtures: a real MLflow tracking server on 127.0.0.1 (one per session), always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
MLFLOW_CLI = str(Path(sys.executable).with_name("mlflow"))
HEALTH_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group; start() waits for GET /health, stop() kills the group."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.backend_uri = f"sqlite:///{root / 'server.db'}"
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [MLFLOW_CLI, "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_uri, "--artifacts-destination", str(self.root / "artifacts"),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
        )
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.root / 'server.log'}")
            if self._healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {HEALTH_TIMEOUT_S}s; see {self.root / 'server.log'}")

    def freeze(self) -> None:
        """SIGSTOP the group: the port still accepts connections (the kernel's backlog) but nothing answers,
        so a synchronous request hangs until its timeout, the worst kind of outage for a caller."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def ensure_running(self) -> None:
        """Restart a server a failed test left stopped or frozen, so one failure does not cascade."""
        if not self._healthy():
            self.stop()  # a no-op on a dead process; SIGKILL also ends a frozen one
            self.start()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: uvicorn workers too
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
