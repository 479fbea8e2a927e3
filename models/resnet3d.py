"""Shared 3D ResNet pieces: an inflatable bottleneck, its stage builder and the 1xkxk stem.

The I3D/"slow pathway" style used by ST-ABN (Mitsuhara et al.): a 2D ResNet whose 1x1 first
convolution of a bottleneck may be inflated to 3x1x1 (temporal kernel 3, padding 1), so a stage
mixes neighbouring frames without changing the temporal length. Strides are spatial only unless a
temporal stride is given. Layout (N, C, T, H, W). Parameter names follow torchvision's ResNet
(`conv1`, `bn1`, ..., `downsample.0/1`) so 2D ImageNet weights inflate onto them by name
(`load_resnet2d_state_dict`; I3D inflation: a 2D kernel repeated over time and divided by kt).
"""

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from action_launch.models._formats import DelegatedFormat, Format, register_format, shape_text

if TYPE_CHECKING:
    from action_launch.models.checkpoints import LoadReport


class Bottleneck3d(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 -> 1x1 (x4 expansion) on (N, C, T, H, W).

    `inflate=True` makes the first convolution 3x1x1; the stride sits on the 3x3 (PyTorch style).
    """

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, spatial_stride: int = 1, temporal_stride: int = 1, inflate: bool = False
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        kt = 3 if inflate else 1
        self.conv1 = nn.Conv3d(in_channels, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes,
            planes,
            (1, 3, 3),
            stride=(temporal_stride, spatial_stride, spatial_stride),
            padding=(0, 1, 1),
            bias=False,
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if spatial_stride != 1 or temporal_stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(
                    in_channels, out_channels, 1, stride=(temporal_stride, spatial_stride, spatial_stride), bias=False
                ),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer3d(
    in_channels: int, planes: int, blocks: int, spatial_stride: int = 1, temporal_stride: int = 1, inflate: bool = False
) -> nn.Sequential:
    """A ResNet stage of `blocks` bottlenecks; only the first one strides (and projects)."""
    layers = [Bottleneck3d(in_channels, planes, spatial_stride, temporal_stride, inflate)]
    layers += [Bottleneck3d(planes * Bottleneck3d.expansion, planes, inflate=inflate) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Stem3d(nn.Module):
    """conv kt x7x7 (spatial stride 2) -> BN -> ReLU -> max-pool 1x3x3 (spatial stride 2): H, W / 4."""

    def __init__(self, in_channels: int = 3, width: int = 64, kernel_t: int = 1, stride_t: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(
            in_channels, width, (kernel_t, 7, 7), stride=(stride_t, 2, 2), padding=(kernel_t // 2, 3, 3), bias=False
        )
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def init_resnet_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, BN weight 1 and bias 0 (torchvision's ResNet init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_stages(widths: Sequence[int], layers: Sequence[int]) -> None:
    """Validate a (widths, layers) pair: four positive stages each."""
    if len(widths) != 4 or len(layers) != 4:
        raise ValueError(f"widths and layers need 4 stages each, got widths={tuple(widths)} layers={tuple(layers)}")
    if min(widths) < 1 or min(layers) < 1:
        raise ValueError(f"widths and layers must be positive, got widths={tuple(widths)} layers={tuple(layers)}")


# --------------------------------------------------------------------------------------------
# ImageNet weights: a 2D torchvision ResNet state dict onto a 2D or inflated 3D ResNet


def is_resnet2d_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether `state` has torchvision's 2D ResNet layout (`conv1.weight` 4-D, `bn1.*`, `layer1.0.conv1.weight`)."""
    conv1 = state.get("conv1.weight")
    return (
        isinstance(conv1, torch.Tensor)
        and conv1.ndim == 4
        and "bn1.weight" in state
        and "layer1.0.conv1.weight" in state
    )


def inflate_conv_weight(weight: torch.Tensor, time_kernel: int) -> torch.Tensor:
    """I3D inflation: a 2D kernel (O, I, kh, kw) repeated over `time_kernel` frames and divided by it,
    (O, I, kt, kh, kw), so that on a temporally constant input the 3D conv gives the 2D conv's output."""
    return weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel


def load_resnet2d_state_dict(
    model: nn.Module, state: Mapping[str, Any], rename: Callable[[str], Sequence[str]] = lambda key: (key,)
) -> Dict[str, List[str]]:
    """Load a torchvision-layout 2D ResNet state dict into `model` by name, inflating 2D kernels where
    the model's tensor is 3D.

    `rename(key)` gives the model names a checkpoint key goes to (none: unexpected; several: copied
    to each; ST-ABN maps conv1/bn1 to its stem). A 4-D kernel meets a
    5-D one with the same (O, I, kh, kw) by `inflate_conv_weight` over the target's temporal size;
    any other shape difference (the 1000-class `fc`) is skipped and reported, as `load_weights`
    does for heads. Returns {"missing", "unexpected", "mismatched", "inflated"}: model keys not
    loaded, checkpoint keys with no home, keys skipped for their shape ("src -> target"), and
    the keys that were inflated.
    """
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    report: Dict[str, List[str]] = {"missing": [], "unexpected": [], "mismatched": [], "inflated": []}
    for key, value in state.items():
        targets = [t for t in rename(key) if t in own]
        if not targets:
            report["unexpected"].append(key)
        for target in targets:
            want = own[target].shape
            if value.ndim == 4 and len(want) == 5 and value.shape == want[:2] + want[3:]:
                out[target] = inflate_conv_weight(value, want[2]).to(own[target].dtype)
                report["inflated"].append(target)
            elif value.shape == want:
                out[target] = value
            else:
                report["mismatched"].append(f"{key} -> {target}" if key != target else key)
    model.load_state_dict(out, strict=False)
    report["missing"] = [k for k in own if k not in out]
    return report


# --------------------------------------------------------------------------------------------
# Published checkpoints: `imagenet_resnet`, a 2D ImageNet ResNet (torchvision) for a model with
# `load_imagenet_resnet` (TSM, ST-ABN), which copies or inflates it; reported as the mapped formats are.


def _imagenet_resnet_detect(state: Mapping[str, torch.Tensor], model: nn.Module, found: Format) -> Optional[str]:
    """A 2D torchvision ResNet the model has to inflate (its own names are not the file's)."""
    if not hasattr(model, "load_imagenet_resnet") or not is_resnet2d_state_dict(state):
        return None
    own = model.state_dict()
    if all(k in own and own[k].ndim == v.ndim for k, v in state.items()):
        return None
    return "2D ImageNet ResNet (torchvision names), inflated"


def _load_imagenet_resnet(model: Any, state: Mapping[str, torch.Tensor], report: "LoadReport") -> None:
    """`model.load_imagenet_resnet(state)` (any model with that loader), its result written into `report`."""
    result = model.load_imagenet_resnet(state)
    own = model.state_dict()
    missing = set(result.get("missing", []))
    for key in own:
        if key not in missing:
            report.loaded[key] = key
    renamed = {k: report.file_prefix + k for k in state}
    report.loaded = {k: renamed.get(k, renamed.get(k[len("stem.") :], k)) for k in report.loaded}
    for key in result.get("inflated", []):
        report.resized[key] = "2D kernel inflated over time (repeated, divided by the temporal size)"
    for entry in result.get("mismatched", []):
        src, _, dst = entry.partition(" -> ")
        dst = dst or src
        if dst in own and dst in missing:
            shape = shape_text(state[src]) if src in state else "?"
            report.skipped[dst] = f"file {src} {shape}, model {shape_text(own[dst])}"
    report.unexpected.extend(report.file_prefix + k for k in result.get("unexpected", []))
    report.finish()
    backbone = ("stem.", "conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    for key in list(report.missing):
        # a DyReg graph inside a ResNet block is no part of the 2D ResNet either
        if not key.startswith(backbone) or ".dyreg." in key:
            report.new[key] = "not part of a 2D image ResNet; keeps the model's initialisation"
    report.counters_new(state)


register_format(DelegatedFormat("imagenet_resnet", _imagenet_resnet_detect, _load_imagenet_resnet, priority=10))
