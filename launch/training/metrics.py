"""Metrics over a whole evaluation set (all ranks' predictions gathered first): classification
(top-k, mean class accuracy, macro F1) and regression (MSE per output, optionally per participant).
Shared by validation during training (`training.trainer`) and checkpoint evaluation (`evaluation.evaluate`)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def is_regression(cfg: Any, model: Any) -> bool:
    """Whether the model predicts values (MSE loss or a `task == "regression"` model, `HasTask`) rather than classes."""
    from action_launch.models.contract import HasTask  # the models package imports torch; this module stays light

    return cfg.train.loss == "mse" or (isinstance(model, HasTask) and model.task == "regression")


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """top1, top5 (top-k capped at the class count), mean class accuracy and macro F1, in percent."""
    num_classes = scores.shape[1]
    order = np.argsort(-scores, axis=1)
    k5 = min(5, num_classes)
    top1 = float(np.mean(order[:, 0] == labels)) * 100
    top5 = float(np.mean(np.any(order[:, :k5] == labels[:, None], axis=1))) * 100
    cm = confusion_matrix(order[:, 0], labels, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=present)
    predicted = cm.sum(axis=0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=(precision + recall) > 0
    )
    return {
        "top1": top1,
        "top5": top5,
        "mean_class_acc": float(recall[present].mean()) * 100,
        "macro_f1": float(f1[present].mean()) * 100,
    }


def regression_metrics(
    preds: np.ndarray, targets: np.ndarray, output_names: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """`mse` (mean over outputs) and `mse/<output>` (mean over samples) of (N, K) predictions.

    Outputs are named by `output_names` when it has K names (the Big-Five traits), else by index.
    """
    preds = np.asarray(preds, dtype=np.float64)
    per_output = ((preds - np.asarray(targets, dtype=np.float64).reshape(preds.shape)) ** 2).mean(axis=0)
    names = (
        output_names
        if output_names is not None and len(output_names) == len(per_output)
        else [str(i) for i in range(len(per_output))]
    )
    out = {"mse": float(per_output.mean())}
    out.update({f"mse/{name}": float(v) for name, v in zip(names, per_output)})
    return out


def average_by_group(
    scores: np.ndarray, labels: np.ndarray, groups: Sequence[str]
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Mean scores and labels per group (the personality protocol: all chunks of a participant), groups in
    first-seen order."""
    names = list(dict.fromkeys(str(g) for g in groups))
    rows = np.array([str(g) for g in groups])
    mean_scores = np.stack([scores[rows == g].astype(np.float64).mean(axis=0) for g in names])
    mean_labels = np.stack([labels[rows == g].astype(np.float64).mean(axis=0) for g in names])
    return mean_scores, mean_labels, names
