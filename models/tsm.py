"""TSM: Temporal Shift Module, optionally with DyReg-GNN graphs inside.

Paper: "TSM: Temporal Shift Module for Efficient Video Understanding", Lin, Gan and Han, ICCV
2019 (https://arxiv.org/abs/1811.08383; reference code mit-han-lab/temporal-shift-module).
DyReg-GNN (Duta et al., NeurIPS 2021, bit-ml/DyReg-GNN) adds dynamic-region graphs to it, see
`models/dyreg.py`.

A 2D ResNet (torchvision parameter names, so ImageNet weights load by name) applied to every
frame: the input (N, 3, T, H, W) becomes (N*T, 3, H, W). In the residual branch of every
bottleneck, before conv1, `temporal_shift` moves 1/shift_div of the channels one frame back in
time and another 1/shift_div one frame forward, zero-padded at the clip ends; the shortcut is
not shifted ("blockres"). The head is dropout -> Linear per frame, then the average over T
(TSN's average consensus). TSM's code drops out the pooled features of a frame; DyReg-GNN's code
(`dropout_at="map"`, the `tsm_r50_dyreg` preset) drops out every position of the last feature map
and then pools (its ResNet's avgpool is an identity and its fc the dropout, pooled afterwards). T is
read from the input; `num_segments` records the clip length the model is trained for.

DyReg: `dyreg_positions="layer2.2,layer3.4,layer4.1"` inserts a `DyRegResidual` after conv2 of
those bottlenecks (before bn2), sized for the map it sees at `dyreg_input_size` input. It starts
as the identity, so an ImageNet or TSM checkpoint behaves unchanged until it trains.

`parameter_groups` gives TSM's optimiser groups (norms and biases without weight decay, biases at
lr x2, the classifier at lr x5 / x10).
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from action_launch.models._formats import Format, Target, classifier, register_format
from action_launch.models._registry import register_preset
from action_launch.models.dyreg import (
    DyRegResidual,
    NodeNorm,
    dyreg_anchor_conflicts,
    dyreg_checkpoint_rename,
    dyreg_kwargs,
)
from action_launch.models.resnet3d import check_stages, init_resnet_weights, load_resnet2d_state_dict


def temporal_shift(x: torch.Tensor, num_segments: int, shift_div: int = 8) -> torch.Tensor:
    """Shift channels along time on (N*T, C, H, W).

    Channels [0, C/d) take the next frame's values (shifted back in time), channels [C/d, 2C/d)
    the previous frame's (shifted forward); the frame that has no neighbour gets zeros; the rest
    are untouched. d = shift_div; the channel layout is the reference's.
    """
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise ValueError(f"batch*time={nt} is not a multiple of num_segments={num_segments}")
    fold = c // shift_div
    x = x.reshape(nt // num_segments, num_segments, c, h, w)
    pad = x.new_zeros(x.shape[0], 1, fold, h, w)
    back = torch.cat([x[:, 1:, :fold], pad], dim=1)
    fwd = torch.cat([pad, x[:, :-1, fold : 2 * fold]], dim=1)
    return torch.cat([back, fwd, x[:, :, 2 * fold :]], dim=2).reshape(nt, c, h, w)


class TSMBottleneck(nn.Module):
    """torchvision ResNet bottleneck with a temporal shift at the start of the residual branch."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shift_div: int = 8) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.shift_div = shift_div
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.dyreg: Optional[DyRegResidual] = None  # set by TSM for the named positions
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = temporal_shift(x, num_segments, self.shift_div) if self.shift_div > 0 else x
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.conv2(out)
        if self.dyreg is not None:
            out = self.dyreg(out, num_segments)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, NodeNorm)
_WITH_BIAS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.GRU, nn.LSTM)


class TSM(nn.Module):
    """TSM ResNet on (N, C, T, H, W) -> logits (N, num_classes); see the module docstring."""

    def __init__(
        self,
        num_classes: int = 174,
        num_segments: int = 8,
        layers: Tuple[int, ...] = (3, 4, 6, 3),
        widths: Tuple[int, ...] = (64, 128, 256, 512),
        shift_div: int = 8,
        dropout: float = 0.5,
        in_channels: int = 3,
        dyreg_positions: str = "",
        dyreg_input_size: int = 224,
        dyreg_max_node_dim: int = 256,
        dyreg_offset_dim: int = 128,
        dropout_at: str = "pooled",
    ) -> None:
        """
        Args:
            num_classes: classifier outputs.
            num_segments: frames per clip the model is trained for (forward reads T from the input).
            layers: bottlenecks per stage (ResNet-50: 3, 4, 6, 3).
            widths: bottleneck widths per stage (stage output = 4 x width; stem width = widths[0]).
            shift_div: 1/shift_div of the channels shift each way; 0 disables the shift (TSN).
            dropout: dropout before the classifier.
            in_channels: input channels (3 for RGB).
            dyreg_positions: comma-separated bottlenecks ("layer2.2,layer3.4") that get a DyReg graph
                after conv2; empty for plain TSM.
            dyreg_input_size: input side the graphs are sized for (position-embedding and offset grids).
            dyreg_max_node_dim: graph node width cap; wider conv2 outputs are projected to it.
            dyreg_offset_dim: width of the region-offset embeddings and GRU.
            dropout_at: "pooled" (TSM's code: dropout on each frame's pooled features) or "map"
                (DyReg-GNN's code: on the last feature map, before pooling); eval outputs are the same.
        """
        super().__init__()
        check_stages(widths, layers)
        if dropout_at not in ("pooled", "map"):
            raise ValueError(f"model.dropout_at must be 'pooled' or 'map', got {dropout_at!r}")
        self.dropout_at = dropout_at
        self.num_classes = num_classes
        self.num_segments = num_segments
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = nn.ModuleList()
            for j in range(blocks):
                stage.append(TSMBottleneck(channels, planes, stride if j == 0 else 1, shift_div))
                channels = planes * TSMBottleneck.expansion
            self.add_module(f"layer{i + 1}", stage)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_resnet_weights(self)
        nn.init.normal_(self.fc.weight, 0.0, 0.001)  # TSN's new_fc init
        nn.init.zeros_(self.fc.bias)
        self.dyreg_positions = self._add_dyreg(dyreg_positions, dyreg_input_size, dyreg_max_node_dim, dyreg_offset_dim)

    def _add_dyreg(self, positions: str, input_size: int, max_node_dim: int, offset_dim: int) -> List[str]:
        names = [p.strip() for p in positions.split(",") if p.strip()]
        valid = [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(self, f"layer{i}")))]
        for name in names:
            if name not in valid:
                raise ValueError(f"dyreg_positions: no bottleneck {name!r}; valid: {', '.join(valid)}")
            stage, block = name.split(".")
            level = int(stage[len("layer") :])
            map_size = max(1, input_size // (4 * 2 ** (level - 1)))  # conv2 output side (after its stride)
            bottleneck = getattr(self, stage)[int(block)]
            planes = bottleneck.conv2.out_channels
            bottleneck.dyreg = DyRegResidual(planes, **dyreg_kwargs(planes, map_size, max_node_dim, offset_dim))
        return names

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> the last feature map of every frame (N*T, C4, h, w)."""
        if x.ndim != 5:
            raise ValueError(f"expected input (N, C, T, H, W), got shape {tuple(x.shape)}")
        n, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(n * t, c, h, w)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            for block in getattr(self, f"layer{i}"):
                x = block(x, t)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> per-frame features (N*T, C4)."""
        return self.forward_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], x.shape[2]
        fmap = self.forward_map(x)
        if self.dropout_at == "map":
            features = self.dropout(fmap).mean(dim=(2, 3))
        else:
            features = self.dropout(fmap.mean(dim=(2, 3)))
        return self.fc(features).reshape(n, t, -1).mean(dim=1)  # average consensus

    def load_imagenet_resnet(self, state_dict: Mapping[str, Any]) -> Dict[str, List[str]]:
        """Initialise from a 2D ImageNet ResNet state dict (torchvision names): a direct copy by name.

        The temporal shift has no parameters and DyReg graphs are not in the checkpoint (they stay
        zero-initialised, the identity); the 1000-class `fc` is skipped for its shape. Returns
        `models.resnet3d.load_resnet2d_state_dict`'s report.
        """
        return load_resnet2d_state_dict(self, state_dict)

    def parameter_groups(self, weight_decay: Optional[float] = None) -> List[Dict[str, Any]]:
        """TSM's optimiser groups, each {"name", "params", "weight_decay", "lr_mult"}.

        weights (convs, linears, GRUs, DyReg's offset scale and attention bias): decay, lr x1;
        biases of convs, linears and GRUs: no decay, lr x2; BatchNorm/GroupNorm/LayerNorm
        scales and shifts: no decay, lr x1; classifier weight: decay, lr x5; classifier bias: no
        decay, lr x10 (the reference's fc_lr5 when training from ImageNet weights).
        `weight_decay` is copied into the decayed groups (None: the optimiser's default); the
        others get 0.0. Empty groups are left out.
        """
        groups: Dict[str, List[nn.Parameter]] = {"weight": [], "bias": [], "norm": [], "fc_weight": [], "fc_bias": []}
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if module is self.fc:
                    key = "fc_weight" if name == "weight" else "fc_bias"
                elif isinstance(module, _NORMS):
                    key = "norm"
                elif isinstance(module, _WITH_BIAS) and name.startswith("bias"):
                    key = "bias"
                else:
                    key = "weight"
                groups[key].append(p)
        spec = {
            "weight": (weight_decay, 1.0),
            "bias": (0.0, 2.0),
            "norm": (0.0, 1.0),
            "fc_weight": (weight_decay, 5.0),
            "fc_bias": (0.0, 10.0),
        }
        return [
            {"name": k, "params": groups[k], "weight_decay": spec[k][0], "lr_mult": spec[k][1]}
            for k in groups
            if groups[k]
        ]


# --------------------------------------------------------------------------------------------
# Presets

_R50: Dict[str, Any] = dict(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), shift_div=8, dropout=0.5)
_TINY: Dict[str, Any] = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), shift_div=8, dropout=0.5)
_DYREG_PAPER = "layer2.2,layer3.4,layer4.1"

# Paper (DyReg-GNN's SSv2 setting): Something-Something v2, 174 classes, 16 segments x 224^2.
# TSM-R50: 23,864,558 parameters; with DyReg 28,701,830 (+1,141,640 / +1,836,040 / +1,859,592).
register_preset("tsm_r50", TSM, num_params=23_864_558, num_classes=174, num_segments=16, **_R50)
register_preset(
    "tsm_r50_dyreg",
    TSM,
    num_params=28_701_830,
    num_classes=174,
    num_segments=16,
    dyreg_positions=_DYREG_PAPER,
    dropout_at="map",
    **_R50,
)

# Tiny presets for tests and CPU demos: 4 frames x 64^2, widths 8/16/32/64, one block per stage.
register_preset("tsm_r50_tiny", TSM, num_classes=4, num_segments=4, **_TINY)
register_preset(
    "tsm_r50_dyreg_tiny",
    TSM,
    num_classes=4,
    num_segments=4,
    dyreg_positions="layer2.0,layer3.0,layer4.0",
    dyreg_input_size=64,
    dyreg_max_node_dim=32,
    dyreg_offset_dim=16,
    dropout_at="map",
    **_TINY,
)


# --------------------------------------------------------------------------------------------
# Published checkpoints (`--load-from`, `models.convert`; see models/checkpoints.py)
#
# - `tsm`: mit-han-lab/temporal-shift-module. `{'state_dict': {'module.base_model.*', 'module.new_fc.*'}}`
#   (DataParallel around `TSN`): a torchvision ResNet whose bottleneck `conv1` is wrapped by `TemporalShift`
#   (`conv1.net.weight`), the classifier `new_fc` (or `base_model.fc` when trained without dropout).
# - `dyreg`: bit-ml/DyReg-GNN, the TSM layout plus its graph positions (`dyreg.dyreg_checkpoint_rename`).
# - `mmaction2_resnet`: open-mmlab/mmaction2 ResNet-based recognizers (`Recognizer2D/3D`): `backbone.*` with
#   `ConvModule`s (`conv1.conv`, `conv1.bn` -> `conv1`, `bn1`; `downsample.conv/bn` -> `downsample.0/1`;
#   TSM's shift wrapper `conv1.conv.net`), `cls_head.fc_cls` -> the head.
# - `mmaction`: any other `backbone.*` / `cls_head.fc_cls.*` file (MMAction v1's ResNet has torchvision
#   names): `backbone.` stripped, the head renamed.
# ImageNet ResNets (torchvision) go to `TSM.load_imagenet_resnet` (format `imagenet_resnet`, resnet3d.py).


def _tsn_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return any(k.startswith("base_model.") for k in keys) and not any(".dynamic_graph." in k for k in keys)


def _dyreg_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return any(k.startswith("base_model.") for k in keys) and any(".dynamic_graph." in k for k in keys)


def _tsn_rename(key: str, model: nn.Module) -> Target:
    """TSN(base_model=ResNet, new_fc), the same for TSM and DyReg-GNN."""
    if key.startswith("new_fc."):
        return (classifier(model) + key[len("new_fc") :], None)
    if not key.startswith("base_model."):
        return None
    key = key[len("base_model.") :]
    # TemporalShift(net=conv1) on the residual branch ("blockres"): the conv is `net`.
    key = re.sub(r"^(layer\d+\.\d+)\.conv1\.net\.", r"\1.conv1.", key)
    if key.startswith("fc."):  # trained with dropout 0: the classifier stays base_model.fc
        return (classifier(model) + key[len("fc") :], None)
    return dyreg_checkpoint_rename(key) or (key, None)


def _mmaction2_resnet_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "backbone.conv1.conv.weight" in keys


def _mmaction_head(key: str, model: nn.Module) -> Target:
    if key.startswith("cls_head.fc_cls."):
        return (classifier(model) + key[len("cls_head.fc_cls") :], None)
    return None


def _mmaction2_resnet_rename(key: str, model: nn.Module) -> Target:
    if not key.startswith("backbone."):
        return _mmaction_head(key, model)
    key = key[len("backbone.") :]
    m = re.match(r"^(.*?)(conv(\d)|downsample)\.(conv|bn)\.(?:net\.)?(.*)$", key)
    if m is None:
        return None
    where, module, index, part, tail = m.groups()
    if module == "downsample":
        return (f"{where}downsample.{0 if part == 'conv' else 1}.{tail}", None)
    return (f"{where}{'conv' if part == 'conv' else 'bn'}{index}.{tail}", None)


def _mmaction_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return any(k.startswith("backbone.") for k in keys) and all(k.startswith(("backbone.", "cls_head.")) for k in keys)


def _mmaction_rename(key: str, model: nn.Module) -> Target:
    return (key[len("backbone.") :], None) if key.startswith("backbone.") else _mmaction_head(key, model)


register_format(
    Format(
        "dyreg",
        "DyReg-GNN (bit-ml/DyReg-GNN: base_model.* with conv2.0.block / conv2.1.dynamic_graph, new_fc)",
        _dyreg_detect,
        _tsn_rename,
        conflicts=dyreg_anchor_conflicts,
        wrappers=("base_model",),
        priority=70,
    )
)
register_format(
    Format(
        "tsm",
        "TSM (mit-han-lab/temporal-shift-module: base_model.* with conv1.net, new_fc)",
        _tsn_detect,
        _tsn_rename,
        wrappers=("base_model",),
        priority=60,
    )
)
register_format(
    Format(
        "mmaction2_resnet",
        "mmaction2 ResNet recognizer (backbone.* ConvModules, cls_head.fc_cls)",
        _mmaction2_resnet_detect,
        _mmaction2_resnet_rename,
        wrappers=("backbone", "cls_head"),
        priority=20,
    )
)
register_format(
    Format(
        "mmaction",
        "mmaction recognizer (backbone.*, cls_head.fc_cls)",
        _mmaction_detect,
        _mmaction_rename,
        wrappers=("backbone", "cls_head"),
        priority=10,
    )
)
