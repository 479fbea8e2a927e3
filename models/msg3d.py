"""MS-G3D: multi-scale graph convolution with unified spatial-temporal (G3D) windows.

Paper: "Disentangling and Unifying Graph Convolutions for Skeleton-Based Action Recognition",
Ziyu Liu, Hongwen Zhang, Zhenghao Chen, Zhiyong Wang, Wanli Ouyang, CVPR 2020.
Reference implementation: github.com/kenziyuliu/MS-G3D (shapes and parameter count follow it;
`msg3d_ntu60` has exactly its 3,194,595 parameters).

Also the personality-recognition variant (DYAD workshop @ ICCV 2021): the same network on SMPL
24-joint skeletons of one person with 15 input channels (xyz + 12 Laban features), widths
12/24/48 and five regression outputs (Big-Five traits, trained with MSE by the engine).

Input (N, C, T, V, M): batch, channels, frames, joints, persons. Output (N, num_classes).

Layout: blocks (MultiScaleGraphConv, TemporalWindows, G3D, MultiWindowG3D, TemporalConv,
MultiScaleTCN, MSG3DBlock), the MSG3D model, then presets (paper sizes, then tiny ones).
"""

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from action_launch.models._formats import Format, Ignored, Reshape, Target, classifier, register_format
from action_launch.models._registry import register_preset, rename_num_class
from action_launch.models.graphs import get_graph, multiscale_adjacency, window_adjacency

__all__ = ["MSG3D", "MSG3DBlock", "MultiScaleGraphConv", "MultiWindowG3D", "G3D", "MultiScaleTCN"]


class MultiScaleGraphConv(nn.Module):
    """Graph convolution over K disentangled scales: aggregate per scale, concatenate, 1x1 conv.

    out = ReLU(BN(Conv1x1(Dropout(concat_k (A_k + A_res_k) x)))), with A_res a learnable residual
    initialised near zero so training starts from the fixed normalised k-hop graphs.

    Args:
        in_channels: input channels C.
        out_channels: output channels.
        A_scales: (K, V, V) normalised adjacency stack (`graphs.multiscale_adjacency`).
        dropout: dropout on the aggregated scales, before the 1x1 conv (the reference's MLP
            dropout: 0 in MS-G3D, 0.6 / 0.4 in the personality code's MS-GCN / window graphs).
    """

    A: torch.Tensor  # the fixed graphs, a buffer

    def __init__(self, in_channels: int, out_channels: int, A_scales: np.ndarray, dropout: float = 0.0) -> None:
        super().__init__()
        K, V, _ = A_scales.shape
        self.num_scales = K
        # A fixed graph, not state: non-persistent so checkpoints hold only learned tensors.
        # torch.tensor (not from_numpy) follows a `with torch.device(...)` context (e.g. meta).
        self.register_buffer("A", torch.tensor(np.asarray(A_scales, dtype=np.float32)), persistent=False)
        self.A_res = nn.Parameter(torch.empty(K, V, V).uniform_(-1e-6, 1e-6))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels * K, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, T, V = x.shape
        A = self.A.to(x.dtype) + self.A_res.to(x.dtype)
        # (N, C, T, V) -> (N, K, C, T, V): node v gathers sum_u A_k[v, u] x[u] at every scale k.
        x = torch.einsum("kvu,nctu->nkctv", A, x).reshape(N, self.num_scales * C, T, V)
        return F.relu(self.bn(self.conv(self.dropout(x))))


class TemporalWindows(nn.Module):
    """Unfold (N, C, T, V) into windows of `window` frames: (N, C, T', window * V).

    The frames of a window become one graph of window * V nodes (frame-major, node t*V + v);
    T is zero-padded by (window - 1) // 2 on both sides, so with stride 1, T' = T.
    """

    def __init__(self, window: int, stride: int = 1) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"temporal window must be odd and >= 1, got {window}")
        self.window, self.stride = window, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, T, V = x.shape
        pad = (self.window - 1) // 2
        x = F.pad(x, (0, 0, pad, pad))
        x = x.unfold(2, self.window, self.stride)  # (N, C, T', V, window)
        return x.permute(0, 1, 2, 4, 3).reshape(N, C, -1, self.window * V)


class G3D(nn.Module):
    """One G3D pathway: multi-scale graph conv on the window graph, then collapse the window.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        A: (V, V) binary skeleton adjacency.
        num_scales: number of disentangled scales on the window graph.
        window: frames per window (odd).
        stride: temporal stride between windows.
        embed_channels: channels of the window graph conv (the collapse maps them to out).
        dropout: dropout of the window graph conv (`MultiScaleGraphConv`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        A: np.ndarray,
        num_scales: int,
        window: int,
        stride: int,
        embed_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.unfold = TemporalWindows(window, stride)
        self.gcn = MultiScaleGraphConv(
            in_channels, embed_channels, multiscale_adjacency(window_adjacency(A, window), num_scales), dropout
        )
        # Conv3d over (T', window, V) with kernel (1, window, 1): a learned weighting of the
        # window's frames, which collapses them back to one frame per window.
        self.collapse = nn.Conv3d(embed_channels, out_channels, kernel_size=(1, window, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, _, _, V = x.shape
        x = self.gcn(self.unfold(x))  # (N, E, T', window * V)
        x = x.reshape(N, x.shape[1], -1, self.window, V)
        return self.bn(self.collapse(x).squeeze(3))  # no activation: summed with the GCN path


class MultiWindowG3D(nn.Module):
    """Sum of G3D pathways with different window sizes (3 and 5 in the paper)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        A: np.ndarray,
        num_scales: int,
        stride: int,
        embed_channels: int,
        windows: Sequence[int] = (3, 5),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pathways = nn.ModuleList(
            G3D(in_channels, out_channels, A, num_scales, w, stride, embed_channels, dropout) for w in windows
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pathways[0](x)
        for g3d in self.pathways[1:]:
            out = out + g3d(x)
        return out


class TemporalConv(nn.Module):
    """Conv (kernel x 1) along T with 'same' padding for stride 1, then BN."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) * dilation // 2
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=(kernel_size, 1),
            padding=(pad, 0),
            stride=(stride, 1),
            dilation=(dilation, 1),
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MultiScaleTCN(nn.Module):
    """Multi-scale temporal conv: 6 branches of out/6 channels, concatenated, plus a residual.

    Branches: 1x1 bottleneck -> temporal conv k=3 with dilation 1, 2, 3, 4; 1x1 -> max-pool
    over 3 frames; a strided 1x1. Residual: identity when shapes allow, else a strided 1x1 conv.

    Args:
        in_channels: input channels.
        out_channels: output channels, a multiple of the number of branches (6).
        stride: temporal stride.
        dilations: dilations of the temporal conv branches.
        activation: ReLU at the end (False for the last TCN of the GCN path: it is summed first).
        dropout: dropout after each dilated branch and on the sum, before the activation (the
            personality code's addition, 0.4; MS-G3D has none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilations: Sequence[int] = (1, 2, 3, 4),
        kernel_size: int = 3,
        activation: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_branches = len(dilations) + 2
        if out_channels % num_branches:
            raise ValueError(f"MS-TCN out_channels={out_channels} must be a multiple of its {num_branches} branches")
        c = out_channels // num_branches

        def bottleneck() -> list:
            return [nn.Conv2d(in_channels, c, kernel_size=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

        dropped = [nn.Dropout(dropout)] if dropout > 0 else []  # last in its branch: no index moves
        branches = [
            nn.Sequential(*bottleneck(), TemporalConv(c, c, kernel_size, stride, d), *dropped) for d in dilations
        ]
        branches.append(
            nn.Sequential(*bottleneck(), nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)), nn.BatchNorm2d(c))
        )
        branches.append(nn.Sequential(nn.Conv2d(in_channels, c, kernel_size=1, stride=(stride, 1)), nn.BatchNorm2d(c)))
        self.branches = nn.ModuleList(branches)
        if in_channels == out_channels and stride == 1:
            self.residual: nn.Module = nn.Identity()
        else:
            self.residual = TemporalConv(in_channels, out_channels, kernel_size=1, stride=stride)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(torch.cat([branch(x) for branch in self.branches], dim=1) + self.residual(x))
        return F.relu(out) if self.activation else out


class MSG3DBlock(nn.Module):
    """One STGC block: ReLU(MS-GCN path + multi-window G3D path), then an MS-TCN.

    MS-GCN path: MS-GCN -> MS-TCN (stride) -> MS-TCN (no activation). The first block changes
    the width in its MS-GCN (in -> out); later blocks keep `in` there and widen in the temporal
    conv (GCN path) and in the window collapse (G3D path), as in the reference. The G3D path's
    window graph conv keeps `in` too, except in a first block on 3 input channels, where it maps
    in -> out at once: the reference's rule (`MS_G3D.__init__`: `if in_channels == 3:
    embed_channels_out = out_channels`), so a first block on xyz + Laban features (15 channels)
    keeps 15 channels in its window graph conv and widens only at the collapse.

    Args:
        in_channels: input channels.
        out_channels: output channels (multiple of 6).
        A: (V, V) binary skeleton adjacency.
        num_gcn_scales: scales of the MS-GCN path.
        num_g3d_scales: scales of the G3D window graphs.
        stride: temporal stride of the block.
        first: whether this is the first block (graph convs map in -> out at once).
        gcn_dropout, g3d_dropout, tcn_dropout: dropout of the MS-GCN, the window graph convs and
            every MS-TCN (`MSG3D`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        A: np.ndarray,
        num_gcn_scales: int,
        num_g3d_scales: int,
        stride: int = 1,
        first: bool = False,
        gcn_dropout: float = 0.0,
        g3d_dropout: float = 0.0,
        tcn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = out_channels if first else in_channels
        self.gcn_path = nn.Sequential(
            MultiScaleGraphConv(in_channels, hidden, multiscale_adjacency(A, num_gcn_scales), gcn_dropout),
            MultiScaleTCN(hidden, out_channels, stride=stride, dropout=tcn_dropout),
            MultiScaleTCN(out_channels, out_channels, activation=False, dropout=tcn_dropout),
        )
        embed = out_channels if first and in_channels == 3 else in_channels
        self.g3d_path = MultiWindowG3D(in_channels, out_channels, A, num_g3d_scales, stride, embed, dropout=g3d_dropout)
        self.tcn = MultiScaleTCN(out_channels, out_channels, dropout=tcn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tcn(F.relu(self.gcn_path(x) + self.g3d_path(x)))


class MSG3D(nn.Module):
    """MS-G3D network: data BN -> 3 STGC blocks (stride 1, 2, 2) -> pool over T, V, M -> linear.

    Args:
        num_classes: outputs (classes, or regression targets when task='regression'). The reference
            code's name, `num_class`, is still accepted as a keyword, with a deprecation warning.
        num_point: joints V; must equal the graph's number of joints.
        num_person: persons M per sample (averaged before the classifier).
        num_gcn_scales: scales of the MS-GCN paths (13 for NTU, 8 for Kinetics).
        num_g3d_scales: scales of the G3D window graphs (6 for NTU, 8 for Kinetics).
        graph: skeleton graph name: 'ntu-rgb+d', 'kinetics', 'smpl-24' or 'smpl-24-dense' (every joint
            linked to every other: the graph the personality authors' code computes with).
        in_channels: input channels C (3 for xyz, 15 for xyz + Laban features).
        channels: widths of the three blocks, each a multiple of 6.
        dropout: dropout before the final linear layer (the reference uses none).
        gcn_dropout: dropout on each MS-GCN's aggregated input, before its 1x1 conv (MS-G3D: 0;
            the personality code: 0.6).
        g3d_dropout: the same in the G3D window graph convs (MS-G3D: 0; personality: 0.4).
        tcn_dropout: dropout in every MS-TCN, after each dilated branch and on the sum (MS-G3D: 0;
            personality: 0.4).
        task: 'classification' (logits) or 'regression' (raw outputs); the network is the same,
            the engine picks the loss (cross-entropy or MSE) from it.
    """

    def __init__(
        self,
        num_classes: int = 60,
        num_point: int = 25,
        num_person: int = 2,
        num_gcn_scales: int = 13,
        num_g3d_scales: int = 6,
        graph: str = "ntu-rgb+d",
        in_channels: int = 3,
        channels: Tuple[int, int, int] = (96, 192, 384),
        dropout: float = 0.0,
        gcn_dropout: float = 0.0,
        g3d_dropout: float = 0.0,
        tcn_dropout: float = 0.0,
        task: str = "classification",
        **deprecated: Any,
    ) -> None:
        super().__init__()
        if deprecated:
            unknown = sorted(set(deprecated) - {"num_class"})
            if unknown:
                raise TypeError(f"MSG3D.__init__() got an unexpected keyword argument {unknown[0]!r}")
            # `num_class=` (the old name): num_classes is then still its default unless both were given.
            given = {"num_classes": num_classes} if num_classes != 60 else {}
            num_classes = rename_num_class({**given, **deprecated}, "MSG3D(num_class=...)")["num_classes"]
        if task not in ("classification", "regression"):
            raise ValueError(f"model.task must be 'classification' or 'regression', got {task!r}")
        skeleton = get_graph(graph)
        if num_point != skeleton.num_nodes:
            raise ValueError(f"model.num_point={num_point} but graph {skeleton.name!r} has {skeleton.num_nodes} joints")
        for key, p in (
            ("dropout", dropout),
            ("gcn_dropout", gcn_dropout),
            ("g3d_dropout", g3d_dropout),
            ("tcn_dropout", tcn_dropout),
        ):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"model.{key} must be in [0, 1), got {p}")
        widths = tuple(int(c) for c in channels)
        if len(widths) != 3 or any(c <= 0 or c % 6 for c in widths):
            raise ValueError(f"model.channels must be 3 positive multiples of 6, got {widths}")
        self.num_classes, self.num_point, self.num_person = num_classes, num_point, num_person
        self.in_channels, self.task = in_channels, task
        A = skeleton.A

        self.data_bn = nn.BatchNorm1d(num_person * num_point * in_channels)
        c1, c2, c3 = widths
        drops: Dict[str, Any] = dict(gcn_dropout=gcn_dropout, g3d_dropout=g3d_dropout, tcn_dropout=tcn_dropout)
        self.blocks = nn.ModuleList(
            [
                MSG3DBlock(in_channels, c1, A, num_gcn_scales, num_g3d_scales, stride=1, first=True, **drops),
                MSG3DBlock(c1, c2, A, num_gcn_scales, num_g3d_scales, stride=2, **drops),
                MSG3DBlock(c2, c3, A, num_gcn_scales, num_g3d_scales, stride=2, **drops),
            ]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c3, num_classes)

    @property
    def num_class(self) -> int:
        """Deprecated alias of `num_classes` (the reference code's name)."""
        return self.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> pooled features (N, channels[-1])."""
        if x.dim() != 5:
            raise ValueError(f"MSG3D expects input (N, C, T, V, M), got shape {tuple(x.shape)}")
        N, C, T, V, M = x.shape
        if (self.in_channels, self.num_point, self.num_person) != (C, V, M):
            raise ValueError(
                f"MSG3D built for C={self.in_channels}, V={self.num_point}, "
                f"M={self.num_person}; got input {tuple(x.shape)} (N, C, T, V, M)"
            )
        # Normalise each (person, joint, channel) over the batch and time, then fold persons
        # into the batch.
        x = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(N, M * V * C, T))
        x = x.reshape(N, M, V, C, T).permute(0, 1, 3, 4, 2).reshape(N * M, C, T, V)
        for block in self.blocks:
            x = block(x)
        return x.reshape(N, M, x.shape[1], -1).mean(3).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> (N, num_classes)."""
        return self.fc(self.dropout(self.forward_features(x)))


# --------------------------------------------------------------------------------------------
# Presets. Paper sizes first, then tiny siblings that train on a CPU in seconds (T=16).

_NTU: Dict[str, Any] = dict(num_point=25, num_person=2, graph="ntu-rgb+d", in_channels=3)
_KINETICS: Dict[str, Any] = dict(num_point=18, num_person=2, graph="kinetics", in_channels=3)
# One person, SMPL joints, xyz + 12 Laban features, five Big-Five trait scores: the network of the
# authors' code (Rgtemze/PersonalityRecognition, model/msg3d_laban.py with
# config/personality/train_joint_laban.yaml: layer_channels 12, 13/6 scales, 24 joints, in_channels
# 15), 426,551 parameters (375k of them the A_res residual graphs). That code reports 560,459 (~560k):
# its Model also builds a second copy of the second STGC block (`l2_gcn3d2`, `l2_sgcn2`, `l2_tcn2`:
# 133,908 parameters) that forward never calls; 560,459 - 133,908 = 426,551. Its graph file lists the
# SMPL edges as lists, which index whole rows of A, so that model runs on a fully connected graph; this
# preset keeps the SMPL skeleton the paper describes (`model.graph: smpl-24-dense` is theirs). Its dropouts
# are that code's defaults (ms_gcn.py 0.6, ms_gtcn.py 0.4, ms_tcn.py 0.4). README.md, "Models and data".
_PERSONALITY: Dict[str, Any] = dict(
    num_point=24,
    num_person=1,
    graph="smpl-24",
    in_channels=15,
    num_classes=5,
    channels=(12, 24, 48),
    task="regression",
    gcn_dropout=0.6,
    g3d_dropout=0.4,
    tcn_dropout=0.4,
)
_TINY: Dict[str, Any] = dict(num_gcn_scales=3, num_g3d_scales=2, channels=(12, 24, 48))

register_preset("msg3d_ntu60", MSG3D, num_params=3_194_595, num_classes=60, num_gcn_scales=13, num_g3d_scales=6, **_NTU)
register_preset(
    "msg3d_kinetics", MSG3D, num_params=3_144_328, num_classes=400, num_gcn_scales=8, num_g3d_scales=8, **_KINETICS
)
register_preset("msg3d_personality", MSG3D, num_params=426_551, num_gcn_scales=13, num_g3d_scales=6, **_PERSONALITY)

register_preset("msg3d_ntu60_tiny", MSG3D, num_classes=60, **_NTU, **_TINY)
register_preset("msg3d_kinetics_tiny", MSG3D, num_classes=400, **_KINETICS, **_TINY)
register_preset("msg3d_personality_tiny", MSG3D, **{**_PERSONALITY, **_TINY})


# --------------------------------------------------------------------------------------------
# Published checkpoints (`--load-from`, `models.convert`; see models/checkpoints.py)
#
# - `msg3d`: kenziyuliu/MS-G3D `.pt` (model/msg3d.py, ms_gcn.py, ms_gtcn.py, ms_tcn.py, mlp.py; a plain state
#   dict, `module.` already stripped by its `save_weights`): `sgcn{i}` / `gcn3d{i}` / `tcn{i}` become
#   `blocks.{i-1}.gcn_path` / `.g3d_path` / `.tcn`; `MLP.layers.0/1` become `conv` / `bn`; `out_conv` /
#   `out_bn` become `collapse` / `bn`. The learned graph residuals `A_res` are stored as the K scales stacked
#   row-wise, (K*V, V); ours are (K, V, V), the same numbers (upstream's `view(N, C, T, K, V)` of the
#   aggregated rows).
# - `msg3d_personality`: Rgtemze/PersonalityRecognition (`model/msg3d_laban.py`, MS-G3D's layout and `.pt`
#   files): its MLPs start with a Dropout, so `MLP.layers.1/2` are `conv` / `bn`; two input BatchNorms,
#   `data_bn_x` (M*V*3 xyz) and `data_bn_laban` (M*V*12 Laban), become our one `data_bn` over (M, V, 15),
#   interleaved per joint; `l2_gcn3d2` / `l2_sgcn2` / `l2_tcn2`, a copy of the second block that its forward
#   never calls, are ignored. Its model runs on `graph: smpl-24-dense`.


def _scales(value: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    if value.ndim == 2 and len(shape) == 3 and value.shape == (shape[0] * shape[1], shape[2]):
        return value.reshape(shape)
    return None


# MS-G3D's A_res: K adjacency scales stacked row-wise (K*V, V) -> (K, V, V), the same numbers.
SCALES = Reshape("K scales stacked row-wise (K*V, V) -> (K, V, V)", _scales)


def _msg3d_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return any(re.match(r"^(sgcn|gcn3d)1\.", k) is not None for k in keys)


def _msg3d_mlp(rest: str, first: int) -> Optional[str]:
    """MLP(in, [out]) = layers [Dropout (only at dropout > 0.001), Conv2d, BatchNorm2d, activation]: the conv
    is `layers.<first>`, the BatchNorm the next one."""
    m = re.match(r"^mlp\.layers\.(\d+)\.(.*)$", rest)
    if m is None or int(m[1]) not in (first, first + 1):
        return None
    return ("conv." if int(m[1]) == first else "bn.") + m[2]


def _msg3d_rename(key: str, model: nn.Module, mlp_conv: int = 0) -> Target:
    if key.startswith(("data_bn.", "fc.")):
        return (key if key.startswith("data_bn.") else classifier(model) + key[len("fc") :], None)
    m = re.match(r"^(sgcn|gcn3d|tcn)(\d+)\.(.*)$", key)
    if m is None:
        return None
    kind, block, rest = m[1], int(m[2]) - 1, m[3]
    if kind == "tcn":
        return (f"blocks.{block}.tcn.{rest}", None)
    if kind == "sgcn":  # Sequential(MS_GCN, MS_TCN, MS_TCN)
        if rest == "0.A_res":
            return (f"blocks.{block}.gcn_path.0.A_res", SCALES)
        if rest.startswith("0."):
            tail = _msg3d_mlp(rest[2:], mlp_conv)
            return None if tail is None else (f"blocks.{block}.gcn_path.0.{tail}", None)
        return (f"blocks.{block}.gcn_path.{rest}", None)
    # gcn3d: MultiWindow_MS_G3D.gcn3d[w] = MS_G3D(gcn3d = Sequential(Unfold, SpatialTemporal_MS_GCN), out_conv, out_bn)
    m = re.match(r"^gcn3d\.(\d+)\.(.*)$", rest)
    if m is None:
        return None
    prefix, rest = f"blocks.{block}.g3d_path.pathways.{m[1]}.", m[2]
    if rest == "gcn3d.1.A_res":
        return (prefix + "gcn.A_res", SCALES)
    if rest.startswith("gcn3d.1."):
        tail = _msg3d_mlp(rest[len("gcn3d.1.") :], mlp_conv)
        return None if tail is None else (prefix + "gcn." + tail, None)
    for theirs, ours in (("out_conv.", "collapse."), ("out_bn.", "bn.")):
        if rest.startswith(theirs):
            return (prefix + ours + rest[len(theirs) :], None)
    return None  # e.g. in1x1 (embed_factor != 1): no such layer here


_PERSONALITY_BN = "data_bn_x+data_bn_laban."


def _personality_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "data_bn_laban.weight" in keys and _msg3d_detect(keys, model)


def _personality_join(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """`data_bn_x` (xyz, M*V*3 channels) and `data_bn_laban` (M*V*L) -> one BatchNorm over (M, V, 3 + L):
    channels of each (person, joint) side by side, as the model concatenates them (`MSG3D.forward`)."""
    out, joined = dict(state), {}
    for name in ("weight", "bias", "running_mean", "running_var"):
        xyz, laban = state.get(f"data_bn_x.{name}"), state.get(f"data_bn_laban.{name}")
        if xyz is None or laban is None or xyz.ndim != 1 or xyz.numel() % 3:
            continue
        joints = xyz.numel() // 3
        if laban.ndim != 1 or laban.numel() % joints:
            continue
        out[_PERSONALITY_BN + name] = torch.cat([xyz.reshape(joints, 3), laban.reshape(joints, -1)], 1).reshape(-1)
        del out[f"data_bn_x.{name}"], out[f"data_bn_laban.{name}"]
        joined[_PERSONALITY_BN + name] = f"{joints} (person, joint) groups of 3 xyz + {laban.numel() // joints} Laban"
    if "data_bn_x.num_batches_tracked" in out and out.get("data_bn_laban.num_batches_tracked") is not None:
        out[_PERSONALITY_BN + "num_batches_tracked"] = out.pop("data_bn_x.num_batches_tracked")
        del out["data_bn_laban.num_batches_tracked"]
    return out, joined


def _personality_rename(key: str, model: nn.Module) -> Target:
    if key.startswith(_PERSONALITY_BN):
        return ("data_bn." + key[len(_PERSONALITY_BN) :], None)
    if key.startswith(("l2_gcn3d2.", "l2_sgcn2.", "l2_tcn2.")):
        return Ignored("a copy of the second block that the authors' Model builds and its forward never calls")
    return _msg3d_rename(key, model, mlp_conv=1)


register_format(
    Format(
        "msg3d_personality",
        "MS-G3D personality variant (Rgtemze/PersonalityRecognition: data_bn_x + data_bn_laban, "
        "MLPs after a Dropout, unused l2_* block)",
        _personality_detect,
        _personality_rename,
        _personality_join,
        priority=50,
    )
)
register_format(
    Format(
        "msg3d",
        "MS-G3D (kenziyuliu/MS-G3D: sgcn*/gcn3d*/tcn* blocks, A_res as (K*V, V))",
        _msg3d_detect,
        _msg3d_rename,
        priority=40,
    )
)
