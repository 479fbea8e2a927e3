"""Every registered model preset, found through the registry (timm's tests/test_models.py idea): a preset
registered tomorrow is tested without a new test.

Paper-size presets are built and run on the meta device (shapes only: TimeSformer-B is 121M parameters and
392 GFLOPs a clip, far too slow for a real pass on a 2-core CPU); tiny presets (`*_tiny`) run a real forward
and backward. The input shape is the registry's `input_shape`, the one `bench/models.py` uses.
"""

from typing import Dict

import pytest
import torch
from conftest import count_params

from action_launch import models
from action_launch.models._registry import input_shape

PRESETS = models.list_presets()
TINY = [name for name in PRESETS if name.endswith("_tiny")]
BATCH = 2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _outputs(out) -> Dict[str, torch.Tensor]:
    """A model's outputs by name: a plain tensor is its logits; dicts (ST-ABN, HIINT) name theirs."""
    return out if isinstance(out, dict) else {"logits": out}


def _loss(outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """A scalar that depends on every differentiable output (attention heads included)."""
    return sum(v.float().square().mean() for v in outputs.values() if v.requires_grad)


def test_tiny_and_paper_presets_are_registered():
    assert TINY and set(PRESETS) - set(TINY)


@pytest.mark.parametrize("name", PRESETS)
def test_builds_and_runs_forward_backward_on_meta(name):
    """Construction, the documented parameter count, and output shapes of forward and backward, on meta."""
    preset = models.get_preset(name)
    with torch.device("meta"):
        model = models.create(name).train()
        x = torch.empty(BATCH, *input_shape(model, name))
    assert isinstance(model, preset.cls)
    if preset.num_params is not None:
        assert count_params(model) == preset.num_params
    outputs = _outputs(model(x))
    assert outputs["logits"].shape == (BATCH, model.num_classes)
    _loss(outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is None or p.grad.shape == p.shape, pname


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward(name):
    """A real training pass: finite logits of shape (batch, classes), a finite gradient for every parameter."""
    model = models.create(name).train()
    x = torch.randn(BATCH, *input_shape(model, name))
    outputs = _outputs(model(x))
    logits = outputs["logits"]
    assert logits.shape == (BATCH, model.num_classes) and torch.isfinite(logits).all()
    _loss(outputs).backward()
    missing = [pname for pname, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", TINY)
def test_tiny_eval_forward_is_deterministic(name):
    model = models.create(name).eval()
    x = torch.randn(BATCH, *input_shape(model, name))
    with torch.no_grad():
        torch.testing.assert_close(_outputs(model(x))["logits"], _outputs(model(x))["logits"])


@pytest.mark.parametrize("name", PRESETS)
def test_the_class_count_has_one_name_num_classes(name):
    """Every model takes its class count as `num_classes` (configs set it the same way for all) and reports it."""
    preset = models.get_preset(name)
    params = preset.parameters()
    assert "num_classes" in params and "num_class" not in params and "num_class" not in preset.kwargs
    with torch.device("meta"):
        model = models.create(name, num_classes=3)
    assert model.num_classes == 3
