"""An `mlflow server` over a SQLite store, for many processes logging at once, and reachability checks."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from action_launch.common.processes import stop_process_group
from action_launch.common.reaper import start_reaper, stop_reaper

log = logging.getLogger(__name__)

STORE_INIT_TIMEOUT_S = 120.0
SERVER_ENV = "ACTION_LAUNCH_TRACKING_SERVER"
"""Set by a sweep for its trials: the URI of the sweep's temporary `mlflow server` ..."""
STORE_ENV = "ACTION_LAUNCH_TRACKING_STORE"
"""... and the SQLite store it serves (what a run's folder names as its store: the server dies with the sweep)."""


def backing_store(uri: str) -> Optional[str]:
    """The store behind `uri`: a local store is its own; a sweep's temporary server (`SERVER_ENV`) has the
    store of `STORE_ENV`; any other server: None (a lasting server is its own way to its store)."""
    if not uri:
        return None
    if not uri.startswith(("http://", "https://")):
        return uri
    if os.environ.get(SERVER_ENV) == uri and os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    return None


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` URI (query options dropped); None for other URIs and `:memory:`."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path not in ("", ":memory:") else None


def artifact_root_for(uri: str) -> Optional[Path]:
    """Where an embedded SQLite store keeps artifacts: beside it, not in the current directory."""
    db = sqlite_path(uri)
    return db.parent / "mlartifacts" if db is not None else None


@contextlib.contextmanager
def store_init_lock(uri: str, timeout: Optional[float] = None) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` beside a SQLite store while MLflow opens it.

    MLflow creates and migrates a new store's schema when it first opens it, with no lock of its own:
    several runs started at once each ran the migrations and all but one failed (`duplicate column
    name: step`). Under this lock one process creates the schema and the others find it done. A
    lock held longer than `timeout` (default STORE_INIT_TIMEOUT_S) raises TimeoutError (the tracker then goes
    offline, saying so); a file system without locks is run unlocked, with a warning. Other URIs: no lock.
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db.with_name(db.name + ".lock")
    with open(lock_path, "a") as fh:
        timeout = STORE_INIT_TIMEOUT_S if timeout is None else timeout
        deadline, locked = time.monotonic() + timeout, True
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another process held {lock_path} for over {timeout:g} s while opening the MLflow store {db}"
                    ) from None
                time.sleep(0.1)
            except OSError as err:  # e.g. a network file system mounted without locks
                log.warning("cannot lock %s (%s); opening the MLflow store without it", lock_path, err)
                locked = False
                break
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fh, fcntl.LOCK_UN)


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

    def __init__(
        self, store_uri: str, port: int, log_file: Path, host: str = "127.0.0.1", extra_args: Sequence[str] = ()
    ):
        if not store_uri.startswith("sqlite:///"):
            raise ValueError(f"TrackingServer serves a SQLite store, got {store_uri}")
        self.uri = f"http://{host}:{port}"
        self.store_uri = store_uri
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # the server writes its own copy of the file handle: this process's copy is closed once it has started
        with open(log_file, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    store_uri,
                    "--artifacts-destination",
                    str(artifact_root_for(store_uri)),
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # its own session: a kill -9 of this process would leave it (10 processes, GBs) running without this
        self._reaper = start_reaper(os.getpid(), groups=[self.process.pid])
        self.log_file = log_file

    def environment(self) -> Dict[str, str]:
        """The variables that tell a run logging through this server which store it writes (`backing_store`)."""
        return {SERVER_ENV: self.uri, STORE_ENV: self.store_uri}

    def wait(self, timeout: float = 120.0) -> TrackingServer:
        """Block until the server answers /health; raise with its log tail if it died or never did."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                break
            if server_reachable(self.uri, timeout=2):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not start at {self.uri}; its log {self.log_file}:\n{self.log_file.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        """Stop the server and its workers."""
        stop_process_group(self.process)
        stop_reaper(self._reaper)

    def __enter__(self) -> TrackingServer:
        return self.wait()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
