"""A new dataset kind, or a new model family with published weights, is one file plus its test.

Each test drops a new file into the package (a temporary folder appended to the package's `__path__`, so the
repository is not written) and checks that, with nothing else edited, the file is found and is a full citizen:
its `data:` keys are validated and recorded, its datasets are built and keep the contract, its presets are
created from a config and its checkpoint format is detected.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_contracts import contract_configs, dataset_breaches

from action_launch import datasets, models
from action_launch.config import ConfigError, load_config, to_dict
from action_launch.datasets import registry
from action_launch.models import _formats, _registry, checkpoints

TONES = '''
"""A kind written by a test: `num_tones` constant clips per split, clip i of class i."""

from dataclasses import dataclass

import torch

from action_launch.datasets.config import DataConfig
from action_launch.datasets.registry import register_kind


@dataclass
class TonesConfig(DataConfig):
    dataset: str = "tones"
    """`tones`."""
    num_tones: int = 3
    """Samples (and classes) per split."""


@register_kind(TonesConfig)
class TonesDataset(torch.utils.data.Dataset):
    def __init__(self, cfg: TonesConfig, split: str):
        self.cfg, self.split, self.num_classes = cfg, split, cfg.num_tones

    def __len__(self) -> int:
        return self.cfg.num_tones

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return torch.full((3, 2, 8, 8), float(i)), i
'''

LINEAR = '''
"""A family written by a test: a linear classifier over the clip, with one published layout."""

import torch
from torch import nn

from action_launch.models._formats import Format, register_format
from action_launch.models._registry import register_preset


class LinearClip(nn.Module):
    def __init__(self, num_classes: int = 4, num_frames: int = 2, crop_size: int = 8):
        super().__init__()
        self.fc = nn.Linear(3 * num_frames * crop_size * crop_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


register_preset("linear_clip_tiny", LinearClip, crop_size=8)
register_format(
    Format(
        "linear_upstream",
        "the linear family's upstream release (classifier.weight, classifier.bias)",
        lambda keys, model: isinstance(model, LinearClip) and "classifier.weight" in keys,
        lambda key, model: ("fc." + key.split(".", 1)[1], None) if key.startswith("classifier.") else None,
        priority=5,
    )
)
'''


@pytest.fixture()
def tones(tmp_path, monkeypatch):
    """`action_launch.datasets.tones`, found by the registry in a folder added to the package's path."""
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "tones.py").write_text(TONES)
    monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(folder)])
    monkeypatch.setattr(registry, "_KINDS", registry.kinds())
    monkeypatch.setattr(registry, "_discovered", False)
    yield
    sys.modules.pop("action_launch.datasets.tones", None)


def test_a_new_dataset_file_is_a_kind_with_its_keys_and_nothing_else_edited(tones, tmp_path):
    assert "tones" in datasets.kinds()
    cfg = load_config(None, ["data.dataset=tones", "data.num_tones=5"])
    assert type(cfg.data).__name__ == "TonesConfig" and cfg.data.num_tones == 5
    recorded = to_dict(cfg)["data"]
    assert recorded["num_tones"] == 5 and "num_frames" not in recorded and "window_size" not in recorded
    with pytest.raises(ConfigError, match=r"unknown key data.num_tone; did you mean data.num_tones\?"):
        load_config(None, ["data.dataset=tones", "data.num_tone=5"])
    with pytest.raises(ConfigError, match=r"data.num_tones is a key of data.dataset=tones, not of data.dataset=video"):
        load_config(None, ["data.num_tones=5"])
    with pytest.raises(ConfigError, match=r"did you mean 'tones'"):
        load_config(None, ["data.dataset=tone"])
    for split in datasets.SPLITS:
        ds = datasets.build(cfg.data, split)
        assert len(ds) == 5 and dataset_breaches(ds) == []
    saved = tmp_path / "config.yaml"  # a run's config.yaml reads back as the same section
    saved.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(saved).data == cfg.data


def test_a_kind_without_its_test_file_is_named_by_the_contract_check(tones, tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"data.dataset=tones has no tests/test_data_tones.py"):
        contract_configs("tones", tmp_path)


def test_each_registered_kind_is_one_module():
    """The section and the dataset class of a kind live in one file of `datasets/` (a kind edits nothing else)."""
    for kind in datasets.kinds().values():
        assert kind.section.__module__ == kind.dataset.__module__, kind
        assert kind.dataset.__module__.startswith("action_launch.datasets."), kind


def test_a_kind_registered_twice_is_refused():
    video = datasets.kinds()["video"]
    with pytest.raises(ValueError, match="data.dataset 'video' is registered twice"):
        registry.register_kind(video.section)(type("OtherVideo", (video.dataset,), {}))


@pytest.fixture()
def linear_family(tmp_path, monkeypatch):
    """`action_launch.models.linear`, found by the registries in a folder added to the package's path."""
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "linear.py").write_text(LINEAR)
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(folder)])
    monkeypatch.setattr(_registry, "_PRESETS", {n: _registry.get_preset(n) for n in _registry.list_presets()})
    monkeypatch.setattr(_formats, "_FORMATS", {f.name: f for f in _formats.registered_formats()})
    monkeypatch.setattr(_registry, "_families_imported", False)
    yield
    sys.modules.pop("action_launch.models.linear", None)


def test_a_new_model_file_is_a_family_whose_published_weights_load(linear_family, tmp_path):
    assert "linear_clip_tiny" in models.list_presets()
    cfg = load_config(None, ["model.name=linear_clip_tiny", "model.num_classes=3"])
    model = models.build(cfg.model)
    with pytest.raises(ConfigError, match="unknown key model.num_clases"):
        load_config(None, ["model.name=linear_clip_tiny", "model.num_clases=3"])
    upstream = {"classifier.weight": torch.randn(3, 384), "classifier.bias": torch.randn(3)}
    path = Path(tmp_path) / "upstream.pth"
    torch.save({"state_dict": upstream}, path)
    report = checkpoints.load_checkpoint(model, path)
    assert report.format == "linear_upstream" and sorted(report.loaded) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, upstream["classifier.weight"])
    assert torch.equal(model.fc.bias, upstream["classifier.bias"])
