"""The work of `launch/explain.py` (its docstring says what it shows): the clip read as the config's
validation split reads it, Grad-CAM (`evaluation.gradcam`) and ST-ABN's own attention rendered over the
frames as a GIF or PNG strip, the image logged to the checkpoint's MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Literal, Optional

import torch
import torch.nn.functional as F

from action_launch.config import ConfigError
from action_launch.datasets.config import ListedClipConfig
from action_launch.datasets.rawframes import RawFramesConfig

log = logging.getLogger("launch.explain")


def count_frame_files(frame_dir: Path, template: str, start_index: int) -> int:
    """Consecutive frame files `template.format(start_index + i)` in a folder."""
    n = 0
    while (frame_dir / template.format(start_index + n)).is_file():
        n += 1
    return n


def load_clip(data_cfg, video: str) -> torch.Tensor:
    """One video (file or frame folder) as the float (C, T, H, W) clip the config's val split makes of it.

    Goes through the data layer itself (`datasets.build(..., "val")` on a one-line list), so sampling,
    decoding and transforms are exactly the ones used in validation.
    """
    from action_launch import datasets

    if not isinstance(data_cfg, ListedClipConfig):
        video_kinds = [k.name for k in datasets.kinds().values() if issubclass(k.section, ListedClipConfig)]
        raise ValueError(
            f"explain needs a video model: data.dataset is {data_cfg.dataset!r}, expected one of "
            f"{', '.join(video_kinds)}"
        )
    path = Path(video).resolve()
    if not path.exists():
        raise FileNotFoundError(f"--video {video}: no such file or folder")
    fmt: Literal["rawframes", "video"]
    if isinstance(data_cfg, RawFramesConfig):
        count = count_frame_files(path, data_cfg.frame_template, data_cfg.frame_start_index)
        line, fmt = f"{path} {count} 0", "rawframes"
    else:
        line, fmt = f"{path} 0", "video"
    with tempfile.TemporaryDirectory() as tmp:
        list_file = Path(tmp) / "explain.txt"
        list_file.write_text(line + "\n")
        cfg = dataclasses.replace(
            data_cfg, val_list=str(list_file), list_format=fmt, path_prefix="", bad_files_log=None, max_bad_fraction=1.0
        )
        clip, _ = datasets.build(cfg, "val")[(0, 0)]
    return clip


def class_label(k: int, names: Optional[List[str]]) -> str:
    """Class `k` as printed: its index and, where the data root's classes.txt names it, its name."""
    return f"{k} ({names[k]})" if names and k < len(names) else str(k)


def _per_frame(values: torch.Tensor, frames: int, size) -> torch.Tensor:
    """(T', h, w) -> (T, H, W) by trilinear interpolation, values kept (no renormalisation)."""
    return F.interpolate(values[None, None].float(), size=(frames, *size), mode="trilinear", align_corners=False)[
        0, 0
    ].clamp(0, 1)


def render(clip: torch.Tensor, result, mean, std, names: Optional[List[str]] = None):
    """The images of one explained clip: input | Grad-CAM | (ST-ABN) spatial attention, one per frame."""
    from action_launch.evaluation.gradcam import compose, denormalize, overlay

    frames = denormalize(clip, mean, std)
    t, h, w = frames.shape[:3]
    panels = [frames, overlay(frames, result.cam[0].cpu().numpy())]
    k = int(result.target[0])
    label = names[k] if names and k < len(names) else str(k)
    captions = [f"{i + 1}/{t} {label} p={float(result.probs[0, k]):.2f} cam:{result.layer}" for i in range(t)]
    outputs = result.outputs
    if isinstance(outputs, dict) and "spatial_att" in outputs:
        spatial = _per_frame(outputs["spatial_att"][0, 0], t, (h, w))
        panels.append(overlay(frames, spatial.cpu().numpy()))
        if "temporal_att" in outputs:
            temporal = outputs["temporal_att"][0, 0, :, 0, 0].float()
            temporal = F.interpolate(temporal[None, None], size=t, mode="nearest")[0, 0]
            captions = [f"{c} | ta={float(temporal[i]):.2f}" for i, c in enumerate(captions)]
    return compose(panels, captions)


def log_image(run_dir: Optional[Path], image: Path, uri: Optional[str]) -> bool:
    """Log the image under `explain/` of the run's MLflow run; a copy goes to `<run>/explain/` when it lies outside."""
    from action_launch.tracking.tracker import log_run_artifact

    if run_dir is None:
        log.warning("the checkpoint is not inside a run folder (<run>/checkpoints/step_N): nothing to log to")
        return False
    inside = image.resolve().is_relative_to(run_dir.resolve())
    if not inside:
        copy = run_dir / "explain" / image.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, copy)
        image = copy
    return log_run_artifact(run_dir, image, "explain", uri)


def explain(args: Any) -> int:
    """`launch/explain.py`'s work for its parsed arguments (checkpoint, video, out, config, layer, target_class,
    no_track, overrides): render and save the explanation; the command's exit code."""
    from action_launch.datasets.lists import read_class_names
    from action_launch.evaluation.evaluate import load_eval_config, load_model, resolve_checkpoint, run_dir_of
    from action_launch.evaluation.gradcam import grad_cam, save_images
    from action_launch.training.losses import logits_of

    if not args.out.lower().endswith((".gif", ".png")):
        print(f"error: --out {args.out}: expected a .gif or .png file name", file=sys.stderr)
        return 2
    try:
        checkpoint = resolve_checkpoint(args.checkpoint, "best")
        cfg, _ = load_eval_config(args.config or checkpoint / "config.yaml", args.overrides)
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from action_launch.common.console import setup_logging

    setup_logging(True)
    try:
        model = load_model(cfg, checkpoint).eval()
        clip = load_clip(cfg.data, args.video)
        result = grad_cam(model, clip[None], args.layer, args.target_class, logits_of)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    assert isinstance(cfg.data, ListedClipConfig)  # load_clip refused every other kind of data
    names = read_class_names(cfg.data.root)
    save_images(render(clip, result, cfg.data.mean, cfg.data.std, names), str(out))
    k = int(result.target[0])
    print(f"class {class_label(k, names)} p={float(result.probs[0, k]):.3f}, Grad-CAM over {result.layer}: {out}")
    if not args.no_track and cfg.tracking.enabled and log_image(run_dir_of(checkpoint), out, cfg.tracking.uri):
        print("logged to MLflow as an artifact under explain/")
    return 0
