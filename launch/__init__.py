"""action-launch: train, sweep and submit video and skeleton action-recognition models.

The installed package is `action_launch`: this folder (the commands `train.py`, `submit.py`, `tune.py`,
`test.py`, `compare.py`, `explain.py`, `ensemble.py`, `track.py`, and the library's rooms below them),
with `models/` and `datasets/` of the checkout as `action_launch.models` and `action_launch.datasets`.
ARCHITECTURE.md names the rooms and their import order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
"""The checkout (or code snapshot) this package runs from: `configs/` and `slurm/` lie beside the package."""


def snapshot_root() -> Optional[Path]:
    """The folder holding this package as `action_launch/`, when it runs from a code snapshot (None in a
    checkout, where the installed distribution finds the package)."""
    return ROOT if Path(__file__).resolve().parent == ROOT / "action_launch" else None


def child_python_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """`env` (default this process's) for a Python child process that must import this same code."""
    env = dict(os.environ if env is None else env)
    root = snapshot_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env
