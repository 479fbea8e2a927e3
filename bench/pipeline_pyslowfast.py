"""The `pyslowfast` protocol against TimeSformer's own data code: its `Kinetics` and `Ssv2` datasets, imported from a
checkout of facebookresearch/TimeSformer and configured by its config system (`get_cfg()` and its YAML configs),
read the same files as our datasets built with `data.protocol: pyslowfast` from the same settings.

    python bench/upstream_match.py pipeline-timesformer --upstream PATH/TO/TimeSformer [--workdir DIR]

Settings (one JSON line each, `pipeline_common.summary`):
- Kinetics test views on real H.264 videos (`pipeline_common.real_videos`): 1 clip x 3 crops (the config of
  configs/Kinetics/TimeSformer_divST_8x32_224.yaml), 1 x 1 (its 1-crop rule: short side TRAIN_JITTER_SCALES[0])
  and 10 x 3; and 10 x 3 on the same videos remuxed into Matroska, whose stream states no duration (upstream's
  decode-everything path).
- SSv2 test views (configs/SSv2/TimeSformer_divST_8_224.yaml, 1 x 3) on JPEG frame folders of those videos,
  read as BGR (upstream reads them with OpenCV: `data.channel_order: bgr`).
- Training samples, Kinetics (mp4 and mkv) and SSv2, for several seeds: upstream's draws through `random` and
  `np.random` are recorded (`DrawRecorder`) and replayed into our generator (`ReplayGenerator`); the same draws
  must give the same tensor, and our code must use them all.

Per video: whether the frame indices are equal (upstream's are recorded by spies around its `pyav_decode_stream`,
`temporal_sampling` and `retry_load_images`, which call the originals) and the largest pixel difference (0-255
units, normalisation undone) over every view. Upstream imports as it is: no shim is needed on torch 2 / numpy 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import pipeline_common as common
import torch

from action_launch.datasets import DataConfig, build

KINETICS_YAML = "configs/Kinetics/TimeSformer_divST_8x32_224.yaml"
SSV2_YAML = "configs/SSv2/TimeSformer_divST_8_224.yaml"
SEEDS = (0, 1, 2)
TEMPLATE = "{:05d}.jpg"  # frame i of a folder is file i + 1, as the lists below number them


class Upstream:
    """TimeSformer's data modules, imported from `checkout`, with spies that record what its decoder returned
    (the timestamps of the decoded frames), which of them its temporal sampling took, and which frame files its
    SSv2 loader read."""

    def __init__(self, checkout: Path):
        common.upstream_site()
        common.import_torchvision()
        with common.upstream_on_path(checkout):
            from timesformer.config.defaults import get_cfg
            from timesformer.datasets import decoder, kinetics, ssv2, utils
        self.checkout, self.get_cfg = checkout, get_cfg
        self.Kinetics, self.Ssv2 = kinetics.Kinetics, ssv2.Ssv2
        self.decoded: List[int] = []
        self.taken: np.ndarray = np.zeros(0, dtype=np.int64)
        self.files: List[str] = []
        self._spy(decoder, "pyav_decode_stream", self._record_decoded)
        self._spy(decoder, "temporal_sampling", self._record_taken)
        self._spy(utils, "retry_load_images", self._record_files)

    @staticmethod
    def _spy(module: Any, name: str, record: Callable[..., Any]) -> None:
        original = getattr(module, name)
        setattr(module, name, lambda *args, **kwargs: record(original, *args, **kwargs))

    def _record_decoded(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        frames, max_pts = original(*args, **kwargs)
        self.decoded = [f.pts for f in frames]
        return frames, max_pts

    def _record_taken(self, original: Callable[..., Any], frames: torch.Tensor, *args: Any) -> torch.Tensor:
        # the original itself, on the positions of the decoded frames, says which it takes
        self.taken = original(torch.arange(frames.shape[0]), *args).numpy()
        return original(frames, *args)

    def _record_files(self, original: Callable[..., Any], paths: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        self.files = list(paths)
        return original(paths, *args, **kwargs)

    def config(self, yaml: str, data_dir: Path, clips: int = 1, crops: int = 3) -> Any:
        """Its config: defaults, then the YAML, then the data folder (list paths are absolute) and the test views."""
        cfg = self.get_cfg()
        cfg.merge_from_file(str(self.checkout / yaml))
        cfg.DATA.PATH_TO_DATA_DIR, cfg.DATA.PATH_PREFIX = str(data_dir), ""
        cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = clips, crops
        return cfg

    def kinetics_indices(self, pts_index: Dict[int, int]) -> List[int]:
        """The frames of the video that the last Kinetics sample took."""
        return [pts_index[self.decoded[i]] for i in self.taken]

    def ssv2_indices(self) -> List[int]:
        """The frames of the folder that the last SSv2 sample read."""
        return [int(Path(p).stem) - 1 for p in self.files]


def ours_config(cfg: Any, root: Path, segment: bool) -> DataConfig:
    """Our data config for the same settings: each upstream key in its field, and the test short side that
    PySlowFast's rule gives (TEST_CROP_SIZE; TRAIN_JITTER_SCALES[0] for 1 Kinetics crop)."""
    d, t = cfg.DATA, cfg.TEST
    one_kinetics_crop = t.NUM_SPATIAL_CROPS == 1 and not segment
    base = dict(dataset="video", list_format="video", channel_order="rgb")
    if segment:
        base = dict(
            dataset="rawframes",
            list_format="rawframes",
            frame_template=TEMPLATE,
            frame_start_index=1,
            channel_order="bgr",
        )
    return DataConfig(
        **base,
        protocol="pyslowfast",
        root=str(root),
        train_list="train.txt",
        val_list="test.txt",
        sampling="segment" if segment else "dense",
        num_frames=d.NUM_FRAMES,
        sampling_rate=d.SAMPLING_RATE,
        target_fps=float(d.TARGET_FPS),
        train_short_side=list(d.TRAIN_JITTER_SCALES),
        crop_size=d.TRAIN_CROP_SIZE,
        test_crop_size=d.TEST_CROP_SIZE,
        test_short_side=d.TRAIN_JITTER_SCALES[0] if one_kinetics_crop else d.TEST_CROP_SIZE,
        scale_sampling="inverse_uniform" if d.INV_UNIFORM_SAMPLE else "uniform",
        flip=d.RANDOM_FLIP,
        mean=list(d.MEAN),
        std=list(d.STD),
        test_num_clips=t.NUM_ENSEMBLE_VIEWS,
        test_num_crops=t.NUM_SPATIAL_CROPS,
        num_workers=0,
        check_files="never",
    )


def kinetics_lists(videos: Sequence[Path], folder: Path) -> Path:
    """Upstream's `train.csv` / `test.csv` (`path label`) and ours (`train.txt` / `test.txt`) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "test.csv", "train.txt", "test.txt"):
        common.video_list(videos, folder / name)
    return folder


def ssv2_lists(listing: Path, folder: Path) -> Path:
    """For the frame folders of `listing` (`folder frames label`): upstream's label json files and frame csv files
    (`original_vido_id video_id frame_id path labels`), and our `train.txt` / `test.txt`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [line.split() for line in listing.read_text().splitlines()]
    templates = {f"class {label}": label for _, _, label in rows}
    (folder / "something-something-v2-labels.json").write_text(json.dumps(templates))
    entries = [{"id": Path(path).name, "template": f"class {label}"} for path, _, label in rows]
    frames = ["original_vido_id video_id frame_id path labels"]
    frames += [
        f'{Path(path).name} {i} {k} {Path(path) / TEMPLATE.format(k + 1)} ""'
        for i, (path, n, _) in enumerate(rows)
        for k in range(int(n))
    ]
    for split, csv in (("train", "train"), ("validation", "val")):
        (folder / f"something-something-v2-{split}.json").write_text(json.dumps(entries))
        (folder / f"{csv}.csv").write_text("\n".join(frames) + "\n")
    for name in ("train.txt", "test.txt"):
        (folder / name).write_text(listing.read_text())
    return folder


def remux_mkv(videos: Sequence[Path], folder: Path) -> List[Path]:
    """The videos' packets, unchanged, in Matroska files: PyAV reports no stream duration (nor frame count)."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for video in videos:
        dst = folder / f"{video.stem}.mkv"
        if not dst.is_file():
            with av.open(str(video)) as src, av.open(str(dst), "w") as mkv:
                stream = mkv.add_stream_from_template(src.streams.video[0])
                for packet in src.demux(src.streams.video[0]):
                    if packet.dts is not None:
                        packet.stream = stream
                        mkv.mux(packet)
        out.append(dst)
    return out


def pts_index(video: Path) -> Dict[int, int]:
    """Timestamp -> frame number, from every frame PyAV decodes (in display order)."""
    import av

    with av.open(str(video)) as container:
        return {frame.pts: i for i, frame in enumerate(container.decode(video=0))}


class Recorder:
    """Records the indices our protocol returns, for a dataset whose protocol it wraps."""

    def __init__(self, dataset: Any):
        self.indices: np.ndarray = np.zeros(0, dtype=np.int64)
        for name in ("train_indices", "test_indices"):
            original = getattr(dataset.protocol, name)
            setattr(dataset.protocol, name, self._wrap(original))

    def _wrap(self, original: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        def spy(*args: Any) -> np.ndarray:
            self.indices = np.asarray(original(*args))
            return self.indices

        return spy


def compare_test(
    theirs_cls: type, cfg: Any, ours_cfg: DataConfig, names: Sequence[str], indices_of: Callable[[int], List[int]]
) -> List[Dict[str, Any]]:
    """Per video: upstream's test dataset (one item per view) against our test split (all views of a video)."""
    theirs = theirs_cls(cfg, "test")
    ours = build(ours_cfg, "test")
    recorder = Recorder(ours)
    crops, rows = cfg.TEST.NUM_SPATIAL_CROPS, []
    for i, name in enumerate(names):
        views, label = ours[i]
        equal, diff = True, 0.0
        for v in range(len(views)):
            clip, their_label, _, _ = theirs[i * len(views) + v]
            equal &= indices_of(i) == recorder.indices[v // crops].tolist() and their_label == label
            diff = max(diff, common.pixel_diff(views[v], clip, cfg.DATA.MEAN, cfg.DATA.STD))
        rows.append(
            {
                "video": name,
                "indices_equal": bool(equal),
                "max_pixel_diff": diff,
                "views": len(views),
                "indices": recorder.indices.tolist(),
            }
        )
    return rows


def compare_train(
    theirs_cls: type,
    cfg: Any,
    ours_cfg: DataConfig,
    names: Sequence[str],
    indices_of: Callable[[int], List[int]],
    seeds: Sequence[int] = SEEDS,
) -> List[Dict[str, Any]]:
    """Per video and seed: upstream's training sample with its draws recorded, and ours from those draws."""
    theirs = theirs_cls(cfg, "train")
    ours = build(ours_cfg, "train")
    recorder = Recorder(ours)
    rows = []
    for i, name in enumerate(names):
        equal, diff, draws = True, 0.0, []
        for seed in seeds:
            common.seeded(seed)
            with common.DrawRecorder() as recorded:
                clip, their_label, _, _ = theirs[i]
            replay = common.ReplayGenerator(recorded)
            mine, label = ours.sample(ours.items[i], replay)
            equal &= indices_of(i) == recorder.indices.tolist() and replay.finished() and their_label == label
            diff = max(diff, common.pixel_diff(mine, clip, cfg.DATA.MEAN, cfg.DATA.STD))
            draws.append(len(recorded))
        rows.append({"video": name, "indices_equal": bool(equal), "max_pixel_diff": diff, "draws": draws})
    return rows


def kinetics_checks(
    up: Upstream, videos: Sequence[Path], folder: Path, label: str, views: Sequence[Tuple[int, int]]
) -> Iterator[Dict[str, Any]]:
    """The Kinetics settings on `videos`: test views `(clips, crops)` each, then training samples."""
    data = kinetics_lists(videos, folder)
    index = {i: pts_index(v) for i, v in enumerate(videos)}
    names = [v.name for v in videos]

    def kinetics(i: int) -> List[int]:
        return up.kinetics_indices(index[i])

    for clips, crops in views:
        cfg = up.config(KINETICS_YAML, data, clips, crops)
        rows = compare_test(up.Kinetics, cfg, ours_config(cfg, data, segment=False), names, kinetics)
        yield common.summary(f"pyslowfast kinetics test {clips}x{crops} {label}", rows)
    cfg = up.config(KINETICS_YAML, data)
    rows = compare_train(up.Kinetics, cfg, ours_config(cfg, data, segment=False), names, kinetics)
    yield common.summary(f"pyslowfast kinetics train seeds {list(SEEDS)} {label}", rows)


def ssv2_checks(up: Upstream, videos: Sequence[Path], workdir: Path) -> Iterator[Dict[str, Any]]:
    """The SSv2 settings on frame folders of `videos`: 1 x 3 test views, then training samples."""
    listing = common.frame_folders(videos, workdir / "frames", template=TEMPLATE)
    data = ssv2_lists(listing, workdir / "ssv2")
    names = [v.stem for v in videos]

    def ssv2(i: int) -> List[int]:  # the files of the sample just read, video i's
        return up.ssv2_indices()

    cfg = up.config(SSV2_YAML, data)
    yield common.summary(
        "pyslowfast ssv2 test 1x3 frame folders",
        compare_test(up.Ssv2, cfg, ours_config(cfg, data, segment=True), names, ssv2),
    )
    yield common.summary(
        f"pyslowfast ssv2 train seeds {list(SEEDS)} frame folders",
        compare_train(up.Ssv2, cfg, ours_config(cfg, data, segment=True), names, ssv2),
    )


def run(upstream: Path, workdir: Path) -> Iterator[Dict[str, Any]]:
    """Every setting of the module docstring, one `pipeline_common.summary` each."""
    up = Upstream(upstream)
    videos = common.real_videos(workdir / "videos")
    yield from kinetics_checks(up, videos, workdir / "kinetics", "mp4", [(1, 3), (1, 1), (10, 3)])
    mkv = remux_mkv(videos, workdir / "mkv")
    yield from kinetics_checks(up, mkv, workdir / "kinetics-mkv", "mkv (no stream duration)", [(10, 3)])
    yield from ssv2_checks(up, videos, workdir)
