"""The `tsn` protocol against TSM's or DyReg-GNN's own data code, video for video, on the very same frame folders.

`run(upstream, workdir)` imports `ops.dataset`, `ops.transforms` and `ops.models` from a checkout of
mit-han-lab/temporal-shift-module or bit-ml/DyReg-GNN (whichever it is: DyReg's has ops/dyreg.py, and its modules
parse the command line when imported, so they are imported under train_model.sh's arguments), builds its
`TSNDataSet` with the transforms its scripts compose (main.py's training augmentation, from the model's own
`get_augmentation`, and validation; test_models.py's crops), and reads the frame folders of the real sample videos
(`pipeline_common.frame_folders`) with it and with our `RawFrameDataset` under `data.protocol=tsn`.

Per video: the frame indices each side reads (upstream's, spied on `TSNDataSet.get`, and ours, spied on the
dataset's index methods) and the largest pixel difference of the network inputs (0-255 units, normalisation
undone; `bit_equal` says whether the float32 inputs are identical). Training samples are drawn upstream from
seeded global generators with every draw recorded (`DrawRecorder`), then replayed into our pipeline
(`ReplayGenerator`), which must use them all. Upstream's test layout (crop-major, then clip) is put in our
clip-major order before the comparison.

Two frame folder sets: the videos' own sizes (the test scaling shrinks 1280x720 frames and enlarges 176x144 ones)
and short side 256, as TSM's Something-Something extraction stores them (the multi-scale crop's sides then snap
to 224, and the test scaling leaves landscape frames as they are).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from pipeline_common import (
    DYREG_ARGS,
    DrawRecorder,
    ReplayGenerator,
    frame_folders,
    import_torchvision,
    pixel_diff,
    real_videos,
    seeded,
    summary,
    upstream_on_path,
    upstream_site,
)

from action_launch.datasets import DataConfig, build

TEMPLATE = "{:06d}.jpg"  # TSM's and DyReg's Something-Something prefix
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # what TSN sets for its ResNets
INPUT_SIZE = 224
SCALE_SIZE = INPUT_SIZE * 256 // 224  # TSM's scale_size
SEEDS = (0, 1, 2)


def load_upstream(checkout: Path) -> types.SimpleNamespace:
    """The checkout's `ops.dataset`, `ops.transforms` and `ops.models.TSN`, and which code it is (`tsm`, `dyreg`)."""
    upstream_site()
    import_torchvision()
    kind = "dyreg" if (checkout / "ops" / "dyreg.py").is_file() else "tsm"
    argv = sys.argv
    if kind == "dyreg":
        sys.argv = ["main_standard.py", *DYREG_ARGS.split()]
    try:
        with upstream_on_path(checkout), contextlib.redirect_stdout(io.StringIO()):
            modules = {name: importlib.import_module(f"ops.{name}") for name in ("dataset", "transforms", "models")}
    finally:
        sys.argv = argv
    return types.SimpleNamespace(
        kind=kind, dataset=modules["dataset"], transforms=modules["transforms"], model=modules["models"].TSN
    )


def _model_view() -> types.SimpleNamespace:
    """What TSN's `get_augmentation`, `crop_size` and `scale_size` read of an RGB ResNet model."""
    return types.SimpleNamespace(modality="RGB", input_size=INPUT_SIZE)


def _compose(up: types.SimpleNamespace, first: List[Any]) -> Any:
    """`first`, then Stack, ToTorchFormatTensor and GroupNormalize, as every script ends its transform."""
    import torchvision

    t = up.transforms
    return torchvision.transforms.Compose(
        [*first, t.Stack(roll=False), t.ToTorchFormatTensor(div=True), t.GroupNormalize(MEAN, STD)]
    )


def _test_cropping(up: types.SimpleNamespace, crops: int, full_res: bool) -> Any:
    """test_models.py's `cropping` for --test_crops and --full_res."""
    t, model = up.transforms, _model_view()
    scale = up.model.scale_size.fget(model)
    size = scale if full_res else model.input_size
    if crops == 1:
        return [t.GroupScale(scale), t.GroupCenterCrop(size)]
    if crops == 3:
        return [t.GroupFullResSample(size, scale, flip=False)]
    return [t.GroupOverSample(size, scale, flip=crops == 10)]


def _val_cropping(up: types.SimpleNamespace) -> List[Any]:
    """main.py's validation transform: GroupScale(scale_size), GroupCenterCrop(crop_size)."""
    t, model = up.transforms, _model_view()
    return [t.GroupScale(int(up.model.scale_size.fget(model))), t.GroupCenterCrop(up.model.crop_size.fget(model))]


def _augmentation(up: types.SimpleNamespace, flip: bool) -> List[Any]:
    """main.py's `train_augmentation`: the model's own `get_augmentation(flip=...)`."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner without flip
        return [up.model.get_augmentation(_model_view(), flip=flip)]


def _their_dataset(up: types.SimpleNamespace, listing: Path, segments: int, first: List[Any], **kwargs: Any) -> Any:
    """Upstream's TSNDataSet of RGB frames, one per segment, with `first` and the scripts' tail as its transform."""
    with contextlib.redirect_stdout(io.StringIO()):
        return up.dataset.TSNDataSet(
            "",
            str(listing),
            num_segments=segments,
            new_length=1,
            modality="RGB",
            image_tmpl=TEMPLATE,
            transform=_compose(up, first),
            **kwargs,
        )


def _our_dataset(listing: Path, split: str, segments: int, **kwargs: Any) -> Any:
    """Our RawFrameDataset of `split` on the same list, `data.protocol=tsn`."""
    cfg = DataConfig(
        dataset="rawframes",
        list_format="rawframes",
        root=str(listing.parent),
        train_list=str(listing),
        val_list=str(listing),
        frame_template=TEMPLATE,
        frame_start_index=1,
        protocol="tsn",
        num_frames=segments,
        crop_size=INPUT_SIZE,
        test_short_side=SCALE_SIZE,
        mean=MEAN,
        std=STD,
        num_workers=0,
        **kwargs,
    )
    return build(cfg, split)


@contextlib.contextmanager
def _their_indices(up: types.SimpleNamespace, seen: List[np.ndarray]) -> Iterator[None]:
    """Record the frame indices `TSNDataSet.get` is given (file numbers, 1-based) as our 0-based indices."""
    cls = up.dataset.TSNDataSet
    original = cls.get

    def get(self: Any, record: Any, indices: Any, *rest: Any) -> Any:
        seen.append(np.asarray(indices, dtype=np.int64).reshape(-1) - 1)
        return original(self, record, indices, *rest)

    cls.get = get
    try:
        yield
    finally:
        cls.get = original


def _our_indices(dataset: Any) -> List[np.ndarray]:
    """The list our dataset records the frame indices it reads into, from now on (its test and train/val index
    methods)."""
    seen: List[np.ndarray] = []
    for name in ("view_indices", "sample_indices"):
        method = getattr(dataset, name)

        def spy(*args: Any, method: Callable = method) -> np.ndarray:
            out = method(*args)
            seen.append(np.asarray(out).reshape(-1))
            return out

        setattr(dataset, name, spy)
    return seen


@contextlib.contextmanager
def _recordable_randint(up: types.SimpleNamespace) -> Iterator[None]:
    """ops/dataset.py draws the segment offsets with `from numpy.random import randint`, a name bound at import,
    which `DrawRecorder` cannot see: send it through `np.random.randint` (the same generator) while recording."""
    module = up.dataset
    original = module.randint
    module.randint = lambda *args, **kwargs: np.random.randint(*args, **kwargs)
    try:
        yield
    finally:
        module.randint = original


def _their_input(up: types.SimpleNamespace, item: tuple) -> torch.Tensor:
    """The network input of an upstream sample: TSM's is (input, label), DyReg's (boxes, input, label, 0)."""
    return item[1] if up.kind == "dyreg" else item[0]


def _row(
    video: str,
    ours_seen: Sequence[np.ndarray],
    theirs_seen: Sequence[np.ndarray],
    ours: torch.Tensor,
    theirs: torch.Tensor,
    channel_axis: int,
    **extra: Any,
) -> Dict[str, Any]:
    equal = len(ours_seen) == len(theirs_seen) == 1 and np.array_equal(ours_seen[0], theirs_seen[0])
    return {
        "video": video,
        "indices_equal": bool(equal),
        "max_pixel_diff": pixel_diff(ours, theirs, MEAN, STD, channel_axis),
        "bit_equal": bool(torch.equal(ours, theirs)),
        **extra,
    }


def _name(dataset: Any, i: int) -> str:
    """The folder name of item `i`."""
    return Path(dataset.items[i].path).name


def compare_test(
    up: types.SimpleNamespace, listing: Path, segments: int, clips: int, crops: int, full_res: bool, dense: bool = False
) -> List[Dict[str, Any]]:
    """test_models.py's input against our `test` split, per video."""
    theirs = _their_dataset(
        up,
        listing,
        segments,
        _test_cropping(up, crops, full_res),
        test_mode=True,
        remove_missing=True,
        dense_sample=dense,
        twice_sample=clips == 2,
    )
    ours = _our_dataset(
        listing,
        "test",
        segments,
        sampling="dense" if dense else "segment",
        test_num_clips=clips,
        test_num_crops=crops,
        test_crop_size=SCALE_SIZE if full_res else None,
    )
    assert len(theirs) == len(ours), "TSNDataSet dropped list entries"

    def layout(data: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        # upstream stacks crop-major, then clip, then segment, each a 3-channel image
        h, w = data.shape[-2:]
        return data.view(crops, clips, segments, 3, h, w).permute(1, 0, 3, 2, 4, 5).reshape(views.shape)

    return _compare_each(up, theirs, ours, layout, channel_axis=1)


def _compare_each(
    up: types.SimpleNamespace,
    theirs: Any,
    ours: Any,
    layout: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    channel_axis: int,
) -> List[Dict[str, Any]]:
    """A row per video: upstream's input (put into our layout by `layout(theirs, ours)`) against ours."""
    rows, our_seen = [], _our_indices(ours)
    for i in range(len(ours)):
        their_seen = []
        our_seen.clear()
        with _their_indices(up, their_seen), contextlib.redirect_stdout(io.StringIO()):
            data = _their_input(up, theirs[i])
        clip, _ = ours[i]
        extra = {"views": int(clip.shape[0])} if channel_axis == 1 else {}
        rows.append(_row(_name(ours, i), our_seen, their_seen, clip, layout(data, clip), channel_axis, **extra))
    return rows


def compare_val(up: types.SimpleNamespace, listing: Path, segments: int) -> List[Dict[str, Any]]:
    """main.py's validation input against our `val` split, per video."""
    theirs = _their_dataset(up, listing, segments, _val_cropping(up), random_shift=False)
    ours = _our_dataset(listing, "val", segments, sampling="segment")
    return _compare_each(
        up, theirs, ours, lambda data, clip: data.view(segments, 3, *data.shape[-2:]).transpose(0, 1), channel_axis=0
    )


def compare_train(
    up: types.SimpleNamespace,
    listing: Path,
    segments: int,
    flip: bool,
    dense: bool = False,
    seeds: Sequence[int] = SEEDS,
) -> List[Dict[str, Any]]:
    """main.py's training input, drawn from seeded generators, against ours from the same draws, per video and
    seed."""
    theirs = _their_dataset(up, listing, segments, _augmentation(up, flip), dense_sample=dense)
    ours = _our_dataset(
        listing,
        "train",
        segments,
        sampling="dense" if dense else "segment",
        flip=flip,
        test_num_clips=10 if dense else 1,
    )
    rows, our_seen = [], _our_indices(ours)
    for seed in seeds:
        for i in range(len(ours)):
            their_seen = []
            our_seen.clear()
            seeded(seed)
            with DrawRecorder() as draws, _recordable_randint(up), _their_indices(up, their_seen):
                data = _their_input(up, theirs[i])
            replay = ReplayGenerator(draws)
            clip, _ = ours.sample(ours.items[i], replay)
            if not replay.finished():
                raise AssertionError(f"our code used {replay.used} of upstream's {len(draws)} draws")
            data = data.view(segments, 3, *data.shape[-2:]).transpose(0, 1)
            rows.append(_row(f"{_name(ours, i)} seed {seed}", our_seen, their_seen, clip, data, 0, draws=len(draws)))
    return rows


def run(upstream: Path, workdir: Path) -> Iterator[Dict[str, Any]]:
    """One `summary` line per setting, for the checkout `upstream` (TSM or DyReg-GNN); videos and frame folders are
    kept in `workdir`."""
    up = load_upstream(upstream.resolve())
    workdir = workdir.resolve()  # the lists name their folders by absolute paths, which both sides read as given
    videos = real_videos(workdir)
    stored = frame_folders(videos, workdir / "tsn_frames", template=TEMPLATE)
    short = frame_folders(videos, workdir / "tsn_frames_256", short_side=256, template=TEMPLATE)
    n = 16 if up.kind == "dyreg" else 8  # train_model.sh's 16 segments; TSM's Kinetics and SSv2 models take 8
    tag = f"{up.kind} tsn"
    for label, listing in (("as stored", stored), ("short side 256", short)):
        yield summary(f"{tag} test 1 crop, {n} segments ({label})", compare_test(up, listing, n, 1, 1, False))
        yield summary(f"{tag} val ({label})", compare_val(up, listing, n))
        yield summary(f"{tag} train flip ({label})", compare_train(up, listing, n, flip=True))
        yield summary(f"{tag} train no flip ({label})", compare_train(up, listing, n, flip=False))
    yield summary(
        f"{tag} test 3 crops 224 of 256 x twice (TSM README accurate)", compare_test(up, stored, n, 2, 3, False)
    )
    yield summary(f"{tag} test 3 full-res crops x twice (DyReg multi-clip)", compare_test(up, stored, n, 2, 3, True))
    yield summary(f"{tag} test 5 crops", compare_test(up, stored, n, 1, 5, False))
    yield summary(f"{tag} test 10 crops", compare_test(up, stored, n, 1, 10, False))
    yield summary(
        f"{tag} test dense 10 clips x 3 full-res crops, 8 frames", compare_test(up, stored, 8, 10, 3, True, dense=True)
    )
    yield summary(f"{tag} train dense flip, 8 frames", compare_train(up, stored, 8, flip=True, dense=True))
