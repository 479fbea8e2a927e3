"""Running a sweep inside a Ray runtime: tracking server and parent run, the Tuner, the summary.

Used by `launch/tune.py` on one machine and by the Slurm sweep job (`cluster.sweep_job`) on the first node
of an allocation (there Ray is already up across the nodes and `RAY_ADDRESS` points at it).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from action_launch import child_python_env
from action_launch.common.console import last_exception_line
from action_launch.common.interrupts import interrupt
from action_launch.common.processes import descendants, free_port
from action_launch.common.reaper import start_reaper, stop_reaper
from action_launch.common.tables import best_first, format_table, write_csv
from action_launch.config import Config, flatten, load_config, to_dict
from action_launch.sweeps.plan import TUNE_DIR, SweepPlan, SweepRequest, budget_attr, make_plan, max_budget
from action_launch.sweeps.report import COST, WALL, plot_frames_rate_heatmap, plot_metric_vs_cost, plot_metric_vs_keys
from action_launch.sweeps.spec import Param, SweepSpec, flat_trial_config, trial_overrides
from action_launch.sweeps.trial import TrialSetup, record_end, run_trial, trial_run_name
from action_launch.tracking import stop_reasons
from action_launch.tracking.compare import ranking_rule, score_column, share_sweep_view, trial_score
from action_launch.tracking.query import experiment_id, ui_url
from action_launch.tracking.server import TrackingServer
from action_launch.tracking.tracker import MetricPoint, Tracker, annotate_run, default_tracking_uri, ensure_experiment

log = logging.getLogger("launch.tune")


def ray_domain(param: Param) -> Any:
    """The Ray Tune search object of one sweep entry."""
    if param.kind == "grid":
        return tune.grid_search(list(param.values))
    if param.kind == "choice":
        return tune.choice(list(param.values))
    if param.kind == "uniform":
        return tune.uniform(*param.bounds)
    if param.kind == "loguniform":
        return tune.loguniform(*param.bounds)
    if param.kind == "randint":
        return tune.randint(int(param.bounds[0]), int(param.bounds[1]))
    source = param.source
    cases, default = dict(param.cases), param.default

    # Ray calls these with a spec whose `config` holds the values drawn so far (its annotation says Dict).
    def same_as(spec: Any) -> Any:
        return spec.config[source]

    def depends_on(spec: Any) -> Any:
        return cases.get(spec.config[source], default)

    return tune.sample_from(same_as if param.kind == "same_as" else depends_on)


def mutation_domain(param: Param) -> Any:
    """What PBT perturbs an entry within: a grid's or choice's value list (Ray moves to a neighbour), else
    its search domain (a `grid_search` is no domain: Ray's PBT took it for a nested config and crashed)."""
    return list(param.values) if param.kind in ("grid", "choice") else ray_domain(param)


def param_space(spec: SweepSpec) -> Dict[str, Any]:
    """Ray's param_space: one entry per sweep entry (joint entries keep their comma-joined name)."""
    return {p.name: ray_domain(p) for p in spec.params}


def make_scheduler(kind: str, spec: SweepSpec, cfg: Config):
    """FIFO, ASHA or PBT, counting in the sweep's budget unit."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if kind == "fifo":
        return FIFOScheduler()
    if kind == "asha":
        return ASHAScheduler(
            time_attr=budget_attr(spec),
            max_t=max_budget(spec, cfg),
            grace_period=spec.asha.grace_period,
            reduction_factor=spec.asha.reduction_factor,
        )
    mutations = {p.name: mutation_domain(p) for p in spec.pbt_mutations()}
    if not mutations:
        raise ValueError(f"{spec.source}: PBT needs something to perturb: a uniform/loguniform entry or pbt.mutate")
    return PopulationBasedTraining(
        time_attr=budget_attr(spec),
        perturbation_interval=spec.pbt.perturbation_interval,
        hyperparam_mutations=mutations,
        quantile_fraction=spec.pbt.quantile_fraction,
        resample_probability=spec.pbt.resample_probability,
        synch=spec.pbt.synch,
    )


def pbt_pause_every(scheduler: str, spec: SweepSpec) -> Optional[int]:
    """Epochs each training process of a PBT trial runs (`TrialSetup.pause_every`): the perturbation interval
    with an epochs budget; None otherwise (a steps budget, or another scheduler: one process trains it all)."""
    if scheduler != "pbt" or spec.budget != "epochs":
        return None
    return spec.pbt.perturbation_interval


def _start_ray(stack: ExitStack) -> None:
    """Join the Ray cluster of `RAY_ADDRESS` (Slurm), else start a private one on 127.0.0.1 (shut down with
    `stack`)."""
    # Ray's worker processes inherit this environment: they import the trial function from this same code.
    os.environ.update(child_python_env())
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        stack.callback(ray.shutdown)
        return
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    # Ray's own processes are this one's children; its agents outlived a kill -9 of it
    stack.callback(stop_reaper, start_reaper(os.getpid(), processes=descendants(os.getpid())))
    stack.callback(ray.shutdown)


def interrupt_on_sigterm() -> None:
    """A SIGTERM to the sweep's driver (`kill`, Slurm's `scancel`) stops the sweep as a second Ctrl-C does: the
    parent run KILLED, unfinished trials resumable by `--resume`. In the main thread only (where Python runs
    signal handlers)."""

    def stop_at_once(signum: int, frame: Any) -> None:
        interrupt()  # after a write to the tracking store in progress

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_at_once)


def _parent_params(plan: SweepPlan) -> Dict[str, Any]:
    args, spec = plan.request, plan.spec
    params = {
        "sweep.metric": spec.metric,
        "sweep.mode": spec.mode,
        "sweep.scheduler": args.scheduler,
        "sweep.budget": spec.budget,
        "sweep.num_samples": plan.num_samples,
        "sweep.seed": str(spec.seed),
        "sweep.config": args.config or "defaults",
        "sweep.overrides": " ".join(args.overrides),
    }
    params.update({f"space.{':'.join(p.keys)}": p.describe() for p in spec.params})  # MLflow keys take no comma
    return params


def _tracking(cfg: Config, sweep_dir: Path, stack: ExitStack) -> Optional[str]:
    """The tracking URI trials log to: the config's server, or a server started here over the SQLite store."""
    if not cfg.tracking.enabled:
        return None
    uri = cfg.tracking.uri or default_tracking_uri(cfg.output_dir)
    if uri.startswith("sqlite:///"):
        # Created through the store itself, the experiment keeps its artifacts beside the SQLite file, so
        # a later `mlflow ui --backend-store-uri sqlite:///...` shows them as it does for plain runs.
        ensure_experiment(uri, cfg.tracking.experiment or cfg.experiment)
        # On one machine: loopback. In a Slurm allocation: the head node's address, reachable from every node.
        host = os.environ["RAY_ADDRESS"].rsplit(":", 1)[0] if os.environ.get("RAY_ADDRESS") else "127.0.0.1"
        server = stack.enter_context(TrackingServer(uri, free_port(host), sweep_dir / "mlflow_server.log", host))
        log.info("trials log to MLflow through %s (store %s)", server.uri, uri)
        # Runs logging through the server record its store (`tracking/state.json`): the server dies with this
        # sweep, and a later sync or resume of a run folder goes to the store, never to this port.
        environment = server.environment()
        os.environ.update(environment)
        stack.callback(lambda: [os.environ.pop(key, None) for key in environment])
        return server.uri
    return uri


def run_sweep(plan: SweepPlan) -> Dict[str, Any]:
    """Run (or resume) the sweep to the end; returns the summary written to `summary.json`."""
    args, cfg, sweep_dir = plan.request, plan.cfg, plan.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.sweep, sweep_dir / "sweep.yaml")
    with ExitStack() as stack:
        uri = _tracking(cfg, sweep_dir, stack)
        parent = Tracker(
            sweep_dir, uri or "", cfg.tracking.experiment or cfg.experiment, sweep_dir.name, enabled=uri is not None
        )
        parent.start(_parent_params(plan), {"sweep.role": "parent", "sweep.name": sweep_dir.name})
        setup = TrialSetup(
            config=str(Path(args.config).resolve()) if args.config else None,
            overrides=list(args.overrides),
            sweep_dir=str(sweep_dir),
            output_dir=str(Path(cfg.output_dir).resolve()),
            experiment=cfg.experiment,
            sweep_name=sweep_dir.name,
            tracking_uri=uri,
            parent_run_id=parent.run_id,
            workers=args.workers,
            threads=max(1, int(args.cpus_per_trial) // args.workers),
            pause_every=pbt_pause_every(args.scheduler, plan.spec),
        )
        _start_ray(stack)
        interrupt_on_sigterm()  # after ray.init, whose own handler exits (the parent run then said FAILED)
        status = "FAILED"
        try:
            grid = _fit(plan, setup)
            summary = summarise(grid, plan, parent, setup)
            status = "KILLED" if summary["interrupted"] else "FINISHED"
            return summary
        except KeyboardInterrupt:  # a second Ctrl-C: Tune's own handler answers only the first
            status = "KILLED"
            raise
        finally:
            parent.finish(status)


def _checkpoint_config(scheduler: str):
    """Tune's copies of trial checkpoints: the last two, except under PBT, which may clone any trial's
    checkpoint of a past perturbation while that trial trains on (a pruned one fails the exploit)."""
    return tune.CheckpointConfig(num_to_keep=None if scheduler == "pbt" else 2)


def search_algorithm(spec: SweepSpec, max_concurrent: Optional[int]) -> BasicVariantGenerator:
    """Ray's grid/random variant generator, seeded by the sweep file's `seed`, running at most
    `max_concurrent` trials at once (0 or None: as many as the resources allow)."""
    return BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=spec.seed)


class RecordTrialEnds(tune.Callback):
    """Writes a trial's last result into its folder (`trial.record_end`) in the same step of the driver's loop
    where Tune ends the trial (a scheduler's stop, its last epoch): a resumed sweep then never trains an ended
    trial again, even when Tune's periodic save of trial statuses (every 10 s or more) had not caught the end
    before a kill. Not called for the trials an interrupted sweep (Ctrl-C) stops: those were not ended."""

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        # Tune's storage path is the sweep folder (RunConfig below): <sweep>/<TUNE_DIR>/<Ray's trial folder>
        record_end(Path(trial.path).parents[1] / trial.trial_id, trial.last_result or {})


# Seconds between Tune's saves of the trial statuses (its default, "auto", waits 10 s or more): a sweep killed in
# between and resumed restarts each trial that had ended meanwhile (an actor start, ~5 s, for `RecordTrialEnds`'s
# record to end it again). With 0, Tune saves them at the end of each step of its loop, the step where a trial ended
# included (a period of 1 s still missed an end 0.3 s before a kill), so an ended trial is almost always restored as
# ended, at no cost. A save writes one small JSON file (trial configs and statuses) and copies it beside the sweep in
# the background; a copy is not launched while the previous one runs, so under load the newest end can miss the copy
# before a kill, and `RecordTrialEnds`'s record ends that trial again (tests/test_tune.py sees both cases).
STATUS_SAVE_PERIOD_S = "0"


def _fit(plan: SweepPlan, setup: TrialSetup):
    args, cfg, spec, sweep_dir = plan.request, plan.cfg, plan.spec, plan.sweep_dir
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATUS_SAVE_PERIOD_S)  # read when Tune's controller starts
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    )
    if args.resume:
        log.info("resuming the sweep in %s (finished trials are kept)", sweep_dir)
        # Ray keeps same_as / depends_on entries as placeholders and resolves them only from a param_space
        # handed to restore: without it, trials not yet started would get the placeholder as their value.
        tuner = tune.Tuner.restore(
            str(sweep_dir / TUNE_DIR), trainable, param_space=param_space(spec), resume_unfinished=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode=spec.mode,
                num_samples=plan.num_samples,
                scheduler=make_scheduler(args.scheduler, spec, cfg),
                search_alg=search_algorithm(spec, args.max_concurrent),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(sweep_dir),
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                checkpoint_config=_checkpoint_config(args.scheduler),
                callbacks=[RecordTrialEnds()],
            ),
        )  # restored with the Tuner on --resume
    return tuner.fit()


def trial_stop_reason(result, scheduler: str, budget_key: str, full_budget: int, trial_dir: Path) -> str:
    """Why a Ray trial ended (`tracking.stop_reasons`): its error, a scheduler's stop, or the full budget. A trial
    Tune did not end (its last result is not `done`: the sweep was interrupted) is `interrupted` once it has
    started training (`--resume` continues it), else `not started`."""
    if result.error is not None:
        return stop_reasons.errored(last_exception_line(str(result.error)) or type(result.error).__name__)
    if not (result.metrics or {}).get("done"):
        return stop_reasons.INTERRUPTED if (trial_dir / "command.txt").exists() else stop_reasons.NOT_STARTED
    reached = (result.metrics or {}).get(budget_key, 0)
    if reached >= full_budget:
        return stop_reasons.COMPLETED
    return stop_reasons.stopped_by(scheduler, budget_key, reached)


def _history_best(result, metric: str, mode: str) -> Optional[float]:
    """The trial's ranking value (`tracking.compare.trial_score`, as compare.py ranks) over the results it
    reported to Tune: one per validation."""
    frame = result.metrics_dataframe
    if frame is None or metric not in getattr(frame, "columns", []):
        return trial_score([(result.metrics or {}).get(metric)], mode)
    return trial_score(frame[metric].tolist(), mode)


def _share_view(cfg: Config, setup: TrialSetup, parent: Tracker) -> None:
    """Store the sweep's runs-table view on the experiment (columns: metric, epoch, costs, stop reason, swept
    params) and print the URL that opens it: the MLflow UI shows a stored view only when asked by its key."""
    if not (setup.tracking_uri and parent.online and parent.run_id):
        return
    experiment = cfg.tracking.experiment or cfg.experiment
    try:
        key = share_sweep_view(setup.tracking_uri, experiment, parent.run_id)
        store = cfg.tracking.uri or default_tracking_uri(cfg.output_dir)  # the server here stops with the sweep
        command, url = ui_url(store, experiment_id(setup.tracking_uri, experiment), view_key=key)
    except Exception as err:
        log.warning("could not store the sweep's view for the MLflow UI (%s)", err)
        return
    print(f"browse: {command}  then open {url}" if command else f"browse: {url}")


def wall_time_points(result) -> List[MetricPoint]:
    """(step, `cost/wall_s`, time in ms) of each result a trial reported to Tune (one per validation)."""
    frame = result.metrics_dataframe
    if frame is None or not {"step", WALL}.issubset(getattr(frame, "columns", [])):
        return []
    rows = frame[["step", WALL, *(["timestamp"] if "timestamp" in frame.columns else [])]].dropna(subset=["step", WALL])
    return [(int(r["step"]), float(r[WALL]), int(r.get("timestamp", time.time()) * 1000)) for _, r in rows.iterrows()]


def _record_trial(
    trial_dir: Path,
    row: Mapping[str, Any],
    config: Mapping[str, Any],
    cfg: Config,
    setup: TrialSetup,
    walls: Sequence[MetricPoint] = (),
) -> None:
    """Put the stop reason, the end status and the wall time series (`walls`, `cost/wall_s` per reported step)
    on the trial's MLflow run; a trial that failed before its training opened a run gets one here, so every
    trial of the sweep has its child run. Done here, after the sweep, not by the trial function: a trial
    Tune stopped must end at once (Tune reuses its actor for the next trial)."""
    reason = row["stop_reason"]
    if reason == stop_reasons.NOT_STARTED:
        return  # its run is opened when it trains (a resumed sweep)
    if not setup.tracking_uri:
        return  # a sweep without tracking has no runs
    status = stop_reasons.mlflow_status(reason)
    tags = {"sweep.stop_reason": reason, "sweep.compute.clip_frames": row[COST]}
    if (trial_dir / "tracking" / "state.json").exists():
        # through this sweep's server: a trial that ended before a killed sweep was resumed names the old one
        annotate_run(trial_dir, tags, status, uri=setup.tracking_uri, metrics={WALL: walls})
        return
    tracker = Tracker(
        trial_dir,
        setup.tracking_uri,
        cfg.tracking.experiment or cfg.experiment,
        trial_run_name(setup.sweep_name, row["trial_id"]),
    )
    parent = {"mlflow.parentRunId": setup.parent_run_id} if setup.parent_run_id else {}
    full = flatten(to_dict(load_config(setup.config, [*setup.overrides, *trial_overrides(config)])))
    tracker.start(full, {**parent, "sweep.name": setup.sweep_name, "sweep.trial_id": row["trial_id"], **tags})
    tracker.finish(status)


def _trial_row(result, plan: SweepPlan) -> Dict[str, Any]:
    """One trial's row of the sweep's table: id, swept values, stop reason, ranking value, budget and costs."""
    spec, budget_key, metrics = plan.spec, budget_attr(plan.spec), result.metrics or {}
    id_file = Path(result.path) / "trial_id"
    # The trial's own record first: after a PBT exploit the last result can be the donor's.
    trial_id = id_file.read_text().strip() if id_file.exists() else metrics.get("trial_id") or Path(result.path).name
    reason = trial_stop_reason(
        result, plan.request.scheduler, budget_key, max_budget(spec, plan.cfg), plan.sweep_dir / trial_id
    )
    return {
        "trial_id": trial_id,
        **flat_trial_config(result.config or {}),
        "stop_reason": reason,
        spec.metric: _history_best(result, spec.metric, spec.mode),
        f"last {spec.metric}": metrics.get(spec.metric),
        budget_key: metrics.get(budget_key),
        COST: metrics.get(COST),
        WALL: metrics.get(WALL),
    }


def _trial_rows(grid, plan: SweepPlan, setup: TrialSetup) -> List[Dict[str, Any]]:
    """The rows of the trials Tune created (their stop reasons put on their MLflow runs), then one `not started`
    row for each planned trial it had not created yet (an interrupted sweep run one trial at a time)."""
    rows: List[Dict[str, Any]] = []
    for result in grid:
        rows.append(_trial_row(result, plan))
        if setup.tracking_uri:
            _record_trial(
                plan.sweep_dir / rows[-1]["trial_id"],
                rows[-1],
                flat_trial_config(result.config or {}),
                plan.cfg,
                setup,
                wall_time_points(result),
            )
    # Tune draws a trial's values only when it creates it: those of the others are not known yet
    planned = plan.spec.grid_size() * plan.num_samples
    return rows + [{"trial_id": None, "stop_reason": stop_reasons.NOT_STARTED} for _ in range(planned - len(rows))]


def summarise(grid, plan: SweepPlan, parent: Tracker, setup: TrialSetup) -> Dict[str, Any]:
    """Stop reasons onto the trials' runs; table, CSV, plots and the best trial onto the parent run."""
    cfg, spec, sweep_dir = plan.cfg, plan.spec, plan.sweep_dir
    budget_key = budget_attr(spec)
    rows = best_first(_trial_rows(grid, plan, setup), lambda row: row.get(spec.metric), spec.mode)
    rule = ranking_rule(spec.metric, spec.mode)
    keys = ["trial_id", *spec.swept_keys(), spec.metric, f"last {spec.metric}", budget_key, COST, WALL, "stop_reason"]
    columns = [score_column(spec.metric) if k == spec.metric else k for k in keys]  # says which value ranks
    table = [[row.get(k) for k in keys] for row in rows]
    print(f"trials by {rule}:")
    print(format_table(columns, table), flush=True)
    files = [
        write_csv(sweep_dir / "results.csv", columns, table),
        plot_metric_vs_keys(rows, spec.swept_keys(), spec.metric, sweep_dir / "metric_vs_keys.png"),
        plot_metric_vs_cost(rows, spec.metric, sweep_dir / "metric_vs_cost.png"),
        plot_frames_rate_heatmap(rows, spec.metric, spec.mode, sweep_dir / "frames_rate_heatmap.png"),
        sweep_dir / "sweep.yaml",
    ]
    best = rows[0] if rows and rows[0].get(spec.metric) is not None else None
    summary: Dict[str, Any] = {
        "trials": len(rows),
        "ranking": rule,
        "best": best,
        "completed_or_stopped": sum(stop_reasons.outcome(r["stop_reason"]) in ("completed", "stopped") for r in rows),
        "errored": sum(stop_reasons.outcome(r["stop_reason"]) == "errored" for r in rows),
        "unfinished": sum(stop_reasons.outcome(r["stop_reason"]) == "unfinished" for r in rows),
        "total_clip_frames": sum(r.get(COST) or 0 for r in rows),
        "rows": rows,
    }
    summary["interrupted"] = summary["unfinished"] > 0
    if best is not None:
        best_dir = sweep_dir / best["trial_id"]
        if (best_dir / "config.yaml").exists():
            shutil.copyfile(best_dir / "config.yaml", sweep_dir / "best_config.yaml")
            files.append(sweep_dir / "best_config.yaml")
        parent.set_tags({"sweep.best_trial": best["trial_id"]})
        parent.log_metrics(
            {
                f"best/{spec.metric}": best[spec.metric],
                "sweep.trials": len(rows),
                "sweep.errored": summary["errored"],
                "sweep.total_clip_frames": summary["total_clip_frames"],
            },
            0,
        )
        print(
            f"best trial {best['trial_id']}: {spec.metric} {best[spec.metric]:.4g} "
            f"({', '.join(f'{k}={best.get(k)}' for k in spec.swept_keys())})"
        )
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files.append(sweep_dir / "summary.json")
    for path in files:
        if path is not None and path.exists():
            parent.log_artifact(path)
    _share_view(cfg, setup, parent)
    print(
        f"results: {sweep_dir / 'results.csv'}\ncompare: python launch/compare.py --experiment "
        f"{cfg.tracking.experiment or cfg.experiment} --parent {sweep_dir.name}"
    )
    return summary


def sweep(request: SweepRequest) -> int:
    """`launch/tune.py` on this machine (or inside a Slurm sweep job's Ray cluster): check, plan, run or
    resume; the command's exit code."""
    plan = make_plan(request)
    if plan is None:
        return 2
    if request.dry_run:
        return 0
    state = plan.sweep_dir / TUNE_DIR
    if state.exists() and not request.resume:
        print(
            f"error: {plan.sweep_dir} already holds a sweep; continue it with --resume, or start another with "
            f"--name <new name>",
            file=sys.stderr,
        )
        return 2
    if request.resume and not state.exists():
        print(f"error: --resume: no sweep to resume in {plan.sweep_dir}", file=sys.stderr)
        return 2
    summary = run_sweep(plan)
    if summary["interrupted"]:
        print(
            f"interrupted: sweep {plan.sweep_dir.name} stopped before its end ({summary['unfinished']} of "
            f"{summary['trials']} trials unfinished); continue it with: {resume_command()}",
            file=sys.stderr,
        )
        return 130
    return 0 if summary["completed_or_stopped"] > 0 else 1


def resume_command(argv: Optional[List[str]] = None) -> str:
    """The command that continues this sweep: tune.py's own arguments (`argv`, default this process's) and
    `--resume`."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    return shlex.join(["python", "launch/tune.py", *args, "--resume"])
