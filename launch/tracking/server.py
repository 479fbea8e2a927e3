"""An `mlflow server` over a SQLite store, for many processes logging at once, and reachability checks."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

from action_launch.common.processes import stop_process_group


def artifact_root_for(uri: str) -> Optional[Path]:
    """Where an embedded SQLite store keeps artifacts: beside it, not in the current directory."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    return None


def server_reachable(uri: str, timeout: float = 3.0) -> bool:
    """True for local stores; for an http(s) server, whether its /health answers within `timeout`."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TrackingServer:
    """An `mlflow server` over a SQLite store, for many processes logging at once (127.0.0.1 by default;
    inside a Slurm allocation, the head node's address so trials on other nodes reach it).

    MLflow's docs warn against several processes writing one SQLite file; a sweep's trials log through
    this server instead, and it is stopped when the sweep ends (also as a context manager).
    """

    def __init__(self, store_uri: str, port: int, log_file: Path, host: str = "127.0.0.1",
                 extra_args: Sequence[str] = ()):
        if not store_uri.startswith("sqlite:///"):
            raise ValueError(f"TrackingServer serves a SQLite store, got {store_uri}")
        self.uri = f"http://{host}:{port}"
        self.store_uri = store_uri
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_file, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
             "--backend-store-uri", store_uri, "--artifacts-destination", str(artifact_root_for(store_uri)),
             *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_file = log_file

    def wait(self, timeout: float = 120.0) -> "TrackingServer":
        """Block until the server answers /health; raise with its log tail if it died or never did."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            if server_reachable(self.uri, timeout=2):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start at {self.uri}; its log {self.log_file}:\n"
                           f"{self.log_file.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and its workers."""
        stop_process_group(self.process)
        self._log.close()

    def __enter__(self) -> "TrackingServer":
        return self.wait()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
