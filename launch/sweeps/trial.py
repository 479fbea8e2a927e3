"""One Ray Tune trial: an ordinary `launch/train.py` run with the trial's overrides, in its own folder.

The trial function starts training as a child process (`torchrun` when the trial has several
workers), watches the run's checkpoint folder, and reports each validation to Tune together with
that epoch's checkpoint. A child process keeps every trial on exactly the code path of a normal run
(its own DeepSpeed engine, process group and MLflow run) and lets a trial use several processes.

Restarts: a retried trial (`FailureConfig`) or an unfinished trial of a restored sweep resumes from
its own folder, as any run does; a PBT exploit resumes from the donor trial's checkpoint with the
mutated config. When Tune stops a trial (ASHA), the child is terminated at once; a killed driver or
actor takes the child with it (parent-death signal). The last epoch is reported only after the child
has exited, marked done: a completed trial's final outputs are written, and no scheduler pauses it.

Ended trials stay ended: the moment Tune ends a trial (a scheduler's stop, its last epoch), the sweep's
driver writes the trial's last result into its folder (`record_end`, `tune_end.json`). Tune saves its own
record of trial statuses only every ~10 s, so a sweep killed in between and resumed would start such a
trial again; it reports its recorded end instead of training (`run_trial`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import ray
import yaml
from ray import tune

from action_launch.common.console import last_exception_line
from action_launch.common.files import atomic_write_text
from action_launch.common.processes import stop_process_group, without_distributed_vars
from action_launch.sweeps.spec import to_override_text, trial_overrides
from action_launch.training import checkpoint as ckpt

log = logging.getLogger(__name__)


@dataclass
class TrialSetup:
    """What every trial of a sweep shares (sent to Ray once)."""

    config: Optional[str]
    """Absolute path of the base config (None: embedded defaults)."""
    overrides: List[str]
    """The command line's key=value overrides, applied before the trial's own."""
    sweep_dir: str
    """`<output_dir>/<experiment>/<sweep name>`; trial folders are its subfolders."""
    output_dir: str
    experiment: str
    sweep_name: str
    tracking_uri: Optional[str] = None
    parent_run_id: Optional[str] = None
    workers: int = 1
    """Training processes per trial (torchrun when more than one)."""
    threads: int = 1
    """Torch threads per process."""
    cwd: str = field(default_factory=os.getcwd)
    """Where relative data paths of the config are resolved (the directory tune.py ran in)."""
    poll_s: float = 0.5
    pause_every: Optional[int] = None
    """PBT with an epochs budget: the perturbation interval. Each training process stops after the next
    multiple of it (`pause_epoch`), so a trial never trains past a point where PBT may exploit it."""


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """Config `name` of a trial: its run folder is `<sweep dir>/<trial id>`."""
    return f"{sweep_name}/{trial_id}"


def training_command(setup: TrialSetup, trial_config: Mapping[str, Any], trial_id: str) -> List[str]:
    """The exact command that trains this trial."""
    entry = ["-m", "action_launch.train"]  # the same command as launch/train.py, from the code this runs
    if setup.workers > 1:
        entry = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={setup.workers}", *entry]
    tags = {"sweep.name": setup.sweep_name, "sweep.trial_id": trial_id}
    if setup.parent_run_id:
        tags["mlflow.parentRunId"] = setup.parent_run_id
    cmd = [sys.executable, *entry, "--amend-config"]  # a PBT exploit continues the donor's run with a mutated config
    if setup.config:
        cmd += ["--config", setup.config]
    cmd += [
        *setup.overrides,
        *trial_overrides(trial_config),
        f"output_dir={setup.output_dir}",
        f"experiment={setup.experiment}",
        f"name={trial_run_name(setup.sweep_name, trial_id)}",
        # the trial's MLflow run is named as its folder, even on a base config that names its own run
        "tracking.run_name=null",
        f"tracking.tags={to_override_text(tags)}",
    ]
    if setup.tracking_uri:
        cmd.append(f"tracking.uri={setup.tracking_uri}")
    return cmd


def trial_environment(threads: int) -> Dict[str, str]:
    """The training process's environment: a run of its own, not a rank of the job or process group
    that the Ray worker happens to live in (inside a Slurm sweep job, SLURM_PROCID/NTASKS describe the job)."""
    keep = ("SLURM_JOB_ID", "SLURM_CONF")
    env = {k: v for k, v in without_distributed_vars().items() if not k.startswith("SLURM_") or k in keep}
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    return env


def _is_validation_epoch(epoch: int, cfg: Mapping[str, Any]) -> bool:
    train = cfg["train"]
    return epoch % train["eval_every_epochs"] == 0 or epoch == train["epochs"]


def trial_cost(meta: Mapping[str, Any], data: Mapping[str, Any]) -> Dict[str, float]:
    """What a trial has trained by a checkpoint (its `meta`): `cost/clips`, the engine's count of clips (whatever
    layout and accumulation ran: `optim.keep_effective_batch` changes `train.grad_accum` from what config.yaml
    says), and `cost/clip_frames`, clips x `data.num_frames`, for the kinds whose clips have that key (`data` is
    the checkpoint's data section; a skeleton window has no such key, and no clip_frames)."""
    clips = float(meta["samples"])
    frames = data.get("num_frames")
    return {"cost/clips": clips, **({"cost/clip_frames": clips * frames} if frames else {})}


def _stop_requested() -> bool:
    """Whether Tune has asked this trial to stop (ASHA, end of sweep). Ray's own flag, read defensively."""
    try:
        # private API: Ray has no public read of Tune's stop request inside a running function trainable
        from ray.train._internal.session import get_session

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except (ImportError, AttributeError):
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _CostClock:
    """Wall seconds a trial has trained, summed over its attempts (kept in the trial folder)."""

    def __init__(self, trial_dir: Path):
        self.path = trial_dir / "tune_cost.json"
        self.before = json.loads(self.path.read_text())["wall_s"] if self.path.exists() else 0.0
        self.start = time.time()

    def wall_s(self) -> float:
        return self.before + time.time() - self.start

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"wall_s": self.wall_s()}))


END_RECORD = "tune_end.json"
_RAY_KEYS = {"trial_id", "should_checkpoint", "experiment_tag"}
"""Keys Ray adds to a result besides `ray.tune.result.AUTO_RESULT_KEYS`; `done` is the trial's own."""


def record_end(trial_dir: Path, result: Mapping[str, Any]) -> None:
    """Keep the result Tune ended a trial with (what the trial reported, without Ray's own keys) in its folder."""
    from ray.tune.result import AUTO_RESULT_KEYS

    kept = {
        k: v
        for k, v in result.items()
        if k not in AUTO_RESULT_KEYS and k not in _RAY_KEYS and isinstance(v, (int, float, bool))
    }
    Path(trial_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(trial_dir) / END_RECORD, json.dumps({**kept, "done": True}))


def recorded_end(trial_dir: Path) -> Optional[Dict[str, Any]]:
    """The result Tune ended this trial with in an earlier run of the sweep (`record_end`), or None."""
    path = Path(trial_dir) / END_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def adopt_handed_checkpoint(trial_dir: Path, run_name: str) -> int:
    """Take the checkpoint Tune handed this trial (if any); returns its step (0 when there is none).

    The trial's own checkpoint (a retry, a restored sweep) is never newer than the trial's folder, which
    the run resumes from anyway. Another trial's (a PBT exploit) becomes this trial's only checkpoint:
    copied in at once (Tune prunes the donor's old checkpoints while the donor trains on), and the
    abandoned line's checkpoints are removed so a later crash cannot resume from them.
    """
    handed = tune.get_checkpoint()
    if handed is None:
        return 0
    with handed.as_directory() as folder:
        folder = Path(folder)
        meta = ckpt.read_meta(folder)
        donor = yaml.safe_load((folder / "config.yaml").read_text()).get("name")
        if donor == run_name:
            return meta["step"]
        root = trial_dir / "checkpoints"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        staging = root / ckpt.tmp_tag_for(meta["step"])
        shutil.copytree(folder, staging)
        staging.rename(root / ckpt.tag_for(meta["step"]))
    with open(trial_dir / "train.log", "a") as log_file:
        log_file.write(f"[tune] {run_name} continues from {donor}'s checkpoint at step {meta['step']} (PBT exploit)\n")
    return meta["step"]


def run_trial(trial_config: Dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: train, report every validation with its checkpoint."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    Path(context.get_trial_dir(), "trial_id").write_text(trial_id)  # names the trial even if it never reports
    run_name = trial_run_name(setup.sweep_name, trial_id)
    trial_dir = Path(setup.sweep_dir) / trial_id
    ended = recorded_end(trial_dir)
    if ended is not None:  # ended before a killed sweep was resumed: end it again, with the same result
        with open(trial_dir / "train.log", "a") as log_file:
            log_file.write(
                f"[tune] {run_name} had ended (epoch {ended.get('epoch')}) before the sweep was "
                f"resumed; not trained again\n"
            )
        tune.report(ended)
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "ray_node.txt").write_text(ray.get_runtime_context().get_node_id() + "\n")  # where it ran
    reported_step = adopt_handed_checkpoint(trial_dir, run_name)
    ckpt.hold_unreported(trial_dir / "checkpoints", reported_step)  # keep_last prunes nothing Tune has not seen
    cmd = training_command(setup, trial_config, trial_id)
    (trial_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    clock = _CostClock(trial_dir)
    epochs = _planned_epochs(trial_config, setup) if setup.pause_every else 0
    while True:
        until = pause_epoch(trial_dir, setup.pause_every, epochs)
        reported_step = _train(
            cmd + (["--until-epoch", str(until)] if until else []), trial_dir, setup, clock, reported_step, until
        )
        if until is None or _stop_requested():
            return


def pause_epoch(trial_dir: Path, every: Optional[int], epochs: int) -> Optional[int]:
    """The epoch a PBT trial's next training process stops after (`train.py --until-epoch`): the next multiple
    of the perturbation interval `every`, where PBT may hand the trial another's checkpoint (synchronous PBT
    pauses it there). None without an interval, or when the run's `epochs` end first."""
    if not every:
        return None
    latest = ckpt.latest_checkpoint(trial_dir / "checkpoints")
    epoch = ckpt.read_meta(latest)["epoch"] if latest is not None else 0
    until = (epoch // every + 1) * every
    return until if until < epochs else None


def _planned_epochs(trial_config: Mapping[str, Any], setup: TrialSetup) -> int:
    """`train.epochs` of this trial (the sweep may set it)."""
    from action_launch.config import load_config

    return load_config(setup.config, [*setup.overrides, *trial_overrides(trial_config)]).train.epochs


def _train(
    cmd: List[str], trial_dir: Path, setup: TrialSetup, clock: _CostClock, reported_step: int, until: Optional[int]
) -> int:
    """One training process of the trial, watched until it exits (or Tune stops the trial); returns the last
    step reported. A failed process is a RuntimeError naming its last exception line."""
    log_path = trial_dir / "train.log"
    with open(log_path, "a") as log_file:
        # setpriv: the child gets SIGTERM if this trial's thread or process dies before it does.
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "--", *cmd],
            cwd=setup.cwd,
            env=trial_environment(setup.threads),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            reported_step = _watch(proc, trial_dir, setup, clock, reported_step, until)
        finally:
            stop_process_group(proc, grace_s=20.0)
    if proc.returncode != 0 and not _stop_requested():
        tail = _log_tail(log_path, 200)
        raise RuntimeError(
            f"training exited with code {proc.returncode}: {last_exception_line(tail) or 'see log'} (log {log_path})"
        )
    return reported_step


def _watch(
    proc: subprocess.Popen,
    trial_dir: Path,
    setup: TrialSetup,
    clock: _CostClock,
    reported_step: int,
    until: Optional[int] = None,
) -> int:
    """Report each new validated epoch-end checkpoint until training ends or Tune stops the trial. The last
    epoch, and the pause epoch `until`, are reported once the process has exited: Tune's answer (go on, pause,
    exploit) then finds nothing trained past them."""
    while True:
        finished = proc.poll() is not None
        for folder in ckpt.complete_checkpoints(trial_dir / "checkpoints"):
            meta = ckpt.read_meta(folder)
            if meta["step"] <= reported_step or meta["micro_in_epoch"] != 0 or not meta.get("last_val"):
                continue
            cfg = yaml.safe_load((folder / "config.yaml").read_text())
            if not _is_validation_epoch(meta["epoch"], cfg):
                continue
            last = meta["epoch"] >= cfg["train"]["epochs"]
            if (last or (until is not None and meta["epoch"] >= until)) and not finished:
                # The last epoch is reported once training has exited, as done: its final outputs are written
                # by then, and no scheduler pauses (PBT) or stops a trial that has nothing left to train.
                continue
            metrics = {
                **meta["last_val"],
                "epoch": meta["epoch"],
                "step": meta["step"],
                **trial_cost(meta, cfg["data"]),
                "cost/wall_s": clock.wall_s(),
                **({"done": True} if last else {}),
            }
            clock.save()
            reported_step = meta["step"]
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            ckpt.hold_unreported(trial_dir / "checkpoints", reported_step)
        if finished or _stop_requested():
            return reported_step
        time.sleep(setup.poll_s)
