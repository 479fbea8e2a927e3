"""A finished sweep's figures: metric vs each swept key, a frames x sampling-rate heat map of the best
metric, and metric vs compute. Plain rows in, files out (the table and CSV: `common.tables`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from action_launch.common.tables import is_number
from action_launch.tracking.stop_reasons import outcome

FRAMES, RATE, COST = "data.num_frames", "data.sampling_rate", "cost/clip_frames"
WALL = "cost/wall_s"
"""A trial's training wall time over all its attempts, reported to Tune with each validation."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_keys(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, path: Path) -> Path:
    """One panel per swept key: the metric of every trial against that key's value."""
    plt = _pyplot()
    keys = list(keys) or ["trial"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r.get(key), r.get(metric)) for r in rows if is_number(r.get(metric))]
        numeric = all(is_number(x) for x, _ in points)
        labels = sorted({str(x) for x, _ in points}) if not numeric else []
        xs: List[Any] = [x if numeric else labels.index(str(x)) for x, _ in points]  # numbers, or label positions
        ax.scatter(xs, [y for _, y in points], alpha=0.8)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        elif key.endswith(".lr") and points and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frames_rate_heatmap(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, path: Path) -> Optional[Path]:
    """Best metric per (num_frames, sampling_rate) cell; None when the sweep does not vary both."""
    cells: Dict[tuple, float] = {}
    for r in rows:
        f, s, m = r.get(FRAMES), r.get(RATE), r.get(metric)
        if not (is_number(f) and is_number(s) and is_number(m)):
            continue
        old = cells.get((f, s))
        cells[(f, s)] = m if old is None else (max(old, m) if mode == "max" else min(old, m))
    frames, rates = sorted({f for f, _ in cells}), sorted({s for _, s in cells})
    if len(frames) < 2 and len(rates) < 2:
        return None
    plt = _pyplot()
    grid = [[cells.get((f, s), float("nan")) for s in rates] for f in frames]
    fig, ax = plt.subplots(figsize=(1.2 * len(rates) + 2.5, 1.0 * len(frames) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if is_number(value):
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(rates)), [str(s) for s in rates])
    ax.set_yticks(range(len(frames)), [str(f) for f in frames])
    ax.set_xlabel(RATE)
    ax.set_ylabel(FRAMES)
    ax.set_title(f"best {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metric_vs_cost(rows: Sequence[Mapping[str, Any]], metric: str, path: Path) -> Path:
    """Each trial's metric against the compute it used (clip-frames processed), stop reason by colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for r in rows:
        if is_number(r.get(metric)) and is_number(r.get(COST)):
            groups.setdefault(outcome(str(r.get("stop_reason", ""))), []).append(r)
    for label, members in sorted(groups.items()):
        ax.scatter([r[COST] for r in members], [r[metric] for r in members], label=label, alpha=0.8)
    ax.set_xlabel("compute (clip-frames)")
    ax.set_ylabel(metric)
    if groups:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
