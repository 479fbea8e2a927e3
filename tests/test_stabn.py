"""ST-ABN (models/stabn.py): paper parameter count, shapes, the two-head loss, a short training run."""

import inspect
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from conftest import count_params, sgd_losses

from action_launch import models
from action_launch.models.stabn import STABN

# Measured on this implementation; the reference reports ~55.7M in all and 54.3M for the backbone.
PAPER_PARAMS = 55_665_928
PAPER_BACKBONE_PARAMS = 54_340_396  # everything but the two classifiers (fc, att_fc)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_preset_parameter_count():
    with torch.device("meta"):
        model = models.create("stabn_r50")
    total = count_params(model)
    backbone = total - count_params(model.fc) - count_params(model.att_fc)
    assert total == PAPER_PARAMS
    assert backbone == PAPER_BACKBONE_PARAMS
    assert abs(total - 55.7e6) / 55.7e6 < 0.02
    assert abs(backbone - 54.3e6) / 54.3e6 < 0.02
    assert model.att_fc.in_features == 174 * 32 and model.fc.in_features == 2048


def test_paper_preset_shapes_on_meta():
    with torch.device("meta"):
        model = models.create("stabn_r50")
        out = model(torch.empty(2, 3, 32, 224, 224))
    assert out["logits"].shape == (2, 174)
    assert out["att_logits"].shape == (2, 174)
    assert out["spatial_att"].shape == (2, 1, 32, 14, 14)
    assert out["temporal_att"].shape == (2, 1, 32, 1, 1)


@pytest.mark.parametrize("frames,size", [(4, (64, 64)), (6, (48, 80))])
def test_tiny_forward_any_clip_length_and_size(frames, size):
    torch.manual_seed(0)
    model = models.create("stabn_r50_tiny", num_frames=frames).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, frames, *size))
    h, w = size[0] // 16, size[1] // 16
    assert out["logits"].shape == (2, 4) and out["att_logits"].shape == (2, 4)
    assert out["spatial_att"].shape == (2, 1, frames, h, w)
    assert out["temporal_att"].shape == (2, 1, frames, 1, 1)
    for key in ("spatial_att", "temporal_att"):
        assert out[key].min() >= 0.0 and out[key].max() <= 1.0
    assert all(torch.isfinite(v).all() for v in out.values())


def test_class_count_is_an_argument():
    model = models.create("stabn_r50_tiny", num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 64, 64))
    assert out["logits"].shape == (1, 7) and out["att_logits"].shape == (1, 7)


def test_wrong_clip_length_is_a_clear_error():
    model = models.create("stabn_r50_tiny")
    with pytest.raises(ValueError, match="num_frames=4"):
        model(torch.randn(1, 3, 5, 64, 64))


def test_compute_loss_is_the_sum_of_both_cross_entropies():
    torch.manual_seed(0)
    model = models.create("stabn_r50_tiny").eval()
    target = torch.tensor([0, 3])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 4, 64, 64))
    by_hand = F.cross_entropy(out["logits"], target) + F.cross_entropy(out["att_logits"], target)
    torch.testing.assert_close(model.compute_loss(out, target), by_hand)


def test_tiny_preset_trains():
    torch.manual_seed(0)
    model = models.create("stabn_r50_tiny", dropout=0.0)
    x, y = torch.randn(4, 3, 4, 64, 64), torch.tensor([0, 1, 2, 3])
    losses = sgd_losses(model, x, y, model.compute_loss)
    assert losses[-1] < losses[0], losses


def test_constructor_arguments_have_plain_type_hints():
    allowed = (int, float, str, bool, Tuple[int, ...])
    for name, p in inspect.signature(STABN.__init__).parameters.items():
        if name != "self":
            assert p.annotation in allowed, (name, p.annotation)


def _imagenet_resnet_like(model: STABN) -> dict:
    """Random tensors under torchvision's 2D ResNet names and shapes for `model`'s backbone and layer4
    (the 3D names minus the stem prefix; a 5-D kernel's 2D counterpart is (O, I, kh, kw)), plus an fc."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if not key.startswith(("stem.", "layer1.", "layer2.", "layer3.", "layer4.")):
            continue
        name = key.removeprefix("stem.")
        shape = value.shape[:2] + value.shape[3:] if value.ndim == 5 else value.shape
        state[name] = value.clone() if value.dtype == torch.long else torch.randn(shape, generator=g)
    state["fc.weight"], state["fc.bias"] = (
        torch.randn(1000, model.fc.in_features, generator=g),
        torch.randn(1000, generator=g),
    )
    return state


def test_imagenet_resnet_leaves_the_attention_branch_at_its_initialisation():
    # Reference (ResNet_SlowFast.init_weights): a 2D ResNet tensor goes only to the module of the same
    # name; a 2D ResNet has no att_layer4, so the attention branch keeps its initialisation.
    torch.manual_seed(0)
    model = models.create("stabn_r50_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _imagenet_resnet_like(model)
    report = model.load_imagenet_resnet(state)
    after = model.state_dict()
    att = [k for k in before if k.startswith("att_layer4.")]
    assert att and set(att) <= set(report["missing"])
    # its convolutions hold PyTorch's default init (uniform within 1/sqrt(fan_in)), not the from-scratch Kaiming
    # normal (fan-out) they had: nothing of the 2D file, and the reference's pretrained path initialises no further
    convs = {n: m for n, m in model.named_modules() if n.startswith("att_layer4.") and isinstance(m, torch.nn.Conv3d)}
    assert convs
    for name, conv in convs.items():
        assert not torch.equal(conv.weight, before[f"{name}.weight"])
        assert conv.weight.abs().max() <= 1 / conv.weight[0].numel() ** 0.5
    # its BatchNorms are as the reference leaves them (weight 1, bias 0: also PyTorch's default)
    assert all(torch.equal(after[k], before[k]) for k in att if ".bn" in k or "downsample.1" in k)
    assert not any(k.startswith("att_") for k in report["inflated"])
    torch.testing.assert_close(after["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"][:, :, None])
    torch.testing.assert_close(after["stem.conv1.weight"], state["conv1.weight"][:, :, None])
    assert report["unexpected"] == [] and report["mismatched"] == ["fc.weight", "fc.bias"]
