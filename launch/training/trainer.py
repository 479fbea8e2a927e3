"""The training loop: epochs of DeepSpeed steps, validation, checkpoints, tracking, exact resume."""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from action_launch import ROOT, datasets, models
from action_launch.common.code_version import DIFF_FILE, CodeVersion, code_version
from action_launch.common.console import EpochProgress, setup_logging
from action_launch.config import Config, dump_config, flatten, to_dict
from action_launch.datasets.contract import (
    SkipsBadFiles,
    class_names_of,
    noun_of,
    output_names_of,
    participants_of,
    protocol_of,
)
from action_launch.tracking.tracker import (
    Journal,
    Tracker,
    attempt_open,
    backend_store_hint,
    best_key,
    default_tracking_uri,
)
from action_launch.training import checkpoint as ckpt
from action_launch.training.batchnorm import average_running_stats
from action_launch.training.distributed import Collectives, configure_threads, resolve_env
from action_launch.training.engine import (
    Engine,
    ResumeRefused,
    configure_backends,
    init_distributed,
    load_weights,
    needs_conversion,
    shutdown_distributed,
    to_universal,
    zero_shards,
)
from action_launch.training.layout import Layout, Position, map_position
from action_launch.training.loaders import (
    ResumableDistributedSampler,
    SequenceStreamSampler,
    ShardSampler,
    make_loader,
    sequences_of,
    split_batch,
)
from action_launch.training.losses import logits_of, make_loss
from action_launch.training.memory import WindowMemory, carries_memory
from action_launch.training.metrics import (
    average_by_group,
    classification_metrics,
    confusion_matrix,
    is_regression,
    regression_metrics,
)
from action_launch.training.prediction import predictions
from action_launch.training.run_config import changed_line, config_changes, has_trained, saved_config, write_config
from action_launch.training.schedule import effective_batch_size, kept_accumulation, scale_lrs
from action_launch.training.signals import stop_flag_in_slurm_step

if TYPE_CHECKING:  # imported where used, at run time
    from action_launch.models.checkpoints import LoadReport

log = logging.getLogger("launch.train")


class TooManyBadFiles(RuntimeError):
    """The unreadable files of a split passed `data.max_bad_fraction`; the message lists them."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint next to the engine state."""

    epoch: int = 0
    micro_in_epoch: int = 0
    best: Optional[float] = None
    last_val: Optional[Dict[str, float]] = None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_tags(world_size: int, version: Optional[CodeVersion] = None) -> Dict[str, str]:
    """Where and from which code (default: `code_version` of this package's root) this run was started, on how
    many processes."""
    version = version or code_version(ROOT)  # git's in a checkout, the one recorded at submission in a snapshot
    tags = {"host": socket.gethostname(), "world_size": str(world_size), "git.commit": version.commit}
    if version.commit != "unknown":
        tags.update({"mlflow.source.git.commit": version.commit, "git.dirty": str(version.dirty)})
    job_id = slurm_job_id(os.environ)
    if job_id:
        tags["slurm.job_id"] = job_id
    return tags


def slurm_job_id(environ: Mapping[str, str]) -> Optional[str]:
    """The job's id as sbatch, squeue, sacct and `submit.py` show it: `<array job id>_<task id>` for a task of
    a job array (whose own SLURM_JOB_ID is another number), else SLURM_JOB_ID; None outside Slurm."""
    array_id, task_id = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return environ.get("SLURM_JOB_ID") or None


class Trainer:
    """Builds everything from a config and runs (or resumes) the training."""

    comm = Collectives(rank=0, world_size=1, timeout_s=1.0)
    """The collectives of the run (`__init__` sets this run's); one process, for a Trainer assembled piecewise."""
    resumed_own: Optional[int] = None
    """The optimizer step of the run's own newest checkpoint this start resumed from (None: a new run,
    --resume-from)."""
    load_report_files: Tuple[Path, ...] = ()
    """The --load-from report's files in the run folder (`_load_weights`, rank 0), sent once the run opens."""
    stats_shared_at: Optional[int] = None
    """The optimizer step at which the ranks last made their BatchNorm running statistics equal (`_share_stats`)."""

    def __init__(
        self,
        cfg: Config,
        resume: bool = True,
        resume_from: Optional[str] = None,
        load_from: Optional[str] = None,
        stop_requested: Optional[Callable[[], bool]] = None,
        run_dir: Optional[Path] = None,
    ):
        self.cfg = cfg
        self.env = resolve_env()
        setup_logging(self.env.is_main)
        kept = kept_accumulation(cfg, self.env.world_size)  # keep_effective_batch: refused before anything is written
        configure_backends(cfg.deterministic)
        self.device = init_distributed(self.env, cfg.train.collective_timeout_s)
        self.comm = Collectives(self.env.rank, self.env.world_size, cfg.train.collective_timeout_s)
        log.info(configure_threads(self.env, cfg.data.num_workers))
        seed_everything(cfg.seed + self.env.rank)
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
        self.ckpt_root = self.run_dir / "checkpoints"
        self.stop_requested = stop_requested or stop_flag_in_slurm_step()
        self._last_confusion: Optional[np.ndarray] = None
        if self.env.is_main:
            self._record_config()
            for stale in ckpt.remove_incomplete(self.ckpt_root):
                log.warning("removed incomplete checkpoint %s (a save was interrupted)", stale)
        self.comm.barrier("the start (rank 0 tidies the run folder)")
        if kept is not None:  # after config.yaml kept the config as given: a rerun of it derives the same accumulation
            cfg.train.grad_accum = kept[0]
            log.info(kept[1])
        model = models.build(cfg.model)
        self.memory = WindowMemory() if carries_memory(model) else None
        self._build_data()
        start_ckpt = self._checkpoint_to_resume(resume, resume_from)
        self.load_report: Optional[LoadReport] = None
        if load_from and start_ckpt is None:
            self.load_report = self._load_weights(model, Path(load_from))
        elif load_from:
            log.info("ignoring --load-from: resuming from %s", start_ckpt)
        self.effective_batch = effective_batch_size(
            cfg.train.micro_batch_size, cfg.train.grad_accum, self.env.world_size
        )
        self.scaled = scale_lrs(cfg.optim, self.effective_batch)
        self.layout = Layout(
            self.env.world_size,
            cfg.train.micro_batch_size,
            cfg.train.grad_accum,
            self.micro_per_epoch,
            cfg.train.zero_stage,
        )
        convert = start_ckpt is not None and self._needs_conversion(start_ckpt)  # refused here, before the engine
        self.engine = Engine(
            model,
            cfg,
            self.scaled,
            self.env.world_size,
            self.micro_per_epoch,
            make_loss(model, cfg.train.loss),
            self.device,
            load_universal=convert,
        )
        self.comm.bound()  # DeepSpeed's own groups, made without a timeout
        self.progress = Progress()
        if start_ckpt is not None:
            self._restore(start_ckpt, convert)
        # its later steps an earlier attempt may have logged before it died (`Tracker.skip_replayed`)
        self.resumed_own = self.engine.global_step if start_ckpt is not None and not resume_from else None
        self.tracker = Tracker(
            self.run_dir,
            cfg.tracking.uri or default_tracking_uri(cfg.output_dir),
            cfg.tracking.experiment or cfg.experiment,
            cfg.run_name(),
            cfg.tracking.enabled,
            active=self.env.is_main,
        )
        self.runs_view: Optional[str] = None  # the key of the experiment's runs-table view, once stored
        for path in self.load_report_files:  # the --load-from report (text and JSON), sent once the run opens
            self.tracker.log_artifact(path)

    def _record_config(self) -> None:
        """Write the run's config.yaml, or, for a run that trained, keep it and say what this start changes (the
        preflight accepted it: `training.run_config`; MLflow tags it `changed.<key>`)."""
        changes = config_changes(saved_config(self.run_dir), self.cfg) if has_trained(self.run_dir) else {}
        if not write_config(self.cfg, self.run_dir) and changes:
            log.info("config.yaml kept as the run started; this start changes %s", "; ".join(changed_line(changes)))

    def _load_weights(self, model: Any, path: Path) -> LoadReport:
        """`--load-from`: load (all or nothing unless train.load_partial) and keep the report in the run folder."""
        from action_launch.models.checkpoints import CheckpointError

        try:
            report = load_weights(model, path, partial=self.cfg.train.load_partial)
        except CheckpointError as err:
            if self.env.is_main:
                err.report.write(self.run_dir)
            raise
        if self.env.is_main:
            self.load_report_files = report.write(self.run_dir)
        return report

    # ------------------------------------------------------------------------------------ building
    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env
        cfg.data.bad_files_log = cfg.data.bad_files_log or str(self.run_dir / "bad_files.tsv")
        self.train_set = datasets.build(cfg.data, "train")
        self.val_set = datasets.build(cfg.data, "val")
        protocol = protocol_of(self.train_set)
        if protocol is not None and env.is_main:
            log.info(
                "data protocol %s: %s",
                protocol.name,
                ", ".join(f"{k} {v}" for k, v in protocol.describe().items() if k != "protocol"),
            )
        per_rank = len(self.train_set) // env.world_size
        micro = min(per_rank // cfg.train.micro_batch_size, cfg.train.max_steps_per_epoch or per_rank)
        # Every epoch ends on an optimizer step, so epoch-end checkpoints hold no half-accumulated gradients.
        self.micro_per_epoch = micro // cfg.train.grad_accum * cfg.train.grad_accum
        if self.micro_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_set)} training clips cannot fill one optimizer step of micro_batch_size "
                f"{cfg.train.micro_batch_size} x grad_accum {cfg.train.grad_accum} x world size {env.world_size}"
            )
        length = self.micro_per_epoch * cfg.train.micro_batch_size
        self.sampler: Union[SequenceStreamSampler, ResumableDistributedSampler]
        val_sampler: Union[SequenceStreamSampler, ShardSampler]
        if self.memory is not None:  # batch slot b walks one recording's windows in order (training.memory)
            self.sampler = SequenceStreamSampler(
                _sequences(self.train_set, cfg),
                cfg.train.micro_batch_size,
                env.world_size,
                env.rank,
                cfg.seed,
                shuffle=True,
                length=length,
            )
            val_sampler = SequenceStreamSampler(
                _sequences(self.val_set, cfg), cfg.train.micro_batch_size, env.world_size, env.rank, shuffle=False
            )
        else:
            self.sampler = ResumableDistributedSampler(
                self.train_set, env.world_size, env.rank, cfg.seed, length=length
            )
            val_sampler = ShardSampler(len(self.val_set), env.world_size, env.rank)
        bound = cfg.train.data_timeout_s
        self.train_loader = make_loader(
            self.train_set,
            self.sampler,
            cfg.train.micro_batch_size,
            cfg.data,
            cfg.seed,
            drop_last=True,
            timeout_s=bound,
            name="training",
        )
        self.val_loader = make_loader(
            self.val_set,
            val_sampler,
            cfg.train.micro_batch_size,
            cfg.data,
            cfg.seed,
            drop_last=False,
            timeout_s=bound,
            name="validation",
        )

    def _checkpoint_to_resume(self, resume: bool, resume_from: Optional[str]) -> Optional[Path]:
        if resume_from:
            path = Path(resume_from)
            if not (path / ckpt.META).is_file():
                raise FileNotFoundError(f"--resume-from {path}: not a complete checkpoint folder (no {ckpt.META})")
            return path
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is not None and not resume:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints (newest {latest.name}); resume it with "
                f"--resume or start a new run with name=<another name>"
            )
        return latest if resume else None

    # ------------------------------------------------------------------------------- checkpoints
    def _needs_conversion(self, path: Path) -> bool:
        """Whether `path` must be converted for this run's world size and ZeRO stage (`engine.needs_conversion`, which
        raises `ResumeRefused` where nothing converts it)."""
        saved = Layout.from_meta(ckpt.read_meta(path))
        return needs_conversion(
            path,
            saved.zero_stage if saved else None,
            self.cfg.train.zero_stage,
            self.env.world_size,
            self.cfg.optim.name,
        )

    def _restore(self, path: Path, convert: bool) -> None:
        """Continue from a checkpoint, converted first if `convert`; one saved on another layout continues its epoch
        after the clips it used and its LR schedule at the epoch it reached (`training.layout`)."""
        client = self._load_converted(path) if convert else self.engine.load(path)
        self.progress = Progress(**client["progress"])
        saved = Layout.from_meta(ckpt.read_meta(path)) or self.layout  # older checkpoints: this run's layout
        position = map_position(
            self.progress.epoch, self.progress.micro_in_epoch, saved, self.layout, same_order=self.memory is None
        )
        used, self.progress.micro_in_epoch = self.progress.micro_in_epoch, position.micro_in_epoch
        self.engine.restart_schedule(position.epoch)
        rng = client["rng"]
        if self.env.rank < len(rng):  # a rank the saved run did not have keeps its own seed (seed + rank)
            _set_rng_state(rng[self.env.rank])
        log.info(
            "resumed from %s: %d of %d epochs done, %d micro batches into the next, optimizer step %d",
            path,
            self.progress.epoch,
            self.cfg.train.epochs,
            self.progress.micro_in_epoch,
            self.engine.global_step,
        )
        if saved != self.layout:
            log.info(self._relayout_line(saved, used, position))

    def _relayout_line(self, saved: Layout, used: int, position: Position) -> str:
        """One line: how the position of a checkpoint saved on another layout maps onto this run's."""
        line = (
            f"saved on {saved.describe()}, resumed on {self.layout.describe()}: epoch {self.progress.epoch + 1} "
            f"continues at micro batch {position.micro_in_epoch} of {self.micro_per_epoch} per rank "
            f"({used} of {saved.micro_per_epoch} on the saved layout), the LR schedule at epoch "
            f"{float(position.epoch):.4g}: LR {self.engine.lr:.4g} for effective batch {self.effective_batch}"
        )
        if self.memory is not None:
            return line + "; the recordings' streams are cut anew, so some windows of this epoch repeat or are left out"
        if position.repeated:
            return line + f"; the last {position.repeated} clips it used are used again (whole steps of this layout)"
        return line + "; no clip of the epoch repeats or is left out"

    def _load_converted(self, path: Path) -> Dict[str, Any]:
        """Rank 0 converts `path` into the run folder (DeepSpeed's universal checkpoint), every rank loads the copy,
        and it goes: the next checkpoint is in this run's layout. A copy left by a crash goes at the next start."""
        scratch = self.ckpt_root / f"{ckpt.TMP_PREFIX}universal-{path.name}"
        error = None
        if self.env.is_main:
            start = time.perf_counter()
            scratch.mkdir(parents=True, exist_ok=True)
            try:
                to_universal(path, scratch)
            except Exception as err:
                error = (
                    f"could not convert {path} for {self.layout.describe()} ({type(err).__name__}: {err}); "
                    f"resume it on the world size it was saved with, or start a new run from its weights: "
                    f"--load-from {path} name=<new name>"
                )
            else:
                log.info(
                    "%s was saved by %d processes in ZeRO partitions; converted for %s with DeepSpeed's universal "
                    "checkpoint in %.1f s",
                    path.name,
                    zero_shards(path),
                    self.layout.describe(),
                    time.perf_counter() - start,
                )
        if self.comm.any(error is not None, f"the agreement on the conversion of {path.name}"):
            raise ResumeRefused(error or f"rank 0 could not convert {path}; its error says why")
        client = self.engine.load(scratch / path.name)
        self.comm.barrier(f"the barrier after every rank loaded the converted {path.name}")
        if self.env.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
        return client

    def save(self, is_best: bool = False) -> Path:
        """Collective checkpoint of engine, progress and every rank's RNG state; committed atomically."""
        step = self.engine.global_step
        self._share_stats(f"the BatchNorm statistics' mean before checkpoint {step}")
        rng = self.comm.gather(_rng_state(), f"the RNG-state gather of checkpoint {step}")
        with self.comm.guard(f"DeepSpeed's save of checkpoint {step}"):
            self.engine.save(
                self.ckpt_root,
                ckpt.tmp_tag_for(step),
                {"progress": asdict(self.progress), "rng": rng, "config": to_dict(self.cfg)},
            )
        self.comm.barrier(f"the barrier after every rank wrote checkpoint {step}")
        final = self.ckpt_root / ckpt.tag_for(step)
        if self.env.is_main:
            dump_config(self.cfg, self.ckpt_root / ckpt.tmp_tag_for(step) / "config.yaml")
            meta = {
                "step": step,
                **asdict(self.progress),
                "samples": self.engine.samples,
                "layout": self.layout.to_meta(),
            }
            final = ckpt.commit(self.ckpt_root, step, meta)
            if is_best:
                ckpt.mark_best(self.ckpt_root, final)
            ckpt.prune(self.ckpt_root, self.cfg.checkpoint.keep_last)
        self.comm.barrier(f"the barrier after rank 0 committed checkpoint {step}")
        return final

    def _share_stats(self, what: str) -> None:
        """Give every rank the mean over the ranks of its BatchNorm running statistics (`training.batchnorm`), so a
        validation scores, and a checkpoint keeps, one model; rank 0's own would leave out the other ranks' batches.
        Once per optimizer step: the checkpoint after a validation keeps exactly the statistics it scored with."""
        step = self.engine.global_step
        if self.stats_shared_at == step:
            return
        with self.comm.guard(what):
            average_running_stats(self.engine.module, self.env.world_size)
        self.stats_shared_at = step

    def _improves_best(self, metrics: Dict[str, float]) -> bool:
        """Whether `metrics` beat the best so far (and record them as the new best)."""
        value = metrics.get(self.cfg.checkpoint.best_metric)
        if value is None:
            return False
        best = self.progress.best
        if best is None or (value > best if self.cfg.checkpoint.best_mode == "max" else value < best):
            self.progress.best = value
            self.tracker.log_metrics({best_key(self.cfg.checkpoint.best_metric): value}, self.engine.global_step)
            return True
        return False

    # -------------------------------------------------------------------------------------- loop
    def _closed_complete(self) -> bool:
        """Whether the run has trained all its epochs and closed its MLflow run: a rerun then leaves it alone. One whose
        process died between its last checkpoint and closing the run is not: a rerun writes its final outputs and
        closes it, FINISHED. Read from the journal's file, the same on every rank."""
        if self.progress.epoch < self.cfg.train.epochs:
            return False
        return not attempt_open(Journal(self.run_dir).events())

    def fit(self, until_epoch: Optional[int] = None) -> Dict[str, float]:
        """Train to `train.epochs` (from wherever the run stands) and return the last validation metrics.

        `until_epoch`: stop once that many epochs are done and checkpointed, the run left open for a later
        `fit` (a PBT trial trains one perturbation interval per process: nothing past the point where Tune
        may hand it another trial's checkpoint)."""
        cfg, tracker = self.cfg, self.tracker
        if self._closed_complete():  # reopening its MLflow run would only move its end time
            log.info(
                "%s is already complete (%d of %d epochs): nothing to train, its MLflow run left as it is; raise "
                "train.epochs to go on, or start another run with name=<new name>",
                self.run_dir,
                self.progress.epoch,
                cfg.train.epochs,
            )
            return self.progress.last_val or {}
        params = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith("tracking.tags.")}
        version = code_version(ROOT)
        tracker.start(
            {**params, "optim.scaled_lr": self.scaled.lr, "optim.effective_batch_size": self.effective_batch},
            {**run_tags(self.env.world_size, version), **cfg.tracking.tags},
        )
        if self.resumed_own is not None:
            tracker.skip_replayed(self.resumed_own)
        if version.diff and self.env.is_main:  # what the commit does not say about the code that ran
            (self.run_dir / DIFF_FILE).write_text(version.diff)
            tracker.log_artifact(self.run_dir / DIFF_FILE)
        log.info(
            "world size %d; effective batch %d = micro %d x accumulation %d x world %d; lr %.6g -> %.6g (%s rule, "
            "base batch %d); run folder %s",
            self.env.world_size,
            self.effective_batch,
            cfg.train.micro_batch_size,
            cfg.train.grad_accum,
            self.env.world_size,
            cfg.optim.lr,
            self.scaled.lr,
            cfg.optim.lr_scaling,
            cfg.optim.base_batch_size,
            self.run_dir,
        )
        status: Optional[str] = "FAILED"
        try:
            while self.progress.epoch < cfg.train.epochs:
                if not self._train_epoch():
                    status = "KILLED"
                    return self.progress.last_val or {}
                epoch, is_best = self.progress.epoch, False
                if (epoch + 1) % cfg.train.eval_every_epochs == 0 or epoch + 1 == cfg.train.epochs:
                    self.progress.last_val = self.validate(epoch)
                    is_best = self._improves_best(self.progress.last_val)
                self.progress.epoch, self.progress.micro_in_epoch = epoch + 1, 0
                self.save(is_best)
                if (error := self._bad_files_error(self.train_set, self.val_set)) is not None:
                    raise TooManyBadFiles(error)
                if until_epoch is not None and until_epoch <= self.progress.epoch < cfg.train.epochs:
                    log.info(
                        "paused after epoch %d of %d (--until-epoch); the run stays open, --resume continues it",
                        self.progress.epoch,
                        cfg.train.epochs,
                    )
                    status = None
                    return self.progress.last_val or {}
            status = "FINISHED"
            return self.progress.last_val or {}
        except KeyboardInterrupt:  # a second Ctrl-C, after the first asked for a stop at the next step
            status = "KILLED"
            raise
        finally:
            if status is not None:  # a paused run has no final outputs yet, and stays open
                self._write_final_artifacts()
                tracker.finish(status)
                self._share_runs_view()

    def _share_runs_view(self) -> None:
        """Store the experiment's runs-table view for the MLflow UI (best metric, the params that differ, wall time),
        now that this run's values are in. A view is a convenience: failing to store one only says so."""
        if not self.tracker.online:
            return
        from action_launch.tracking.compare import share_runs_view

        try:
            self.runs_view = share_runs_view(self.tracker.uri, self.tracker.experiment, self.cfg.checkpoint.best_metric)
        except Exception as err:
            log.warning("could not store the experiment's runs view for the MLflow UI (%s)", err)

    def summary(self) -> str:
        """Where a finished (or stopped) run stands, in a few lines: epochs, best checkpoint, where to look next."""
        cfg, best = self.cfg, ckpt.best_checkpoint(self.ckpt_root)
        lines = [f"run {self.run_dir}: {self.progress.epoch} of {cfg.train.epochs} epochs"]
        if best is not None and self.progress.best is not None:
            lines.append(f"best {cfg.checkpoint.best_metric} {self.progress.best:.4g}: {best.resolve()}")
        last = self.progress.last_val or {}
        if last:
            lines.append("last validation: " + " ".join(f"{k} {v:.4g}" for k, v in last.items()))
        # the run's bad-file log, which every rank's workers append to: the run's total, as the ceiling counts it
        skipped = int(self._bad_file_metrics()["data/bad_files"])
        if skipped:
            noun = noun_of(self.train_set) + ("s" if skipped > 1 else "")
            lines.append(f"skipped {skipped} unreadable {noun} (listed in {self.cfg.data.bad_files_log})")
        lines.append(backend_store_hint(self.tracker, self.runs_view))
        lines.append(
            f"compare runs: python launch/compare.py --experiment {cfg.tracking.experiment or cfg.experiment} "
            f"--output-dir {cfg.output_dir}"
        )
        return "\n".join(lines)

    def close(self) -> None:
        """The end of the run on every rank, after its final outputs: every process group is destroyed in order and
        its threads end now, while the interpreter is whole (`engine.shutdown_distributed`); the trainer is done.
        Only at an end that every rank reached (finished, stopped or paused together): with a rank lost in a
        collective, destroying its groups could wait for it."""
        self.comm.close()
        self.engine.close()
        del self.engine  # DeepSpeed's engine and optimizer hold its groups, in reference cycles: collected here
        gc.collect()
        shutdown_distributed()

    def _train_epoch(self) -> bool:
        """One epoch from `progress.micro_in_epoch`; False if a stop was requested (after a checkpoint)."""
        cfg, eng, prog = self.cfg, self.engine, self.progress
        self.sampler.set_epoch(prog.epoch, start=prog.micro_in_epoch * cfg.train.micro_batch_size)
        bar = EpochProgress(self.micro_per_epoch, prog.epoch, cfg.train.epochs, self.env.is_main, prog.micro_in_epoch)
        loss_sum, count, wait, t0 = torch.zeros((), device=eng.device), 0, 0.0, time.perf_counter()
        if self.memory is not None:
            self.memory.reset()
        fetch_start = time.perf_counter()
        for batch in self.train_loader:
            wait += time.perf_counter() - fetch_start
            with self.comm.guard(f"the gradient all-reduce of optimizer step {eng.global_step + 1}"):
                loss, stepped = self._train_step(batch)
            # agreed before the log's read of the device: a rank lost in this step's all-reduce is found on the
            # host, not after the GPU's wait for it
            stop = stepped and self._stop_agreed()
            loss_sum += loss
            count += 1
            prog.micro_in_epoch += 1
            bar.update()
            if stepped and eng.global_step % cfg.train.log_every_steps == 0:
                # each rank ran `count` micro batches of its own shard: the run's figures are the means over the ranks
                # of their loss, data wait and time, in one all-reduce and the one read of the device per log interval
                local = torch.tensor([wait, time.perf_counter() - t0], device=eng.device)
                loss_mean, wait, elapsed = self.comm.means(
                    torch.cat([(loss_sum / count).reshape(1), local]),
                    f"the mean over ranks of step {eng.global_step}'s metrics",
                )
                values = {
                    "train/loss": loss_mean,
                    "train/lr": eng.lr,
                    "train/clips_per_s": count * cfg.train.micro_batch_size * self.env.world_size / elapsed,
                    "train/data_wait_ms": 1000 * wait / count,
                    "train/data_wait_frac": wait / elapsed,
                    "train/epoch": prog.epoch + prog.micro_in_epoch / self.micro_per_epoch,
                }
                bar.report(prog.micro_in_epoch, values)
                self.tracker.log_metrics(values, eng.global_step)
                # mid-epoch only: the epoch's end checks after its own checkpoint
                if prog.micro_in_epoch < self.micro_per_epoch and (error := self._bad_files_error(self.train_set)):
                    self.save()  # a run resumed once the data is fixed loses nothing
                    bar.close()
                    raise TooManyBadFiles(error)
                loss_sum, count, wait, t0 = torch.zeros((), device=eng.device), 0, 0.0, time.perf_counter()
            if (
                stepped
                and cfg.checkpoint.every_steps
                and eng.global_step % cfg.checkpoint.every_steps == 0
                and prog.micro_in_epoch < self.micro_per_epoch
            ):
                self.save()
            if stop:
                self.save()
                bar.close()
                return False
            fetch_start = time.perf_counter()
        bar.close()
        return True

    def _train_step(self, batch: Any) -> Any:
        """One micro batch; a model that carries memory gets the memory its recordings' previous windows left."""
        inputs, targets, meta = split_batch(batch)
        if self.memory is None:
            return self.engine.train_step(inputs, targets)
        loss, stepped, outputs = self.engine.train_step_outputs(inputs, targets, **self.memory.model_kwargs(meta))
        self.memory.update(meta, outputs)
        return loss, stepped

    def _stop_agreed(self) -> bool:
        """All ranks agree to stop if any rank was asked to (preemption, time limit)."""
        step = self.engine.global_step
        return self.comm.any(self.stop_requested(), f"the stop agreement after optimizer step {step}")

    def _bad_files_error(self, *splits: Any) -> Optional[str]:
        """The error to stop every rank on once a split's unreadable files, as the run's bad-file log holds
        them (all ranks' DataLoader workers append to it), pass `data.max_bad_fraction`; else None. Rank 0
        reads the log; a dataset that never skips files (skeletons) has no `ceiling_error`."""
        error = None
        if self.env.is_main:
            checks = [split.ceiling_error for split in splits if isinstance(split, SkipsBadFiles)]
            error = next((e for check in checks if (e := check())), None)
        if not self.comm.any(error is not None, "the agreement on unreadable files"):
            return None
        return error or "rank 0 found too many unreadable files; its error lists them"

    @torch.no_grad()
    def validate(self, epoch: int) -> Dict[str, float]:
        """Validation metrics over the whole validation set, logged and returned.

        Classification: loss, top-1/top-5, mean class accuracy and macro F1 (and the confusion
        matrix kept for the final artifacts). Regression (`training.metrics.is_regression`): loss,
        `mse` and `mse/<output>` over all samples, and, when the dataset names each sample's
        participant, `participant/mse` and `participant/mse/<output>` after averaging a
        participant's predictions and targets over its chunks (the personality protocol, which
        `launch/test.py` reports as `test/mse`). A model that carries memory walks each recording
        in order (the validation sampler) with its memory carried from window to window.
        """
        self._share_stats(f"the BatchNorm statistics' mean before epoch {epoch + 1}'s validation")
        regression = is_regression(self.cfg, self.engine.module)
        scores, labels, losses = self._predict_validation(regression)
        indices = _loader_indices(self.val_loader)
        parts = self.comm.gather((scores, labels, losses, indices), f"the gather of epoch {epoch + 1}'s validation")
        all_scores = np.concatenate([p[0] for p in parts])
        all_labels = np.concatenate([p[1] for p in parts])
        all_indices = np.concatenate([p[3] for p in parts])
        if regression:
            metrics = self._regression_metrics(all_scores, all_labels, all_indices)
            self._last_confusion = None
        else:
            metrics = {f"val/{k}": v for k, v in classification_metrics(all_scores, all_labels).items()}
            self._last_confusion = confusion_matrix(all_scores.argmax(1), all_labels, all_scores.shape[1])
        metrics["val/loss"] = sum(p[2] for p in parts) / len(all_labels)
        self._check_best_metric(metrics)
        self.tracker.log_metrics({**metrics, "epoch": epoch + 1, **self._bad_file_metrics()}, self.engine.global_step)
        log.info("epoch %d validation: %s", epoch + 1, " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    def _predict_validation(self, regression: bool) -> Any:
        """This rank's scores (probabilities, or raw outputs for regression), labels and summed loss, in loader
        order."""
        eng = self.engine
        scores, labels, loss_sum = [], [], torch.zeros((), device=eng.device)
        memory = WindowMemory() if self.memory is not None else None
        for _, outputs, targets in predictions(self.val_loader, eng.predict, memory, eng.device):
            loss_sum += eng.loss(outputs, targets).float() * len(targets)
            out = logits_of(outputs).float()
            scores.append(out if regression else out.softmax(-1))
            labels.append(targets)
        # one copy to the host after the pass, not one per batch
        return torch.cat(scores).cpu().numpy(), torch.cat(labels).numpy(), float(loss_sum)

    def _regression_metrics(self, scores: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> Dict[str, float]:
        names = output_names_of(self.val_set)
        metrics = {f"val/{k}": v for k, v in regression_metrics(scores, labels, names).items()}
        participants = participants_of(self.val_set)
        if participants is not None:
            groups = [participants[i] for i in indices]
            mean_scores, mean_labels, _ = average_by_group(scores, labels, groups)
            metrics.update(
                {f"val/participant/{k}": v for k, v in regression_metrics(mean_scores, mean_labels, names).items()}
            )
        return metrics

    def _check_best_metric(self, metrics: Dict[str, float]) -> None:
        """Say once if `checkpoint.best_metric` is not a validation metric (no checkpoint would ever be marked best)."""
        name = self.cfg.checkpoint.best_metric
        if name not in metrics and not getattr(self, "_warned_best_metric", False):
            self._warned_best_metric = True
            log.warning(
                "checkpoint.best_metric=%s is not a validation metric of this run (%s); no checkpoint will be "
                "marked best",
                name,
                ", ".join(sorted(metrics)),
            )

    def _bad_file_metrics(self) -> Dict[str, float]:
        path = self.cfg.data.bad_files_log
        if not path or not Path(path).exists():
            return {"data/bad_files": 0.0}
        return {"data/bad_files": float(len(datasets.read_bad_files(path)))}

    def _write_final_artifacts(self) -> None:
        if not self.env.is_main:
            return
        self.tracker.log_artifact(self.run_dir / "config.yaml")
        if self.progress.last_val:
            final = self.run_dir / "final_metrics.json"
            final.write_text(
                json.dumps(
                    {"epoch": self.progress.epoch, "step": self.engine.global_step, **self.progress.last_val}, indent=2
                )
            )
            self.tracker.log_artifact(final)
        if self._last_confusion is not None:
            from action_launch.training.confusion import save_confusion_json, save_confusion_matrix

            names = class_names_of(self.val_set)
            for path in (
                save_confusion_json(self._last_confusion, self.run_dir / "confusion_matrix.json", names),
                save_confusion_matrix(self._last_confusion, self.run_dir / "confusion_matrix.png", names),
            ):
                self.tracker.log_artifact(path)


def _sequences(dataset: Any, cfg: Config) -> List[List[int]]:
    """The recordings of a dataset, for a model that carries memory from window to window."""
    sequences = sequences_of(dataset)
    if sequences is None:
        raise ValueError(
            f"model {cfg.model['name']!r} carries memory across consecutive windows of a recording, but "
            f"data.dataset={cfg.data.dataset} has no recordings; use data.dataset=multiperson"
        )
    return sequences


def _loader_indices(loader: Any) -> np.ndarray:
    """Dataset indices of an evaluation loader's samples, in the order it yields them."""
    return np.array([i for batch in loader.batch_sampler for i in batch], dtype=np.int64)
