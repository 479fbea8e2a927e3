"""Validation of regression models during training (the MS-G3D personality variant): per-output MSE,
per-participant MSE, no confusion matrix, and the best checkpoint chosen by an MSE (minimum)."""

from __future__ import annotations

import json
import pickle
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_train
from torch import nn

from action_launch.config import load_config
from action_launch.training import checkpoint as ckpt
from action_launch.training.loaders import ShardSampler, make_loader
from action_launch.training.trainer import Trainer

# one intra-op thread: two threads on 2 cores shared with other work oversubscribe them many times over
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TRAITS = ["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]


class FirstTwo(nn.Module):
    """A known regression model: its two outputs are the first two input features."""

    task = "regression"

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] + self.unused


class Chunks(torch.utils.data.Dataset):
    """Four chunks of two participants; the inputs are the predictions FirstTwo will make."""

    preds = [[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [2.0, 2.0]]
    participants = ["A", "A", "B", "B"]
    table = {"A": [2.0, 1.0], "B": [1.0, 0.0]}
    output_names = ["openness", "neuroticism"]

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor(self.preds[i]), torch.tensor(self.table[Chunks.participants[i]])


class StubEngine:
    """What validate() needs of `action_launch.training.engine.Engine`, with a plain module (no DeepSpeed)."""

    def __init__(self, model: nn.Module):
        self.module, self.device, self.global_step = model, torch.device("cpu"), 5
        self.loss_fn = lambda out, y: F.mse_loss(out.float(), y.float())

    def loss(self, outputs, targets):
        return self.loss_fn(outputs, targets)

    def predict(self, inputs, **model_kwargs):
        with torch.no_grad():
            return self.module.eval()(inputs, **model_kwargs)


def _validating_trainer(tmp_path, dataset, model, overrides=()):
    """A Trainer with only what validate() reads: config, rank, engine, validation loader, tracker."""
    cfg = load_config(
        None, [f"output_dir={tmp_path}", "train.loss=mse", "train.micro_batch_size=3", "data.num_workers=0", *overrides]
    )
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.memory, trainer.val_set = cfg, None, dataset
    trainer.env = types.SimpleNamespace(world_size=1, rank=0, is_main=True)
    trainer.engine = StubEngine(model)
    trainer.val_loader = make_loader(dataset, ShardSampler(len(dataset), 1, 0), 3, cfg.data, 0, drop_last=False)
    trainer.logged = []
    trainer.tracker = types.SimpleNamespace(log_metrics=lambda values, step: trainer.logged.append((step, values)))
    trainer._last_confusion = np.zeros((2, 2))
    return trainer


def test_regression_validation_metrics_by_hand(tmp_path):
    trainer = _validating_trainer(tmp_path, Chunks(), FirstTwo(), ["checkpoint.best_metric=val/participant/mse"])
    metrics = trainer.validate(epoch=0)
    # squared errors per chunk: openness 1, 1, 1, 1; neuroticism 1, 1, 0, 4
    # per participant (means): A predicts (2, 1) = its targets; B predicts (1, 1) against (1, 0)
    expected = {
        "val/mse": 1.25,
        "val/mse/openness": 1.0,
        "val/mse/neuroticism": 1.5,
        "val/participant/mse": 0.25,
        "val/participant/mse/openness": 0.0,
        "val/participant/mse/neuroticism": 0.5,
        "val/loss": 1.25,
    }
    assert metrics == pytest.approx(expected) and set(metrics) == set(expected)
    assert trainer._last_confusion is None  # no confusion matrix for regression
    ((step, logged),) = trainer.logged
    assert step == 5 and logged["val/participant/mse"] == pytest.approx(0.25) and logged["epoch"] == 1
    # the best checkpoint follows the configured metric, smaller is better
    trainer.progress = types.SimpleNamespace(best=None)
    trainer.cfg.checkpoint.best_mode = "min"
    assert trainer._improves_best(metrics) and trainer.progress.best == pytest.approx(0.25)
    assert not trainer._improves_best({**metrics, "val/participant/mse": 0.3})
    assert trainer._improves_best({**metrics, "val/participant/mse": 0.2})


def test_without_participants_or_names_outputs_are_numbered(tmp_path, caplog):
    class Anonymous(Chunks):
        participants = None
        output_names = None

    trainer = _validating_trainer(tmp_path, Anonymous(), FirstTwo())  # default best_metric val/top1
    with caplog.at_level("WARNING", logger="launch.train"):
        metrics = trainer.validate(epoch=0)
        trainer.validate(epoch=1)
    assert set(metrics) == {"val/mse", "val/mse/0", "val/mse/1", "val/loss"}
    warnings = [r.getMessage() for r in caplog.records if "best_metric" in r.getMessage()]
    assert len(warnings) == 1 and "val/top1 is not a validation metric" in warnings[0] and "val/mse" in warnings[0]


def _udiva_tiny(root, rng):
    """UDIVA-style arrays: 4 train participants x 4 chunks, 2 val participants x 4 chunks, SMPL-24, 20 frames."""
    rows = ["participant," + ",".join(TRAITS)]
    for split, people in (("train", ["P1", "P2", "P3", "P4"]), ("val", ["P5", "P6"])):
        names = [f"{p}_chunk{k}" for p in people for k in range(4)]
        t = np.linspace(0, 1, 20)[None, :, None, None]
        data = rng.normal(size=(len(names), 3, 1, 24, 1)) + 0.2 * np.sin(
            6 * t + rng.normal(size=(len(names), 3, 1, 24, 1))
        )
        np.save(root / f"{split}_data.npy", data.astype(np.float32))
        with open(root / f"{split}_label.pkl", "wb") as f:
            pickle.dump((names, [0] * len(names)), f)
        rows += [f"{p}," + ",".join(f"{v:.3f}" for v in rng.normal(size=5)) for p in people]
    (root / "big_five.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_tiny_personality_config_trains_and_keeps_the_lowest_mse(tmp_path):
    (tmp_path / "udiva").mkdir()
    root = _udiva_tiny(tmp_path / "udiva", np.random.default_rng(0))
    path = "configs/msg3d/personality_tiny.yaml"
    args = [
        f"data.root={root}",
        f"output_dir={tmp_path}",
        "train.epochs=3",
        "train.log_every_steps=1",
        "tracking.enabled=false",
    ]
    run_train(["--config", path, "--test-best", *args], env=ONE_THREAD)
    cfg = load_config(REPO / path, args)
    assert (cfg.checkpoint.best_metric, cfg.checkpoint.best_mode) == ("val/participant/mse", "min")
    run_dir = cfg.run_dir()
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    vals = [e for e in events if e["kind"] == "metrics" and "val/mse" in e["values"]]
    assert len(vals) == 3 and [e["step"] for e in vals] == [2, 4, 6]  # 16 chunks / micro batch 8 per epoch
    for e in vals:
        v = e["values"]
        assert {f"val/mse/{t}" for t in TRAITS} | {f"val/participant/mse/{t}" for t in TRAITS} <= set(v)
        assert not any("top1" in k or "f1" in k for k in v)
        assert v["val/mse"] == pytest.approx(np.mean([v[f"val/mse/{t}"] for t in TRAITS]))
        assert v["val/mse"] == pytest.approx(v["val/loss"], rel=1e-5)  # MSE loss = mean over chunks and traits
    best = min(vals, key=lambda e: e["values"]["val/participant/mse"])
    assert ckpt.best_checkpoint(run_dir / "checkpoints").name == ckpt.tag_for(best["step"])
    assert not (run_dir / "confusion_matrix.png").exists()
    # --test-best evaluated that checkpoint per participant: the same numbers as its validation
    test = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert test["step"] == best["step"] and not (run_dir / "test" / "confusion_matrix.json").exists()
    assert test["mse"] == pytest.approx(best["values"]["val/participant/mse"], rel=1e-4)
    assert test["mse/neuroticism"] == pytest.approx(best["values"]["val/participant/mse/neuroticism"], rel=1e-4)
