"""Fuse two runs' scores (`python launch/ensemble.py RUN_A RUN_B [--alpha 1.0]`).

RUN_A/RUN_B are run folders (their `predictions.npz`, written by launch/test.py) or the files.
The fused score of a video is scores_a + alpha * scores_b (MS-G3D adds the joint and bone streams'
outputs, bone scaled by alpha); both runs must have scored the same videos with the same labels
(they are matched by id, so their order may differ). Prints top-1/top-5 of A, B and the fusion.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

from action_launch.evaluation.evaluate import load_predictions
from action_launch.training.metrics import classification_metrics


def align(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> np.ndarray:
    """Indices that put B's rows in A's video order; ValueError if the runs scored different videos or labels."""
    ids_a, ids_b = [str(i) for i in a["ids"]], [str(i) for i in b["ids"]]
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise ValueError("predictions hold repeated video ids; cannot match the two runs")
    if set(ids_a) != set(ids_b):
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        raise ValueError(
            f"the runs scored different videos: {len(only_a)} only in A (e.g. {only_a[:3]}), "
            f"{len(only_b)} only in B (e.g. {only_b[:3]})"
        )
    where = {v: i for i, v in enumerate(ids_b)}
    order = np.array([where[v] for v in ids_a], dtype=np.int64)
    if a["scores"].shape[1] != b["scores"].shape[1]:
        raise ValueError(f"class counts differ: {a['scores'].shape[1]} vs {b['scores'].shape[1]}")
    if not np.array_equal(a["labels"], b["labels"][order]):
        raise ValueError("the runs disagree on the labels of the same videos")
    return order


def fuse(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], alpha: float = 1.0) -> Dict[str, np.ndarray]:
    """{'scores': scores_a + alpha * scores_b, 'labels', 'ids'} in A's video order."""
    order = align(a, b)
    return {"scores": a["scores"] + alpha * b["scores"][order], "labels": a["labels"], "ids": a["ids"]}


def ensemble(args: Any) -> int:
    """`launch/ensemble.py`'s work for its parsed arguments (run_a, run_b, alpha, out); the command's exit code."""
    try:
        a, b = load_predictions(args.run_a), load_predictions(args.run_b)
        fused = fuse(a, b, args.alpha)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kinds = {str(p.get("aggregate", "?")) for p in (a, b)}
    if len(kinds) > 1:
        print(
            f"warning: the runs' scores are of different kinds ({' vs '.join(sorted(kinds))}); "
            f"test both with the same test.aggregate",
            file=sys.stderr,
        )
    for name, scores in (
        ("A", a["scores"]),
        ("B", b["scores"][align(a, b)]),
        (f"A + {args.alpha:g} B", fused["scores"]),
    ):
        m = classification_metrics(scores, fused["labels"].astype(np.int64))
        print(f"{name:>12}: top1 {m['top1']:.2f}  top5 {m['top5']:.2f}")
    if args.out:
        from action_launch.evaluation.evaluate import save_predictions

        save_predictions(Path(args.out), fused["scores"], fused["labels"], fused["ids"].tolist(), alpha=args.alpha)
    return 0
