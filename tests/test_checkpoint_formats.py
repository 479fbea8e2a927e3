"""Published checkpoints through `--load-from` (models/checkpoints.py, each model file's `Format`s): every
upstream layout maps.

Each upstream layout is built here as the upstream code builds it: small stand-ins of the upstream
module trees (names and shapes read from facebookresearch/TimeSformer timesformer/models/vit.py,
mit-han-lab/temporal-shift-module ops/models.py + ops/temporal_shift.py, bit-ml/DyReg-GNN ops/dyreg.py +
ops/rstg.py + ops/models_utils.py, kenziyuliu/MS-G3D model/*.py, ST-ABN_PyTorch
mmaction/models/tenons/backbones/resnet_slow.py + necks/att_cls_head.py, open-mmlab/mmaction2
ResNet/ResNetTSM), not from models/checkpoints.py. Their tensors are random; the files are saved in
the upstream containers. Checked: every tensor of the file maps and every model tensor is loaded,
shapes agree, representative upstream names land where the upstream code uses them, and outputs
equal the upstream forward (written here from the upstream code) on the same input; a foreign,
truncated or partial file fails with the report.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from action_launch import models
from action_launch.models import _formats
from action_launch.models.checkpoints import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    mapped_formats,
    read_checkpoint,
)
from action_launch.models.graphs import get_graph, multiscale_adjacency
from action_launch.training.engine import load_weights


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every float tensor random (BatchNorm variances positive); upstream-style checkpoints are trained ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_((torch.rand(t.shape, generator=gen) - 0.5) * 0.4)
    return module.eval()


def check_complete(report: LoadReport, state: dict, model: nn.Module) -> None:
    """Every file tensor mapped (or deliberately ignored), every model tensor loaded from it, values equal."""
    assert report.complete, report.text()
    assert not report.missing and not report.unexpected and not report.skipped and not report.new, report.text()
    own = model.state_dict()
    assert set(report.loaded) == set(own)
    assert set(report.loaded.values()) | set(report.ignored) == set(state)
    for name, source in report.loaded.items():
        value = state[source]
        assert value.numel() == own[name].numel(), name
        if name in report.resized:
            continue
        torch.testing.assert_close(own[name], value.reshape(own[name].shape).to(own[name].dtype), rtol=0, atol=0)


def check_pairs(report: LoadReport, pairs: dict, shapes: dict = None) -> None:
    """Representative upstream names (read from the upstream code) land in these model tensors."""
    inverse = {src: dst for dst, src in report.loaded.items()}
    for src, dst in pairs.items():
        assert inverse.get(src) == dst, f"{src}: mapped to {inverse.get(src)}, expected {dst}"


# --------------------------------------------------------------------------------------------
# TimeSformer (facebookresearch/TimeSformer, timesformer/models/vit.py)


class UpAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class UpMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class UpBlock(nn.Module):
    def __init__(self, dim, heads, attention_type):
        super().__init__()
        self.attention_type = attention_type
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = UpAttention(dim, heads)
        if attention_type == "divided_space_time":
            self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.temporal_attn = UpAttention(dim, heads)
            self.temporal_fc = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = UpMlp(dim, dim * 4)

    def forward(self, x, B, T, W):
        if self.attention_type != "divided_space_time":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        HW = (x.size(1) - 1) // T
        D = x.shape[-1]
        # 'b (h w t) m -> (b h w) t m'
        xt = x[:, 1:, :].reshape(B * HW, T, D)
        res_temporal = self.temporal_attn(self.temporal_norm1(xt)).reshape(B, HW * T, D)
        xt = x[:, 1:, :] + self.temporal_fc(res_temporal)
        init_cls_token = x[:, 0, :].unsqueeze(1)
        cls_token = init_cls_token.repeat(1, T, 1).reshape(B * T, D).unsqueeze(1)
        # 'b (h w t) m -> (b t) (h w) m'
        xs = xt.reshape(B, HW, T, D).permute(0, 2, 1, 3).reshape(B * T, HW, D)
        res_spatial = self.attn(self.norm1(torch.cat((cls_token, xs), 1)))
        cls_token = res_spatial[:, 0, :].reshape(B, T, D).mean(1, True)
        res = res_spatial[:, 1:, :].reshape(B, T, HW, D).permute(0, 2, 1, 3).reshape(B, HW * T, D)
        x = torch.cat((init_cls_token, xt), 1) + torch.cat((cls_token, res), 1)
        return x + self.mlp(self.norm2(x))


class UpPatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class UpVisionTransformer(nn.Module):
    def __init__(self, img_size, patch_size, num_classes, embed_dim, depth, num_heads, num_frames, attention_type):
        super().__init__()
        self.attention_type = attention_type
        self.patch_embed = UpPatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.blocks = nn.ModuleList(UpBlock(embed_dim, num_heads, attention_type) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        B, C, T, H, W = x.shape
        x = self.patch_embed.proj(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))
        W = x.size(-1)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.size(0), -1, -1), x), dim=1)
        if x.size(1) != self.pos_embed.size(1):
            other = self.pos_embed[0, 1:, :].unsqueeze(0).transpose(1, 2)
            P = int(other.size(2) ** 0.5)
            other = F.interpolate(other.reshape(1, x.size(2), P, P), size=(x.size(1) // W, W), mode="nearest")
            x = x + torch.cat((self.pos_embed[0, 0, :].unsqueeze(0).unsqueeze(1), other.flatten(2).transpose(1, 2)), 1)
        else:
            x = x + self.pos_embed
        if self.attention_type != "space_only":
            cls_tokens = x[:B, 0, :].unsqueeze(1)
            x = x[:, 1:]
            n, D = x.shape[1], x.shape[2]
            x = x.reshape(B, T, n, D).permute(0, 2, 1, 3).reshape(B * n, T, D)  # '(b t) n m -> (b n) t m'
            if self.time_embed.size(1) != T:
                x = x + F.interpolate(self.time_embed.transpose(1, 2), size=T, mode="nearest").transpose(1, 2)
            else:
                x = x + self.time_embed
            x = torch.cat((cls_tokens, x.reshape(B, n * T, D)), dim=1)  # '(b n) t m -> b (n t) m'
        for blk in self.blocks:
            x = blk(x, B, T, W)
        if self.attention_type == "space_only":
            x = x.reshape(B, T, x.shape[1], x.shape[2]).mean(1)
        return self.head(self.norm(x)[:, 0])


class UpTimeSformer(nn.Module):
    """`TimeSformer` / `vit_base_patch16_224` of vit.py: the ViT as `self.model`."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = UpVisionTransformer(**kwargs)

    def forward(self, x):
        return self.model(x)


TINY_TSF = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def up_timesformer(frames=4, classes=4, attention="divided_space_time", seed=0, img_size=32):
    kwargs = {**TINY_TSF, "img_size": img_size}
    return randomize(UpTimeSformer(num_classes=classes, num_frames=frames, attention_type=attention, **kwargs), seed)


def tsf(frames=4, classes=4, attention="divided_space_time", img_size=32):
    return models.create(
        "timesformer_tiny", num_frames=frames, num_classes=classes, attention=attention, img_size=img_size
    ).eval()


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time", "space_only"])
def test_timesformer_pyslowfast_pyth_loads_exactly_and_computes_the_upstream_logits(tmp_path, attention):
    up = up_timesformer(attention=attention)
    state = up.state_dict()
    # timesformer/utils/checkpoint.py save_checkpoint: {"epoch", "model_state", "optimizer_state", "cfg"}
    torch.save(
        {"epoch": 15, "model_state": state, "optimizer_state": {}, "cfg": "MODEL:\n  ARCH: vit\n"},
        tmp_path / "TimeSformer_divST_8x32_224_K400.pyth",
    )
    model = tsf(attention=attention)
    report = load_weights(model, tmp_path / "TimeSformer_divST_8x32_224_K400.pyth")
    check_complete(report, state, model)
    pairs = {
        "model.patch_embed.proj.weight": "patch_embed.proj.weight",
        "model.pos_embed": "pos_embed",
        "model.blocks.1.mlp.fc2.bias": "blocks.1.mlp.fc2.bias",
        "model.head.weight": "head.weight",
    }
    if attention != "space_only":
        pairs["model.time_embed"] = "time_embed"
    if attention == "divided_space_time":
        pairs["model.blocks.0.temporal_attn.qkv.weight"] = "blocks.0.temporal_attn.qkv.weight"
        pairs["model.blocks.1.temporal_fc.weight"] = "blocks.1.temporal_fc.weight"
    check_pairs(report, pairs)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), up(x), rtol=1e-5, atol=1e-5)


def test_timesformer_ddp_state_dict_loads(tmp_path):
    up = up_timesformer(seed=1)
    state = {f"module.{k}": v for k, v in up.state_dict().items()}  # DDP around the registered model
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ddp.pth")
    model = tsf()
    report = load_weights(model, tmp_path / "ddp.pth")
    assert report.format == "timesformer" and report.complete, report.text()
    assert len(report.loaded) == len(state) == len(model.state_dict())
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), up(x), rtol=1e-5, atol=1e-5)


def test_timesformer_4_frames_into_8_resizes_time_embed_as_upstream(tmp_path):
    up = up_timesformer(frames=4, seed=2)
    torch.save({"model_state": up.state_dict()}, tmp_path / "t4.pyth")
    model = tsf(frames=8)
    report = load_weights(model, tmp_path / "t4.pyth")
    assert list(report.resized) == ["time_embed"] and report.complete, report.text()
    src = up.model.time_embed.detach()
    # load_pretrained: F.interpolate(time_embed, size=8, mode='nearest') -> frames 0 0 1 1 2 2 3 3
    torch.testing.assert_close(model.time_embed.detach(), src[:, [0, 0, 1, 1, 2, 2, 3, 3]], rtol=0, atol=0)
    # the upstream model resizes its 4-frame embedding the same way when it meets 8 frames
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), up(x), rtol=1e-5, atol=1e-5)


def test_timesformer_another_patch_grid_resizes_pos_embed_as_load_pretrained(tmp_path):
    up = up_timesformer(seed=3, img_size=32)  # 4 x 4 = 16 patches
    torch.save({"model_state": up.state_dict()}, tmp_path / "g4.pyth")
    model = tsf(img_size=48)  # 6 x 6 = 36 patches
    report = load_weights(model, tmp_path / "g4.pyth")
    assert set(report.resized) == {"pos_embed"} and report.complete
    src = up.model.pos_embed.detach()
    index = [math.floor(i * 16 / 36) for i in range(36)]  # nearest over the 1-D patch sequence, CLS kept
    expected = torch.cat([src[:, :1], src[:, 1:][:, index]], 1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# TSM (mit-han-lab/temporal-shift-module): TSN(base_model=torchvision ResNet + TemporalShift, new_fc)


class UpTemporalShift(nn.Module):
    def __init__(self, net, n_segment, n_div=8):
        super().__init__()
        self.net, self.n_segment, self.fold_div = net, n_segment, n_div

    def forward(self, x):
        nt, c, h, w = x.size()
        x = x.view(nt // self.n_segment, self.n_segment, c, h, w)
        fold = c // self.fold_div
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
        out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # shift right
        out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
        return self.net(out.view(nt, c, h, w))


class UpBottleneck(nn.Module):
    """torchvision's Bottleneck (stride on conv2)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class UpResNet(nn.Module):
    """torchvision ResNet of `widths` (the tiny presets' widths; the layout of resnet50)."""

    def __init__(self, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            stage = [UpBottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            stage += [UpBottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class UpTSN(nn.Module):
    """ops/models.py TSN(is_shift=True, shift_place='blockres', dropout>0, consensus 'avg')."""

    def __init__(self, num_class=4, num_segments=4, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1), shift_div=8):
        super().__init__()
        self.num_segments = num_segments
        self.base_model = UpResNet(widths, layers)
        for i in range(1, 5):  # make_temporal_shift, 'blockres', n_round 1: every block's conv1
            for block in getattr(self.base_model, f"layer{i}"):
                block.conv1 = UpTemporalShift(block.conv1, num_segments, shift_div)
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=0.5)  # _prepare_tsn with dropout
        self.new_fc = nn.Linear(feature_dim, num_class)

    def forward(self, input):
        base_out = self.new_fc(self.base_model(input.view((-1, 3) + input.size()[-2:])))
        return base_out.view((-1, self.num_segments) + base_out.size()[1:]).mean(dim=1)


def save_tsm(path, net):
    """main.py save_checkpoint of the DataParallel model."""
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"epoch": 50, "arch": "resnet50", "state_dict": state, "optimizer": {}, "best_prec1": torch.tensor(61.2)}, path
    )
    return state


def to_tsn_input(x):
    n, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(n, t * c, h, w)


def test_tsm_pth_tar_loads_exactly_and_computes_the_upstream_logits(tmp_path):
    up = randomize(UpTSN(), seed=4)
    state = save_tsm(tmp_path / "TSM_something_RGB_resnet50_shift8_blockres_avg_segment4_e45.pth.tar", up)
    model = models.create("tsm_r50_tiny").eval()
    report = load_weights(model, tmp_path / "TSM_something_RGB_resnet50_shift8_blockres_avg_segment4_e45.pth.tar")
    assert report.format == "tsm"
    check_complete(report, state, model)
    check_pairs(
        report,
        {
            "module.base_model.conv1.weight": "conv1.weight",
            "module.base_model.layer1.0.conv1.net.weight": "layer1.0.conv1.weight",
            "module.base_model.layer3.0.downsample.1.running_var": "layer3.0.downsample.1.running_var",
            "module.new_fc.weight": "fc.weight",
        },
    )
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), up(to_tsn_input(x)), rtol=1e-5, atol=1e-6)


def test_tsm_new_class_count_skips_the_head_only(tmp_path):
    up = randomize(UpTSN(num_class=174), seed=5)
    save_tsm(tmp_path / "sthv2.pth.tar", up)
    model = models.create("tsm_r50_tiny", num_classes=4).eval()
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    report = load_weights(model, tmp_path / "sthv2.pth.tar")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and report.complete
    assert report["mismatched"] == list(report.skipped) and not report.problems()
    for k, v in head.items():
        torch.testing.assert_close(model.state_dict()[k], v)  # the new head keeps its initialisation
    torch.testing.assert_close(model.layer2[0].conv2.weight, up.base_model.layer2[0].conv2.weight)
    assert "fc (head)" in report.groups() and report.groups()["fc (head)"]["skipped"] == 2


def test_tsm_file_into_a_dyreg_model_leaves_the_graphs_as_new_identities(tmp_path):
    up = randomize(UpTSN(), seed=6)
    save_tsm(tmp_path / "tsm.pth.tar", up)
    model = models.create("tsm_r50_dyreg_tiny").eval()
    report = load_weights(model, tmp_path / "tsm.pth.tar")
    assert report.complete and report.new and all(".dyreg." in k for k in report.new)
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():  # the graphs start as the identity: the TSM network's logits
        torch.testing.assert_close(model(x), up(to_tsn_input(x)), rtol=1e-5, atol=1e-6)


class UpConvModule(nn.Module):
    """mmcv ConvModule: conv + bn (+ activation)."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)


def test_mmaction2_tsm_layout(tmp_path):
    # mmaction2 ResNetTSM: ConvModules (conv1.conv, conv1.bn, downsample.conv/bn), blockres shift on conv1.conv
    model = models.create("tsm_r50_tiny").eval()
    backbone = nn.Module()
    backbone.conv1 = UpConvModule(3, 8, 7, 2, 3)
    inplanes = 8
    for i, planes in enumerate((8, 16, 32, 64)):
        block = nn.Module()
        block.conv1 = UpConvModule(inplanes, planes, 1)
        block.conv1.conv = UpTemporalShift(block.conv1.conv, 4)
        block.conv2 = UpConvModule(planes, planes, 3, 1 if i == 0 else 2, 1)
        block.conv3 = UpConvModule(planes, planes * 4, 1)
        block.downsample = UpConvModule(inplanes, planes * 4, 1)
        inplanes = planes * 4
        setattr(backbone, f"layer{i + 1}", nn.Sequential(block))
    recognizer = nn.Module()
    recognizer.backbone = backbone
    recognizer.cls_head = nn.Module()
    recognizer.cls_head.fc_cls = nn.Linear(256, 4)
    state = randomize(recognizer, seed=7).state_dict()
    torch.save({"meta": {"mmaction2_version": "1.2.0"}, "state_dict": state}, tmp_path / "tsm_mm2.pth")
    report = load_weights(model, tmp_path / "tsm_mm2.pth")
    assert report.format == "mmaction2_resnet"
    check_complete(report, state, model)
    check_pairs(
        report,
        {
            "backbone.conv1.conv.weight": "conv1.weight",
            "backbone.conv1.bn.running_mean": "bn1.running_mean",
            "backbone.layer2.0.conv1.conv.net.weight": "layer2.0.conv1.weight",
            "backbone.layer2.0.conv3.bn.bias": "layer2.0.bn3.bias",
            "backbone.layer4.0.downsample.conv.weight": "layer4.0.downsample.0.weight",
            "cls_head.fc_cls.bias": "fc.bias",
        },
    )


# --------------------------------------------------------------------------------------------
# DyReg-GNN (bit-ml/DyReg-GNN ops/dyreg.py, ops/rstg.py, ops/models_utils.py), train_model.sh settings:
# GRU, send_layers 1, update_layers 0, combine_by_sum, dot attention, offset_generator 'big', center
# anchors, --bottleneck_graph (conv2 = Sequential(SplitBT(conv2), DynamicGraphWrapper)).


class UpLN2D(nn.Module):
    """LayerNormAffine2D: scale/bias (1, C, 1, 1) and a LayerNorm without affine."""

    def __init__(self, c, shape, zero_init=False):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, c, 1, 1), 0.0 if zero_init else 1.0))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.norm = nn.LayerNorm(shape, elementwise_affine=False)


class UpLNXC(nn.Module):
    """LayerNormAffineXC: scale/bias (C,)."""

    def __init__(self, c, shape):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.norm = nn.LayerNorm(shape, elementwise_affine=False)


# get_fishnet_params: input side -> norm_size (the last one sizes the global conv)
FISHNET_NORM = {28: [13, 6, 6], 14: [6, 6, 6], 7: [5, 5, 5]}


class UpFishnet(nn.Module):
    def __init__(self, input_height, input_channels):
        super().__init__()
        ch, ch_tr, norm = [32, 16, 16], [32, 32, 16], FISHNET_NORM[input_height]
        self.norm_size = norm
        self.norm_dict = nn.ModuleDict()
        self.conv1 = nn.Conv2d(input_channels, ch[0], [1, 1])
        self.norm_dict["norm1"] = UpLN2D(ch[0], (ch[0], input_height, input_height))
        self.tail_conv, self.body_trans_conv, self.head_conv = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(2):
            self.tail_conv.append(nn.Conv2d(ch[max(0, i - 1)], ch[i], [3, 3]))
            self.norm_dict[f"tail_norm_{i}"] = UpLN2D(ch[i], (ch[i], norm[i], norm[i]))
        for ind, i in enumerate(range(1, 0, -1)):
            self.body_trans_conv.append(nn.ConvTranspose2d(ch_tr[i + 1], ch_tr[i], [3, 3]))
            self.norm_dict[f"body_trans_norm_{ind}"] = UpLN2D(ch_tr[i], (ch_tr[i], norm[i - 1], norm[i - 1]))
        for i in range(1, 2):
            self.head_conv.append(nn.Conv2d(ch[i - 1], ch[i], [3, 3]))
            self.norm_dict[f"head_norm_{i - 1}"] = UpLN2D(ch[i], (ch[i], norm[i], norm[i]))


class UpRSTG(nn.Module):
    def __init__(self, node_dim):
        super().__init__()
        self.norm_dict = nn.ModuleDict()
        self.internal_lstm = nn.GRU(node_dim, node_dim, batch_first=True)
        self.external_lstm = nn.GRU(node_dim, node_dim, batch_first=True)
        self.send_mlp = nn.Sequential(nn.Linear(node_dim, node_dim), nn.ReLU())
        self.norm_dict["send_message_norm"] = UpLNXC(node_dim, (9, 9, node_dim))
        self.norm_dict["update_norm"] = UpLNXC(node_dim, (9, node_dim))
        self.norm_dict["before_graph_norm"] = UpLNXC(node_dim, (9, node_dim))
        self.att_q = nn.Linear(node_dim, node_dim)
        self.att_k = nn.Linear(node_dim, node_dim)
        self.att_bias = nn.Parameter(torch.zeros(1, 1, 1, node_dim))
        self.update_mlp = nn.Identity()


class UpDynamicGraph(nn.Module):
    def __init__(self, backbone_dim, H, node_dim, project_i3d, offset_dim):
        super().__init__()
        self.rstg = UpRSTG(node_dim)
        ph = (H / 2 * torch.ones(1, 3, 1)).repeat(1, 1, 3).view(1, 9, 1)  # compute_anchors, 'center'
        pw = (H / 2 * torch.ones(1, 3, 1)).repeat(1, 3, 1)
        self.register_buffer("ph_buf", ph)
        self.register_buffer("pw_buf", pw)
        self.norm_dict = nn.ModuleDict()
        if project_i3d:
            self.project_i3d_linear = nn.Conv2d(backbone_dim, node_dim, [1, 1])
            self.project_back_i3d_linear = nn.Conv2d(node_dim, backbone_dim, [1, 1])
        self.fishnet = UpFishnet(H, node_dim)
        g = self.fishnet.norm_size[-1]
        self.global_conv = nn.Sequential(nn.Conv2d(16, 9 * offset_dim, [g, g]), nn.AdaptiveAvgPool2d((1, 1)))
        self.offset_lstm = nn.GRU(offset_dim, offset_dim, batch_first=True)
        self.offset_pred = nn.Linear(offset_dim, 4)
        self.offset_alpha = nn.Parameter(torch.zeros(4))
        self.kernel_projection1 = nn.Linear(H * H, node_dim)
        self.register_buffer("arange_h_buf", torch.arange(0, H).unsqueeze(0).unsqueeze(0))
        self.register_buffer("arange_w_buf", torch.arange(0, H).unsqueeze(0).unsqueeze(0))
        self.norm_dict["offset_ln_feats_coords"] = UpLNXC(offset_dim, (9, offset_dim))
        self.norm_dict["offset_ln_lstm"] = UpLNXC(offset_dim, (9, offset_dim))
        if project_i3d:
            self.norm_dict["dynamic_graph_projection"] = UpLN2D(node_dim, (node_dim, H, H))


class UpDynamicGraphWrapper(nn.Module):
    def __init__(self, in_channels, H, node_dim, project_i3d, offset_dim):
        super().__init__()
        self.dynamic_graph = UpDynamicGraph(in_channels, H, node_dim, project_i3d, offset_dim)
        self.norm_dict = nn.ModuleDict({"residual_norm": UpLN2D(in_channels, (in_channels, H, H), zero_init=True)})


class UpSplitBT(nn.Module):
    def __init__(self, block, T):
        super().__init__()
        self.block, self.T = block, T


def up_dyreg(places=((2, 0, 28), (3, 0, 14), (4, 0, 7)), max_node_dim=32, offset_dim=16, seed=8):
    """TSN with the shift and make_rstg's bottleneck graphs at layerL.B (tiny widths, 224-input map sides)."""
    net = UpTSN()
    for layer, block, H in places:
        bottleneck = getattr(net.base_model, f"layer{layer}")[block]
        planes = bottleneck.conv2.out_channels
        node_dim = min(planes, max_node_dim)
        bottleneck.conv2 = nn.Sequential(
            UpSplitBT(bottleneck.conv2, 16),
            UpDynamicGraphWrapper(planes, H, node_dim, project_i3d=node_dim != planes, offset_dim=offset_dim),
        )
    net = randomize(net, seed)
    for module in net.modules():  # the constant buffers as compute_anchors / arange make them
        if isinstance(module, UpDynamicGraph):
            H = module.arange_h_buf.shape[-1]
            module.ph_buf.fill_(H / 2)
            module.pw_buf.fill_(H / 2)
    return net


def dyreg_model():
    return models.create("tsm_r50_dyreg_tiny", dyreg_input_size=224).eval()


def test_dyreg_pth_tar_maps_every_tensor(tmp_path):
    up = up_dyreg()
    state = save_tsm(tmp_path / "dyreg.pth.tar", up)
    model = dyreg_model()
    report = load_weights(model, tmp_path / "dyreg.pth.tar")
    assert report.format == "dyreg"
    check_complete(report, state, model)
    assert sorted(report.ignored) == sorted(
        f"module.base_model.layer{i}.0.conv2.1.dynamic_graph.{b}"
        for i in (2, 3, 4)
        for b in ("ph_buf", "pw_buf", "arange_h_buf", "arange_w_buf")
    )
    g = "module.base_model.layer4.0.conv2.1."
    ours = "layer4.0.dyreg."
    check_pairs(
        report,
        {
            "module.base_model.layer2.0.conv2.0.block.weight": "layer2.0.conv2.weight",
            "module.base_model.layer2.0.conv1.net.weight": "layer2.0.conv1.weight",
            g + "norm_dict.residual_norm.scale": ours + "norm.weight",
            g + "dynamic_graph.project_i3d_linear.weight": ours + "dyreg.project_in.weight",
            g + "dynamic_graph.project_back_i3d_linear.bias": ours + "dyreg.project_out.bias",
            g + "dynamic_graph.norm_dict.dynamic_graph_projection.scale": ours + "dyreg.project_norm.weight",
            g + "dynamic_graph.fishnet.conv1.weight": ours + "dyreg.offset_net.reduce.weight",
            g + "dynamic_graph.fishnet.norm_dict.norm1.bias": ours + "dyreg.offset_net.reduce_norm.bias",
            g + "dynamic_graph.fishnet.tail_conv.0.weight": ours + "dyreg.offset_net.down1.weight",
            g + "dynamic_graph.fishnet.tail_conv.1.weight": ours + "dyreg.offset_net.down2.weight",
            g + "dynamic_graph.fishnet.norm_dict.tail_norm_1.scale": ours + "dyreg.offset_net.down2_norm.weight",
            g + "dynamic_graph.fishnet.body_trans_conv.0.weight": ours + "dyreg.offset_net.up.weight",
            g + "dynamic_graph.fishnet.norm_dict.body_trans_norm_0.scale": ours + "dyreg.offset_net.up_norm.weight",
            g + "dynamic_graph.fishnet.head_conv.0.bias": ours + "dyreg.offset_net.head.bias",
            g + "dynamic_graph.fishnet.norm_dict.head_norm_0.bias": ours + "dyreg.offset_net.head_norm.bias",
            g + "dynamic_graph.global_conv.0.weight": ours + "dyreg.offset_net.fc.weight",
            g + "dynamic_graph.norm_dict.offset_ln_feats_coords.scale": ours + "dyreg.offset_norm.weight",
            g + "dynamic_graph.offset_lstm.weight_hh_l0": ours + "dyreg.offset_gru.weight_hh_l0",
            g + "dynamic_graph.norm_dict.offset_ln_lstm.bias": ours + "dyreg.offset_gru_norm.bias",
            g + "dynamic_graph.offset_pred.weight": ours + "dyreg.offset_fc.weight",
            g + "dynamic_graph.offset_alpha": ours + "dyreg.offset_scale",
            g + "dynamic_graph.kernel_projection1.weight": ours + "dyreg.pos_embed.weight",
            g + "dynamic_graph.rstg.norm_dict.before_graph_norm.scale": ours + "dyreg.rstg.input_norm.weight",
            g + "dynamic_graph.rstg.internal_lstm.bias_ih_l0": ours + "dyreg.rstg.time_gru.bias_ih_l0",
            g + "dynamic_graph.rstg.external_lstm.weight_ih_l0": ours + "dyreg.rstg.out_gru.weight_ih_l0",
            g + "dynamic_graph.rstg.send_mlp.0.weight": ours + "dyreg.rstg.send.weight",
            g + "dynamic_graph.rstg.norm_dict.send_message_norm.bias": ours + "dyreg.rstg.send_norm.bias",
            g + "dynamic_graph.rstg.att_q.weight": ours + "dyreg.rstg.query.weight",
            g + "dynamic_graph.rstg.att_k.bias": ours + "dyreg.rstg.key.bias",
            g + "dynamic_graph.rstg.att_bias": ours + "dyreg.rstg.att_bias",
            g + "dynamic_graph.rstg.norm_dict.update_norm.scale": ours + "dyreg.rstg.update_norm.weight",
            "module.new_fc.bias": "fc.bias",
        },
    )
    # LayerNormAffine2D scales/biases (1, C, 1, 1) and the attention bias (1, 1, 1, C) become (C,)
    assert set(report.reshaped) == {
        k
        for k in model.state_dict()
        if ".dyreg." in k
        and (
            k.split(".")[-2]
            in ("norm", "project_norm", "reduce_norm", "down1_norm", "down2_norm", "up_norm", "head_norm")
            or k.endswith("att_bias")
        )
    }
    # the graphs' numbers where upstream uses them: the residual norm's per-channel scale, the offset net's
    # global conv covering the 6 x 6 map (28-pixel input), the position embedding over 28 x 28 kernels
    torch.testing.assert_close(
        model.layer2[0].dyreg.norm.weight,
        state["module.base_model.layer2.0.conv2.1.norm_dict.residual_norm.scale"].view(-1),
    )
    assert model.layer2[0].dyreg.dyreg.offset_net.fc.weight.shape == (9 * 16, 16, 6, 6)
    assert model.layer2[0].dyreg.dyreg.pos_embed.weight.shape == (16, 28 * 28)


def test_dyreg_with_other_anchors_is_refused(tmp_path):
    up = up_dyreg()
    graph = up.base_model.layer3[0].conv2[1].dynamic_graph
    graph.ph_buf.copy_(torch.linspace(0, 14, 7)[1::2].unsqueeze(-1).repeat(1, 3).view(1, 9, 1))  # 'grid' anchors
    save_tsm(tmp_path / "grid.pth.tar", up)
    model = dyreg_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="anchors") as err:
        load_weights(model, tmp_path / "grid.pth.tar")
    assert err.value.report.conflicts
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------------------------
# MS-G3D (kenziyuliu/MS-G3D model/msg3d.py, ms_gcn.py, ms_gtcn.py, ms_tcn.py, mlp.py)


def _k_adjacency_stack(A, num_scales):
    """The fixed part upstream concatenates: K normalised (V, V) matrices stacked to (K*V, V)."""
    return torch.tensor(multiscale_adjacency(A, num_scales)).reshape(-1, A.shape[0])


class UpMLP(nn.Module):
    def __init__(self, cin, cout, dropout=False):
        super().__init__()
        self.layers = nn.ModuleList([nn.Dropout(0.5)] if dropout else [])  # mlp.py: only at dropout > 0.001
        self.layers.extend([nn.Conv2d(cin, cout, kernel_size=1), nn.BatchNorm2d(cout), nn.ReLU()])


class UpMSGCN(nn.Module):
    def __init__(self, num_scales, cin, cout, V, dropout=False):
        super().__init__()
        self.A_res = nn.Parameter(torch.zeros(num_scales * V, V))  # A_powers concatenated: (K*V, V)
        self.mlp = UpMLP(cin * num_scales, cout, dropout)


class UpTemporalConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, dilation=1):
        super().__init__()
        pad = (k + (k - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(cin, cout, (k, 1), padding=(pad, 0), stride=(stride, 1), dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(cout)


class UpMSTCN(nn.Module):
    def __init__(self, cin, cout, stride=1, dropout=False):
        super().__init__()
        bc = cout // 6
        drop = [nn.Dropout(0.4)] if dropout else []  # the personality code's ms_tcn.py: last in each dilated branch
        self.branches = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(cin, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(), UpTemporalConv(bc, bc, 3, stride, d), *drop
                )
                for d in (1, 2, 3, 4)
            ]
        )
        self.branches.append(
            nn.Sequential(
                nn.Conv2d(cin, bc, 1),
                nn.BatchNorm2d(bc),
                nn.ReLU(),
                nn.MaxPool2d((3, 1), (stride, 1), (1, 0)),
                nn.BatchNorm2d(bc),
            )
        )
        self.branches.append(nn.Sequential(nn.Conv2d(cin, bc, 1, stride=(stride, 1)), nn.BatchNorm2d(bc)))
        if not (cin == cout and stride == 1):
            self.residual = UpTemporalConv(cin, cout, 1, stride)


class UpMSG3D(nn.Module):
    def __init__(self, cin, cout, V, num_scales, window, dropout=False):
        super().__init__()
        embed_in = cin
        embed_out = cout if cin == 3 else cin  # embed_factor 1: the first block widens at once
        self.in1x1 = nn.Identity()
        st_gcn = nn.Module()
        st_gcn.A_res = nn.Parameter(torch.zeros(num_scales * window * V, window * V))
        st_gcn.mlp = UpMLP(embed_in * num_scales, embed_out, dropout)
        self.gcn3d = nn.Sequential(nn.Identity(), st_gcn)  # (UnfoldTemporalWindows, SpatialTemporal_MS_GCN)
        self.out_conv = nn.Conv3d(embed_out, cout, kernel_size=(1, window, 1))
        self.out_bn = nn.BatchNorm2d(cout)


class UpMSG3DModel(nn.Module):
    """MS-G3D's Model; `personality`: Rgtemze/PersonalityRecognition's msg3d_laban.Model (data_bn_x over xyz and
    data_bn_laban over the Laban channels, dropout everywhere, and an unused copy l2_* of the second block)."""

    def __init__(
        self, num_class=60, V=25, M=2, gcn_scales=3, g3d_scales=2, channels=(12, 24, 48), cin=3, personality=False
    ):
        super().__init__()
        if personality:
            self.data_bn_x = nn.BatchNorm1d(M * 3 * V)
            self.data_bn_laban = nn.BatchNorm1d(M * (cin - 3) * V)
        else:
            self.data_bn = nn.BatchNorm1d(M * cin * V)
        c = (cin,) + tuple(channels)
        for i in range(3):
            for prefix in ("", "l2_") if i == 1 and personality else ("",):
                mw = nn.Module()
                mw.gcn3d = nn.ModuleList(UpMSG3D(c[i], c[i + 1], V, g3d_scales, w, personality) for w in (3, 5))
                setattr(self, f"{prefix}gcn3d{i + 1}", mw)
                hidden = c[1] if i == 0 else c[i]
                setattr(
                    self,
                    f"{prefix}sgcn{i + 1}",
                    nn.Sequential(
                        UpMSGCN(gcn_scales, c[i], hidden, V, personality),
                        UpMSTCN(hidden, c[i + 1], stride=1 if i == 0 else 2, dropout=personality),
                        UpMSTCN(c[i + 1], c[i + 1], dropout=personality),
                    ),
                )
                setattr(self, f"{prefix}tcn{i + 1}", UpMSTCN(c[i + 1], c[i + 1], dropout=personality))
        self.fc = nn.Linear(c[3], num_class)


def test_msg3d_pt_maps_every_tensor_with_the_graph_scales_reshaped(tmp_path):
    up = randomize(UpMSG3DModel(), seed=9)
    state = up.state_dict()
    torch.save(state, tmp_path / "ntu60-xsub-joint.pt")  # save_weights: a plain OrderedDict, module. stripped
    model = models.create("msg3d_ntu60_tiny").eval()
    report = load_weights(model, tmp_path / "ntu60-xsub-joint.pt")
    assert report.format == "msg3d"
    check_complete(report, state, model)
    check_pairs(
        report,
        {
            "data_bn.running_mean": "data_bn.running_mean",
            "sgcn1.0.A_res": "blocks.0.gcn_path.0.A_res",
            "sgcn1.0.mlp.layers.0.weight": "blocks.0.gcn_path.0.conv.weight",
            "sgcn2.0.mlp.layers.1.running_var": "blocks.1.gcn_path.0.bn.running_var",
            "sgcn2.1.residual.conv.weight": "blocks.1.gcn_path.1.residual.conv.weight",
            "sgcn3.2.branches.3.3.conv.weight": "blocks.2.gcn_path.2.branches.3.3.conv.weight",
            "gcn3d1.gcn3d.1.gcn3d.1.A_res": "blocks.0.g3d_path.pathways.1.gcn.A_res",
            "gcn3d2.gcn3d.0.gcn3d.1.mlp.layers.0.bias": "blocks.1.g3d_path.pathways.0.gcn.conv.bias",
            "gcn3d3.gcn3d.1.out_conv.weight": "blocks.2.g3d_path.pathways.1.collapse.weight",
            "gcn3d3.gcn3d.0.out_bn.bias": "blocks.2.g3d_path.pathways.0.bn.bias",
            "tcn2.branches.4.4.running_mean": "blocks.1.tcn.branches.4.4.running_mean",
            "fc.weight": "fc.weight",
        },
    )
    assert len(report.reshaped) == 3 + 6  # an MS-GCN and two G3D windows per block
    # MS_GCN.forward with the file's tensors: A = A_powers + A_res (K*V, V), einsum('vu,nctu->nctv'),
    # view(N, C, T, K, V), permute to (N, K*C, T, V), then the MLP (conv, BN, ReLU)
    x = torch.randn(2, 3, 10, 25)
    A = _k_adjacency_stack(get_graph("ntu-rgb+d").A, 3) + state["sgcn1.0.A_res"]
    support = torch.einsum("vu,nctu->nctv", A, x).view(2, 3, 10, 3, 25).permute(0, 3, 1, 2, 4).reshape(2, 9, 10, 25)
    out = F.conv2d(support, state["sgcn1.0.mlp.layers.0.weight"], state["sgcn1.0.mlp.layers.0.bias"])
    bn = "sgcn1.0.mlp.layers.1."
    out = F.relu(
        F.batch_norm(
            out, state[bn + "running_mean"], state[bn + "running_var"], state[bn + "weight"], state[bn + "bias"]
        )
    )
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[0].gcn_path[0](x), out, rtol=1e-5, atol=1e-5)


def test_personality_pt_joins_the_two_input_norms_and_skips_the_unused_block(tmp_path):
    """Rgtemze/PersonalityRecognition (msg3d_laban.py on MS-G3D's modules, 15 channels, 24 joints, one person):
    every tensor the network computes with loads, the l2_* copy is ignored with its reason, and the two input
    BatchNorms normalise the input exactly as the model's one data_bn does once loaded."""
    up = randomize(UpMSG3DModel(num_class=5, V=24, M=1, cin=15, personality=True), seed=11)
    state = up.state_dict()
    torch.save(state, tmp_path / "personality.pt")
    model = models.create("msg3d_personality_tiny").eval()
    report = load_weights(model, tmp_path / "personality.pt")
    assert report.format == "msg3d_personality" and report.complete, report.text()
    assert not report.missing and not report.unexpected and not report.skipped and not report.conflicts
    assert set(report.loaded) == set(model.state_dict())
    assert set(report.ignored) == {k for k in state if k.startswith("l2_")} and len(report.ignored) > 100
    assert all("never calls" in why for why in report.ignored.values())
    check_pairs(
        report,
        {
            "sgcn1.0.mlp.layers.1.weight": "blocks.0.gcn_path.0.conv.weight",  # layers.0 is the Dropout
            "sgcn2.0.mlp.layers.2.running_var": "blocks.1.gcn_path.0.bn.running_var",
            "gcn3d2.gcn3d.0.gcn3d.1.mlp.layers.1.bias": "blocks.1.g3d_path.pathways.0.gcn.conv.bias",
            "gcn3d1.gcn3d.1.gcn3d.1.A_res": "blocks.0.g3d_path.pathways.1.gcn.A_res",
            "tcn3.branches.2.3.conv.weight": "blocks.2.tcn.branches.2.3.conv.weight",
            "data_bn_x+data_bn_laban.running_var": "data_bn.running_var",
            "fc.bias": "fc.bias",
        },
    )
    assert set(report.reshaped) >= {f"data_bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")}

    # msg3d_laban.Model.forward's input norms, from the file's tensors: each stream (N, M*V*C, T) through its
    # BatchNorm, back to (N*M, C, T, V), then concatenated xyz first: what the first block receives.
    x = torch.randn(2, 15, 16, 24, 1)
    streams = []
    for name, part in (("data_bn_x", x[:, :3]), ("data_bn_laban", x[:, 3:])):
        c = part.shape[1]
        flat = part.permute(0, 4, 3, 1, 2).reshape(2, 24 * c, 16)
        flat = F.batch_norm(
            flat,
            state[name + ".running_mean"],
            state[name + ".running_var"],
            state[name + ".weight"],
            state[name + ".bias"],
        )
        streams.append(flat.view(2, 24, c, 16).permute(0, 2, 3, 1))
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.testing.assert_close(seen[0], torch.cat(streams, 1), rtol=1e-5, atol=1e-5)


def test_personality_preset_has_the_authors_dropout_and_their_graph_on_request():
    """The authors' code drops out 0.6 before each MS-GCN's conv, 0.4 before each window graph conv, and 0.4 after
    each dilated MS-TCN branch and on each MS-TCN's sum; `graph: smpl-24-dense` is the adjacency their
    get_adjacency_matrix builds from list edges (`A[[i, j]] = 1` sets whole rows) and their k-hop rule."""
    model = models.create("msg3d_personality_tiny")
    block = model.blocks[1]
    assert block.gcn_path[0].dropout.p == 0.6 and block.g3d_path.pathways[1].gcn.dropout.p == 0.4
    for tcn in (block.gcn_path[1], block.gcn_path[2], block.tcn):
        assert (
            tcn.dropout.p == 0.4
            and [type(b[-1]).__name__ for b in tcn.branches] == ["Dropout"] * 4 + ["BatchNorm2d"] * 2
        )
    # Dropout holds no state: the same file loads with or without it, and eval outputs agree.
    plain = models.create("msg3d_personality_tiny", gcn_dropout=0.0, g3d_dropout=0.0, tcn_dropout=0.0)
    trained = randomize(models.create("msg3d_personality_tiny"), seed=3).state_dict()  # (A, not state, stays)
    model.load_state_dict(trained, strict=True)
    plain.load_state_dict(trained, strict=True)
    x = torch.randn(2, 15, 16, 24, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))
    with pytest.raises(ValueError, match="model.tcn_dropout"):
        models.create("msg3d_personality_tiny", tcn_dropout=1.0)

    import numpy as np

    A = np.zeros((24, 24), dtype=np.float32)
    for edge in get_graph("smpl-24").edges:
        A[list(edge)] = 1.0  # graph/tools.py get_adjacency_matrix with the edges as lists

    def their_scales(A_binary, K):
        eye = np.eye(len(A_binary))
        hops = [eye] + [
            np.minimum(np.linalg.matrix_power(A_binary + eye, k), 1)
            - np.minimum(np.linalg.matrix_power(A_binary + eye, k - 1), 1)
            + eye
            for k in range(1, K)
        ]
        return np.stack([h / np.sqrt(h.sum(-1))[:, None] / np.sqrt(h.sum(-1))[None, :] for h in hops])

    dense = models.create("msg3d_personality_tiny", graph="smpl-24-dense")
    np.testing.assert_allclose(dense.blocks[0].gcn_path[0].A.numpy(), their_scales(A, 3), atol=1e-7)
    window = np.tile(A + np.eye(24), (5, 5))  # ms_gtcn.py build_spatial_temporal_graph
    np.testing.assert_allclose(dense.blocks[0].g3d_path.pathways[1].gcn.A.numpy(), their_scales(window, 2), atol=1e-7)
    tree = models.create("msg3d_personality_tiny").blocks[0].gcn_path[0].A.numpy()
    assert not np.allclose(tree, their_scales(A, 3))  # the default is the paper's SMPL skeleton


# --------------------------------------------------------------------------------------------
# ST-ABN (ST-ABN_PyTorch: MMAction TSN3D, backbone ResNet_SlowFast with the attention branch, Att_head neck)


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])


def _up_bottleneck3d(sd, p, x, stride):
    """resnet_slow.py Bottleneck (pytorch style, 3x1x1 inflation when conv1 is 3-deep) from the file's tensors."""
    w1 = sd[p + ".conv1.weight"]
    out = F.relu(_bn(sd, p + ".bn1", F.conv3d(x, w1, padding=(w1.shape[2] // 2, 0, 0))))
    out = F.conv3d(out, sd[p + ".conv2.weight"], stride=(1, stride, stride), padding=(0, 1, 1))
    out = F.relu(_bn(sd, p + ".bn2", out))
    out = _bn(sd, p + ".bn3", F.conv3d(out, sd[p + ".conv3.weight"]))
    if p + ".downsample.0.weight" in sd:
        x = _bn(sd, p + ".downsample.1", F.conv3d(x, sd[p + ".downsample.0.weight"], stride=(1, stride, stride)))
    return F.relu(out + x)


def up_stabn_forward(sd, x):
    """ResNet_SlowFast.forward + Att_head + ClsHead (eval) from the file's tensors; global pools where the
    reference pools 14 x 14 / 7 x 7 maps (its 224-pixel input)."""
    b = "backbone."
    x = F.relu(_bn(sd, b + "bn1", F.conv3d(x, sd[b + "conv1.weight"], stride=(1, 2, 2), padding=(0, 3, 3))))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for layer, stride in ((1, 1), (2, 2), (3, 2)):
        x = _up_bottleneck3d(sd, f"{b}layer{layer}.0", x, stride)
    ax = _bn(sd, b + "bn_att", _up_bottleneck3d(sd, b + "att_layer4.0", x, 1))
    ax = F.relu(_bn(sd, b + "bn_att2", F.conv3d(ax, sd[b + "att_conv.weight"])))
    t_ax = F.relu(_bn(sd, b + "t_bn_att", F.conv3d(ax, sd[b + "t_att_conv.weight"], padding=1)))
    t_ax = t_ax.view(t_ax.size(0), t_ax.size(2), t_ax.size(3), t_ax.size(4))
    t_ax = F.relu(F.conv2d(t_ax, sd[b + "t_att_conv2.weight"])).mean(dim=(2, 3))
    t_ax = F.relu(F.linear(t_ax, sd[b + "fc1.weight"], sd[b + "fc1.bias"]))
    t_att = torch.sigmoid(F.linear(t_ax, sd[b + "fc2.weight"], sd[b + "fc2.bias"]))[:, None, :, None, None]
    att = torch.sigmoid(_bn(sd, b + "bn_att3", F.conv3d(ax, sd[b + "att_conv3.weight"])))
    ax = F.conv3d(ax, sd[b + "att_conv2.weight"]).mean(dim=(3, 4), keepdim=True)
    rx = torch.cat([x * att + x, x * t_att], dim=1)  # per frame, per sample: cat((s_b, t_b), dim=0)
    rx = F.relu(_bn(sd, b + "bn_att4", F.conv3d(rx, sd[b + "t_att_conv3.weight"])))
    rx = _up_bottleneck3d(sd, b + "layer4.0", rx, 2)
    logits = F.linear(rx.mean(dim=(2, 3, 4)), sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"])
    att_logits = F.linear(ax.view(ax.size(0), -1), sd["necks.att_head.fc.weight"], sd["necks.att_head.fc.bias"])
    return logits, att_logits, att, t_att


def up_stabn_state(K=4, T=4, widths=(8, 16, 32, 64), seed=10):
    """The TSN3D state dict as resnet_slow.py / att_cls_head.py / cls_head.py name it (tiny widths, one block
    per stage), with a few of the neck's unused TPN modules."""
    exp, (w1, w2, w3, w4) = 4, widths

    def conv(*shape):
        return torch.empty(*shape)

    def bn(p, c):
        return {
            p + ".weight": torch.empty(c),
            p + ".bias": torch.empty(c),
            p + ".running_mean": torch.empty(c),
            p + ".running_var": torch.empty(c),
            p + ".num_batches_tracked": torch.tensor(7),
        }

    def block(p, cin, planes, inflate, down):
        out = {
            p + ".conv1.weight": conv(planes, cin, 3 if inflate else 1, 1, 1),
            **bn(p + ".bn1", planes),
            p + ".conv2.weight": conv(planes, planes, 1, 3, 3),
            **bn(p + ".bn2", planes),
            p + ".conv3.weight": conv(planes * exp, planes, 1, 1, 1),
            **bn(p + ".bn3", planes * exp),
        }
        if down:
            out.update(
                {p + ".downsample.0.weight": conv(planes * exp, cin, 1, 1, 1), **bn(p + ".downsample.1", planes * exp)}
            )
        return out

    b, c3, c4 = "backbone.", w3 * exp, w4 * exp
    sd = {
        b + "conv1.weight": conv(w1, 3, 1, 7, 7),
        **bn(b + "bn1", w1),
        **block(b + "layer1.0", w1, w1, False, True),
        **block(b + "layer2.0", w1 * exp, w2, False, True),
        **block(b + "layer3.0", w2 * exp, w3, True, True),
        **block(b + "layer4.0", c3, w4, True, True),
        **block(b + "att_layer4.0", c3, w4, True, True),
        **bn(b + "bn_att", c4),
        b + "t_att_conv.weight": conv(1, K, 3, 3, 3),
        **bn(b + "t_bn_att", 1),
        b + "t_att_conv2.weight": conv(T, T, 1, 1),
        b + "fc1.weight": conv(T, T),
        b + "fc1.bias": conv(T),
        b + "fc2.weight": conv(T, T),
        b + "fc2.bias": conv(T),
        b + "t_att_conv3.weight": conv(c4 // 2, c4, 1, 1, 1),
        **bn(b + "bn_att4", c4 // 2),
        b + "att_conv.weight": conv(K, c4, 1, 1, 1),
        **bn(b + "bn_att2", K),
        b + "att_conv2.weight": conv(K, K, 1, 1, 1),
        b + "att_conv3.weight": conv(1, K, 1, 1, 1),
        **bn(b + "bn_att3", 1),
        "necks.att_head.fc.weight": conv(K, K * T),
        "necks.att_head.fc.bias": conv(K),
        "necks.att_head.convs.conv.weight": conv(2 * c3, c3, 1, 3, 3),
        **bn("necks.att_head.convs.bn", 2 * c3),
        "necks.temporal_modulation_ops.0.conv.weight": conv(c3, c4 // 32, 3, 1, 1),
        "necks.level_fusion_op.fusion_conv.0.weight": conv(c4, 2 * c3, 1, 1, 1),
        "necks.pyramid_fusion_op.0.weight": conv(c4, 2 * c4, 1, 1, 1),
        **bn("necks.pyramid_fusion_op.1", c4),
        "cls_head.fc_cls.weight": conv(K, c4),
        "cls_head.fc_cls.bias": conv(K),
    }
    gen = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if v.is_floating_point():
            v.copy_(
                torch.rand(v.shape, generator=gen) + 0.5
                if k.endswith("running_var")
                else (torch.rand(v.shape, generator=gen) - 0.5) * 0.4
            )
    return sd


def test_stabn_mmaction_checkpoint_loads_exactly_and_computes_the_upstream_outputs(tmp_path):
    sd = up_stabn_state()
    torch.save(
        {"meta": {"epoch": 30, "mmcv_version": "0.2.10"}, "state_dict": sd, "optimizer": {}},
        tmp_path / "st_abn_sthv1_32.pth",
    )
    model = models.create("stabn_r50_tiny").eval()
    report = load_weights(model, tmp_path / "st_abn_sthv1_32.pth")
    assert report.format == "stabn_mmaction"
    check_complete(report, sd, model)
    unused = [k for k in sd if k.startswith("necks.") and not k.startswith("necks.att_head.fc.")]
    assert sorted(report.ignored) == sorted(unused)
    check_pairs(
        report,
        {
            "backbone.conv1.weight": "stem.conv1.weight",
            "backbone.bn1.running_var": "stem.bn1.running_var",
            "backbone.att_layer4.0.conv1.weight": "att_layer4.0.conv1.weight",
            "backbone.att_conv3.weight": "sa_conv.weight",
            "backbone.t_att_conv.weight": "ta_conv.weight",
            "backbone.t_att_conv2.weight": "ta_frame_conv.weight",
            "backbone.fc1.weight": "ta_fc1.weight",
            "backbone.fc2.bias": "ta_fc2.bias",
            "backbone.att_conv2.weight": "att_logit_conv.weight",
            "backbone.t_att_conv3.weight": "fuse_conv.weight",
            "backbone.bn_att4.bias": "fuse_bn.bias",
            "necks.att_head.fc.weight": "att_fc.weight",
            "cls_head.fc_cls.weight": "fc.weight",
        },
    )
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        out = model(x)
        logits, att_logits, spatial, temporal = up_stabn_forward(sd, x)
    torch.testing.assert_close(out["logits"], logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["att_logits"], att_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["spatial_att"], spatial, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["temporal_att"], temporal, rtol=1e-4, atol=1e-5)


def test_stabn_new_class_count_skips_only_the_class_sized_layers(tmp_path):
    torch.save({"state_dict": up_stabn_state(K=174)}, tmp_path / "sthv1.pth")
    model = models.create("stabn_r50_tiny").eval()
    report = load_weights(model, tmp_path / "sthv1.pth")
    assert report.complete and report.skipped and set(report.skipped) <= report.head
    assert {k.split(".")[0] for k in report.skipped} == {
        "fc",
        "att_fc",
        "att_conv",
        "att_bn2",
        "sa_conv",
        "ta_conv",
        "att_logit_conv",
    }


# --------------------------------------------------------------------------------------------
# Refusals and the report


def test_a_foreign_file_is_refused_with_the_report_and_the_model_untouched(tmp_path):
    torch.save(randomize(UpMSG3DModel()).state_dict(), tmp_path / "msg3d.pt")
    model = tsf()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, tmp_path / "msg3d.pt")
    head = str(err.value).splitlines()[0]
    assert head.startswith("--load-from ") and "nothing in the file maps onto the model" in head
    report = err.value.report
    assert not report.loaded and report.unexpected and len(report["missing"]) == len(before)
    assert "unexpected" in str(err.value) and "missing" in str(err.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_truncated_file_is_refused_with_the_report(tmp_path):
    up = randomize(UpTSN())
    save_tsm(tmp_path / "full.pth.tar", up)
    data = (tmp_path / "full.pth.tar").read_bytes()
    (tmp_path / "cut.pth.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_weights(models.create("tsm_r50_tiny"), tmp_path / "cut.pth.tar")
    assert "cannot read the file" in str(err.value).splitlines()[0]
    assert err.value.report.read_error and "unreadable" in err.value.report.summary()
    with pytest.raises(FileNotFoundError, match="--load-from"):
        load_weights(models.create("tsm_r50_tiny"), tmp_path / "absent.pth.tar")


def test_a_partial_file_is_refused_unless_accepted(tmp_path):
    up = randomize(UpTSN(), seed=11)
    state = {f"module.{k}": v for k, v in up.state_dict().items() if not k.startswith("base_model.layer4.")}
    state["module.base_model.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "part.pth.tar")
    model = models.create("tsm_r50_tiny").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="partial load refused") as err:
        load_weights(model, tmp_path / "part.pth.tar")
    assert "--load-from-partial" in str(err.value).splitlines()[0]
    assert all(k.startswith("layer4.") for k in err.value.report.missing)
    assert err.value.report.unexpected == ["module.base_model.extra.weight"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = load_weights(model, tmp_path / "part.pth.tar", partial=True)
    assert not report.complete and report.groups()["layer4"]["missing"] == len(report.missing)
    torch.testing.assert_close(model.layer1[0].conv2.weight, up.base_model.layer1[0].conv2.weight)
    txt, js = report.write(tmp_path / "run")
    assert "missing (" in txt.read_text() and '"problems"' in js.read_text()


def test_image_checkpoints_go_to_the_models_own_loaders_and_report_alike(tmp_path):
    # a torchvision ResNet of the tiny widths, saved as old torchvision files are: no BatchNorm counters
    r2d = {
        k: v for k, v in randomize(UpResNet(), seed=14).state_dict().items() if not k.endswith("num_batches_tracked")
    }
    torch.save(r2d, tmp_path / "resnet.pth")
    stabn = models.create("stabn_r50_tiny").eval()
    report = load_weights(stabn, tmp_path / "resnet.pth")
    assert report.format == "imagenet_resnet" and report.complete, report.text()
    assert "layer3.0.conv1.weight" in report.resized and sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert {k.split(".")[0] for k in report.new} >= {"att_layer4", "att_bn", "fuse_conv", "ta_fc1"}
    assert all(k.endswith("num_batches_tracked") for k in report.new if k.startswith(("stem.", "layer")))
    tsm = models.create("tsm_r50_dyreg_tiny").eval()
    report = load_weights(tsm, tmp_path / "resnet.pth")
    assert report.format == "native" and report.complete and not report.missing
    torch.testing.assert_close(tsm.layer3[0].conv2.weight, r2d["layer3.0.conv2.weight"])

    # an image ViT of another width: TimeSformer's loader refuses it, the model stays as it was
    vit = models.create("timesformer_tiny", attention="space_only", embed_dim=32, num_heads=4).state_dict()
    torch.save({"model": vit}, tmp_path / "vit32.pth")
    model = tsf()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="loader"):
        load_weights(model, tmp_path / "vit32.pth")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_read_checkpoint_unwraps_containers(tmp_path):
    torch.save({"module": {"module.a": torch.zeros(1)}}, tmp_path / "x.pt")
    (tmp_path / "ckpt").mkdir()
    torch.save({"module": {"a": torch.ones(1)}, "buffer_names": []}, tmp_path / "ckpt" / "mp_rank_00_model_states.pt")
    assert list(read_checkpoint(tmp_path / "x.pt")[0]) == ["a"]
    assert torch.equal(read_checkpoint(tmp_path / "ckpt")[0]["a"], torch.ones(1))


def test_convert_writes_a_plain_state_dict_once(tmp_path, capsys):
    from action_launch.models.convert import main

    up = randomize(UpTSN(num_class=174), seed=12)
    save_tsm(tmp_path / "tsm.pth.tar", up)
    assert (
        main(
            [str(tmp_path / "tsm.pth.tar"), str(tmp_path / "tsm_ours.pt"), "--model", "tsm_r50_tiny", "num_classes=10"]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    plain = torch.load(tmp_path / "tsm_ours.pt", weights_only=True)
    assert "fc.weight" not in plain and "layer1.0.conv1.weight" in plain  # the 174-class head was left out
    model = models.create("tsm_r50_tiny", num_classes=10).eval()
    report = load_checkpoint(model, tmp_path / "tsm_ours.pt")
    assert report.format == "native" and report.complete and report.missing == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.layer4[0].conv1.weight, up.base_model.layer4[0].conv1.net.weight)
    assert main([str(tmp_path / "tsm.pth.tar"), str(tmp_path / "x.pt"), "--model", "timesformer_tiny"]) == 2


def test_train_load_from_partial_sets_the_config_key(capsys):
    from action_launch.train import main

    assert main(["--load-from-partial", "--print-config"]) == 0
    assert "load_partial: true" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# One model file per upstream: formats live beside their models, checkpoints.py is generic


def _module_of(fmt) -> str:
    """The module that declares `fmt`: where its detection and its mapping (or loader) are written."""
    mapping = fmt.rename if isinstance(fmt, _formats.Format) else fmt.load
    assert fmt.detect.__module__ == mapping.__module__, fmt.name
    return fmt.detect.__module__


def test_every_format_is_declared_in_its_model_file_and_checkpoints_names_no_family():
    from action_launch.models.resnet3d import load_resnet2d_state_dict

    registered = _formats.registered_formats()
    where = {fmt.name: _module_of(fmt) for fmt in registered}
    family = {
        "timesformer": "timesformer_tiny",
        "image_vit": "timesformer_tiny",
        "tsm": "tsm_r50_tiny",
        "dyreg": "tsm_r50_dyreg_tiny",
        "mmaction2_resnet": "tsm_r50_tiny",
        "mmaction": "tsm_r50_tiny",
        "msg3d": "msg3d_ntu60_tiny",
        "msg3d_personality": "msg3d_personality_tiny",
        "stabn_mmaction": "stabn_r50_tiny",
    }
    for name, preset in family.items():  # the module of the model class the format's files load into
        assert where.get(name) == models.get_preset(preset).cls.__module__, name
    # ImageNet ResNets: both ResNet families (TSM, ST-ABN) load them through resnet3d, where the format is
    assert where.get("imagenet_resnet") == load_resnet2d_state_dict.__module__
    for name, module in where.items():  # any later format too: in a model file, never in the generic code
        assert module.startswith("action_launch.models.") and module.rsplit(".", 1)[1] not in (
            "checkpoints",
            "_formats",
            "_registry",
            "convert",
        ), (name, module)
    # detection tries the formats in the order the loader always has (a narrower layout before a wider one)
    assert [f.name for f in mapped_formats()] == [
        "timesformer",
        "dyreg",
        "tsm",
        "msg3d_personality",
        "msg3d",
        "stabn_mmaction",
        "mmaction2_resnet",
        "mmaction",
    ]

    # models/checkpoints.py names no family, no upstream and no upstream key
    source = inspect.getsource(importlib.import_module("action_launch.models.checkpoints"))
    words = set(where) | {m.rsplit(".", 1)[1] for m in where.values()}
    words |= {models.get_preset(p).cls.__name__ for p in models.list_presets()}
    words |= {models.get_preset(p).cls.__module__.rsplit(".", 1)[1] for p in models.list_presets()}
    words |= {w for f in mapped_formats() for w in f.wrappers if w != "model"}  # "model" is the word it is about
    named = sorted(w for w in words if re.search(rf"\b{re.escape(w)}\b", source, re.IGNORECASE))
    assert not named, f"models/checkpoints.py names {named}: that belongs in the model's file"


class UpHIINTRelease(nn.Module):
    """A made-up upstream release of HIINT (which has none): the network under `net`, the classifier `net.fc`."""

    def __init__(self, model):
        super().__init__()
        self.net = nn.Module()
        for name, child in model.named_children():
            self.net.add_module("fc" if name == "head" else name, child)
        for name, value in model.named_parameters(recurse=False):
            self.net.register_parameter(name, value)


def test_a_new_upstream_is_one_format_in_its_model_file(tmp_path, monkeypatch):
    """What a model file adds for a new published checkpoint is enough: the loader finds it, maps and reports it."""
    monkeypatch.setattr(_formats, "_FORMATS", dict(_formats._FORMATS))  # the registration ends with the test

    def detect(keys, model):
        return all(k.startswith("net.") for k in keys) and "net.memory_init" in keys

    def rename(key, model):
        if key.startswith("net.fc."):
            return (_formats.classifier(model) + key[len("net.fc") :], None)
        return (key[len("net.") :], None) if key.startswith("net.") else None

    fmt = _formats.register_format(
        _formats.Format("hiint_release", "HIINT's release (net.*, net.fc)", detect, rename, wrappers=("net",))
    )
    assert mapped_formats()[-1] is fmt  # priority 0: after every format of the package
    with pytest.raises(ValueError, match="registered twice"):
        _formats.register_format(fmt)

    source = randomize(models.create("hiint_cpmt_tiny"), seed=16)
    state = UpHIINTRelease(source).state_dict()
    assert "net.fc.weight" in state and "net.memory_init" in state
    torch.save({"state_dict": state}, tmp_path / "hiint_release.pth")
    model = models.create("hiint_cpmt_tiny").eval()
    report = load_checkpoint(model, tmp_path / "hiint_release.pth")
    assert report.format == "hiint_release" and report.description == "HIINT's release (net.*, net.fc)"
    check_complete(report, state, model)
    check_pairs(report, {"net.fc.weight": "head.weight", "net.memory_init": "memory_init"})
    torch.save({"state_dict": {**state, "net.extra.weight": torch.zeros(2)}}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="partial load refused") as err:
        load_checkpoint(models.create("hiint_cpmt_tiny"), tmp_path / "extra.pth")
    assert err.value.report.unexpected == ["net.extra.weight"]
    assert "file: net.extra" in err.value.report.groups()  # its wrapper: the report groups one level deeper


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_train_refuses_a_partial_load_then_accepts_it_and_logs_the_report(video_set, tmp_path):
    from conftest import run_train, tiny_overrides
    from mlflow.tracking import MlflowClient

    up = up_timesformer(frames=4, classes=4, seed=13)
    state = {k: v for k, v in up.state_dict().items() if not k.startswith("model.blocks.1.mlp.")}
    torch.save({"epoch": 15, "model_state": state, "cfg": "TRAIN: {}"}, tmp_path / "tsf.pyth")
    base = [*tiny_overrides(video_set, tmp_path, "refused"), "train.epochs=1", "train.max_steps_per_epoch=1"]
    proc = run_train([*base, "--load-from", str(tmp_path / "tsf.pyth")], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "partial load refused" in proc.stderr and "blocks.1.mlp.fc1.weight" in proc.stderr
    assert "missing" in (tmp_path / "tests" / "refused" / "load_report.txt").read_text()

    base = [*tiny_overrides(video_set, tmp_path, "accepted"), "train.epochs=1", "train.max_steps_per_epoch=1"]
    run_train([*base, "--load-from", str(tmp_path / "tsf.pyth"), "--load-from-partial"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'accepted'")
    assert run.data.params["train.load_partial"] == "True"
    assert {"load_report.txt", "load_report.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
