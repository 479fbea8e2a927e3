"""The confusion matrix as a figure (matplotlib, headless), logged as a run artifact by training and test.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def save_confusion_matrix(cm: np.ndarray, path: Path, class_names: Optional[Sequence[str]] = None) -> Path:
    """Row-normalised confusion matrix with counts, true classes as rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    names = list(class_names) if class_names is not None and len(class_names) == n else [str(i) for i in range(n)]
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
