"""Datasets: `build(cfg, split)` makes the dataset named by `cfg.dataset`.

Importing this package is cheap (no torch, no decord): the dataset modules are imported only
when `build` needs them, so `from action_launch.datasets import DataConfig` stays fast for the launcher.
Datasets import only torch, numpy, decord, av, Pillow (frame folders), the numpy-only
`models.graphs` (skeleton bones) and the standard library.
"""

from __future__ import annotations

import importlib

from .config import DataConfig
from .lists import read_bad_files

# name -> "module:Class"; each class is constructed as Class(cfg, split: str), cfg the section class of its name
# (`config.KINDS`, a DataConfig; tests/test_data_sections.py keeps the names equal), and meets the contract of
# `datasets.contract` (tests/test_contracts.py builds every kind and checks it)
DATASETS = {
    "video": ".video:VideoDataset",
    "rawframes": ".rawframes:RawFrameDataset",
    "skeleton": ".skeleton:SkeletonDataset",
    "multiperson": ".multiperson:MultiPersonDataset",
}
SPLITS = ("train", "val", "test")


def dataset_class(dataset: str) -> type:
    """The class of `data.dataset` (imports its module, and with it torch)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown data.dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    module, name = DATASETS[dataset].split(":")
    return getattr(importlib.import_module(module, __name__), name)


def build(cfg: DataConfig, split: str):
    """The `torch.utils.data.Dataset` of `split` (train/val/test) for `cfg.dataset`."""
    cls = dataset_class(cfg.dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return cls(cfg, split)


__all__ = ["DATASETS", "DataConfig", "SPLITS", "build", "dataset_class", "read_bad_files"]
