"""Grad-CAM for video models and heat-map rendering, in plain torch, numpy and Pillow.

Grad-CAM (Selvaraju et al., ICCV 2017) on a clip: for a layer whose output is a feature map A
(C, T', h, w) and a class score y, the channel weights are the gradients averaged over the map,
w_c = mean_{t,i,j} dy/dA_c, and the map is ReLU(sum_c w_c A_c), upsampled to the clip's (T, H, W)
and divided by its maximum. Layer outputs are read in the layouts of this suite's models:

- (N, C, T, h, w): 3D CNNs (ST-ABN's stages);
- (N*T, C, h, w): 2D CNNs applied per frame (TSM's bottlenecks);
- (N, 1 + n*T, D): space-time tokens, CLS first, patches in patch-major order (TimeSformer's
  divided and joint attention);
- (N*T, 1 + n, D): per-frame tokens (TimeSformer's space_only), n = h*w with h/w the clip's aspect.

Without a layer name, `find_layer` takes the last module (in the order their forward calls end)
that has submodules, is called once, outputs one of these layouts and receives a non-zero gradient
on its spatial positions for the class: for a CNN the last stage or block, for a transformer
the input of the last block (the last block's patch outputs never reach the CLS token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from action_launch.training import losses

if TYPE_CHECKING:  # Pillow is imported where images are made
    from PIL import Image


def as_video_map(x: torch.Tensor, batch: int, frames: int, aspect: float = 1.0) -> Optional[torch.Tensor]:
    """A layer output as an (N, C, T', h, w) map, or None when it is in none of the known layouts.

    Args:
        x: the layer's output.
        batch: N, clips in the batch.
        frames: T, frames per input clip (for the layouts that fold time into the batch or tokens).
        aspect: input height / width, to unfold a token sequence into an h x w grid.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if x.ndim == 5 and x.shape[0] == batch and x.shape[-1] * x.shape[-2] > 1:
        return x
    if x.ndim == 4 and x.shape[0] == batch * frames and frames > 1 and x.shape[-1] * x.shape[-2] > 1:
        return x.reshape(batch, frames, *x.shape[1:]).transpose(1, 2)
    if x.ndim == 3:
        if x.shape[0] == batch and frames > 1 and (x.shape[1] - 1) % frames == 0:
            n = (x.shape[1] - 1) // frames
            grid = _grid(n, aspect)
            if grid is not None:  # (N, 1 + n*T, D), patch-major: token 1 + p*T + t
                d = x.shape[2]
                return x[:, 1:].reshape(batch, *grid, frames, d).permute(0, 4, 3, 1, 2)
        if x.shape[0] == batch * frames:
            grid = _grid(x.shape[1] - 1, aspect)
            if grid is not None:  # (N*T, 1 + n, D)
                d = x.shape[2]
                return x[:, 1:].reshape(batch, frames, *grid, d).permute(0, 4, 1, 2, 3)
    return None


def _grid(n: int, aspect: float) -> Optional[Tuple[int, int]]:
    """(h, w) with h*w = n and h/w = aspect, if there is one (n > 1)."""
    if n < 2:
        return None
    h = int(round(math.sqrt(n * aspect)))
    return (h, n // h) if h > 0 and n % h == 0 and abs(h / (n // h) - aspect) < 0.2 * aspect else None


def grad_cam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of (N, C, T, h, w) activations and their gradients: ReLU(sum_c w_c A_c) with w_c the
    gradient averaged over (T, h, w); returns (N, T, h, w), nonnegative, not normalised."""
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    return F.relu((weights * activation).sum(dim=1))


def upsample_map(cam: torch.Tensor, size: Tuple[int, int, int]) -> torch.Tensor:
    """(N, T', h, w) -> (N, T, H, W) by trilinear interpolation, each clip divided by its maximum
    (an all-zero map stays zero), so values lie in [0, 1]."""
    out = F.interpolate(cam[:, None].float(), size=size, mode="trilinear", align_corners=False)[:, 0].clamp_min(0)
    peak = out.flatten(1).amax(dim=1).clamp_min(1e-12)
    return out / peak[:, None, None, None]


@dataclass
class _Capture:
    name: str
    output: torch.Tensor
    order: int
    calls: int = 1


def _capture_outputs(
    model: nn.Module, names: Optional[Sequence[str]]
) -> Tuple[Dict[str, _Capture], Callable[[], None]]:
    """Forward hooks that record the output of each named module (default: every module with children)."""
    modules = dict(model.named_modules())
    chosen = (
        list(names) if names is not None else [n for n, m in modules.items() if n and any(True for _ in m.children())]
    )
    captured: Dict[str, _Capture] = {}
    counter = [0]

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            counter[0] += 1
            calls = captured[name].calls + 1 if name in captured else 1
            if isinstance(output, torch.Tensor):
                captured[name] = _Capture(name, output, counter[0], calls)

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in chosen]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return captured, remove


def check_layer(model: nn.Module, name: str) -> None:
    """Raise a ValueError naming close matches when `model` has no module `name`."""
    import difflib

    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        raise ValueError(
            f"--layer {name!r}: the model has no such module"
            + (f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(names[-5:])}")
        )


@dataclass
class GradCam:
    """Result of `grad_cam`: the map over the input clip and what it was computed for."""

    cam: torch.Tensor
    """(N, T, H, W) in [0, 1]."""
    layer: str
    """Module whose output was used."""
    target: torch.Tensor
    """(N,) class explained per clip."""
    probs: torch.Tensor
    """(N, K) softmax of the model's logits."""
    outputs: Any
    """The model's raw forward output, detached (ST-ABN's dict carries its attention maps)."""


def grad_cam(
    model: nn.Module,
    clip: torch.Tensor,
    layer: Optional[str] = None,
    target: Optional[int] = None,
    logits_of: Callable[[Any], torch.Tensor] = losses.logits_of,
) -> GradCam:
    """Grad-CAM of `model` on clips (N, C, T, H, W) for class `target` (default: each clip's prediction).

    `layer` names the module (`model.named_modules()`) whose output is explained; None picks one as
    the module docstring says. The model is run in its current mode (call `.eval()` first) with
    gradients on; its parameters' `.grad` are left untouched.
    """
    n, _, t, h, w = clip.shape
    if layer is not None:
        check_layer(model, layer)
    captured, remove = _capture_outputs(model, [layer] if layer else None)
    try:
        with torch.enable_grad():
            outputs = model(clip)
            logits = logits_of(outputs).float()
            targets = (
                logits.argmax(1)
                if target is None
                else torch.full((n,), int(target), dtype=torch.long, device=logits.device)
            )
            if int(targets.max()) >= logits.shape[1] or int(targets.min()) < 0:
                raise ValueError(f"--target-class {target} is out of range for {logits.shape[1]} classes")
            score = logits.gather(1, targets[:, None]).sum()
            aspect = h / w
            usable = [
                k
                for k, c in captured.items()
                if (layer or c.calls == 1)
                and c.output.requires_grad
                and as_video_map(c.output, n, t, aspect) is not None
            ]
            if layer and layer not in usable:
                shape = tuple(captured[layer].output.shape) if layer in captured else "no tensor"
                raise ValueError(
                    f"--layer {layer!r}: its output {shape} is not a feature map of a known layout "
                    "((N, C, T, h, w), (N*T, C, h, w) or tokens) or has no gradient"
                )
            names = sorted(usable, key=lambda k: captured[k].order)
            grads = torch.autograd.grad(score, [captured[k].output for k in names], allow_unused=True)
    finally:
        remove()
    chosen = None
    for name, grad in reversed(list(zip(names, grads))):
        if grad is None:
            continue
        grad_map = as_video_map(grad, n, t, aspect)  # the same layout as the activation
        act_map = as_video_map(captured[name].output.detach(), n, t, aspect)
        if grad_map is None or act_map is None:  # not reached: usable outputs (and their gradients) have a layout
            continue
        if layer or bool(grad_map.abs().amax() > 0):  # zero: the score does not see its positions
            chosen = (name, act_map, grad_map)
            break
    if chosen is None:
        raise ValueError("found no layer with a feature-map output that the class score depends on; pass --layer")
    name, act, grad = chosen
    cam = upsample_map(grad_cam_map(act.float(), grad.float()), (t, h, w))
    return GradCam(cam, name, targets, logits.detach().softmax(1), _detach(outputs))


def _detach(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, dict):
        return {k: _detach(v) for k, v in outputs.items()}
    return outputs


# ----------------------------------------------------------------------------------- rendering


def denormalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (C, T, H, W) clip back to displayable (T, H, W, 3) uint8 frames."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=clip.device).view(-1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=clip.device).view(-1, 1, 1, 1)
    x = (clip.float() * s + m).clamp(0, 1).permute(1, 2, 3, 0)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return (x * 255).round().to(torch.uint8).numpy()


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map of values in [0, 1]: (...) -> (..., 3) float in [0, 1] (blue -> red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks
    return np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)


def overlay(frames: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map (T, H, W) in [0, 1] over frames (T, H, W, 3) uint8 with the jet colours."""
    if heat.shape != frames.shape[:3]:
        raise ValueError(f"heat map {heat.shape} does not match frames {frames.shape[:3]}")
    out = (1 - alpha) * frames.astype(np.float32) / 255.0 + alpha * jet(heat)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def compose(panels: Sequence[np.ndarray], captions: Sequence[str], min_side: int = 160) -> List[Image.Image]:
    """One image per frame: the panels (each (T, H, W, 3) uint8) side by side, scaled up so the short
    side is at least `min_side`, over a caption line per frame (`captions[t]`)."""
    from PIL import Image, ImageDraw

    t, h, w = panels[0].shape[:3]
    scale = max(1, math.ceil(min_side / min(h, w)))
    bar = 14
    images = []
    for i in range(t):
        canvas = Image.new("RGB", (len(panels) * w * scale, h * scale + bar), "white")
        for j, panel in enumerate(panels):
            frame = Image.fromarray(panel[i]).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            canvas.paste(frame, (j * w * scale, bar))
        ImageDraw.Draw(canvas).text((2, 1), captions[i], fill="black")
        images.append(canvas)
    return images


def save_images(images: Sequence[Image.Image], path: str, frame_ms: int = 250) -> str:
    """Write frames as an animated GIF (`.gif`) or as one PNG strip (`.png`, the frames top to bottom)."""
    from PIL import Image

    lower = str(path).lower()
    if lower.endswith(".gif"):
        # disposal 1 and no optimisation: every frame kept, even if two happen to be identical
        images[0].save(
            path, save_all=True, append_images=list(images[1:]), duration=frame_ms, loop=0, disposal=1, optimize=False
        )
    elif lower.endswith(".png"):
        w, h = images[0].size
        strip = Image.new("RGB", (w, h * len(images)), "white")
        for i, image in enumerate(images):
            strip.paste(image, (0, i * h))
        strip.save(path)
    else:
        raise ValueError(f"--out {path}: expected a .gif or .png file name")
    return str(path)
