"""Classification metrics over a whole evaluation set (all ranks' predictions gathered first)."""
from __future__ import annotations

from typing import Dict

import numpy as np


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
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=(precision + recall) > 0)
    return {"top1": top1, "top5": top5, "mean_class_acc": float(recall[present].mean()) * 100,
            "macro_f1": float(f1[present].mean()) * 100}
