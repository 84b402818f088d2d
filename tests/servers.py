"""Real servers for tests, on 127.0.0.1 only: PostgreSQL (Debian's packages) and ``mlflow server``.

Each starter returns a handle with the URL and a ``stop()``; when a server cannot start the
reason is returned so the test can skip saying why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["free_port", "Server", "start_postgres", "start_mlflow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            try:  # the whole process group: mlflow server forks workers
                os.killpg(self.process.pid, 15)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _pg_bin(name: str) -> str | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return shutil.which(name)


def start_postgres(workdir: Path, timeout: float = 30.0) -> Server | str:
    """A throw-away PostgreSQL cluster on 127.0.0.1; returns the server or why it could not start."""
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not initdb or not postgres:
        return "PostgreSQL server binaries not installed (apt-get install postgresql)"
    data = workdir / "pgdata"
    data.mkdir(parents=True)
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            return "running as root without runuser"
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    log = workdir / "postgres.log"
    init = subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", "fabric", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        return f"initdb failed: {init.stderr.strip().splitlines()[-1] if init.stderr.strip() else init.returncode}"
    port = free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                *run_as,
                postgres,
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(workdir),
                "-c",
                "max_connections=100",
                "-c",
                "fsync=off",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"postgresql+psycopg2://fabric@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"postgres exited: {log.read_text()[-300:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(0.5)  # accepting connections a moment after the port opens
                return Server(url, proc, log)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    return "postgres did not accept connections in time"


def start_mlflow(workdir: Path, timeout: float = 60.0) -> Server | str:
    """``mlflow server`` with a SQLite backend on 127.0.0.1; returns the server or why it could not start."""
    mlflow = Path(sys.executable).with_name("mlflow")
    if not mlflow.exists():
        return "mlflow executable not found next to the Python interpreter"
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: starts faster
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{workdir / 'server.db'}",
                "--artifacts-destination",
                str(workdir / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"mlflow server exited: {log.read_text()[-300:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return Server(url, proc, log)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    return "mlflow server did not become healthy in time"
