"""TimeSformer and LightTimeSformer.

Paper: "Is Space-Time Attention All You Need for Video Understanding?", Bertasius, Wang and
Torresani, ICML 2021 (https://arxiv.org/abs/2102.05095). LightTimeSformer (MuWiGes wrist-camera
gestures) is the same network fed 32 frames spread over the whole clip, so it is only a preset here.

A ViT whose tokens are the 16x16 patches of every frame. Three attention schemes:
- `divided_space_time`: per block, attention over time at each patch location (through a
  zero-initialised `temporal_fc`, so a fresh block starts as an image ViT block), then attention
  over space within each frame, then the MLP;
- `joint_space_time`: one attention over all 1 + N*T tokens;
- `space_only`: an image ViT applied to each frame, features averaged over time.

Parameter names follow timm's ViT (`patch_embed.proj`, `blocks.i.attn.qkv`, `blocks.i.norm1`, ...)
plus `time_embed`, `blocks.i.temporal_norm1`, `blocks.i.temporal_attn`, `blocks.i.temporal_fc`,
so an image ViT-B/16 checkpoint maps onto it (`TimeSformer.load_image_vit`).

Token layout inside the blocks: (B, 1 + N*T, D), the CLS token first, then patch tokens ordered
patch-major, time-minor (token 1 + n*T + t is patch n of frame t), as in the reference code.
"""

import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from action_launch.models.checkpoints import LoadReport

from action_launch.models._formats import (
    DelegatedFormat,
    Format,
    Target,
    register_format,
    register_resize,
    shape_text,
)
from action_launch.models._registry import register_preset

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
LN_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Blocks


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a row (first axis) with probability `p`. The mask is
    floor(keep + U[0, 1)), drawn as the reference's `drop_path` draws it, so a seeded training step makes the
    reference's random choices."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention over the second axis of (batch, tokens, dim)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, heads, n, head_dim); SDPA scales by head_dim ** -0.5
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    """D -> hidden -> D with GELU."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block; `divided_space_time` adds a temporal attention step first."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attention: str = "divided_space_time",
    ) -> None:
        super().__init__()
        self.attention = attention
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        if attention == "divided_space_time":
            self.temporal_norm1 = nn.LayerNorm(dim, eps=LN_EPS)
            self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (B, 1 + N*T, D) for the space-time schemes, (B*T, 1 + N, D) for space_only."""
        if self.attention == "divided_space_time":
            x = self._temporal(x, num_frames)
            x = self._divided_spatial(x, num_frames)
        else:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _temporal(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Attention over the T tokens of each patch location; CLS is left alone."""
        b, length, d = x.shape
        n = (length - 1) // t
        xt = x[:, 1:].reshape(b * n, t, d)  # patch-major layout: one row per patch location
        res = self.drop_path(self.temporal_attn(self.temporal_norm1(xt)))
        res = self.temporal_fc(res.reshape(b, n * t, d))
        return torch.cat([x[:, :1], x[:, 1:] + res], dim=1)

    def _divided_spatial(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Attention within each frame over CLS + N patches; the T CLS outputs are averaged."""
        b, length, d = x.shape
        n = (length - 1) // t
        cls = x[:, :1].unsqueeze(1).expand(b, t, 1, d).reshape(b * t, 1, d)
        xs = x[:, 1:].reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
        res = self.drop_path(self.attn(self.norm1(torch.cat([cls, xs], dim=1))))
        res_cls = res[:, :1].reshape(b, t, 1, d).mean(dim=1)
        res_patches = res[:, 1:].reshape(b, t, n, d).transpose(1, 2).reshape(b, n * t, d)
        return x + torch.cat([res_cls, res_patches], dim=1)


class PatchEmbed(nn.Module):
    """Conv2d patchify applied to every frame: (B, C, T, H, W) -> (B*T, N, D) and the grid (h, w)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, c, t, h, w = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


# --------------------------------------------------------------------------------------------
# Model


class TimeSformer(nn.Module):
    """Video transformer on per-frame patches; input (B, C, T, H, W), output logits (B, classes)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        num_frames: int = 8,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        attention: str = "divided_space_time",
    ) -> None:
        """
        Args:
            img_size: training crop side; fixes the size of the spatial position embedding
                (other sizes are served by interpolating it).
            patch_size: side of the square patches (Conv2d kernel and stride).
            in_chans: input channels.
            num_classes: classifier outputs; 0 gives an identity head (features out).
            num_frames: training clip length T; fixes the size of the time embedding.
            embed_dim: token width D.
            depth: number of blocks.
            num_heads: attention heads (must divide embed_dim).
            mlp_ratio: MLP hidden width as a multiple of embed_dim.
            qkv_bias: bias on the query/key/value projections.
            drop_rate: dropout after embeddings, attention projections and MLP layers.
            attn_drop_rate: dropout on attention weights.
            drop_path_rate: stochastic depth of the last block (linear from 0 at the first).
            attention: one of "divided_space_time", "joint_space_time", "space_only".
        """
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention={attention!r} is not valid; choose one of {', '.join(ATTENTION_TYPES)}")
        if img_size < patch_size:
            raise ValueError(f"img_size={img_size} is smaller than patch_size={patch_size}")
        self.attention = attention
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.grid_size = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        if attention != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
            self.time_drop = nn.Dropout(drop_rate)

        # Linear 0 -> drop_path_rate, computed in Python so the model can be built on the meta device.
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], attention)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # As the reference: trunc-normal 0.02 for embeddings and Linear weights, time embedding
        # zero, Conv2d left at its PyTorch default, temporal_fc zero so that every divided block
        # starts as an image block (and an inflated ViT starts as a per-frame ViT).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            temporal_fc = getattr(blk, "temporal_fc", None)  # divided space-time blocks only
            if isinstance(temporal_fc, nn.Linear):
                nn.init.zeros_(temporal_fc.weight)
                nn.init.zeros_(temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of the embedding parameters kept out of weight decay."""
        names = dict(self.named_parameters())
        return {n for n in ("pos_embed", "cls_token", "time_embed") if n in names}

    def _pos_embed_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Spatial position embedding (1, 1 + h*w, D), nearest-resized when the grid differs."""
        if grid == (self.grid_size, self.grid_size):
            return self.pos_embed
        g, d = self.grid_size, self.embed_dim
        patches = self.pos_embed[:, 1:].transpose(1, 2).reshape(1, d, g, g)
        patches = F.interpolate(patches, size=grid, mode="nearest").flatten(2).transpose(1, 2)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def _time_embed_for(self, t: int) -> torch.Tensor:
        """Time embedding (1, T, D), nearest-resized when the clip length differs."""
        if t == self.time_embed.shape[1]:
            return self.time_embed
        return F.interpolate(self.time_embed.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> normalised CLS features (B, D)."""
        if x.ndim != 5:
            raise ValueError(f"expected input (B, C, T, H, W), got shape {tuple(x.shape)}")
        b, t = x.shape[0], x.shape[2]
        x, grid = self.patch_embed(x)  # (B*T, N, D)
        n, d = x.shape[1], x.shape[2]
        x = torch.cat([self.cls_token.expand(b * t, -1, -1), x], dim=1) + self._pos_embed_for(grid)
        x = self.pos_drop(x)  # (B*T, 1 + N, D)

        if self.attention != "space_only":
            x = x.reshape(b, t, 1 + n, d)
            cls = x[:, 0, :1]  # identical for every frame before the blocks
            patches = x[:, :, 1:].transpose(1, 2) + self._time_embed_for(t)  # (B, N, T, D)
            x = torch.cat([cls, self.time_drop(patches).reshape(b, n * t, d)], dim=1)

        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, t, use_reentrant=False)  # activations recomputed in backward
            else:
                x = blk(x, t)

        if self.attention == "space_only":
            x = x.reshape(b, t, 1 + n, d).mean(dim=1)  # average the per-frame outputs
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's switch)."""
        self.grad_checkpointing = enable

    def load_image_vit(self, state_dict: Mapping[str, Any]) -> Dict[str, List[str]]:
        """Initialise from an image ViT state dict (timm names); returns what was and wasn't loaded.

        See `inflate_vit_state_dict` for the mapping. Keys reported in `missing_keys` keep their
        fresh initialisation (time_embed, temporal_fc, a head of another class count, ...).
        """
        new_state, report = inflate_vit_state_dict(self, state_dict)
        self.load_state_dict(new_state, strict=False)
        return report


# --------------------------------------------------------------------------------------------
# Checkpoint filter: image ViT -> TimeSformer

_SPATIAL_TO_TEMPORAL = ((".attn.", ".temporal_attn."), (".norm1.", ".temporal_norm1."))


def _unwrap(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """A bare state dict, or one under 'model' / 'state_dict' / 'model_state', with any prefix
    'module.' (DDP) or 'model.' (the reference repository's wrapper) that every key shares removed."""
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    out = dict(state_dict)
    for prefix in ("module.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1 + n, D) -> (1, 1 + num_patches, D) as the reference's `load_pretrained` does it: the CLS
    position kept, the n patch positions resized as a 1-D sequence with nearest interpolation (not as a
    2-D grid; any n, square or not)."""
    d = pos.shape[2]
    patches = pos[:, 1:].float().transpose(1, 2).reshape(1, d, -1)  # (1, D, n); nearest copies values exactly
    patches = F.interpolate(patches, size=num_patches, mode="nearest").transpose(1, 2)
    return torch.cat([pos[:, :1], patches.to(pos.dtype)], dim=1)


def resize_time_embed(time: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(1, T, D) -> (1, num_frames, D), nearest over time, as the reference's `load_pretrained`."""
    out = F.interpolate(time.float().transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)
    return out.to(time.dtype)


def inflate_vit_state_dict(
    model: TimeSformer, vit_state_dict: Mapping[str, Any]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Map an image ViT state dict onto `model`'s parameter names.

    - spatial parameters (patch_embed, cls_token, blocks.i.{norm1,attn,norm2,mlp}, norm) copy over;
    - for divided attention, blocks.i.temporal_attn / temporal_norm1 are copies of the block's
      attn / norm1 (the reference's initialisation); temporal_fc stays zero, so the inflated
      model starts out computing the image ViT on every frame;
    - pos_embed is resized when the number of patches differs, time_embed (if present) when the frame
      count does, both as the reference's `load_pretrained` (timesformer/models/helpers.py) does it:
      nearest interpolation over the patch (resp. frame) sequence, the CLS position kept; the patch
      positions are resized as a 1-D sequence, not as a 2-D grid;
    - head.* is dropped when its shape differs (another class count).

    Returns (state dict to load with strict=False, report) where the report lists
    `missing_keys` (model keys not provided), `unexpected_keys` (checkpoint keys with no home),
    `dropped_keys` (head keys of another shape), `copied_to_temporal` and `resized`.
    """
    src = _unwrap(vit_state_dict)
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    report: Dict[str, List[str]] = {
        "missing_keys": [],
        "unexpected_keys": [],
        "dropped_keys": [],
        "copied_to_temporal": [],
        "resized": [],
    }
    for key, value in src.items():
        if key not in own:
            report["unexpected_keys"].append(key)
            continue
        target = own[key].shape
        if value.shape != target:
            if key == "pos_embed" and value.ndim == 3 and value.shape[2] == target[2]:
                value = resize_pos_embed(value, target[1] - 1)
                report["resized"].append(key)
            elif key == "time_embed" and value.ndim == 3 and value.shape[2] == target[2]:
                value = resize_time_embed(value, target[1])
                report["resized"].append(key)
            elif key.startswith("head."):
                report["dropped_keys"].append(key)
                continue
        if value.shape != target:
            raise ValueError(
                f"checkpoint {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target)} (different patch_size, embed_dim or in_chans?)"
            )
        out[key] = value
        if re.match(r"blocks\.\d+\.(attn|norm1)\.", key):
            for spatial, temporal in _SPATIAL_TO_TEMPORAL:
                tkey = key.replace(spatial, temporal, 1)
                # A checkpoint that already has temporal weights (a TimeSformer) keeps its own.
                if tkey != key and tkey in own and tkey not in src:
                    out[tkey] = value.clone()
                    report["copied_to_temporal"].append(tkey)
    report["missing_keys"] = [k for k in own if k not in out]
    return out, report


# --------------------------------------------------------------------------------------------
# Presets

_BASE: Dict[str, Any] = dict(
    img_size=224,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_path_rate=0.1,
    attention="divided_space_time",
)
_TINY: Dict[str, Any] = dict(
    img_size=32,
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=4,
    mlp_ratio=4.0,
    qkv_bias=True,
    drop_path_rate=0.0,
    attention="divided_space_time",
)

# Paper: Kinetics-400, 8 frames x 224^2, divided space-time (121,566,352 parameters).
register_preset("timesformer_base", TimeSformer, num_params=121_566_352, **_BASE, num_frames=8, num_classes=400)
# LightTimeSformer: the same network on 32 frames spanning the whole gesture; MuWiGes has 12 classes.
register_preset("light_timesformer", TimeSformer, num_params=121_286_412, **_BASE, num_frames=32, num_classes=12)

# Tiny presets for tests and CPU demos (~156k parameters).
register_preset("timesformer_tiny", TimeSformer, **_TINY, num_frames=4, num_classes=4)
register_preset("light_timesformer_tiny", TimeSformer, **_TINY, num_frames=8, num_classes=12)


# --------------------------------------------------------------------------------------------
# Published checkpoints (`--load-from`, `models.convert`; see models/checkpoints.py)
#
# facebookresearch/TimeSformer: PySlowFast `.pyth` files hold `{'model_state': {'model.<timm ViT names>'}}`
# (the registered model wraps `VisionTransformer` as `self.model`); DDP-trained copies
# `{'state_dict': {'module.model.*'}}`. Names below `model.` are ours. When the frame count or the number of
# patches differs, `time_embed` and the patch part of `pos_embed` are resized as the reference's
# `load_pretrained` (timesformer/models/helpers.py) does: `F.interpolate(..., mode='nearest')` over the
# sequence, the CLS position kept. Image ViTs (timm names), and TimeSformers without temporal attention, go
# to `TimeSformer.load_image_vit` (format `image_vit`), which copies spatial into temporal attention.


def _timesformer_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "model.patch_embed.proj.weight" in keys and all(k.startswith("model.") for k in keys)


def _timesformer_rename(key: str, model: nn.Module) -> Target:
    return (key[len("model.") :], None) if key.startswith("model.") else None


TIMESFORMER_FORMAT = register_format(
    Format(
        "timesformer",
        "TimeSformer (facebookresearch/TimeSformer: model.* under model_state or state_dict)",
        _timesformer_detect,
        _timesformer_rename,
        wrappers=("model",),
        priority=80,
    )
)


@register_resize
def _resize_embeddings(
    key: str, value: torch.Tensor, shape: torch.Size, model: nn.Module
) -> Optional[Tuple[torch.Tensor, str]]:
    """TimeSformer's position and time embeddings of another length, resized as upstream does."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "pos_embed")):
        return None
    if value.ndim != 3 or len(shape) != 3 or value.shape[0] != 1 or shape[0] != 1 or value.shape[2] != shape[2]:
        return None
    if key == "time_embed":
        return resize_time_embed(value, shape[1]), f"{value.shape[1]} -> {shape[1]} frames, nearest over time"
    if key == "pos_embed":
        return (
            resize_pos_embed(value, shape[1] - 1),
            f"{value.shape[1] - 1} -> {shape[1] - 1} patch positions, nearest over the sequence (CLS kept)",
        )
    return None


def _image_vit_detect(state: Mapping[str, torch.Tensor], model: nn.Module, found: Format) -> Optional[str]:
    """An image ViT (timm names, any single wrapper prefix: patch embedding and blocks, no temporal attention)
    for a model with `load_image_vit`; also a TimeSformer file without temporal attention."""
    if found.name not in ("native", TIMESFORMER_FORMAT.name) or not hasattr(model, "load_image_vit"):
        return None
    keys = list(state)
    if not (
        any(k.endswith("patch_embed.proj.weight") for k in keys)
        and any(k.endswith("blocks.0.attn.qkv.weight") for k in keys)
        and not any(".temporal_attn." in k for k in keys)
    ):
        return None
    wrapped = ", TimeSformer model.*" if found.name == TIMESFORMER_FORMAT.name else ""
    return (
        f"ViT without temporal attention (timm names{wrapped}), spatial attention copied to temporal "
        "where the model has it"
    )


def _load_image_vit(model: Any, state: Mapping[str, torch.Tensor], report: "LoadReport") -> None:
    """`model.load_image_vit(state)` (any model with that loader), its result written into `report`."""
    vit = model.load_image_vit(state)
    own = model.state_dict()
    missing = set(vit.get("missing_keys", []))
    # the loader strips a `model.` wrapper (TimeSformer's registered models) that every key shares
    prefix = report.file_prefix + ("model." if state and all(k.startswith("model.") for k in state) else "")
    for key in own:
        if key not in missing:
            report.loaded[key] = prefix + key
    for key in vit.get("resized", []):
        report.resized[key] = "resized by TimeSformer.load_image_vit (as the reference's load_pretrained)"
    for key in vit.get("copied_to_temporal", []):
        report.loaded[key] = prefix + key.replace(".temporal_attn.", ".attn.").replace(".temporal_norm1.", ".norm1.")
    for key in vit.get("dropped_keys", []):
        if key in missing:
            report.skipped[key] = f"file head of another shape, model {shape_text(own[key])}"
    report.unexpected.extend(prefix + k for k in vit.get("unexpected_keys", []))
    report.finish()
    for key in list(report.missing):
        if key == "time_embed" or ".temporal_fc." in key:
            report.new[key] = (
                "an image ViT has no temporal parameters; starts as the reference initialises it "
                "(time_embed and temporal_fc zero: every frame at first sees the image ViT)"
            )
    report.counters_new(state)


register_format(DelegatedFormat("image_vit", _image_vit_detect, _load_image_vit))
