"""What can be checked about a run before DeepSpeed, MLflow or Slurm starts: paths and the class count.

Each failure is one `PreflightError` line naming the key or flag and what to do, so `launch/train.py`
and `launch/submit.py` stop in a second with exit code 2 instead of failing after the engine started
(or, for a submitted job, on the node).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from action_launch.config import Config
from action_launch.datasets.lists import read_list, resolve_list_path
from action_launch.training import checkpoint as ckpt

LIST_DATASETS = ("video", "rawframes")  # classification lists whose labels we can read up front


class PreflightError(ValueError):
    """A run that cannot start as configured; the message is one line."""


def check_run(cfg: Config, resume_from: Optional[str] = None, load_from: Optional[str] = None) -> None:
    """Raise PreflightError for a missing checkpoint, data folder or list, or a head too small for the labels."""
    if resume_from and not (Path(resume_from) / ckpt.META).is_file():
        raise PreflightError(f"--resume-from {resume_from}: not a complete checkpoint folder (no {ckpt.META}); "
                             f"give a folder runs/<experiment>/<name>/checkpoints/step_N")
    if load_from and not Path(load_from).exists():
        raise PreflightError(f"--load-from {load_from}: no such file or folder")
    _check_data(cfg)


def _check_data(cfg: Config) -> None:
    data = cfg.data
    if not os.path.isdir(data.root):
        raise PreflightError(f"data.root={data.root}: no such folder (from {Path.cwd()}); set data.root to the "
                             f"folder of your lists, or make the demo clips: python -m action_launch.datasets.synthetic "
                             f"{data.root}")
    if data.dataset not in LIST_DATASETS:
        return
    labels: List[int] = []
    for key, name in (("data.train_list", data.train_list), ("data.val_list", data.val_list)):
        path = resolve_list_path(data.root, name)
        if not os.path.isfile(path):
            raise PreflightError(f"{key}={name}: list file not found at {path}")
        try:
            items = read_list(path, data.root, data.list_format, data.separator, data.path_prefix)
        except ValueError as err:
            raise PreflightError(f"{key}: {err}") from None
        labels += [max(i.label) if isinstance(i.label, list) else i.label for i in items if i.label != []]
    _check_classes(cfg, max(labels) + 1 if labels else 0)


def _check_classes(cfg: Config, needed: int) -> None:
    """The model's head must have a logit for every label of the lists (cross-entropy fails inside the loss otherwise)."""
    if cfg.train.loss != "cross_entropy" or needed == 0:
        return
    from action_launch import models  # the registry; its model files import torch
    from action_launch.models._registry import rename_num_class

    preset = models.get_preset(cfg.model["name"])
    kwargs = {**preset.kwargs, **rename_num_class(cfg.model, "model.num_class")}
    head = kwargs.get("num_classes")
    if head is not None and head < needed:
        names = Path(cfg.data.root, "classes.txt")
        known = f" ({len(names.read_text().split())} in {names})" if names.is_file() else ""
        raise PreflightError(f"model.num_classes={head}, but the lists of data.root={cfg.data.root} use labels up to "
                             f"{needed - 1}{known}: set model.num_classes={needed}")
