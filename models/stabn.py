"""ST-ABN: Spatio-Temporal Attention Branch Network.

Paper: "Attention Branch Network with Spatio-Temporal Attention for Video Action Recognition"
(ST-ABN), Mitsuhara, Fukui, Hirakawa, Yamashita and Fujiyoshi (reference code:
machine-perception-robotics-group/ST-ABN_PyTorch, Something-Something v1, 32 frames).

A 3D ResNet-50 (conv1 1x7x7 with spatial stride 2, max-pool 1x3x3, 3x1x1 inflation of the first
bottleneck convolution in layers 3 and 4, no temporal stride) runs up to layer3: x (C3, T, h, w).
Two branches follow:

- attention branch: a copy of layer4 with spatial stride 1 -> BN -> 1x1x1 conv to `classes`
  channels -> BN -> ReLU = ax (classes, T, h, w), from which
  * spatial attention  = sigmoid(BN(conv1x1x1 classes->1 (ax)))         -> (N, 1, T, h, w);
  * temporal attention = conv3x3x3 classes->1 -> BN -> ReLU, a 1x1 conv mixing the T frame maps
    (as the reference code), per-frame spatial average, FC(T, T) -> ReLU -> FC(T, T) -> sigmoid
                                                                          -> (N, 1, T, 1, 1);
  * attention logits   = conv1x1x1 classes->classes, spatial average -> (classes, T) flattened
    -> dropout -> Linear(classes * T, classes);
- perception branch: s = x * spatial_att + x, t = x * temporal_att, concat(s, t) (2*C3) ->
  1x1x1 conv to C3 -> BN -> ReLU -> layer4 (spatial stride 2) -> global average -> dropout ->
  Linear(C4, classes).

The attention maps are the model's explanation output. The class count and the clip length come
from the constructor (the temporal FCs and the attention classifier are sized by `num_frames`);
map sizes are taken from the input, so any H, W divisible enough works.

Model-provided loss convention: a model may define `compute_loss(outputs, targets) -> Tensor`;
the engine then calls it on the model's raw forward output instead of cross-entropy on a tensor
of logits. ST-ABN uses it because it trains both heads: CE(perception) + CE(attention), equal
weights as the reference. Its forward returns a dict whose "logits" entry is the prediction.
"""

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from action_launch.models._formats import Format, Ignored, Target, register_format, register_head_modules
from action_launch.models._registry import register_preset
from action_launch.models.resnet3d import (
    Bottleneck3d,
    Stem3d,
    check_stages,
    init_resnet_weights,
    load_resnet2d_state_dict,
    make_layer3d,
)


class STABN(nn.Module):
    """3D ResNet with a spatio-temporal attention branch; see the module docstring."""

    clip_length_arg = "num_frames"
    """The constructor argument that fixes the input's clip length (the config refuses another `data.num_frames`)."""

    def __init__(
        self,
        num_classes: int = 174,
        num_frames: int = 32,
        layers: Tuple[int, ...] = (3, 4, 6, 3),
        widths: Tuple[int, ...] = (64, 128, 256, 512),
        inflate: Tuple[int, ...] = (0, 0, 1, 1),
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        """
        Args:
            num_classes: classes of both heads (the attention branch has `num_classes` channels).
            num_frames: clip length T; sizes the temporal-attention FCs and the attention classifier.
            layers: bottlenecks per stage (ResNet-50: 3, 4, 6, 3).
            widths: bottleneck widths per stage (stage output = 4 x width; stem width = widths[0]).
            inflate: per stage, 1 makes each bottleneck's first conv 3x1x1 (reference: 0, 0, 1, 1).
            dropout: dropout before both classifiers.
            in_channels: input channels (3 for RGB).
        """
        super().__init__()
        check_stages(widths, layers)
        if len(inflate) != 4:
            raise ValueError(f"inflate needs 4 stage flags, got {tuple(inflate)}")
        if num_classes < 1 or num_frames < 1:
            raise ValueError(f"num_classes={num_classes} and num_frames={num_frames} must be positive")
        self.num_classes = num_classes
        self.num_frames = num_frames
        exp = Bottleneck3d.expansion
        c3, c4 = widths[2] * exp, widths[3] * exp
        k, t = num_classes, num_frames

        # Backbone to layer3 (no temporal stride anywhere: T stays num_frames).
        self.stem = Stem3d(in_channels, widths[0])
        self.layer1 = make_layer3d(widths[0], widths[0], layers[0], 1, inflate=bool(inflate[0]))
        self.layer2 = make_layer3d(widths[0] * exp, widths[1], layers[1], 2, inflate=bool(inflate[1]))
        self.layer3 = make_layer3d(widths[1] * exp, widths[2], layers[2], 2, inflate=bool(inflate[2]))

        # Attention branch.
        self.att_layer4 = make_layer3d(c3, widths[3], layers[3], 1, inflate=bool(inflate[3]))
        self.att_bn = nn.BatchNorm3d(c4)
        self.att_conv = nn.Conv3d(c4, k, 1, bias=False)
        self.att_bn2 = nn.BatchNorm3d(k)
        self.sa_conv = nn.Conv3d(k, 1, 1, bias=False)
        self.sa_bn = nn.BatchNorm3d(1)
        self.ta_conv = nn.Conv3d(k, 1, 3, padding=1, bias=False)
        self.ta_bn = nn.BatchNorm3d(1)
        self.ta_frame_conv = nn.Conv2d(t, t, 1, bias=False)
        self.ta_fc1 = nn.Linear(t, t)
        self.ta_fc2 = nn.Linear(t, t)
        self.att_logit_conv = nn.Conv3d(k, k, 1, bias=False)
        self.att_dropout = nn.Dropout(dropout)
        self.att_fc = nn.Linear(k * t, k)

        # Perception branch.
        self.fuse_conv = nn.Conv3d(2 * c3, c3, 1, bias=False)
        self.fuse_bn = nn.BatchNorm3d(c3)
        self.layer4 = make_layer3d(c3, widths[3], layers[3], 2, inflate=bool(inflate[3]))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c4, k)

        self.relu = nn.ReLU(inplace=True)
        init_resnet_weights(self)
        for m in (self.ta_fc1, self.ta_fc2, self.att_fc, self.fc):  # as the reference heads
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> layer3 features (N, C3, T, H/16, W/16)."""
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """layer3 features -> (spatial_att (N,1,T,h,w), temporal_att (N,1,T,1,1), att_logits (N,K))."""
        ax = self.att_bn(self.att_layer4(x))
        ax = self.relu(self.att_bn2(self.att_conv(ax)))  # (N, K, T, h, w)

        spatial = torch.sigmoid(self.sa_bn(self.sa_conv(ax)))

        ta = self.relu(self.ta_bn(self.ta_conv(ax))).squeeze(1)  # (N, T, h, w): frames as channels
        ta = self.relu(self.ta_frame_conv(ta)).mean(dim=(2, 3))  # (N, T)
        ta = torch.sigmoid(self.ta_fc2(self.relu(self.ta_fc1(ta))))
        temporal = ta[:, None, :, None, None]

        logits = self.att_logit_conv(ax).mean(dim=(3, 4)).flatten(1)  # (N, K*T), class-major
        logits = self.att_fc(self.att_dropout(logits))
        return spatial, temporal, logits

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, C, T, H, W) -> {"logits", "att_logits", "spatial_att", "temporal_att"}."""
        if x.ndim != 5:
            raise ValueError(f"expected input (N, C, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] != self.num_frames:
            raise ValueError(
                f"input has T={x.shape[2]} frames but the model was built with "
                f"num_frames={self.num_frames} (the temporal attention FCs are T x T)"
            )
        x = self.forward_backbone(x)
        spatial, temporal, att_logits = self.attention(x)
        fused = torch.cat([x * spatial + x, x * temporal], dim=1)
        y = self.relu(self.fuse_bn(self.fuse_conv(fused)))
        y = self.layer4(y).mean(dim=(2, 3, 4))
        logits = self.fc(self.dropout(y))
        return {"logits": logits, "att_logits": att_logits, "spatial_att": spatial, "temporal_att": temporal}

    def load_imagenet_resnet(self, state_dict: Mapping[str, Any]) -> Dict[str, List[str]]:
        """Initialise the 3D ResNet from a 2D ImageNet ResNet state dict (torchvision names), I3D style.

        `conv1`/`bn1` go to the stem, `layer1`-`layer4` by name (layer4 is the perception branch's);
        2D kernels are repeated over the temporal kernel size and divided by it (3x1x1 in layers 3-4);
        the 1000-class `fc` is skipped for its shape. Nothing goes to the attention branch (its copy of
        layer4, `att_layer4`, included), as in the reference, whose `ResNet_SlowFast.init_weights` copies
        a 2D ResNet's tensor only into the module of the same name; there, every convolution it does not
        fill keeps PyTorch's default initialisation (its Kaiming init is for training from scratch), and
        so it does here. Returns `load_resnet2d_state_dict`'s report
        (`att_layer4.*` among `missing`).
        """

        def rename(key: str) -> Tuple[str, ...]:
            if key.startswith(("conv1.", "bn1.")):
                return ("stem." + key,)
            return (key,)

        report = load_resnet2d_state_dict(self, state_dict, rename)
        # The reference applies its Kaiming init only when training from scratch: with a 2D file, a
        # convolution the file does not fill keeps PyTorch's default initialisation.
        missing = set(report["missing"])
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)) and f"{name}.weight" in missing:
                module.reset_parameters()
        return report

    def compute_loss(self, outputs: Dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the perception head plus cross-entropy of the attention head."""
        # float(): under fp16/bf16 training the logits arrive in half precision.
        return F.cross_entropy(outputs["logits"].float(), targets) + F.cross_entropy(
            outputs["att_logits"].float(), targets
        )


# --------------------------------------------------------------------------------------------
# Presets

# Paper: Something-Something v1 (174 classes), 32 frames x 224^2: 55,665,928 parameters
# (54,340,396 without the two classifiers; the reference reports ~55.7M / 54.3M).
register_preset("stabn_r50", STABN, num_params=55_665_928, num_classes=174, num_frames=32)

# Tiny preset for tests and CPU demos: 4 frames x 64^2, widths 8/16/32/64, one block per stage.
register_preset("stabn_r50_tiny", STABN, num_classes=4, num_frames=4, layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))


# --------------------------------------------------------------------------------------------
# Published checkpoints (`--load-from`, `models.convert`; see models/checkpoints.py)
#
# `stabn_mmaction`: machine-perception-robotics-group/ST-ABN_PyTorch (MMAction v1, `TSN3D`):
# `{'state_dict': {'backbone.*', 'necks.*', 'cls_head.fc_cls.*'}}`. The backbone (`ResNet_SlowFast`) holds
# the attention branch (`bn_att`, `att_conv`, `t_att_conv`, ...; table `_STABN`), the neck's `att_head.fc` is
# the attention classifier; the neck's other modules (TPN leftovers that its forward never calls) are ignored.
# ImageNet ResNets (torchvision) go to `STABN.load_imagenet_resnet` (format `imagenet_resnet`, resnet3d.py).

# Both classifiers and the attention branch's class-sized layers (K channels, K x K, K*T -> K): a file of
# another class count skips exactly these.
register_head_modules(STABN, ("fc", "att_fc", "att_conv", "att_bn2", "sa_conv", "ta_conv", "att_logit_conv"))

_STABN = {
    "conv1": "stem.conv1",
    "bn1": "stem.bn1",
    "bn_att": "att_bn",
    "att_conv": "att_conv",
    "bn_att2": "att_bn2",
    "att_conv3": "sa_conv",
    "bn_att3": "sa_bn",
    "t_att_conv": "ta_conv",
    "t_bn_att": "ta_bn",
    "t_att_conv2": "ta_frame_conv",
    "fc1": "ta_fc1",
    "fc2": "ta_fc2",
    "att_conv2": "att_logit_conv",
    "t_att_conv3": "fuse_conv",
    "bn_att4": "fuse_bn",
    "layer1": "layer1",
    "layer2": "layer2",
    "layer3": "layer3",
    "layer4": "layer4",
    "att_layer4": "att_layer4",
}


def _stabn_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return any(k.startswith(("backbone.att_layer4.", "backbone.t_att_conv.")) for k in keys)


def _stabn_rename(key: str, model: nn.Module) -> Target:
    if key.startswith("cls_head.fc_cls."):
        return ("fc." + key[len("cls_head.fc_cls.") :], None)
    if key.startswith("necks.att_head.fc."):
        return ("att_fc." + key[len("necks.att_head.fc.") :], None)
    if key.startswith("necks."):
        return Ignored("Att_head neck module that the ST-ABN forward never calls (only att_head.fc is used)")
    if not key.startswith("backbone."):
        return None
    first, _, rest = key[len("backbone.") :].partition(".")
    return (f"{_STABN[first]}.{rest}", None) if first in _STABN else None


register_format(
    Format(
        "stabn_mmaction",
        "ST-ABN (ST-ABN_PyTorch, MMAction TSN3D: backbone.* attention branch, necks.att_head.fc, cls_head.fc_cls)",
        _stabn_detect,
        _stabn_rename,
        wrappers=("backbone", "necks", "cls_head"),
        priority=30,
    )
)
