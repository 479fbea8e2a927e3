"""Run tracking with a local journal, so an unreachable server never stops training or loses data.

Every event (params, tags, metrics, artifacts, end) is appended to `<run>/tracking/journal.jsonl`
first, then sent to a `Sink`: MLflow's (`mlflow_sink.MlflowSink`) unless `Tracker(..., sink=...)` names
another; a second tracking backend is one module with such a class. `state.json` records the run id (a
resumed or requeued job keeps logging into the same run), how many journal lines reached the server, the
URI logged to and the store behind it (`store`: a sweep's temporary server dies with the sweep, its SQLite
store stays), and which process writes the run (`writer`: host, pid). When the server is unreachable,
training goes on, says so once, and `python launch/track.py sync RUN_DIR` sends the rest later, to the
store. A run whose writer died without ending it (SIGKILL, a cancelled job) is closed as KILLED by the next
sync.
Each evaluation of a run folder's checkpoint is an MLflow run of its own, nested under the training run, with its
own journal in `<run>/tracking/evaluations/<stamp>/`: nothing but training opens the training run, so its start
and end times are when it trained (a rerun with nothing to train does not open it either).
The journal, its replay, resume and sync are the same for every sink; MLflow is imported by `mlflow_sink` only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple, Type

from action_launch.common.files import atomic_write_text
from action_launch.common.interrupts import uninterrupted
from action_launch.common.processes import running, start_time
from action_launch.tracking.mlflow_sink import MlflowSink
from action_launch.tracking.server import backing_store, server_reachable

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
"""The tag that nests a run under another in MLflow (an evaluation under its training run, a trial under its sweep)."""
EVALUATED_TAG = "eval.checkpoint"
"""On an evaluation's run: the checkpoint it evaluated (what marks it as an evaluation, not a training run)."""
LATEST_EVALUATION_TAG = "eval.latest_run_id"
"""On a training run: the run id of the latest evaluation of one of its checkpoints (where its `test/*` metrics are)."""
EVALUATIONS = "tracking/evaluations"
"""Inside a run folder: one journal folder per evaluation of its checkpoints (`new_evaluation_folder`)."""


def default_tracking_uri(output_dir: str | Path) -> str:
    """`$MLFLOW_TRACKING_URI`, else an embedded SQLite store beside the runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def best_key(metric: str) -> str:
    """The metric a training run logs each time `metric` beats its best: the best value so far (MLflow's runs
    table shows a metric's latest value only)."""
    return f"best/{metric}"


def ensure_experiment(uri: str, name: str, sink: Optional[Type[Sink]] = None) -> str:
    """Create experiment `name` at `uri` if needed (MLflow's: artifacts beside a SQLite store); its id."""
    return (sink or MlflowSink)(uri, name).experiment_id


class Sink(Protocol):
    """Where a tracker's runs go: one experiment of one tracking backend, opened as `Sink(uri, experiment)` (which
    raises when the backend cannot be reached; the tracker then keeps its journal and goes offline). Each method
    writes one kind of journal event (`replay`); any exception leaves the events to a later `sync`."""

    name: ClassVar[str]
    """The backend's name, in the tracker's messages ("MLflow at URI failed: ...")."""
    experiment_id: str

    def __init__(self, uri: str, experiment: str) -> None: ...

    def open_run(self, run_id: Optional[str], run_name: str, tags: Mapping[str, str]) -> str:
        """Reopen run `run_id` (a resume, a requeue) where the backend has it, else start a new run; its id."""

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Record params (values as given: numbers, strings, lists); a run's params are logged again on resume."""

    def log_metrics(self, run_id: str, points: Sequence[Tuple[str, float, int, int]]) -> None:
        """Record metric points (key, value, time in ms since the epoch, step), in journal order."""

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags (a later value replaces an earlier one)."""

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        """Attach the file `path` (under the folder `artifact_path` of the run's artifacts)."""

    def end_run(self, run_id: str, status: str, end_time: int) -> None:
        """Close the run with `status` (FINISHED, FAILED, KILLED) at `end_time` (ms since the epoch)."""


def replay(sink: Sink, run_id: str, events: Iterable[Dict[str, Any]], run_dir: Path) -> None:
    """Send journal events to `sink`'s run `run_id` in order, consecutive metrics events as one batch (an artifact
    is a path relative to `run_dir`; one that is gone is left out)."""
    points: List[Tuple[str, float, int, int]] = []
    for event in events:
        kind = event["kind"]
        if kind == "metrics":
            points += [(k, float(v), event["time"], event["step"]) for k, v in event["values"].items()]
            continue
        if points:
            sink.log_metrics(run_id, points)
            points = []
        if kind == "params":
            sink.log_params(run_id, event["values"])
        elif kind == "tags":
            sink.set_tags(run_id, {k: str(v) for k, v in event["values"].items()})
        elif kind == "artifact":
            path = run_dir / event["path"]
            if path.exists():
                sink.log_artifact(run_id, path, event.get("artifact_path"))
        elif kind == "end":
            sink.end_run(run_id, event["status"], event["time"])
    if points:
        sink.log_metrics(run_id, points)


class Journal:
    """Append-only event log of one MLflow run plus its sync state, in `<run_dir>/<folder>`: `tracking` for the
    training run, `tracking/evaluations/<stamp>` for each evaluation of its checkpoints (a run of its own)."""

    def __init__(self, run_dir: Path, folder: str = "tracking"):
        self.dir = Path(run_dir) / folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "journal.jsonl"
        self.state_path = self.dir / "state.json"
        self._tail_checked = False

    def append(self, event: Dict[str, Any]) -> None:
        if not self._tail_checked:
            self._drop_cut_line()
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")

    def _drop_cut_line(self) -> None:
        """Remove a last line a kill cut short (never read, see `events`): what is appended next must follow a
        whole line, or it would be unreadable too."""
        self._tail_checked = True
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            fh.truncate(fh.read().rfind(b"\n") + 1)

    def events(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: everything before it is intact
                break
        return out

    def state(self) -> Dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def save_state(self, **updates: Any) -> None:
        state = {**self.state(), **updates}
        atomic_write_text(self.state_path, json.dumps(state, indent=2))


def this_writer() -> Dict[str, Any]:
    """Who writes a run: this host and process (and the process's start time, against a reused pid)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": start_time(os.getpid())}


def writer_gone(writer: Optional[Mapping[str, Any]]) -> Optional[bool]:
    """Whether the process that wrote a run has died: True or False on its own host; None where it cannot be
    told (another host, or no writer recorded)."""
    if not writer or writer.get("host") != socket.gethostname() or not writer.get("pid"):
        return None
    return not running(int(writer["pid"]), writer.get("started"))


def _attempt_start(events: List[Dict[str, Any]]) -> int:
    """Index of the last start (`params` event) of a run's journal: where its latest attempt begins (-1: none)."""
    return max((i for i, e in enumerate(events) if e["kind"] == "params"), default=-1)


def attempt_open(events: List[Dict[str, Any]]) -> bool:
    """Whether the latest attempt of a run (a start and what follows it) has no end event."""
    start = _attempt_start(events)
    return start >= 0 and not any(e["kind"] == "end" for e in events[start:])


class Tracker:
    """What the training loop talks to. On ranks other than 0 every call does nothing."""

    def __init__(
        self,
        run_dir: Path,
        uri: str,
        experiment: str,
        run_name: str,
        enabled: bool = True,
        active: bool = True,
        folder: str = "tracking",
        sink: Optional[Type[Sink]] = None,
    ):
        self.run_dir = Path(run_dir)
        self.sink_type: Type[Sink] = sink or MlflowSink
        self.active = active
        self.journal = Journal(self.run_dir, folder) if active else None
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.enabled = enabled and active
        self.sink: Optional[Sink] = None
        self.run_id: Optional[str] = None
        self._pending: List[Dict[str, Any]] = []
        self._synced = 0
        self._replayed: Dict[str, int] = {}  # metric -> the last step an earlier attempt logged past the resume

    @property
    def _journal(self) -> Journal:
        """The run's journal: an active tracker's (rank 0); the other ranks' trackers have none and never get here."""
        if self.journal is None:
            raise RuntimeError(f"the tracker of {self.run_dir} is inactive (not rank 0): it has no journal")
        return self.journal

    def _open_run(self) -> Tuple[Sink, str]:
        """The sink and the run open in it, of an online tracker (`_connect` sets both, `_go_offline` drops both)."""
        if self.sink is None or self.run_id is None:
            raise RuntimeError(f"the tracker of {self.run_dir} is offline: it has no run open")
        return self.sink, self.run_id

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Open (or reopen, after a resume) the run and record params and tags."""
        if not self.active:
            return
        state = self._load_backlog()
        tags = {k: str(v) for k, v in tags.items()}  # MLflow tags are strings; a None would fail the whole run
        self._journal.save_state(
            uri=self.uri,
            store=backing_store(self.uri) or state.get("store"),
            experiment=self.experiment,
            run_name=self.run_name,
            writer=this_writer(),
        )
        for kind, values in (("params", dict(params)), ("tags", dict(tags))):
            self._journal.append({"kind": kind, "values": values})
            self._pending.append({"kind": kind, "values": values})
        if self.enabled:
            self._connect(state.get("run_id"), tags)
        self._push()

    def _load_backlog(self) -> Dict[str, Any]:
        """Queue the journal lines an earlier (offline or killed) process never sent."""
        state = self._journal.state()
        self._synced = state.get("synced", 0)
        self._pending = self._journal.events()[self._synced :]
        return state

    def _connect(self, run_id: Optional[str], tags: Mapping[str, str]) -> None:
        if not server_reachable(self.uri):
            store = self._journal.state().get("store")
            if not store or store == self.uri or backing_store(self.uri) is not None:
                self._go_offline(f"tracking server {self.uri} is unreachable")
                return
            # A sweep's temporary server, gone with its sweep (not the running sweep's): its store holds the run.
            log.info("tracking server %s is gone; logging into the store it served, %s", self.uri, store)
            self.uri = store
            self._journal.save_state(uri=store)
        with uninterrupted():
            try:
                self.sink = self.sink_type(self.uri, self.experiment)
                self.run_id = self.sink.open_run(run_id, self.run_name, tags)
            except Exception as err:
                self._go_offline(f"{self.sink_type.name} at {self.uri} failed: {err}")
                return
            if self.run_id != run_id:  # a new run gets the whole history
                self._synced, self._pending = 0, self._journal.events()
            self._journal.save_state(run_id=self.run_id, synced=self._synced)

    def _go_offline(self, reason: str) -> None:
        if self.enabled:
            log.warning(
                "%s; training continues and metrics are kept in %s. Push them later with: "
                "python launch/track.py sync %s",
                reason,
                self._journal.path,
                self.run_dir,
            )
        self.sink, self.enabled = None, False

    def _event(self, event: Dict[str, Any]) -> None:
        self._journal.append(event)
        self._pending.append(event)
        self._push()

    def _push(self) -> None:
        if self.sink is None or not self._pending:
            return
        sink, run_id = self._open_run()
        with uninterrupted():  # a second Ctrl-C waits for the write and its record: cut, it can leave the store locked
            try:
                replay(sink, run_id, self._pending, self.run_dir)
            except Exception as err:
                self._go_offline(f"{self.sink_type.name} at {self.uri} failed: {err}")
                return
            self._synced += len(self._pending)
            self._pending = []
            self._journal.save_state(synced=self._synced)

    def skip_replayed(self, resumed_at: int) -> None:
        """A resume from the run's newest checkpoint, at optimizer step `resumed_at`, replays the steps that an
        earlier attempt logged after it before it died (kill -9, a node lost before the next checkpoint): from the
        same state, the same trajectory. Their points stay as logged, and the replay does not log them again, so
        each step has one point (MLflow cannot remove a point)."""
        if not self.active:
            return
        self._replayed = {}
        for event in self._journal.events():
            if event["kind"] == "metrics" and event["step"] > resumed_at:
                for key in event["values"]:
                    self._replayed[key] = max(self._replayed.get(key, 0), event["step"])

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Record metrics at an optimizer step (but not the points of a replayed step: `skip_replayed`)."""
        if not self.active:
            return
        new = {k: float(v) for k, v in values.items() if step > self._replayed.get(k, -1)}
        if new:
            self._event({"kind": "metrics", "step": int(step), "time": int(time.time() * 1000), "values": new})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Record tags (e.g. a requeue count)."""
        if self.active:
            self._event({"kind": "tags", "values": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Record a file that lives inside the run folder."""
        if self.active:
            rel = Path(path).resolve().relative_to(self.run_dir.resolve())
            self._event({"kind": "artifact", "path": str(rel), "artifact_path": artifact_path})

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run (FINISHED, FAILED or KILLED)."""
        if self.active:
            self._event({"kind": "end", "status": status, "time": int(time.time() * 1000)})

    @property
    def online(self) -> bool:
        """Whether events are currently reaching the sink (MLflow)."""
        return self.sink is not None


def evaluation_folders(run_dir: Path) -> List[str]:
    """The journal folders (relative to `run_dir`) of the evaluations of a run folder's checkpoints, oldest first
    (by their names: `new_evaluation_folder`)."""
    root = Path(run_dir) / EVALUATIONS
    found = [p for p in root.iterdir() if (p / "journal.jsonl").exists()] if root.is_dir() else []
    return [f"{EVALUATIONS}/{p.name}" for p in sorted(found, key=lambda p: (p.name[:15], int(p.name[16:] or 1)))]


def new_evaluation_folder(run_dir: Path) -> str:
    """A new journal folder for one evaluation of a run folder's checkpoint: each evaluation is an MLflow run of
    its own, so evaluating never reopens the training run (nor moves its end time)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name, n = stamp, 1
    while (Path(run_dir) / EVALUATIONS / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    (Path(run_dir) / EVALUATIONS / name).mkdir(parents=True)
    return f"{EVALUATIONS}/{name}"


def sync(
    run_dir: Path,
    uri: Optional[str] = None,
    killed: bool = False,
    evaluations: bool = True,
    sink: Optional[Type[Sink]] = None,
) -> int:
    """Send the journal lines of `run_dir` that never reached MLflow; returns how many were sent.

    They go to `uri`, else to the run's store (`state.json`; a sweep's server is gone with its sweep), else to
    the URI it logged to. A run whose latest attempt never ended and whose writer process has died (SIGKILL, a
    cancelled job; on another host the caller says so with `killed`) is ended KILLED at the time of its last
    event, its metrics kept: no run is left RUNNING by a process that no longer exists. With `evaluations`, the
    journals of the folder's checkpoint evaluations (`evaluation_folders`) that have lines to send follow, each
    nested under the training run once that run is known. `sink`: the backend (default MLflow's).
    """
    run_dir = Path(run_dir)
    evals = [f for f in evaluation_folders(run_dir) if _unsent(Journal(run_dir, f))] if evaluations else []
    if not Journal(run_dir).path.exists() and not evals:
        raise FileNotFoundError(f"{run_dir} has no tracking journal (expected {Journal(run_dir).path})")
    sent = _sync_journal(run_dir, "tracking", uri, killed, sink) if Journal(run_dir).path.exists() else 0
    parent = Journal(run_dir).state().get("run_id")
    for folder in evals:
        journal = Journal(run_dir, folder)
        tags = {k for e in journal.events() if e["kind"] == "tags" for k in e["values"]}
        if parent and PARENT_TAG not in tags:  # the training run reached MLflow after its evaluation was journalled
            journal.append({"kind": "tags", "values": {PARENT_TAG: parent}})
        sent += _sync_journal(run_dir, folder, uri, killed, sink)
    return sent


def _unsent(journal: Journal) -> bool:
    """Whether a journal holds lines that never reached MLflow (an evaluation kept while the server was down), or
    a run that never ended (its writer may have died)."""
    events = journal.events()
    return len(events) > journal.state().get("synced", 0) or attempt_open(events)


def _sync_journal(run_dir: Path, folder: str, uri: Optional[str], killed: bool, sink: Optional[Type[Sink]]) -> int:
    """`sync` of one journal of `run_dir`: the training run's (`tracking`) or an evaluation's."""
    journal = Journal(run_dir, folder)
    state = journal.state()
    uri = uri or state.get("store") or state.get("uri") or default_tracking_uri(run_dir.parents[1])
    _end_if_writer_died(journal, state, killed)
    tracker = Tracker(
        run_dir, uri, state.get("experiment", "default"), state.get("run_name", run_dir.name), folder=folder, sink=sink
    )
    tracker._load_backlog()
    tags = {k: v for e in tracker._journal.events() if e["kind"] == "tags" for k, v in e["values"].items()}
    tracker._connect(state.get("run_id"), tags)
    backlog = len(tracker._pending)
    tracker._push()
    if not tracker.online:
        raise ConnectionError(f"could not reach {tracker.sink_type.name} at {uri}; nothing was lost, try again later")
    # Reconnecting marks the run RUNNING again; a run that had ended keeps its recorded end status
    # (one whose latest attempt is still going stays RUNNING).
    events = tracker._journal.events()
    ends = [e for e in events if e["kind"] == "end"]
    if ends and not attempt_open(events):
        replay(*tracker._open_run(), ends[-1:], run_dir)
    store = backing_store(tracker.uri)
    journal.save_state(uri=tracker.uri, **({"store": store} if store else {}))
    return backlog


def _end_if_writer_died(journal: Journal, state: Mapping[str, Any], killed: bool) -> None:
    """Journal a KILLED end for a run whose latest attempt has none and whose writer is gone."""
    events = journal.events()
    if not attempt_open(events):
        return
    writer = state.get("writer") or {}
    gone = True if killed else writer_gone(writer)
    if gone is None:
        who = (
            f"its writer (pid {writer['pid']} on {writer['host']})"
            if writer.get("host")
            else "its writer (not recorded)"
        )
        log.warning(
            "%s: its run has not ended, and %s cannot be checked from here; if its processes are gone, "
            "close it with: python launch/track.py sync --killed %s",
            journal.dir.parent,
            who,
            journal.dir.parent,
        )
    if not gone:
        return
    times = [e["time"] for e in events[_attempt_start(events) :] if "time" in e]
    journal.append({"kind": "end", "status": "KILLED", "time": max(times) if times else int(time.time() * 1000)})
    log.warning(
        "%s: its writer (pid %s on %s) died without ending the run; closed as KILLED",
        journal.dir.parent,
        writer.get("pid", "?"),
        writer.get("host", "?"),
    )


MetricPoint = Tuple[int, float, int]
"""(step, value, time in ms) of one logged value of a metric."""


def annotate_run(
    run_dir: Path,
    tags: Mapping[str, Any],
    status: Optional[str] = None,
    uri: Optional[str] = None,
    metrics: Optional[Mapping[str, Sequence[MetricPoint]]] = None,
) -> None:
    """Add tags, metric points (`metrics`: key -> points) and optionally an end `status` to the MLflow run of a
    finished or killed run folder.

    Goes through the folder's journal like everything else, so it reaches MLflow now (through `uri`, else
    the run's store, see `sync`) or at the next sync. A metric point the journal already holds (same key,
    step and value: a resumed sweep annotates its trials again) is not added twice.
    """
    journal = Journal(Path(run_dir))
    for key, points in (metrics or {}).items():
        for step, value, stamp in _new_points(journal, key, points):
            journal.append({"kind": "metrics", "step": step, "time": stamp, "values": {key: value}})
    journal.append({"kind": "tags", "values": {k: str(v) for k, v in tags.items()}})
    if status is not None:
        journal.append({"kind": "end", "status": status, "time": int(time.time() * 1000)})
    try:
        sync(Path(run_dir), uri, evaluations=False)
    except (ConnectionError, FileNotFoundError) as err:
        log.warning("could not update the MLflow run of %s now (%s); it is kept in its journal", run_dir, err)


def _new_points(journal: Journal, key: str, points: Sequence[MetricPoint]) -> List[MetricPoint]:
    """The points of metric `key` whose (step, value) the journal does not hold yet."""
    held = {(e["step"], e["values"][key]) for e in journal.events() if e["kind"] == "metrics" and key in e["values"]}
    return [
        (int(step), float(value), int(stamp)) for step, value, stamp in points if (int(step), float(value)) not in held
    ]


def log_run_artifact(run_dir: Path, path: Path, artifact_path: Optional[str] = None, uri: Optional[str] = None) -> bool:
    """Attach a file inside `run_dir` to that folder's existing MLflow run (`tracking/state.json` names it).

    Journalled, then sent as `annotate_run` does, so an unreachable server only delays it to the next
    sync. Returns whether it reached MLflow; False (with a warning) also when the folder never had an
    MLflow run (tracking was off). A file outside the folder is a ValueError: the journal replays paths
    relative to it.
    """
    run_dir = Path(run_dir)
    rel = Path(path).resolve().relative_to(run_dir.resolve())
    journal = Journal(run_dir)
    if not journal.state().get("run_id"):
        log.warning("%s has no MLflow run (tracking was off or never reached a server); %s is not logged", run_dir, rel)
        return False
    journal.append({"kind": "artifact", "path": str(rel), "artifact_path": artifact_path})
    try:
        sync(run_dir, uri, evaluations=False)
    except (ConnectionError, FileNotFoundError) as err:
        log.warning("could not log %s to the MLflow run of %s now (%s); it is kept in its journal", rel, run_dir, err)
        return False
    return True


def backend_store_hint(tracker: Tracker, view_key: Optional[str] = None) -> str:
    """The command that opens this run in the MLflow UI (or says how to sync it first); with `view_key`, the URL of
    the experiment's runs table in the view stored under that key."""
    if not tracker.enabled:
        return (
            f"MLflow off (tracking.enabled=false); every metric is in {tracker.run_dir / 'tracking' / 'journal.jsonl'}"
        )
    if tracker.uri.startswith(("http://", "https://")):
        hint = f"MLflow run at {tracker.uri}"
    else:
        hint = f"Browse runs: mlflow ui --backend-store-uri {tracker.uri}"
    if view_key and tracker.sink is not None:
        from action_launch.tracking.query import ui_url

        hint += f"  then open {ui_url(tracker.uri, tracker.sink.experiment_id, view_key=view_key)[1]}"
    journal = tracker.journal
    if journal is not None and len(journal.events()) > journal.state().get("synced", 0):  # lines kept while offline
        hint += f"\n(metrics not yet in MLflow; push them with: python launch/track.py sync {tracker.run_dir})"
    return hint
