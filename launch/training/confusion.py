"""The confusion matrix as a figure (matplotlib, headless) and as JSON, logged as run artifacts by training and
test.py; rows and columns are labelled with the dataset's class names where it has them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def class_labels(class_names: Optional[Sequence[str]], n: int) -> List[str]:
    """The labels of `n` classes: the dataset's class names when it has one per class, else `0`..`n-1`."""
    return list(class_names) if class_names is not None and len(class_names) == n else [str(i) for i in range(n)]


def save_confusion_json(cm: np.ndarray, path: Path, class_names: Optional[Sequence[str]] = None) -> Path:
    """The counts as JSON: `classes` (the labels of rows and columns) and `rows_true_cols_predicted`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"classes": class_labels(class_names, cm.shape[0]), "rows_true_cols_predicted": cm.tolist()})
    )
    return path


def save_confusion_matrix(cm: np.ndarray, path: Path, class_names: Optional[Sequence[str]] = None) -> Path:
    """Row-normalised confusion matrix with counts, true classes as rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    names = class_labels(class_names, n)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(2 + 0.5 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
