"""HIINT: a cross-person memory transformer for multi-person interaction understanding.

Paper: "HIINT: Historical, Intra- and Inter-personal Dynamics Modeling with Cross-person Memory
Transformer", ICMI 2023 (joint engagement of a parent-child dyad with a robot, 3 classes; also
rapport and belief tasks; metric average F1). The published repository holds no code, so this
module *defines* the architecture from the paper's description (see the reference, section 5):

    per-person encoders -> intra-person (cross-modal) attention -> cross-person attention
    -> memory tokens carried across consecutive windows -> classifier

Choice of per-person encoder: the paper feeds per-person sequences of non-verbal features
(gaze, facial action units, head pose, body keypoints, ...), so each person's input is a feature
sequence, not raw pixels. Every modality gets its own light encoder over time (`encoder="linear"`:
a per-frame Linear then average pooling by `temporal_stride`; `encoder="conv"`: two 1-D temporal
convolutions, the first with stride `temporal_stride`). Features from a video or skeleton backbone
of this suite (e.g. the pooled output of `TimeSformer(num_classes=0)` per frame window, or of
MS-G3D) are simply another modality of `modality_dims`.

Input  x: (B, P, T, F) - batch, persons (in a fixed role order, e.g. parent, child), frames of
          one window, concatenated features of all modalities (F = sum(modality_dims));
          or per-person skeletons (B, P, C, T, V), read as F = C * V features per frame
          (channel-major: feature c * V + v), e.g. `modality_dims=(75,)` for NTU xyz joints.
Output {"logits": (B, num_classes), "memory": (B, K, D)} - the memory after this window,
          *detached*: pass it as `memory=` with the next window of the same interaction
          (truncated back-propagation of one window; `memory=None` starts from the learned
          initial memory). `carry=` (B,) bool mixes the two in one batch: rows where it is
          False start from the initial memory (the first window of an interaction).

The model keeps no state between calls (`carries_memory = True` tells the launcher to pass the
memory along: `action_launch.training.memory.WindowMemory` for the loop,
`action_launch.training.loaders.SequenceStreamSampler` so
that an interaction's windows come in successive batches).

Layers, all pre-norm transformer blocks of width D:
1. tokens: one per (modality, time step) per person, plus a modality, a time and (optionally)
   a role embedding;
2. intra-person blocks: self-attention over all tokens of one person (every modality and time
   step of that person: the cross-modal attention);
3. cross-person blocks: each person's tokens attend to the tokens of the *other* persons and to
   the memory tokens (reading the history); a mask removes a person's own tokens, so what these
   blocks add is inter-personal;
4. memory write: the K memory tokens attend to [memory; all persons' tokens] and pass an MLP,
   giving the memory of this window;
5. classifier: LayerNorm -> Linear over [mean of the persons' pooled tokens; mean memory token].

With `role_embedding=False` the model is symmetric in the persons (the logits are invariant to
their order); with roles, parent and child tokens are told apart.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from action_launch.models._registry import register_preset

__all__ = ["HIINT", "ModalityEncoder", "TransformerBlock"]

ENCODERS = ("linear", "conv")


class ModalityEncoder(nn.Module):
    """One modality's feature sequence (N, T, F_m) -> tokens (N, T // stride, D).

    Args:
        in_features: features of the modality per frame.
        dim: token width D.
        kind: "linear" (per-frame Linear, then average pooling over `stride` frames) or
            "conv" (Conv1d k=3 with stride `stride`, GELU, Conv1d k=3).
        stride: temporal downsampling.
    """

    def __init__(self, in_features: int, dim: int, kind: str = "conv", stride: int = 1) -> None:
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"model.encoder={kind!r} is not valid; choose one of {', '.join(ENCODERS)}")
        self.kind, self.stride = kind, stride
        # Raw non-verbal features come on very different scales (pixels, degrees, AU intensities).
        self.norm = nn.LayerNorm(in_features)
        if kind == "linear":
            self.proj = nn.Linear(in_features, dim)
        else:
            self.conv1 = nn.Conv1d(in_features, dim, kernel_size=3, stride=stride, padding=1)
            self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.kind == "linear":
            x = self.proj(x)
            if self.stride > 1:
                x = F.avg_pool1d(x.transpose(1, 2), self.stride, self.stride, ceil_mode=True).transpose(1, 2)
            return x
        x = self.conv2(F.gelu(self.conv1(x.transpose(1, 2))))
        return x.transpose(1, 2)


class TransformerBlock(nn.Module):
    """Pre-norm attention (self, or cross to a context) + MLP, both residual.

    Args:
        dim: token width.
        num_heads: attention heads (must divide dim).
        mlp_ratio: MLP hidden width as a multiple of dim.
        dropout: dropout on attention weights, after the attention and in the MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x (N, L, D) attends to itself, or to `context` (N, S, D); `mask` (L, S) True = blocked."""
        q = self.norm_q(x)
        kv = self.norm_kv(x if context is None else context)
        x = x + self.drop(self.attn(q, kv, kv, attn_mask=mask, need_weights=False)[0])
        return x + self.mlp(self.norm_mlp(x))


class HIINT(nn.Module):
    """Cross-person memory transformer; see the module docstring."""

    carries_memory = True
    """forward takes `memory=`/`carry=` and returns the new "memory": the loops carry it across windows."""

    def __init__(
        self,
        num_classes: int = 3,
        num_persons: int = 2,
        modality_dims: Tuple[int, ...] = (8, 35, 6, 50),
        num_frames: int = 64,
        encoder: str = "conv",
        temporal_stride: int = 4,
        embed_dim: int = 256,
        num_heads: int = 8,
        intra_depth: int = 2,
        cross_depth: int = 2,
        num_memory_tokens: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        role_embedding: bool = True,
    ) -> None:
        """
        Args:
            num_classes: classifier outputs (3 joint-engagement levels).
            num_persons: participants P per sample, in a fixed role order.
            modality_dims: feature count of each modality; the input's last axis is their
                concatenation in this order.
            num_frames: window length T the time embedding is sized for (other lengths are
                served by interpolating it).
            encoder: per-modality encoder, "linear" or "conv" (see `ModalityEncoder`).
            temporal_stride: temporal downsampling of the encoders (tokens per modality = T / stride).
            embed_dim: token width D.
            num_heads: attention heads (must divide embed_dim).
            intra_depth: intra-person (cross-modal) blocks.
            cross_depth: cross-person blocks (0 turns inter-personal attention off).
            num_memory_tokens: K memory tokens carried from window to window (at least 1).
            mlp_ratio: MLP hidden width as a multiple of embed_dim.
            dropout: dropout in the blocks and before the classifier.
            role_embedding: add a learned embedding per person slot (parent/child); False makes
                the model symmetric in the persons.
        """
        super().__init__()
        modality_dims = tuple(int(d) for d in modality_dims)
        if not modality_dims or any(d <= 0 for d in modality_dims):
            raise ValueError(f"model.modality_dims must be positive feature counts, got {modality_dims}")
        if num_memory_tokens < 1:
            raise ValueError(f"model.num_memory_tokens must be >= 1, got {num_memory_tokens}")
        if embed_dim % num_heads:
            raise ValueError(f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}")
        if temporal_stride < 1 or num_frames < 1 or num_persons < 1:
            raise ValueError("model.temporal_stride, model.num_frames and model.num_persons must be >= 1")
        self.num_classes, self.num_persons = num_classes, num_persons
        self.modality_dims, self.num_frames = modality_dims, num_frames
        self.embed_dim, self.num_memory_tokens = embed_dim, num_memory_tokens
        self.tokens_per_modality = -(-num_frames // temporal_stride)

        self.encoders = nn.ModuleList(ModalityEncoder(d, embed_dim, encoder, temporal_stride) for d in modality_dims)
        self.modality_embed = nn.Parameter(torch.zeros(len(modality_dims), embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(self.tokens_per_modality, embed_dim))
        self.role_embed = nn.Parameter(torch.zeros(num_persons, embed_dim)) if role_embedding else None
        self.intra = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(intra_depth)
        )
        self.cross = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(cross_depth)
        )
        self.memory_init = nn.Parameter(torch.zeros(num_memory_tokens, embed_dim))
        self.memory_write = TransformerBlock(embed_dim, num_heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(2 * embed_dim)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.modality_embed, self.time_embed, self.memory_init):
            nn.init.trunc_normal_(p, std=0.02)
        if self.role_embed is not None:
            nn.init.trunc_normal_(self.role_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set:
        """Embeddings and the initial memory are kept out of weight decay."""
        names = {"modality_embed", "time_embed", "memory_init"}
        return names | ({"role_embed"} if self.role_embed is not None else set())

    def initial_memory(self, batch: int) -> torch.Tensor:
        """The learned memory a first window starts from: (batch, K, D)."""
        return self.memory_init.unsqueeze(0).expand(batch, -1, -1)

    def _time_embed_for(self, steps: int) -> torch.Tensor:
        if steps == self.time_embed.shape[0]:
            return self.time_embed
        return F.interpolate(self.time_embed.T.unsqueeze(0), size=steps, mode="linear", align_corners=False)[0].T

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, T, F) -> (B, P, M * T', D) embedded tokens."""
        b, p, t, f = x.shape
        flat = x.reshape(b * p, t, f)
        parts = torch.split(flat, list(self.modality_dims), dim=-1)
        tokens = torch.stack([enc(part) for enc, part in zip(self.encoders, parts)], dim=1)  # (BP, M, T', D)
        tokens = tokens + self.modality_embed[None, :, None] + self._time_embed_for(tokens.shape[2])[None, None]
        tokens = tokens.reshape(b, p, -1, self.embed_dim)
        if self.role_embed is not None:
            tokens = tokens + self.role_embed[None, :, None]
        return tokens

    def encode(
        self, x: torch.Tensor, memory: Optional[torch.Tensor] = None, carry: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-person tokens after intra- and cross-person attention (B, P, L, D), and the new memory (B, K, D).

        `carry` (B,) bool: rows of `memory` to use; the others start from the initial memory.
        The new memory is returned attached to the graph (the classifier reads it); `forward`
        detaches it before handing it back.
        """
        if x.ndim == 5:  # skeletons (B, P, C, T, V): the joints' channels are the frame's features
            x = x.permute(0, 1, 3, 2, 4).flatten(3)
        if x.ndim != 4:
            raise ValueError(
                f"HIINT expects input (B, P, T, F) or skeletons (B, P, C, T, V), got shape {tuple(x.shape)}"
            )
        b, p, _, f = x.shape
        if p != self.num_persons or f != sum(self.modality_dims):
            raise ValueError(
                f"HIINT built for P={self.num_persons} persons and F={sum(self.modality_dims)} features "
                f"(modality_dims {self.modality_dims}); got input {tuple(x.shape)} (B, P, T, F)"
            )
        memory = self.initial_memory(b) if memory is None else memory.to(x.dtype)
        if memory.shape != (b, self.num_memory_tokens, self.embed_dim):
            raise ValueError(
                f"memory must be (B, K, D) = ({b}, {self.num_memory_tokens}, {self.embed_dim}), "
                f"got {tuple(memory.shape)}"
            )
        if carry is not None:  # windows that begin an interaction start from the learned memory
            keep = carry.to(device=x.device, dtype=torch.bool).reshape(b, 1, 1)
            memory = torch.where(keep, memory, self.initial_memory(b).to(memory.dtype))
        tokens = self._tokens(x)
        length = tokens.shape[2]

        # Intra-person: every modality and time step of one person attends to all of that person's tokens.
        h = tokens.reshape(b * p, length, self.embed_dim)
        for block in self.intra:
            h = block(h)
        h = h.reshape(b, p * length, self.embed_dim)

        # Cross-person: a person's tokens attend to the other persons' tokens and to the memory.
        if self.cross:
            person = torch.arange(p, device=x.device).repeat_interleave(length)
            own = person[:, None] == person[None, :]  # (PL, PL) True = own token: blocked
            mask = torch.cat([own, own.new_zeros(p * length, self.num_memory_tokens)], dim=1)
            for block in self.cross:
                h = block(h, torch.cat([h, memory], dim=1), mask)

        # Memory write: the memory tokens read this window (and themselves).
        new_memory = self.memory_write(memory, torch.cat([memory, h], dim=1))
        return h.reshape(b, p, length, self.embed_dim), new_memory

    def forward(
        self, x: torch.Tensor, memory: Optional[torch.Tensor] = None, carry: Optional[torch.Tensor] = None
    ) -> Dict[str, torch.Tensor]:
        """(B, P, T, F) or (B, P, C, T, V) [+ memory (B, K, D) of the previous window, + carry (B,) bool:
        rows of `memory` to use] -> {"logits", "memory" (detached)}."""
        tokens, new_memory = self.encode(x, memory, carry)
        persons = tokens.mean(dim=2)  # (B, P, D)
        features = torch.cat([persons.mean(dim=1), new_memory.mean(dim=1)], dim=-1)
        logits = self.head(self.head_drop(self.norm(features)))
        return {"logits": logits, "memory": new_memory.detach()}


# --------------------------------------------------------------------------------------------
# Presets. The feature layout of the paper preset is [inferred]: per person gaze (8), facial
# action units (35), head pose (6) and 25 body keypoints x 2 (50) from OpenFace/OpenPose, windows
# of 64 frames; the paper gives no sizes, so width and depth are a small transformer's.

register_preset(
    "hiint_cpmt",
    HIINT,
    num_params=4_826_313,
    num_classes=3,
    num_persons=2,
    modality_dims=(8, 35, 6, 50),
    num_frames=64,
    encoder="conv",
    temporal_stride=4,
    embed_dim=256,
    num_heads=8,
    intra_depth=2,
    cross_depth=2,
    num_memory_tokens=8,
)

# Tiny: two modalities of 4 and 6 features, 8-frame windows, width 32; trains on a CPU in seconds.
register_preset(
    "hiint_cpmt_tiny",
    HIINT,
    num_classes=3,
    num_persons=2,
    modality_dims=(4, 6),
    num_frames=8,
    encoder="conv",
    temporal_stride=2,
    embed_dim=32,
    num_heads=4,
    intra_depth=1,
    cross_depth=1,
    num_memory_tokens=4,
    mlp_ratio=2.0,
    dropout=0.0,
)
