"""Compare MLflow runs: `python launch/compare.py --experiment E [--parent SWEEP] [--metric val/top1] [--params k1,k2]`.

Prints a table of the experiment's runs, or with --parent (a sweep name or parent run id) of one
sweep's trials: the key params, the metric, the stop reason and the cost (clip-frames, wall time) of
each, best first. The same table is written as CSV and PNG under --out, and the last line is the
`mlflow ui` command (or URL) that shows the runs; for a sweep, the URL opens a view of its trials stored
on the experiment (`share_sweep_view`). By default the columns are the params that differ between the
runs; for a sweep the metric and mode default to the sweep's own (`sweep.metric`, `sweep.mode`).

The ranking rule is here and only here (`trial_score`, named by `ranking_rule`): a run is ranked by the
best value of the metric over its validations, in the mode (max or min), not by its last value (the
value MLflow's own table shows). A sweep's `results.csv` and `summary.json` rank its trials by the same
rule, over the results its trials reported to Tune (one per validation).
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from action_launch.common.interrupts import uninterrupted
from action_launch.common.tables import best_first, format_table, is_number, numeric_column, write_csv
from action_launch.tracking import query as tq  # imports MLflow only inside functions
from action_launch.tracking.stop_reasons import outcome, run_stop_reason
from action_launch.tracking.tracker import EVALUATED_TAG, best_key, default_tracking_uri

RunDict = Dict[str, Any]
SCORE = "score"
"""Key of a run dict holding its ranking value (`trial_score` of its metric's history), set by `with_scores`."""

COST_METRICS = {"cost/clip_frames": "clip_frames", "cost/wall_s": "wall_s"}
# Params that differ between any two runs without saying anything about them.
IDENTITY_PARAMS = {"name", "output_dir", "experiment", "tracking.uri", "tracking.experiment", "slurm.job_name"}
MAX_AUTO_PARAMS = 8  # more differing params than this: the rest are named, --params picks them
ERROR_WIDTH = 40  # characters of an error message shown in the terminal and the PNG (the CSV has all)


def trial_score(values: Iterable[Any], mode: str) -> Optional[float]:
    """The value a run (a sweep's trial) is ranked by: the best of its validations' values of the metric,
    the max for mode `max`, the min for `min`; None when it has none (NaN, inf and non-numbers are ignored)."""
    finite = [float(v) for v in values if is_number(v)]
    if not finite:
        return None
    return max(finite) if mode == "max" else min(finite)


def ranking_rule(metric: str, mode: str) -> str:
    """The ranking rule in words, as compare.py's table and the sweep's results (summary.json) state it."""
    return f"best {metric} over each run's validations ({mode}), best first"


def score_column(metric: str) -> str:
    """The column of the ranking value: `best <metric>` (not the metric's last value, which MLflow shows)."""
    return f"best {metric}"


def with_scores(
    runs: Sequence[RunDict], histories: Mapping[str, Sequence[float]], metric: str, mode: str
) -> List[RunDict]:
    """The runs, each with its ranking value under SCORE (from its history of `metric`; the latest value
    stands in for a run whose history is not given)."""
    out = []
    for run in runs:
        values = histories.get(run["run_id"])
        if values is None:
            values = [run["metrics"].get(metric)]
        out.append({**run, SCORE: trial_score(values, mode)})
    return out


def _score(run: RunDict, metric: str) -> Any:
    return run[SCORE] if SCORE in run else run["metrics"].get(metric)


def swept_keys(parent_params: Dict[str, str]) -> List[str]:
    """Config keys a sweep searched over: its `space.<key>` params (`space.a:b` for a joint entry)."""
    return [key for k in parent_params if k.startswith("space.") for key in k[len("space.") :].split(":")]


def differing_params(runs: Sequence[RunDict], first: Iterable[str] = ()) -> List[str]:
    """Param keys whose value is not the same in every run (absent counts as a value); `first` keys lead."""
    keys = sorted({k for r in runs for k in r["params"]} - IDENTITY_PARAMS)
    differ = [k for k in keys if len({r["params"].get(k) for r in runs}) > 1 and not _per_run_path(runs, k)]
    lead = [k for k in first if k in differ]
    return lead + [k for k in differ if k not in lead]


def _per_run_path(runs: Sequence[RunDict], key: str) -> bool:
    """Whether each run's value names that run (a file in its own folder): different, but not a choice."""
    return all(run["name"] and run["name"].split("/")[-1] in run["params"].get(key, "") for run in runs)


def sort_runs(runs: Sequence[RunDict], metric: str, mode: str) -> List[RunDict]:
    """Best first by the ranking value (SCORE; the metric's latest value for a run without one); runs
    without any (errored early) last, each group by name."""
    by_name = sorted(runs, key=lambda run: run["name"] or "")
    return best_first(by_name, lambda run: _score(run, metric), mode)


def _with_cost_tags(run: RunDict) -> RunDict:
    """A trial's compute as a metric even where it was only tagged (`sweep.compute.clip_frames`)."""
    tagged = run["tags"].get("sweep.compute.clip_frames")
    if "cost/clip_frames" in run["metrics"] or tagged in (None, "", "None"):
        return run
    try:
        return {**run, "metrics": {**run["metrics"], "cost/clip_frames": float(tagged)}}
    except ValueError:
        return run


def table_rows(runs: Sequence[RunDict], metric: str, params: Sequence[str], trials: bool = False) -> tuple:
    """(columns, rows) with raw values: run (or trial), params..., best <metric>, [epoch], stop, [costs],
    run_id. A sweep's table (`trials`) always has the cost columns, clip-frames and wall time."""
    costs = [m for m in COST_METRICS if trials or any(m in r["metrics"] for r in runs)]
    epochs = any("epoch" in r["metrics"] for r in runs) and metric != "epoch"
    columns = [
        "trial" if trials else "run",
        *params,
        score_column(metric),
        *(["epoch"] if epochs else []),
        "stop",
        *(COST_METRICS[m] for m in costs),
        "run_id",
    ]
    rows = []
    for run in runs:
        row = [
            run["tags"].get("sweep.trial_id", run["name"]) if trials else run["name"],
            *(run["params"].get(k, "") for k in params),
            _score(run, metric),
            *([run["metrics"].get("epoch")] if epochs else []),
            run_stop_reason(run),
            *(run["metrics"].get(m) for m in costs),
            run["run_id"],
        ]
        rows.append(row)
    return columns, rows


def _cell(column: str, value: Any) -> str:
    """A value as the terminal and the PNG show it (the CSV keeps raw values)."""
    if value is None or value == "":
        return "-"
    if column == "stop":
        return value if len(value) <= ERROR_WIDTH else value[: ERROR_WIDTH - 3] + "..."
    if column == "run_id":
        return value[:8]
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    if column == "clip_frames":
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{unit}"
        return f"{value:.0f}"
    if column == "wall_s":
        return f"{value:.0f}s" if value < 120 else f"{int(value // 60)}m{int(value % 60):02d}s"
    if column == "epoch" and value.is_integer():
        return str(int(value))
    return f"{value:.4g}"


_OUTCOME_COLOURS = {
    "errored": "#f4c7c3",
    "stopped": "#fce8b2",
    "completed": "#b7e1cd",
    "unfinished": "#c9daf8",
    "other": "#e8eaed",
}


def save_table_png(
    path: Path, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], metric: str, mode: str
) -> Path:
    """The table as a figure: metric cells shaded by value (darker is better), stop cells by outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import Bbox

    cells = [[_cell(c, v) for c, v in zip(columns, row)] for row in rows] or [["-"] * len(columns)]
    widths = [max([1.1 * len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]  # headers are bold
    # About 0.075 inch per character at 9 points, plus cell padding; a row is 0.27 inch.
    fig_w = min(max(6.0, 0.075 * sum(widths) + 0.12 * len(columns)), 40.0)
    table_h = 0.27 * (len(cells) + 1)
    fig = plt.figure(figsize=(fig_w, table_h + 0.45))
    fig.text(0.005, 1 - 0.1 / (table_h + 0.45), title, fontsize=10, va="top")
    ax = fig.add_axes((0.005, 0.02, 0.99, table_h / (table_h + 0.45)))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=list(columns),
        bbox=Bbox.from_bounds(0, 0, 1, 1),
        cellLoc="left",
        colWidths=[(w + 2) / sum(x + 2 for x in widths) for w in widths],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    m, s = columns.index(score_column(metric)), columns.index("stop")
    values = [r[m] for r in rows if isinstance(r[m], float) and not math.isnan(r[m])]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    cmap = plt.get_cmap("Blues")
    right = [numeric_column(rows, j) for j in range(len(columns))]
    for (i, j), cell in table.get_celld().items():
        cell.PAD = 0.6 / (widths[j] + 2)  # matplotlib pads by a fraction of the cell width: keep it a character
        if i > 0 and right[j]:
            cell.set_text_props(ha="right")
            # private API: where Cell places its text; matplotlib sets it only through the table-wide cellLoc
            cell._loc = "right"  # type: ignore[attr-defined]
    for j in range(len(columns)):
        table[0, j].set_facecolor("#dadce0")
        table[0, j].set_text_props(weight="bold")
    for i, row in enumerate(rows, start=1):
        if isinstance(row[m], float) and not math.isnan(row[m]):
            goodness = (row[m] - lo) / (hi - lo) if hi > lo else 1.0
            goodness = goodness if mode == "max" else 1.0 - goodness
            table[i, m].set_facecolor(cmap(0.15 + 0.6 * goodness))
            table[i, m].set_text_props(color="white" if goodness > 0.6 else "black")
        table[i, s].set_facecolor(_OUTCOME_COLOURS[outcome(str(row[s]))])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "runs"


def _check_keys(wanted: Sequence[str], present: Iterable[str], what: str) -> None:
    present = sorted(set(present))
    for key in wanted:
        if key not in present:
            close = difflib.get_close_matches(key, present, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise tq.TrackingQueryError(f"no run has {what} {key!r}{hint}")


def view_key(sweep_name: str) -> str:
    """The share key of a sweep's runs-table view: its name, in characters a tag key and a URL both keep."""
    return "sweep." + (re.sub(r"[^A-Za-z0-9_.-]+", "_", sweep_name).strip("_") or "sweep")


def sweep_view_state(parent: RunDict, children: Sequence[RunDict], metric: str, mode: str) -> Dict[str, Any]:
    """The MLflow UI's runs-table state for a sweep: its trials flat (sorted by the metric, which the UI
    can only do by the latest value), with the metric, epoch, costs, stop reason and swept params shown.

    Keys as the UI (MLflow 3) stores them: a column is `<metrics|params|tags|attributes>.`<key>``."""

    def col(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"

    swept = swept_keys(parent["params"])
    columns = [
        col("metrics", metric),
        col("metrics", "epoch"),
        *(col("metrics", m) for m in COST_METRICS),
        col("tags", "sweep.stop_reason"),
        *(col("params", k) for k in swept),
    ]
    longest = max([len(r["name"] or "") for r in children] or [20])
    widths = {
        col("attributes", "Run Name"): 50 + 7 * longest,
        col("tags", "sweep.stop_reason"): 220,
        col("metrics", metric): max(90, 24 + 7 * len(metric)),
        col("metrics", "epoch"): 70,
        col("metrics", "cost/clip_frames"): 130,
        col("metrics", "cost/wall_s"): 110,
        **{col("params", k): int(24 + 7 * len(k)) for k in swept},
    }
    return {
        "orderByKey": col("metrics", metric),
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "columnOrder": [col("attributes", "Run Name"), *columns],
        "columnWidths": widths,
    }


def share_sweep_view(
    uri: str, experiment: str, parent: str, metric: Optional[str] = None, mode: Optional[str] = None
) -> str:
    """Store the runs-table view of sweep `parent` (name or parent run id) on its experiment (tag
    `mlflow.sharedViewState.<key>`) and return the key; the UI opens it with `?viewStateShareKey=<key>`
    (`tq.ui_url(..., view_key=key)`). Metric and mode default to the sweep's own."""
    sweep, children = tq.sweep_trials(uri, experiment, parent)
    metric = metric or sweep["params"].get("sweep.metric", "val/top1")
    mode = mode or sweep["params"].get("sweep.mode", "max")
    return store_sweep_view(uri, tq.experiment_id(uri, experiment), sweep, children, metric, mode)


def store_sweep_view(uri: str, exp_id: str, sweep: RunDict, children: Sequence[RunDict], metric: str, mode: str) -> str:
    """`share_sweep_view` for a sweep already read: writes the experiment tag, returns the key."""
    key = view_key(sweep["tags"].get("sweep.name", sweep["name"]) or sweep["run_id"])
    tq.share_view(uri, exp_id, key, sweep_view_state(sweep, children, metric, mode))
    return key


RUNS_VIEW = "runs"
"""The share key of an experiment's runs-table view (`share_runs_view`): `?viewStateShareKey=runs`."""


def training_runs(runs: Sequence[RunDict]) -> List[RunDict]:
    """The runs that trained (or are trials): not the sweeps' parent runs, not the evaluations of checkpoints."""
    parents = tq.sweep_parents(list(runs))
    return [r for r in runs if r not in parents and EVALUATED_TAG not in r["tags"]]


def runs_view_state(runs: Sequence[RunDict], metric: str, params: Sequence[str]) -> Dict[str, Any]:
    """The MLflow UI's runs-table state for an experiment: the best and the latest value of `metric`, the epoch,
    the wall time (Duration; `cost/wall_s` where runs log it) and the `params` columns. Left in start-time order,
    the one order in which the UI folds each evaluation under its training run and each trial under its sweep."""

    def col(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"

    costs = [col("metrics", "cost/wall_s")] if any("cost/wall_s" in r["metrics"] for r in runs) else []
    columns = [
        col("metrics", best_key(metric)),
        col("metrics", metric),
        col("metrics", "epoch"),
        col("attributes", "Duration"),
        *costs,
        *(col("params", k) for k in params),
    ]
    longest = max([len(r["name"] or "") for r in runs] or [20])
    widths = {
        col("attributes", "Run Name"): 80 + 8 * longest,  # room for the colour dot and the fold button
        col("metrics", best_key(metric)): 30 + 8 * len(best_key(metric)),
        col("metrics", metric): max(90, 30 + 8 * len(metric)),
        col("metrics", "epoch"): 70,
        col("attributes", "Duration"): 90,
        **dict.fromkeys(costs, 110),
        **{col("params", k): int(24 + 7 * len(k)) for k in params},
    }
    return {
        "selectedColumns": columns,
        "columnOrder": [col("attributes", "Run Name"), *columns],
        "columnWidths": widths,
    }


def share_runs_view(uri: str, experiment: str, metric: str, params: Optional[Sequence[str]] = None) -> str:
    """Store the runs-table view of `experiment` (`runs_view_state`; `params` default to those that differ between
    its training runs, the swept ones first) and return its key, `RUNS_VIEW`: the UI opens it with
    `?viewStateShareKey=runs` (`tq.ui_url(..., view_key=key)`); it has no default view an experiment can set."""
    with uninterrupted():  # it reads and writes the store, as a run ends: a second Ctrl-C waits for it
        all_runs = tq.list_runs(uri, experiment)
        runs = training_runs(all_runs)
        if params is None:
            swept = [k for parent in tq.sweep_parents(all_runs) for k in swept_keys(parent["params"])]
            params = differing_params(runs, first=swept)[:MAX_AUTO_PARAMS]
        tq.share_view(uri, tq.experiment_id(uri, experiment), RUNS_VIEW, runs_view_state(runs, metric, params))
    return RUNS_VIEW


def compare_runs(args: Any) -> int:
    """`launch/compare.py`'s work for its parsed arguments (experiment, parent, tracking_uri, output_dir,
    metric, mode, params, out): print and write the table; the command's exit code."""
    uri = args.tracking_uri or default_tracking_uri(args.output_dir)
    try:
        exp_id = tq.experiment_id(uri, args.experiment)
        sweep: Optional[RunDict] = None
        if args.parent:
            sweep, runs = tq.sweep_trials(uri, args.experiment, args.parent)
            if not runs:
                raise tq.TrackingQueryError(
                    f"run {sweep['name']!r} ({sweep['run_id']}) has no child runs "
                    f"(tag mlflow.parentRunId); is it a sweep's parent run?"
                )
        else:
            runs = training_runs(tq.list_runs(uri, args.experiment))
            if not runs:
                raise tq.TrackingQueryError(f"experiment {args.experiment!r} has no runs")
        sweep_params = sweep["params"] if sweep else {}
        metric = args.metric or sweep_params.get("sweep.metric", "val/top1")
        mode = args.mode or sweep_params.get("sweep.mode", "max")
        _check_keys([metric], (k for r in runs for k in r["metrics"]), "metric")
        if args.params:
            params = [p.strip() for p in args.params.split(",") if p.strip()]
            _check_keys(params, (k for r in runs for k in r["params"]), "param")
            more: List[str] = []
        else:
            swept = swept_keys(sweep_params)
            differ = differing_params(runs, first=swept)
            params, more = differ[:MAX_AUTO_PARAMS], differ[MAX_AUTO_PARAMS:]

        histories = tq.metric_histories(uri, [r["run_id"] for r in runs], metric)
    except (tq.TrackingQueryError, ConnectionError, FileNotFoundError) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 1

    key = None
    if sweep:
        try:  # the UI's view of the trials; the table does not depend on it
            key = store_sweep_view(uri, exp_id, sweep, runs, metric, mode)
        except Exception as err:
            print(f"compare: could not store the sweep's view for the MLflow UI ({err})", file=sys.stderr)
    else:
        try:  # the experiment's view, with this table's metric and params
            key = share_runs_view(uri, args.experiment, metric, params)
        except Exception as err:
            print(f"compare: could not store the runs view for the MLflow UI ({err})", file=sys.stderr)
    scored = with_scores([_with_cost_tags(r) for r in runs], histories, metric, mode)
    ordered = sort_runs(scored, metric, mode)
    columns, rows = table_rows(ordered, metric, params, trials=sweep is not None)
    what = f"sweep {sweep['tags'].get('sweep.name', sweep['name'])}" if sweep else "runs"
    title = f"{args.experiment}: {what}, {len(rows)} {'trials' if sweep else 'runs'}, by {ranking_rule(metric, mode)}"
    out = args.out or Path(args.output_dir) / "compare"
    stem = _slug(args.experiment) + (f"__{_slug(what[len('sweep ') :])}" if sweep else "")
    csv_path = write_csv(out / f"{stem}.csv", columns, rows)
    png_path = save_table_png(out / f"{stem}.png", title, columns, rows, metric, mode)

    print(title)
    print(format_table(columns, rows, _cell))
    if more:
        print(f"({len(more)} more params differ: {', '.join(more)}; pick columns with --params)")
    print(f"Wrote {csv_path} and {png_path}")
    command, url = tq.ui_url(uri, exp_id, view_key=key)
    print(f"Browse them: {command}  then open {url}" if command else f"Browse them: {url}")
    return 0
