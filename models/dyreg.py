"""DyReg-GNN: dynamic regions and a recurrent space-time graph inside a 2D CNN.

Paper: "Discovering Dynamic Salient Regions for Spatio-Temporal Graph Neural Networks",
Duta, Nicolicioiu and Leordeanu, NeurIPS 2021 (https://arxiv.org/abs/2009.08427); reference code
bit-ml/DyReg-GNN (`ops/dyreg.py`, `ops/rstg.py`, `ops/models_utils.py`), used on a TSM ResNet-50
(see `models/tsm.py`, which places it by name). This module computes what that code computes with
the settings of its `train_model.sh` (GRU, one send layer, sum combination, no update MLP, dot
attention, "big" offset generator, centre anchors).

`DynamicGraph` maps features (B, T, C, H, W) to (B, T, C, H, W) with 9 nodes (a 3x3 set):
1. regions: the reference's "fishnet" offset net (1x1 reduce, two unpadded-then-padded 3x3 convs
   down, a transposed conv back up with a skip, a 3x3 head, then a conv covering the whole
   remaining map, acting as a fully connected layer; at a 28-pixel map the sides are
   28 -> 13 -> 6 -> 13 -> 6 -> 1, at 14: 14 -> 6 -> 6 -> 6 -> 6 -> 1, at 7: 7 -> 5 -> 5 -> 5 -> 5
   -> 1, see `offset_net_geometry`) gives per frame an embedding for every node; a GRU runs over
   time per node; a Linear gives 4 offsets (size_h, size_w, centre_h, centre_w) multiplied by a
   learnable scale that starts at 0, so every region starts at its anchor;
2. each node has a separable tent kernel over the H x W pixels at integer positions 0..H-1:
   half-width exp(o) * (H / (2 * 3) + 1) + 1, centre H/2 * (1 + tanh(o + atanh(2 a / H - 1)))
   for an anchor a (in pixels) clamped to [0, H - 1], normalised to sum 1 (eps 1e-37). Node
   features are the kernel-weighted sum of the map plus a position embedding (a Linear on the
   flattened kernel);
3. RSTG: 3 iterations of (GRU over time per node; messages m_ij = LN(ReLU(Linear(x_i + x_j)));
   aggregation a_i = ReLU(sum_j softmax_j(q_i . k_j) m_ij + bias); x = LN(x + a)), then a GRU
   over time;
4. back to the map: out = sum_n node_n * kernel_n; an optional 1x1 projection (in_channels ->
   node_dim, GroupNorm(1), and back) narrows the graph when in_channels is large.

`DyRegResidual` wraps it as x + GroupNorm1(zero-initialised scale)(dyreg(x)) on (B*T, C, H, W), so
an inserted module starts as the identity. "LN" here normalises jointly over nodes (and node
pairs) and channels with a per-channel affine, as the reference's LayerNormAffineXC; the per-frame
map norms are GroupNorm with one group (the reference's LayerNormAffine2D: LayerNorm over C, H, W
with a per-channel affine).

No clip length or map size is built in: T comes from the input. `map_size` is the map side at
training size (the reference's `iH`); on a map of another size the graph does what the
reference's `--full_res` evaluation does: the offset net's input is average-pooled to `map_size`
(so its last conv still covers the whole map), the kernels are built at the actual size, and the
position embedding sees them average-pooled to `map_size` (not renormalised). At the training size
both poolings are skipped and the parameter count equals the reference's.
"""

import re
from typing import Any, Collection, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from action_launch.models._formats import SQUEEZE, Ignored, Target, register_new_part

ANCHORS = ("center", "grid")


class NodeNorm(nn.Module):
    """LayerNorm over the last `dims` axes (nodes [, nodes], channels), affine per channel."""

    def __init__(self, channels: int, dims: int = 2, eps: float = 1e-5) -> None:
        super().__init__()
        self.dims = dims
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-self.dims :], eps=self.eps) * self.weight + self.bias


def _time_gru(gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """Run `gru` over time for every node: (B, T, N, C) -> (B, T, N, C')."""
    b, t, n, c = x.shape
    y, _ = gru(x.permute(0, 2, 1, 3).reshape(b * n, t, c))
    return y.reshape(b, n, t, -1).permute(0, 2, 1, 3)


def offset_net_geometry(size: int) -> Tuple[Tuple[int, int], int, int]:
    """The offset net's layout for an input of side `size`: (strides, padding, final side).

    The reference's `get_fishnet_params` (ops/models_utils.py): above 20 pixels both downsampling
    convs have stride 2, above 10 only the first, else neither; the first 3x3 conv is never
    padded, the later ones (second down conv, transposed conv, head) are padded by 1 only where
    the second stride is 1. Its tabulated sizes (32 -> 15 -> 7, 28 -> 13 -> 6, 16 -> 7 -> 7,
    14 -> 6 -> 6, 8 -> 6 -> 6, 7 -> 5 -> 5) all follow this rule; the final side is what the last
    conv covers. (The reference's branch for sides above 50 adds a max-pool but cannot run; here
    those sides follow the rule above 20.)
    """
    if size < 3:
        raise ValueError(f"the offset net needs a map of at least 3 pixels, got {size}")
    s1, s2, pad = (2, 2, 0) if size > 20 else (2, 1, 1) if size > 10 else (1, 1, 1)
    first = (size - 3) // s1 + 1
    return (s1, s2), pad, (first + 2 * pad - 3) // s2 + 1


class OffsetNet(nn.Module):
    """Per-frame region embeddings (B*T, C, size, size) -> (B*T, out_features).

    The reference's Fishnet + global conv: 1x1 conv to 32 -> 3x3 conv to 32 (stride s1, no
    padding) -> 3x3 conv to 16 (stride s2, padding p) -> 3x3 transposed conv back to 32 (stride s2,
    padding p) + the skip from the first 3x3 conv -> 3x3 head to 16 (stride s2, padding p) -> a
    conv covering the whole remaining map to out_features. Each conv but the last is followed by
    ReLU and a GroupNorm(1). s1, s2, p from `offset_net_geometry(size)`.
    """

    def __init__(self, in_channels: int, out_features: int, size: int) -> None:
        super().__init__()
        (s1, s2), pad, grid = offset_net_geometry(size)
        self.size = size
        self.reduce = nn.Conv2d(in_channels, 32, 1)
        self.reduce_norm = nn.GroupNorm(1, 32)
        self.down1 = nn.Conv2d(32, 32, 3, stride=s1)
        self.down1_norm = nn.GroupNorm(1, 32)
        self.down2 = nn.Conv2d(32, 16, 3, stride=s2, padding=pad)
        self.down2_norm = nn.GroupNorm(1, 16)
        self.up = nn.ConvTranspose2d(16, 32, 3, stride=s2, padding=pad)
        self.up_norm = nn.GroupNorm(1, 32)
        self.head = nn.Conv2d(32, 16, 3, stride=s2, padding=pad)
        self.head_norm = nn.GroupNorm(1, 16)
        self.fc = nn.Conv2d(16, out_features, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"OffsetNet is built for {self.size}x{self.size} maps, got {tuple(x.shape[-2:])}")
        x = self.reduce_norm(F.relu(self.reduce(x)))
        skip = self.down1_norm(F.relu(self.down1(x)))
        x = self.down2_norm(F.relu(self.down2(skip)))
        # output_size: the skip's side; at the reference's sizes it is the transposed conv's own.
        x = self.up_norm(F.relu(self.up(x, output_size=skip.shape[-2:]))) + skip
        x = self.head_norm(F.relu(self.head(x)))
        return self.fc(x).flatten(1)  # the last conv covers the whole map: (B*T, out_features, 1, 1)


class RSTG(nn.Module):
    """Recurrent space-time graph on nodes (B, T, N, C); see the module docstring, step 3."""

    def __init__(self, dim: int, iterations: int = 3) -> None:
        super().__init__()
        self.iterations = iterations
        self.input_norm = NodeNorm(dim)
        self.time_gru = nn.GRU(dim, dim, batch_first=True)  # shared by the iterations
        self.send = nn.Linear(dim, dim)
        self.send_norm = NodeNorm(dim, dims=3)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.att_bias = nn.Parameter(torch.zeros(dim))
        self.update_norm = NodeNorm(dim)
        self.out_gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        for _ in range(self.iterations):
            x = _time_gru(self.time_gru, x)
            # Linear(x_i + x_j) = W x_i + W x_j + b: project once, then add every pair.
            sx = F.linear(x, self.send.weight)
            messages = F.relu(sx.unsqueeze(3) + sx.unsqueeze(2) + self.send.bias)  # (B, T, N, N, C)
            messages = self.send_norm(messages)
            att = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2), dim=-1)  # (B, T, N, N)
            agg = F.relu((att.unsqueeze(-1) * messages).sum(dim=3) + self.att_bias)
            x = self.update_norm(x + agg)
        return _time_gru(self.out_gru, x)


class DynamicGraph(nn.Module):
    """Dynamic-region graph on (B, T, C, H, W) -> (B, T, C, H, W); see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        node_dim: int = 0,
        grid: int = 3,
        offset_dim: int = 128,
        map_size: int = 14,
        iterations: int = 3,
        anchors: str = "center",
    ) -> None:
        """
        Args:
            in_channels: channels C of the feature map.
            node_dim: node width; 0 means in_channels, anything else adds 1x1 projections in and out.
            grid: nodes per side (3 -> 9 nodes).
            offset_dim: width of the region embeddings and of their GRU.
            map_size: side of the map at training size (28, 14, 7 in layers 2, 3, 4 at 224 input):
                sizes the position embedding and the offset net (`offset_net_geometry`); maps of
                another size are pooled to it for those two (the reference's full-resolution mode).
                Below 3 pixels the offset net runs on the map pooled up to 3 x 3.
            iterations: RSTG message-passing iterations.
            anchors: "center" (all regions start at the map centre, as the reference is trained) or
                "grid" (a grid x grid layout).
        """
        super().__init__()
        if anchors not in ANCHORS:
            raise ValueError(f"anchors={anchors!r} is not valid; choose one of {', '.join(ANCHORS)}")
        node_dim = node_dim or in_channels
        self.grid = grid
        self.num_nodes = grid * grid
        self.node_dim = node_dim
        self.offset_dim = offset_dim
        self.map_size = map_size
        self.anchors = anchors
        self.project = node_dim != in_channels
        if self.project:
            self.project_in = nn.Conv2d(in_channels, node_dim, 1)
            self.project_norm = nn.GroupNorm(1, node_dim)
            self.project_out = nn.Conv2d(node_dim, in_channels, 1)

        self.offset_net = OffsetNet(node_dim, self.num_nodes * offset_dim, max(3, map_size))
        self.offset_norm = NodeNorm(offset_dim)
        self.offset_gru = nn.GRU(offset_dim, offset_dim, batch_first=True)
        self.offset_gru_norm = NodeNorm(offset_dim)
        self.offset_fc = nn.Linear(offset_dim, 4)
        self.offset_scale = nn.Parameter(torch.zeros(4))  # 0: regions start at their anchors

        self.pos_embed = nn.Linear(map_size * map_size, node_dim)
        self.rstg = RSTG(node_dim, iterations)

    def offsets(self, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """(B*T, C, H, W) -> offsets (B*T, N, 4): log-size h, log-size w, centre h, centre w."""
        size = self.offset_net.size
        if x.shape[-2:] != (size, size):
            x = F.adaptive_avg_pool2d(x, size)
        e = self.offset_net(x).reshape(b, t, self.num_nodes, self.offset_dim)
        e = self.offset_gru_norm(_time_gru(self.offset_gru, self.offset_norm(e)))
        return (self.offset_fc(e) * self.offset_scale).reshape(b * t, self.num_nodes, 4)

    def _anchors(self, side: int, like: torch.Tensor) -> torch.Tensor:
        """Anchor positions in pixels along one side, per node: (N,) (rows for h, columns for w)."""
        if self.anchors == "center":
            a = like.new_full((self.grid,), side / 2)
        else:  # the centres of `grid` equal cells of [0, side]
            a = torch.linspace(0, side, 2 * self.grid + 1, device=like.device, dtype=like.dtype)[1::2]
        return a

    def kernels(self, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Offsets (B*T, N, 4) -> separable tent kernels (B*T, N, H, W), each summing to 1.

        Pixels sit at integer positions 0..side-1. A kernel's half-width is
        exp(o) * (side / (2 * grid) + 1) + 1 and its centre side/2 * (1 + tanh(o + atanh(2a/side - 1)))
        for the anchor a (pixels), clamped to [0, side - 1]: the reference's `get_dynamic_kernel`.
        Node n has anchor row n // grid and column n % grid.
        """
        ah = self._anchors(h, offsets).repeat_interleave(self.grid)  # node n -> row n // grid
        aw = self._anchors(w, offsets).repeat(self.grid)  # node n -> column n % grid

        def tent(size_o: torch.Tensor, centre_o: torch.Tensor, anchor: torch.Tensor, side: int) -> torch.Tensor:
            half = torch.exp(size_o) * (side / (2 * self.grid) + 1) + 1
            # the reference's order of operations: anchor + (tanh(.) * side/2 + side/2 - anchor)
            shift = torch.tanh(centre_o + torch.atanh(2 * anchor / side - 1)) * (side / 2) + side / 2 - anchor
            centre = torch.clamp(anchor + shift, 0, side - 1)
            pos = torch.arange(side, device=offsets.device, dtype=offsets.dtype)
            return F.relu(half.unsqueeze(-1) - (pos - centre.unsqueeze(-1)).abs())  # (B*T, N, side)

        kh = tent(offsets[..., 0], offsets[..., 2], ah, h)
        kw = tent(offsets[..., 1], offsets[..., 3], aw, w)
        kernel = kh.unsqueeze(-1) * kw.unsqueeze(-2)
        return kernel / (kernel.sum(dim=(-2, -1), keepdim=True) + 1e-37)

    def position_embedding(self, kernel: torch.Tensor) -> torch.Tensor:
        """Kernels (B*T, N, H, W) -> (B*T, N, node_dim), average-pooled to `map_size` when another size."""
        if kernel.shape[-2:] != (self.map_size, self.map_size):
            kernel = F.adaptive_avg_pool2d(kernel, self.map_size)  # not renormalised, as the reference
        return self.pos_embed(kernel.flatten(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"DynamicGraph expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t, _, h, w = x.shape
        x = x.reshape(b * t, *x.shape[2:])
        if self.project:
            x = self.project_norm(self.project_in(x))
        kernel = self.kernels(self.offsets(x, b, t), h, w)  # (B*T, N, H, W)
        flat = kernel.flatten(2)  # (B*T, N, H*W)
        nodes = flat @ x.flatten(2).transpose(1, 2)  # (B*T, N, C): kernel-weighted sum
        nodes = nodes + self.position_embedding(kernel)
        nodes = self.rstg(nodes.reshape(b, t, self.num_nodes, self.node_dim))
        out = (nodes.reshape(b * t, self.num_nodes, self.node_dim).transpose(1, 2) @ flat).reshape(b * t, -1, h, w)
        if self.project:
            out = self.project_out(out)
        return out.reshape(b, t, *out.shape[1:])


class DyRegResidual(nn.Module):
    """x + GroupNorm1(dyreg(x)) on (B*T, C, H, W), the norm's scale initialised to 0 (identity)."""

    def __init__(self, in_channels: int, **graph_kwargs: Any) -> None:
        super().__init__()
        self.dyreg = DynamicGraph(in_channels, **graph_kwargs)
        self.norm = nn.GroupNorm(1, in_channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bt = x.shape[0]
        if bt % num_frames:
            raise ValueError(f"batch*time={bt} is not a multiple of num_frames={num_frames}")
        y = self.dyreg(x.reshape(bt // num_frames, num_frames, *x.shape[1:]))
        return x + self.norm(y.reshape(x.shape))


def dyreg_kwargs(in_channels: int, map_size: int, max_node_dim: int = 256, offset_dim: int = 128) -> Dict[str, Any]:
    """DynamicGraph settings the reference uses (ops/models_config.py, ResNet-50 with
    `--bottleneck_graph --ch_div=4`) for a conv2 output of `in_channels` and side `map_size` at
    training size: node_dim = min(in_channels, max_node_dim) (a projection only where the map is
    wider, layer4 of ResNet-50); the offset net's layout follows from map_size.
    """
    return dict(node_dim=min(in_channels, max_node_dim), offset_dim=offset_dim, map_size=map_size)


# --------------------------------------------------------------------------------------------
# Published checkpoints: bit-ml/DyReg-GNN's graph positions (the format, TSM's layout around them, is in tsm.py)
#
# At each graph position the reference replaces a bottleneck's `conv2` by
# `Sequential(SplitBT(block=conv2), DynamicGraphWrapper)`: `conv2.0.block.weight` is the conv,
# `conv2.1.dynamic_graph.*` the graph (fishnet offset net, offset GRU, RSTG; table `_DYREG`),
# `conv2.1.norm_dict.residual_norm.{scale,bias}` (1, C, 1, 1) the residual norm. Per-channel affines stored
# as (1, C, 1, 1) / (1, 1, 1, C) become (C,). The anchor and pixel-position buffers (`ph_buf`, `pw_buf`,
# `arange_h_buf`, `arange_w_buf`) are constants the model recomputes; the anchors are checked against ours.

# (upstream suffix below `conv2.1.dynamic_graph.`, our suffix below `dyreg.dyreg.`); `*_norm` entries are
# LayerNormAffine*: `scale`/`bias` -> GroupNorm/NodeNorm `weight`/`bias`.
_DYREG = (
    ("project_i3d_linear.", "project_in."),
    ("project_back_i3d_linear.", "project_out."),
    ("norm_dict.dynamic_graph_projection.", "project_norm."),
    ("fishnet.conv1.", "offset_net.reduce."),
    ("fishnet.norm_dict.norm1.", "offset_net.reduce_norm."),
    ("fishnet.tail_conv.0.", "offset_net.down1."),
    ("fishnet.norm_dict.tail_norm_0.", "offset_net.down1_norm."),
    ("fishnet.tail_conv.1.", "offset_net.down2."),
    ("fishnet.norm_dict.tail_norm_1.", "offset_net.down2_norm."),
    ("fishnet.body_trans_conv.0.", "offset_net.up."),
    ("fishnet.norm_dict.body_trans_norm_0.", "offset_net.up_norm."),
    ("fishnet.head_conv.0.", "offset_net.head."),
    ("fishnet.norm_dict.head_norm_0.", "offset_net.head_norm."),
    ("global_conv.0.", "offset_net.fc."),
    ("norm_dict.offset_ln_feats_coords.", "offset_norm."),
    ("offset_lstm.", "offset_gru."),
    ("norm_dict.offset_ln_lstm.", "offset_gru_norm."),
    ("offset_pred.", "offset_fc."),
    ("offset_alpha", "offset_scale"),
    ("kernel_projection1.", "pos_embed."),
    ("rstg.norm_dict.before_graph_norm.", "rstg.input_norm."),
    ("rstg.internal_lstm.", "rstg.time_gru."),
    ("rstg.send_mlp.0.", "rstg.send."),
    ("rstg.norm_dict.send_message_norm.", "rstg.send_norm."),
    ("rstg.att_q.", "rstg.query."),
    ("rstg.att_k.", "rstg.key."),
    ("rstg.att_bias", "rstg.att_bias"),
    ("rstg.norm_dict.update_norm.", "rstg.update_norm."),
    ("rstg.external_lstm.", "rstg.out_gru."),
)
_DYREG_CONSTANTS = {
    "ph_buf": "anchor rows (pixels), recomputed by the model from its `anchors`; checked",
    "pw_buf": "anchor columns (pixels), recomputed by the model from its `anchors`; checked",
    "arange_h_buf": "pixel positions 0..H-1, recomputed by the model",
    "arange_w_buf": "pixel positions 0..W-1, recomputed by the model",
}


def dyreg_checkpoint_rename(key: str) -> Target:
    """A DyReg-GNN graph-position key (below the ResNet, `layerX.Y.conv2.*`) -> ours, or None if `key` is not one."""
    m = re.match(r"^(layer\d+\.\d+)\.conv2\.(0\.block\.|1\.)(.*)$", key)
    if m is None:
        return None
    block, part, rest = m.groups()
    if part == "0.block.":
        return (f"{block}.conv2.{rest}", None)
    if rest.startswith("norm_dict.residual_norm."):
        param = rest[len("norm_dict.residual_norm.") :]
        return (f"{block}.dyreg.norm.{'weight' if param == 'scale' else param}", SQUEEZE)
    if not rest.startswith("dynamic_graph."):
        return None
    rest = rest[len("dynamic_graph.") :]
    if rest in _DYREG_CONSTANTS:
        return Ignored(_DYREG_CONSTANTS[rest])
    for theirs, ours in _DYREG:
        if rest.startswith(theirs):
            tail = rest[len(theirs) :]
            squeeze = "norm_dict." in theirs or theirs == "rstg.att_bias"
            if squeeze and tail == "scale":
                tail = "weight"
            return (f"{block}.dyreg.dyreg.{ours}{tail}", SQUEEZE if squeeze else None)
    return None


def dyreg_anchor_conflicts(model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> List[str]:
    """The file's anchors (ph_buf, pw_buf) against the ones the model's graphs compute."""
    out = []
    modules = dict(model.named_modules())
    for key, value in state.items():
        m = re.match(r"^base_model\.(layer\d+\.\d+)\.conv2\.1\.dynamic_graph\.(ph_buf|pw_buf)$", key)
        if m is None:
            continue
        graph = modules.get(f"{m[1]}.dyreg.dyreg")
        if graph is None:
            continue
        grid, side = getattr(graph, "grid", 3), getattr(graph, "map_size", None) or getattr(graph, "pos_grid", None)
        anchors = getattr(graph, "anchors", "center")
        if side is None:
            continue
        if anchors == "center":
            line = torch.full((grid,), side / 2, dtype=torch.float64)
        else:
            line = torch.linspace(0, side, 2 * grid + 1, dtype=torch.float64)[1::2]
        expected = line.repeat_interleave(grid) if m[2] == "ph_buf" else line.repeat(grid)
        if value.numel() != expected.numel() or not torch.allclose(value.double().flatten(), expected):
            out.append(
                f"{prefix}{key}: anchors {sorted(set(value.flatten().tolist()))} in the file, "
                f"{sorted(set(expected.tolist()))} in the model ({anchors!r} on a {side}-pixel map)"
            )
    return out


@register_new_part
def _graphs_new(missing: Sequence[str], loaded: Collection[str]) -> Dict[str, str]:
    """A file without any DyReg graph (TSM, ImageNet): the model's graphs start as the identity."""
    if any(".dyreg." in k for k in loaded):
        return {}
    return {
        k: "no DyReg graph in the file; the graph starts as the identity (zero-initialised norm)"
        for k in missing
        if ".dyreg." in k
    }
