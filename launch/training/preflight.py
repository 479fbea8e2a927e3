"""What can be checked about a run before DeepSpeed, MLflow or Slurm starts: paths, the data protocol, the class
count and (`data.check_files`) every file of the lists, and whether a clip fits them.

Each failure is one `PreflightError` line naming the key or flag and what to do, so `launch/train.py`
and `launch/submit.py` stop in a second with exit code 2 instead of failing after the engine started
(or, for a submitted job, on the node).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from action_launch.config import Config
from action_launch.datasets.config import ClipConfig, DataConfig, ListedClipConfig, VideoFilesConfig
from action_launch.datasets.lists import ListItem, read_list, resolve_list_path, too_many_bad_files
from action_launch.datasets.rawframes import RawFramesConfig
from action_launch.training import checkpoint as ckpt
from action_launch.training.run_config import ConfigChanged, check_unchanged

if TYPE_CHECKING:
    from action_launch.datasets.check import Probe
    from action_launch.datasets.protocols import Protocol

CHECK_FILES_AUTO_LIMIT = 5000  # data.check_files=auto scans the train and val lists up to this many entries


class PreflightError(ValueError):
    """A run that cannot start as configured; the message is one line."""


def check_run(
    cfg: Config,
    resume_from: Optional[str] = None,
    load_from: Optional[str] = None,
    gpus: Optional[bool] = None,
    amend: bool = False,
    restart: bool = False,
    resume: bool = True,
) -> None:
    """Raise PreflightError for a missing checkpoint, data folder or list, a head too small for the labels,
    `train.sync_bn` on a run without GPUs (`gpus`: whether the run gets CUDA GPUs; None: whether this machine has
    them), or a trained run started with another config (`training.run_config`; `amend`: the change is meant,
    `restart`: the run starts over in a new folder; not `resume`: --no-resume, which refuses a trained folder
    itself)."""
    _check_sync_bn(cfg, gpus)
    if resume and not restart:
        try:
            check_unchanged(cfg, cfg.run_dir(), amend)
        except ConfigChanged as err:
            raise PreflightError(str(err)) from None
    if resume_from and not (Path(resume_from) / ckpt.META).is_file():
        raise PreflightError(
            f"--resume-from {resume_from}: not a complete checkpoint folder (no {ckpt.META}); "
            f"give a folder runs/<experiment>/<name>/checkpoints/step_N"
        )
    if load_from and not Path(load_from).exists():
        raise PreflightError(f"--load-from {load_from}: no such file or folder")
    _check_data(cfg)


def _check_sync_bn(cfg: Config, gpus: Optional[bool]) -> None:
    """torch's SyncBatchNorm runs on CUDA tensors only: `train.sync_bn` on the CPU would fail at the first step."""
    if not cfg.train.sync_bn:
        return
    if gpus is None:
        import torch

        gpus = torch.cuda.is_available()
    if not gpus:
        from action_launch.training.batchnorm import SYNC_BN_NEEDS_GPU

        raise PreflightError(SYNC_BN_NEEDS_GPU)


def _check_protocol(data: DataConfig) -> Optional[Protocol]:
    """The data protocol of a clip dataset, checked against the config (None for the other datasets)."""
    if not isinstance(data, ClipConfig):  # the kinds a data protocol feeds
        return None
    from action_launch.datasets.protocols import make_protocol

    try:
        return make_protocol(data)
    except ValueError as err:
        raise PreflightError(str(err)) from None


def _check_data(cfg: Config) -> None:
    data = cfg.data
    protocol = _check_protocol(data)
    if not os.path.isdir(data.root):
        raise PreflightError(
            f"data.root={data.root}: no such folder (from {Path.cwd()}); set data.root to the "
            f"folder of your lists, or make the demo clips: python -m action_launch.datasets.synthetic "
            f"{data.root}"
        )
    if not isinstance(data, ListedClipConfig):  # video files and frame folders: classification lists read up front
        return
    lists: Dict[str, List[ListItem]] = {}
    for key, name in (("data.train_list", data.train_list), ("data.val_list", data.val_list)):
        path = resolve_list_path(data.root, name)
        if not os.path.isfile(path):
            raise PreflightError(f"{key}={name}: list file not found at {path}")
        try:
            lists[path] = read_list(path, data.root, data.list_format, data.separator, data.path_prefix)
        except ValueError as err:
            raise PreflightError(f"{key}: {err}") from None
    labels = [
        max(i.label) if isinstance(i.label, list) else i.label
        for items in lists.values()
        for i in items
        if i.label != []
    ]
    _check_classes(cfg, max(labels) + 1 if labels else 0)
    if data.check_files == "always" or (
        data.check_files == "auto" and sum(map(len, lists.values())) <= CHECK_FILES_AUTO_LIMIT
    ):
        _check_files(data, lists, protocol)


def _check_files(data: ListedClipConfig, lists: Dict[str, List[ListItem]], protocol: Optional[Protocol]) -> None:
    """Open every file of the lists (`datasets.check.probe`, on this process's cores); a list past
    `data.max_bad_fraction` is a PreflightError listing all of its bad files; fewer are reported in one line. A
    clip longer than every readable file of a list is a PreflightError naming the keys that set its length."""
    from action_launch.datasets import dataset_class
    from action_launch.datasets.check import probe
    from action_launch.datasets.video import BadFileSkipper

    reader = dataset_class(data.dataset)
    if not issubclass(reader, BadFileSkipper):
        raise TypeError(f"data.dataset={data.dataset}: {reader.__name__} reads no list of files to check")
    noun = reader.noun  # as the dataset names its files in its own errors
    jobs = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    for path, items in lists.items():
        folders = data if isinstance(data, RawFramesConfig) else RawFramesConfig()  # frame folders' file names
        probes = probe(
            items,
            data.list_format,
            jobs=jobs,
            frame_template=folders.frame_template,
            start_index=folders.frame_start_index,
            decoder=data.decoder if isinstance(data, VideoFilesConfig) else VideoFilesConfig.decoder,
        )
        bad = {p.item.path: p.reason for p in probes if p.reason is not None}
        error = too_many_bad_files(bad, len(items), path, noun, data.max_bad_fraction, scanned=True)
        if error:
            raise PreflightError(error)
        sized = [(p, p.frames) for p in probes if p.reason is None and p.frames]
        _check_clip_fits(data, protocol, path, sized, noun)
        if bad and os.environ.get("RANK", "0") == "0":
            print(
                f"data check: {len(bad)} of {len(items)} {noun}s in {path} are unreadable and will be skipped "
                f"(at most data.max_bad_fraction={data.max_bad_fraction})",
                file=sys.stderr,
            )


def _check_clip_fits(
    data: ListedClipConfig, protocol: Optional[Protocol], path: str, readable: List[Tuple[Probe, int]], noun: str
) -> None:
    """PreflightError when the protocol's clip spans more frames than every readable file of a list has: each
    clip would then repeat frames, in every video, which a setting meant for other data does (the native
    protocol's looping of short clips is a choice, not a mistake: `data.short_video=loop`). `readable`: each
    readable file's probe with its frame count."""
    if protocol is None or not readable or protocol.loops_short_clips:
        return
    fits = [frames / protocol.span(p.fps) for p, frames in readable]
    if max(fits) >= 1:
        return
    longest = readable[fits.index(max(fits))][0]
    span = protocol.span(longest.fps)
    rate = f" at {longest.fps:g} fps" if longest.fps else ""
    segment = data.sampling == "segment"
    keys = (
        "data.num_frames"
        if segment
        else f"data.num_frames={data.num_frames} x data.sampling_rate="
        f"{data.sampling_rate} (at data.target_fps={data.target_fps:g})"
    )
    lower = "data.num_frames" if segment else "data.sampling_rate or data.num_frames"
    raise PreflightError(
        f"{keys}: a clip spans {span:.0f} frames, more than every {noun} of {path} has (the "
        f"longest, {longest.item.path}, has {longest.frames}{rate}): lower {lower}"
    )


def _check_classes(cfg: Config, needed: int) -> None:
    """The model's head must have a logit for every label of the lists (cross-entropy fails inside the loss
    otherwise)."""
    if cfg.train.loss != "cross_entropy" or needed == 0:
        return
    from action_launch import models  # the registry; its model files import torch
    from action_launch.models._registry import rename_num_class

    preset = models.get_preset(cfg.model["name"])
    kwargs = {**preset.kwargs, **rename_num_class(cfg.model, "model.num_class")}
    head = kwargs.get("num_classes")
    if head is not None and head < needed:
        names = Path(cfg.data.root, "classes.txt")
        known = f" ({len(names.read_text().split())} in {names})" if names.is_file() else ""
        raise PreflightError(
            f"model.num_classes={head}, but the lists of data.root={cfg.data.root} use labels up to "
            f"{needed - 1}{known}: set model.num_classes={needed}"
        )
