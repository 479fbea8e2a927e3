"""DyReg-GNN: dynamic regions and a recurrent space-time graph inside a 2D CNN.

Paper: "Discovering Dynamic Salient Regions for Spatio-Temporal Graph Neural Networks",
Duta, Nicolicioiu and Leordeanu, NeurIPS 2021 (https://arxiv.org/abs/2009.08427); reference code
bit-ml/DyReg-GNN, used on a TSM ResNet-50 (see `models/tsm.py`, which places it by name).

`DynamicGraph` maps features (B, T, C, H, W) to (B, T, C, H, W) with 9 nodes (a 3x3 set):
1. regions: a small conv net (1x1 reduce, two 3x3 convs down, a transposed conv back up with a
   skip, a 3x3 head, then a conv over the pooled `offset_grid` map acting as a fully connected
   layer) gives per frame an embedding for every node; a GRU runs over time per node; a Linear
   gives 4 offsets (size_h, size_w, centre_h, centre_w) multiplied by a learnable scale that
   starts at 0, so every region starts at its anchor (all at the centre, as the reference runs);
2. each node has a separable bilinear-tent kernel over H x W, normalised to sum 1; node features
   are the kernel-weighted average of the map plus a position embedding (a Linear on the kernel
   resampled to `pos_grid` x `pos_grid`);
3. RSTG: 3 iterations of (GRU over time per node; messages m_ij = LN(ReLU(Linear(x_i + x_j)));
   aggregation a_i = ReLU(sum_j softmax_j(q_i . k_j) m_ij + bias); x = LN(x + a)), then a GRU
   over time;
4. back to the map: out = sum_n node_n * kernel_n; an optional 1x1 projection (in_channels ->
   node_dim and back) narrows the graph when in_channels is large.

`DyRegResidual` wraps it as x + GroupNorm1(zero-initialised scale)(dyreg(x)) on (B*T, C, H, W), so
an inserted module starts as the identity. "LN" here normalises jointly over nodes (and node
pairs) and channels with a per-channel affine, as the reference; the per-frame map norms are
GroupNorm with one group (LayerNorm over C, H, W with a per-channel affine).

No clip length or map size is built in: T comes from the input, the offset net ends in adaptive
pooling to `offset_grid`, and the position embedding resamples the kernels to `pos_grid`. At the
map size the reference was trained at (`pos_grid`, see `dyreg_kwargs`) both resamplings are the
identity and the parameter count equals the reference's.
"""
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

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
        return F.layer_norm(x, x.shape[-self.dims:], eps=self.eps) * self.weight + self.bias


def _time_gru(gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """Run `gru` over time for every node: (B, T, N, C) -> (B, T, N, C')."""
    b, t, n, c = x.shape
    y, _ = gru(x.permute(0, 2, 1, 3).reshape(b * n, t, c))
    return y.reshape(b, n, t, -1).permute(0, 2, 1, 3)


class OffsetNet(nn.Module):
    """Per-frame region embeddings (B*T, C, H, W) -> (B*T, out_features).

    1x1 conv to 32 -> 3x3 conv (stride s1) -> 3x3 conv to 16 (stride s2) -> 3x3 transposed conv
    back to 32 (+ skip) -> 3x3 head to 16 (stride s2) -> adaptive average pool to `grid` -> a
    `grid` x `grid` conv to out_features. Each conv is followed by ReLU and a GroupNorm(1).
    """

    def __init__(self, in_channels: int, out_features: int, grid: int = 6, strides: Tuple[int, ...] = (2, 1)) -> None:
        super().__init__()
        if len(strides) != 2 or min(strides) < 1:
            raise ValueError(f"offset strides need 2 positive values, got {tuple(strides)}")
        s1, s2 = strides
        self.grid = grid
        self.reduce = nn.Conv2d(in_channels, 32, 1)
        self.reduce_norm = nn.GroupNorm(1, 32)
        self.down1 = nn.Conv2d(32, 32, 3, stride=s1, padding=1)
        self.down1_norm = nn.GroupNorm(1, 32)
        self.down2 = nn.Conv2d(32, 16, 3, stride=s2, padding=1)
        self.down2_norm = nn.GroupNorm(1, 16)
        self.up = nn.ConvTranspose2d(16, 32, 3, stride=s2, padding=1)
        self.up_norm = nn.GroupNorm(1, 32)
        self.head = nn.Conv2d(32, 16, 3, stride=s2, padding=1)
        self.head_norm = nn.GroupNorm(1, 16)
        self.fc = nn.Conv2d(16, out_features, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce_norm(F.relu(self.reduce(x)))
        skip = self.down1_norm(F.relu(self.down1(x)))
        x = self.down2_norm(F.relu(self.down2(skip)))
        x = self.up_norm(F.relu(self.up(x, output_size=skip.shape[-2:]))) + skip
        x = self.head_norm(F.relu(self.head(x)))
        x = F.adaptive_avg_pool2d(x, self.grid)
        return self.fc(x).flatten(1)


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

    def __init__(self, in_channels: int, node_dim: int = 0, grid: int = 3, offset_dim: int = 128,
                 pos_grid: int = 14, offset_grid: int = 6, offset_strides: Tuple[int, ...] = (2, 1),
                 iterations: int = 3, anchors: str = "center") -> None:
        """
        Args:
            in_channels: channels C of the feature map.
            node_dim: node width; 0 means in_channels, anything else adds 1x1 projections in and out.
            grid: nodes per side (3 -> 9 nodes).
            offset_dim: width of the region embeddings and of their GRU.
            pos_grid: side of the grid the kernels are resampled to for the position embedding
                (the reference uses the training map size: 28, 14, 7 in layers 2, 3, 4).
            offset_grid: side of the pooled map the offset net's last conv covers (6, 6, 5).
            offset_strides: strides of the offset net's two downsampling convs ((2,2), (2,1), (1,1)).
            iterations: RSTG message-passing iterations.
            anchors: "center" (all regions start at the map centre, as the reference runs) or
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
        self.pos_grid = pos_grid
        self.anchors = anchors
        self.project = node_dim != in_channels
        if self.project:
            self.project_in = nn.Conv2d(in_channels, node_dim, 1)
            self.project_norm = nn.GroupNorm(1, node_dim)
            self.project_out = nn.Conv2d(node_dim, in_channels, 1)

        self.offset_net = OffsetNet(node_dim, self.num_nodes * offset_dim, offset_grid, offset_strides)
        self.offset_norm = NodeNorm(offset_dim)
        self.offset_gru = nn.GRU(offset_dim, offset_dim, batch_first=True)
        self.offset_gru_norm = NodeNorm(offset_dim)
        self.offset_fc = nn.Linear(offset_dim, 4)
        self.offset_scale = nn.Parameter(torch.zeros(4))  # 0: regions start at their anchors

        self.pos_embed = nn.Linear(pos_grid * pos_grid, node_dim)
        self.rstg = RSTG(node_dim, iterations)

    def offsets(self, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """(B*T, C, H, W) -> offsets (B*T, N, 4): log-size h, log-size w, centre h, centre w."""
        e = self.offset_net(x).reshape(b, t, self.num_nodes, self.offset_dim)
        e = self.offset_gru_norm(_time_gru(self.offset_gru, self.offset_norm(e)))
        return (self.offset_fc(e) * self.offset_scale).reshape(b * t, self.num_nodes, 4)

    def _anchor_logits(self, like: torch.Tensor) -> torch.Tensor:
        """atanh(2a - 1) of the normalised anchor of every node: (N, 2) for (h, w)."""
        if self.anchors == "center":
            return like.new_zeros(self.num_nodes, 2)
        a = (2 * torch.arange(self.grid, device=like.device, dtype=like.dtype) + 1) / (2 * self.grid)
        a = torch.atanh(2 * a - 1)
        return torch.stack(torch.meshgrid(a, a, indexing="ij"), dim=-1).reshape(self.num_nodes, 2)

    def kernels(self, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Offsets (B*T, N, 4) -> separable tent kernels (B*T, N, H, W), each summing to 1.

        Coordinates are in pixels, pixel i covering [i, i + 1). A kernel's half-width is
        exp(o) * (side / (2 * grid) + 1) + 1 and its centre side/2 * (1 + tanh(o + atanh(2a - 1)))
        for a normalised anchor a, so centres stay inside the map whatever the offsets.
        """
        anchor = self._anchor_logits(offsets)

        def tent(size_o: torch.Tensor, centre_o: torch.Tensor, anchor_l: torch.Tensor, side: int) -> torch.Tensor:
            half = torch.exp(size_o) * (side / (2 * self.grid) + 1) + 1
            centre = side / 2 * (1 + torch.tanh(centre_o + anchor_l))
            pos = torch.arange(side, device=offsets.device, dtype=offsets.dtype) + 0.5
            return F.relu(half.unsqueeze(-1) - (pos - centre.unsqueeze(-1)).abs())  # (B*T, N, side)

        kh = tent(offsets[..., 0], offsets[..., 2], anchor[:, 0], h)
        kw = tent(offsets[..., 1], offsets[..., 3], anchor[:, 1], w)
        kernel = kh.unsqueeze(-1) * kw.unsqueeze(-2)
        return kernel / (kernel.sum(dim=(-2, -1), keepdim=True) + 1e-6)

    def position_embedding(self, kernel: torch.Tensor) -> torch.Tensor:
        """Kernels (B*T, N, H, W) -> (B*T, N, node_dim), through the `pos_grid` resampling."""
        if kernel.shape[-2:] != (self.pos_grid, self.pos_grid):
            kernel = F.adaptive_avg_pool2d(kernel, self.pos_grid)
            kernel = kernel / (kernel.sum(dim=(-2, -1), keepdim=True) + 1e-6)
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
        nodes = flat @ x.flatten(2).transpose(1, 2)  # (B*T, N, C): kernel-weighted average
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
    """DynamicGraph settings the reference uses for a map of side `map_size` at training size.

    node_dim = min(in_channels, max_node_dim) (a projection only where the map is wider, layer4
    of ResNet-50); the position grid is the map itself; the offset net downsamples twice above 20
    pixels, once above 10, and its last conv covers min(6, map_size - 2) cells, which reproduces
    the reference's strides and 6/6/5 grids at 28/14/7 pixels.
    """
    strides = (2, 2) if map_size > 20 else (2, 1) if map_size > 10 else (1, 1)
    return dict(node_dim=min(in_channels, max_node_dim), offset_dim=offset_dim, pos_grid=map_size,
                offset_grid=max(1, min(6, map_size - 2)), offset_strides=strides)
