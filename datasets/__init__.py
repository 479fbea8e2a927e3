"""Datasets: `build(cfg, split)` makes the dataset of the kind `cfg.dataset` names.

A kind is one module of this package (its `data:` section class and its dataset class, `datasets.kinds`); they are
imported the first time a kind is asked for, so `from action_launch.datasets import DataConfig` stays cheap.
Datasets import only torch, numpy, decord, av, Pillow (frame folders), the numpy-only `models.graphs` (skeleton
bones) and the standard library.
"""

from __future__ import annotations

from .config import DataConfig
from .lists import read_bad_files
from .registry import Kind, kinds, register_kind

SPLITS = ("train", "val", "test")


def dataset_class(dataset: str) -> type:
    """The dataset class of `data.dataset` (imports the kinds' modules, and with them torch)."""
    registered = kinds()
    if dataset not in registered:
        raise ValueError(f"unknown data.dataset {dataset!r}; valid: {', '.join(registered)}")
    return registered[dataset].dataset


def build(cfg: DataConfig, split: str):
    """The `torch.utils.data.Dataset` of `split` (train/val/test) for `cfg.dataset`."""
    cls = dataset_class(cfg.dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return cls(cfg, split)


__all__ = ["DataConfig", "Kind", "SPLITS", "build", "dataset_class", "kinds", "read_bad_files", "register_kind"]
