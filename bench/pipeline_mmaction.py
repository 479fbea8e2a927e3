"""The `mmaction` protocol against ST-ABN's own data code: MMAction 0.x's `RawFramesDataset` on the real mmcv 0.2.10,
video for video, on the very same frame folders.

    python bench/upstream_match.py pipeline-stabn --upstream PATH/TO/ST-ABN_PyTorch --mmcv PATH/TO/mmcv

`run(upstream, workdir, mmcv)` loads mmaction/datasets/{utils,transforms,rawframes_dataset}.py from a checkout of
machine-perception-robotics-group/ST-ABN_PyTorch by file (its package __init__ builds the models and their compiled
ops), with the mmcv source tree at tag v0.2.10 (what its README requires) first on sys.path and OpenCV from
`pipeline_common.upstream_site()`. The dataset arguments are read from the checkout's own configs with mmcv's
`Config`: config_files/sthv1/st_abn_32.py (32 segments) and st_abn_32_2.py (one segment of 32 frames 2 apart); the
test dataset is built as tools/test_recognizer.py builds it, from `data.val` with `test_mode=True`. Our
`RawFrameDataset` (`data.protocol=mmaction`) is configured from the same arguments, and both read the JPEG frame
folders of the real sample videos as stored (`pipeline_common.frame_folders`, SSv1's `{:05d}.jpg`): 1280x720 frames
are shrunk, 176x144 ones enlarged, and a portrait and a 20-frame video reach the other branches.

Shims, each for a name Python 3.11 / numpy 2 no longer have, set only while upstream imports or builds a dataset:
`mmcv._ext` (the compiled optical-flow warp that mmcv.video imports; the data path never calls it), `np.Inf`
(numpy 2 dropped the alias; RawFramesDataset's `img_scale = (np.Inf, 256)` means np.inf) and
`collections.Sequence` (moved to collections.abc in Python 3.10; mmaction/datasets/utils.py imports it).

Per video (and seed): whether the frame numbers upstream's `_get_frames` loads (spied on `_load_image`, in its
order) equal ours (spied on the dataset's read, + 1), the largest pixel difference of the network inputs (0-255
units, normalisation undone) as our dataset reads the frames, with Pillow (`max_pixel_diff`), the same with our
protocol fed the frames OpenCV decodes (`protocol_diff`: the pipeline's own error, decoding aside), and the largest
difference between the two decoders on the frames read (`decode_diff`). Training samples are drawn upstream from
seeded global generators with every draw recorded (`DrawRecorder`) and replayed into our pipeline
(`ReplayGenerator`), which must use them all; their rows also give upstream's crop box as drawn and whether
`mmcv.imcrop` clipped it (`crop_clipped`: RandomResizedCrop's width/height mix-up at work).
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np
import pipeline_common as common
import torch

from action_launch.datasets import DataConfig, build
from action_launch.datasets.protocols import Source
from action_launch.datasets.rawframes import frame_path, load_image

MMCV_VERSION = "0.2.10"
CONFIGS = "config_files/sthv1"
SEEDS = (0, 1, 2)
OVERSAMPLE_CROPS = {None: 1, "three_crop": 3, "ten_crop": 10}


def _no_flow_warp(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("mmcv's compiled flow warp is not built here")


def _real_mmcv(source: Path) -> types.ModuleType:
    """mmcv imported from the source tree `source` (v0.2.10), replacing any other mmcv this process imported
    (upstream_match's ST-ABN model check installs a few of its names as a stand-in)."""
    for name in [m for m in sys.modules if m == "mmcv" or m.startswith("mmcv.")]:
        if not str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(source)):
            del sys.modules[name]
    sys.modules["mmcv._ext"] = types.SimpleNamespace(flow_warp_c=_no_flow_warp)
    if str(source) not in sys.path:
        sys.path.insert(0, str(source))
    import mmcv

    if mmcv.__version__ != MMCV_VERSION:
        raise RuntimeError(f"{source} holds mmcv {mmcv.__version__}; ST-ABN needs {MMCV_VERSION}")
    return mmcv


@contextlib.contextmanager
def _legacy_names() -> Iterator[None]:
    """`np.Inf` and `collections.Sequence` while the block runs, where this Python and numpy lack them (see the module
    docstring); only the names set here are removed after."""
    added = [(owner, name) for owner, name in ((np, "Inf"), (collections, "Sequence")) if name not in vars(owner)]
    for owner, name in added:
        setattr(owner, name, np.inf if owner is np else collections.abc.Sequence)
    try:
        yield
    finally:
        for owner, name in added:
            delattr(owner, name)


class Upstream:
    """ST-ABN's RawFramesDataset class, mmcv, and the dataset arguments of its configs."""

    def __init__(self, checkout: Path, mmcv_source: Path):
        common.upstream_site()  # OpenCV, addict and six for mmcv
        self.mmcv = _real_mmcv(mmcv_source)
        for package in ("mmaction", "mmaction.datasets"):
            module = sys.modules.get(package) or types.ModuleType(package)
            module.__path__ = [str(checkout / package.replace(".", "/"))]
            sys.modules[package] = module
        with _legacy_names():
            for name in ("utils", "transforms", "rawframes_dataset"):
                full = f"mmaction.datasets.{name}"
                spec = importlib.util.spec_from_file_location(full, checkout / "mmaction" / "datasets" / f"{name}.py")
                module = importlib.util.module_from_spec(spec)
                sys.modules[full] = module
                spec.loader.exec_module(module)
        self.dataset_class = sys.modules["mmaction.datasets.rawframes_dataset"].RawFramesDataset
        self.checkout = checkout

    def data(self, config: str) -> Dict[str, Dict[str, Any]]:
        """The `data` section of config_files/sthv1/`config`, each split's dataset arguments as a plain dict."""
        cfg = self.mmcv.Config.fromfile(str(self.checkout / CONFIGS / config))
        return {split: dict(cfg.data[split]) for split in ("train", "val", "test")}

    def dataset(self, args: Dict[str, Any], listing: Path) -> Any:
        """RawFramesDataset(**args) reading `listing` (absolute folder paths: no prefix)."""
        kwargs = {k: v for k, v in args.items() if k not in ("type", "ann_file", "img_prefix")}
        with _legacy_names():
            return self.dataset_class(ann_file=str(listing), img_prefix="", **kwargs)


def our_config(args: Dict[str, Any], listing: Path) -> DataConfig:
    """Our `data:` settings for MMAction dataset arguments `args`: new_length 1 is segment sampling (num_segments
    frames), else dense (new_length frames new_step apart)."""
    if bool(args.get("color_jitter")) != bool(args.get("color_space_aug")):
        raise ValueError("data.color_jitter is MMAction's color_jitter with color_space_aug; these arguments set one")
    norm = args["img_norm_cfg"]
    dense = args["new_length"] > 1
    return DataConfig(
        dataset="rawframes",
        list_format="rawframes",
        root=str(listing.parent),
        train_list=str(listing),
        val_list=str(listing),
        frame_template=args["image_tmpl"],
        frame_start_index=1,
        protocol="mmaction",
        sampling="dense" if dense else "segment",
        num_frames=args["new_length"] if dense else args["num_segments"],
        sampling_rate=args["new_step"],
        test_short_side=args["img_scale"],
        crop_size=args["input_size"],
        test_crop_size=args["input_size"],
        flip=args["flip_ratio"] > 0,
        color_jitter=bool(args.get("color_jitter")),
        mean=[m / 255 for m in norm["mean"]],
        std=[s / 255 for s in norm["std"]],
        channel_order="rgb" if norm["to_rgb"] else "bgr",
        test_num_crops=OVERSAMPLE_CROPS[args.get("oversample")],
        num_workers=0,
    )


def _spy_loads(theirs: Any) -> List[int]:
    """The file numbers `_get_frames` loads through the dataset's `_load_image`, appended in order."""
    loaded: List[int] = []
    original = theirs._load_image

    def load(directory: str, image_tmpl: str, modality: str, idx: int) -> Any:
        loaded.append(int(idx))
        return original(directory, image_tmpl, modality, idx)

    theirs._load_image = load
    return loaded


def _spy_reads(ours: Any) -> List[int]:
    """The 0-based frame indices our dataset reads, appended in order."""
    read: List[int] = []
    original = ours.read

    def spy(reader: Any, indices: np.ndarray) -> np.ndarray:
        read.extend(np.asarray(indices).reshape(-1).tolist())
        return original(reader, indices)

    ours.read = spy
    return read


class Frames:
    """A folder's frames as upstream decodes them (OpenCV, BGR, turned to RGB) and as we do (Pillow), cached."""

    def __init__(self, mmcv: types.ModuleType, folder: str, template: str):
        self.mmcv, self.folder, self.template = mmcv, folder, template
        self.opencv: Dict[int, np.ndarray] = {}
        self.pillow: Dict[int, np.ndarray] = {}

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) RGB frames, OpenCV-decoded, of 0-based `indices`."""
        for i in set(indices) - set(self.opencv):
            path = frame_path(self.folder, i, self.template, 1)
            self.opencv[i] = np.ascontiguousarray(self.mmcv.imread(path)[..., ::-1])
            self.pillow[i] = load_image(path)
        return np.stack([self.opencv[i] for i in indices])

    def decode_diff(self) -> int:
        """Largest |OpenCV - Pillow| over the frames read so far."""
        return max(int(np.abs(self.opencv[i].astype(np.int16) - self.pillow[i]).max()) for i in self.opencv)


def _protocol_only(ours: Any, split: str, i: int, frames: Frames, draws: Any) -> torch.Tensor:
    """Our protocol's input for item i from OpenCV-decoded frames (and upstream's draws in training)."""
    protocol, source = ours.protocol, Source(ours.items[i].num_frames)
    if split == "train":
        replay = common.ReplayGenerator(draws)
        return protocol.train_clip(frames.read(protocol.train_indices(source, replay).tolist()), replay)
    if split == "val":
        return protocol.val_clip(frames.read(protocol.val_indices(source).tolist()))
    indices = protocol.test_indices(source)
    clip = frames.read(indices.reshape(-1).tolist())
    return protocol.test_views(clip.reshape(indices.shape + clip.shape[1:]))


def _crop(data: Dict[str, Any], frames: Frames, draws: Sequence[Any]) -> Dict[str, Any]:
    """Upstream's training crop: its box [x1, y1, x2, y2] as drawn, whether mmcv.imcrop clipped it to the frame (the
    width/height mix-up), and the number of draws."""
    box = [int(v) for v in data["img_meta"].data["crop_quadruple"]]
    height, width = next(iter(frames.opencv.values())).shape[:2]
    return {"crop_box": box, "crop_clipped": box[2] >= width or box[3] >= height, "draws": len(draws)}


def compare(
    up: Upstream, args: Dict[str, Any], listing: Path, split: str, seeds: Sequence[int] = (0,)
) -> List[Dict[str, Any]]:
    """Upstream's RawFramesDataset with `args` against our `split` from the same settings, per video and seed."""
    theirs = up.dataset(args, listing)
    ours = build(our_config(args, listing), split)
    cfg = ours.cfg
    loaded, read = _spy_loads(theirs), _spy_reads(ours)
    rows = []
    for seed in seeds:
        for i, item in enumerate(ours.items):
            loaded.clear(), read.clear()
            common.seeded(seed)
            with common.DrawRecorder() as draws:
                data = theirs[i]
            their_input = data["img_group_0"].data  # (crops, C, T, H, W)
            if split == "train":
                replay = common.ReplayGenerator(draws)
                clip = ours.sample(item, replay)[0]
                if not replay.finished():
                    raise AssertionError(f"our code used {replay.used} of upstream's {len(draws)} draws")
            else:
                clip = ours[(i, seed)][0]
            if split != "test":
                their_input = their_input[0]
            frames = Frames(up.mmcv, item.path, cfg.frame_template)
            alone = _protocol_only(ours, split, i, frames, draws)
            axis = 1 if split == "test" else 0
            rows.append(
                {
                    "video": Path(item.path).name + (f" seed {seed}" if split == "train" else ""),
                    "indices_equal": loaded == [j + 1 for j in read],
                    "max_pixel_diff": common.pixel_diff(clip, their_input, cfg.mean, cfg.std, axis),
                    "protocol_diff": common.pixel_diff(alone, their_input, cfg.mean, cfg.std, axis),
                    "decode_diff": frames.decode_diff(),
                    "shape": list(their_input.shape),
                    **(_crop(data, frames, draws) if split == "train" else {}),
                }
            )
    return rows


def run(upstream: Path, workdir: Path, mmcv: Path) -> Iterator[Dict[str, Any]]:
    """One `summary` line per setting, for the ST-ABN checkout `upstream` and the mmcv v0.2.10 source tree `mmcv`;
    videos and frame folders are kept in `workdir`."""
    up = Upstream(upstream.resolve(), mmcv.resolve())
    listing = common.frame_folders(common.real_videos(workdir), workdir / "mmaction_frames", template="{:05d}.jpg")
    segments, dense = up.data("st_abn_32.py"), up.data("st_abn_32_2.py")
    test = {**segments["val"], "test_mode": True}  # tools/test_recognizer.py's test dataset
    no_jitter = {**segments["train"], "color_jitter": False, "color_space_aug": False}
    yield common.summary("mmaction st_abn_32 test (centre crop)", compare(up, test, listing, "test"))
    yield common.summary("mmaction st_abn_32 val", compare(up, segments["val"], listing, "val"))
    # test_recognizer.py pools 8x8 features for three_crop: 256-pixel crops, the short side whole
    yield common.summary(
        "mmaction st_abn_32 test three_crop 256",
        compare(up, {**test, "oversample": "three_crop", "input_size": 256}, listing, "test"),
    )
    yield common.summary(
        "mmaction st_abn_32 test ten_crop", compare(up, {**test, "oversample": "ten_crop"}, listing, "test")
    )
    yield common.summary(
        "mmaction st_abn_32 train without colour jitter", compare(up, no_jitter, listing, "train", SEEDS)
    )
    yield common.summary(
        "mmaction st_abn_32 train (colour jitter, as configured)",
        compare(up, segments["train"], listing, "train", SEEDS),
    )
    yield common.summary(
        "mmaction st_abn_32_2 dense test", compare(up, {**dense["val"], "test_mode": True}, listing, "test")
    )
    yield common.summary("mmaction st_abn_32_2 dense val", compare(up, dense["val"], listing, "val"))
    yield common.summary(
        "mmaction st_abn_32_2 dense train (colour jitter)", compare(up, dense["train"], listing, "train", SEEDS)
    )
