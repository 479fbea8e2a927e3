"""Image checkpoints for --load-from: ImageNet ResNet-50 (2D, torchvision layout) -> ST-ABN (I3D
inflation) and TSM (copy); an image ViT -> TimeSformer (spatial attention copied to temporal)."""

from __future__ import annotations

from typing import Dict, Sequence

import pytest
import torch
import torch.nn.functional as F

from action_launch import models
from action_launch.models.resnet3d import inflate_conv_weight, is_resnet2d_state_dict
from action_launch.training.engine import load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

R50_PARAMS = 25_557_032  # torchvision resnet50(): the published count of its parameters


def torchvision_resnet_state(
    layers: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    num_classes: int = 1000,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of torchvision's 2D ResNet (bottleneck, x4 expansion),
    written from the architecture: conv1 7x7 -> bn1 -> layer1-4 (conv1 1x1, conv2 3x3 with the stride,
    conv3 1x1, each with its BN; downsample.0/1 on a stage's first block) -> fc."""
    g = torch.Generator().manual_seed(seed)
    state: Dict[str, torch.Tensor] = {}

    def conv(name: str, out_c: int, in_c: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=g)

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", widths[0], 3, 7)
    bn("bn1", widths[0])
    in_c = widths[0]
    for i, (planes, blocks) in enumerate(zip(widths, layers), start=1):
        for j in range(blocks):
            p = f"layer{i}.{j}"
            conv(f"{p}.conv1", planes, in_c, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                conv(f"{p}.downsample.0", planes * 4, in_c, 1)
                bn(f"{p}.downsample.1", planes * 4)
            in_c = planes * 4
    state["fc.weight"] = torch.randn(num_classes, in_c, generator=g)
    state["fc.bias"] = torch.randn(num_classes, generator=g)
    return state


@pytest.fixture(scope="module")
def r50_state() -> Dict[str, torch.Tensor]:
    return torchvision_resnet_state()


@pytest.fixture(scope="module")
def stabn_r50_loaded(r50_state):
    """stabn_r50 (55.7M parameters, built once for the module) after inflating the fake ResNet-50."""
    torch.manual_seed(0)
    model = models.create("stabn_r50")
    return model, model.load_imagenet_resnet(r50_state)


def test_the_fake_state_dict_has_torchvision_resnet50s_parameter_count(r50_state):
    state = r50_state
    params = sum(
        v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == R50_PARAMS
    assert len(state) == 320  # torchvision resnet50().state_dict() has 320 entries
    assert is_resnet2d_state_dict(state)
    assert not is_resnet2d_state_dict(models.create("stabn_r50_tiny").state_dict())


def test_inflated_conv_on_a_temporally_constant_clip_equals_the_2d_conv():
    w2d = torch.randn(6, 4, 3, 3)
    frame = torch.randn(2, 4, 9, 9)
    for kt in (1, 3, 5):
        w3d = inflate_conv_weight(w2d, kt)
        assert w3d.shape == (6, 4, kt, 3, 3)
        clip = frame[:, :, None].expand(-1, -1, 7, -1, -1)
        out3d = F.conv3d(clip, w3d, padding=(kt // 2, 1, 1))
        out2d = F.conv2d(frame, w2d, padding=1)
        interior = slice(kt // 2, 7 - kt // 2)  # frames whose temporal window lies inside the clip
        torch.testing.assert_close(out3d[:, :, interior], out2d[:, :, None].expand_as(out3d[:, :, interior]))


def test_stabn_r50_inflates_imagenet_resnet50(r50_state, stabn_r50_loaded):
    state, (model, report) = r50_state, stabn_r50_loaded
    own = model.state_dict()

    torch.testing.assert_close(own["stem.conv1.weight"], state["conv1.weight"][:, :, None])  # 1x7x7 stem
    torch.testing.assert_close(own["stem.bn1.running_var"], state["bn1.running_var"])
    torch.testing.assert_close(own["layer1.0.conv2.weight"], state["layer1.0.conv2.weight"][:, :, None])
    torch.testing.assert_close(
        own["layer2.0.downsample.0.weight"], state["layer2.0.downsample.0.weight"][:, :, None, :, :]
    )
    # layers 3-4: the first bottleneck conv is 3x1x1, each temporal slice a third of the 2D kernel
    w = own["layer3.5.conv1.weight"]
    assert w.shape == (256, 1024, 3, 1, 1)
    for t in range(3):
        torch.testing.assert_close(w[:, :, t], state["layer3.5.conv1.weight"] / 3)
    # layer4 initialises the perception branch only; the attention branch's att_layer4 keeps its
    # initialisation (the reference copies a 2D tensor only into the module of the same name)
    torch.testing.assert_close(own["layer4.2.conv1.weight"], inflate_conv_weight(state["layer4.2.conv1.weight"], 3))
    torch.testing.assert_close(own["layer4.0.bn3.bias"], state["layer4.0.bn3.bias"])
    assert not torch.equal(own["att_layer4.0.bn3.bias"], state["layer4.0.bn3.bias"])
    assert "layer3.5.conv1.weight" in report["inflated"] and "layer4.0.conv1.weight" in report["inflated"]
    assert not any(k.startswith("att_layer4.") for k in report["inflated"])
    assert report["mismatched"] == ["fc.weight", "fc.bias"]  # 1000 ImageNet classes vs 174
    assert report["unexpected"] == []
    # what the file cannot provide: the heads and the attention branch, its layer4 copy included
    assert {k.split(".")[0] for k in report["missing"]} == {
        "att_layer4",
        "att_bn",
        "att_conv",
        "att_bn2",
        "sa_conv",
        "sa_bn",
        "ta_conv",
        "ta_bn",
        "ta_frame_conv",
        "ta_fc1",
        "ta_fc2",
        "att_logit_conv",
        "att_fc",
        "fuse_conv",
        "fuse_bn",
        "fc",
    }


def test_stabn_inflated_layer3_conv_acts_as_the_2d_conv_on_a_still_clip(r50_state, stabn_r50_loaded):
    state, (model, _) = r50_state, stabn_r50_loaded
    conv = model.layer3[1].conv1  # 3x1x1, temporal padding 1
    frame = torch.randn(1, 1024, 5, 5)
    clip = frame[:, :, None].expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        out3d = conv(clip)
    out2d = F.conv2d(frame, state["layer3.1.conv1.weight"])
    torch.testing.assert_close(out3d[:, :, 1:3], out2d[:, :, None].expand(-1, -1, 2, -1, -1), rtol=1e-4, atol=1e-4)


def test_tsm_r50_copies_imagenet_resnet50(r50_state):
    state = r50_state
    model = models.create("tsm_r50")
    report = model.load_imagenet_resnet(state)
    own = model.state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer3.5.conv2.weight",
        "layer4.2.bn3.weight",
    ):
        torch.testing.assert_close(own[key], state[key])
    assert report["mismatched"] == ["fc.weight", "fc.bias"] and report["unexpected"] == []
    assert report["missing"] == ["fc.weight", "fc.bias"] and report["inflated"] == []


def test_load_from_dispatches_a_torchvision_file_and_leaves_dyreg_at_identity(tmp_path):
    tiny = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    state = torchvision_resnet_state(**tiny)
    torch.save(state, tmp_path / "resnet.pth")
    stabn = models.create("stabn_r50_tiny")
    report = load_weights(stabn, tmp_path / "resnet.pth")
    assert report["mismatched"] == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(
        stabn.state_dict()["layer4.0.conv1.weight"], inflate_conv_weight(state["layer4.0.conv1.weight"], 3)
    )

    tsm = models.create("tsm_r50_dyreg_tiny")
    dyreg_before = {k: v.clone() for k, v in tsm.state_dict().items() if ".dyreg." in k}
    report = load_weights(tsm, tmp_path / "resnet.pth")
    torch.testing.assert_close(tsm.state_dict()["layer2.0.conv2.weight"], state["layer2.0.conv2.weight"])
    assert set(report["missing"]) == set(dyreg_before) | {"fc.weight", "fc.bias"}
    for key, value in dyreg_before.items():
        torch.testing.assert_close(tsm.state_dict()[key], value)


def test_load_from_dispatches_an_image_vit_to_timesformer(tmp_path):
    # an image ViT with timm names: a space-only (per-frame) TimeSformer of 10 classes has exactly those
    vit = models.create("timesformer_tiny", attention="space_only", num_classes=10).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in vit.items()}}, tmp_path / "vit.pth")
    model = models.create("timesformer_tiny")
    report = load_weights(model, tmp_path / "vit.pth")
    own = model.state_dict()
    torch.testing.assert_close(own["blocks.1.temporal_attn.qkv.weight"], vit["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(own["blocks.0.temporal_norm1.bias"], vit["blocks.0.norm1.bias"])
    assert sorted(report["mismatched"]) == ["head.bias", "head.weight"] and report["unexpected"] == []
    assert "time_embed" in report["missing"] and "blocks.0.temporal_fc.weight" in report["missing"]
    # a TimeSformer checkpoint (with temporal attention) still loads by name
    torch.save(model.state_dict(), tmp_path / "tsf.pth")
    assert load_weights(models.create("timesformer_tiny"), tmp_path / "tsf.pth") == {
        "missing": [],
        "unexpected": [],
        "mismatched": [],
    }
