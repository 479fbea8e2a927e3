"""Evaluation runs the model as training ran it (issue 24, item 4): `launch/test.py` under `train.precision`'s
autocast, channels-last where training is; the predictions equal fp32's within the precision's tolerance."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from conftest import REPO
from torch import nn

from action_launch import models
from action_launch.config import load_config
from action_launch.evaluation import evaluate as ev
from action_launch.training.engine import evaluation_forward
from action_launch.training.losses import logits_of


def _seen_by_forward(model: nn.Module) -> List[Tuple[bool, torch.dtype]]:
    """(autocast on, logits dtype) of each forward of `model`, recorded by a hook."""
    seen: List[Tuple[bool, torch.dtype]] = []

    def hook(module: nn.Module, inputs, outputs) -> None:
        seen.append((torch.is_autocast_enabled("cpu"), logits_of(outputs).dtype))

    model.register_forward_hook(hook)
    return seen


def test_a_bf16_run_is_evaluated_in_bf16_and_agrees_with_fp32(video_set):
    """test.py evaluated the bare model in fp32 whatever the run trained in; now it runs under the run's autocast,
    says so (`test.precision`), and its scores are fp32's within bf16's tolerance."""
    overrides = [f"data.root={video_set}", "data.num_workers=0", "data.test_num_clips=1", "test.split=val"]
    scores = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(REPO / "configs" / "timesformer" / "tiny.yaml", [*overrides, f"train.precision={precision}"])
        torch.manual_seed(0)
        model = models.build(cfg.model)
        seen = _seen_by_forward(model)
        pred = ev.evaluate_model(cfg, model, cfg.test)
        expected = (True, torch.bfloat16) if precision == "bf16" else (False, torch.float32)
        assert seen and set(seen) == {expected}, (precision, set(seen))
        assert pred.params["test.precision"] == precision
        scores[precision] = pred.scores
    assert scores["bf16"].dtype == np.float32 and scores["bf16"].shape == scores["fp32"].shape == (16, 4)
    assert not np.array_equal(scores["bf16"], scores["fp32"])  # autocast did change the arithmetic
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], atol=2e-2, rtol=0)  # probabilities, bf16's 8 bits


def test_evaluation_takes_channels_last_from_training():
    """`train.channels_last` lays the convolutions out as training does; the outputs stay those of the model."""
    cfg = load_config(REPO / "configs" / "tsm" / "tiny.yaml", ["train.channels_last=true", "train.precision=bf16"])
    torch.manual_seed(0)
    model = models.build(cfg.model).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        reference = model(x)
        forward = evaluation_forward(model, cfg.train, torch.device("cpu"))
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        out = forward(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
