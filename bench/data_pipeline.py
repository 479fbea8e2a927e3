"""Data pipeline throughput: how close the dataset gets to bare decoding, and what workers add.

    .venv/bin/python bench/data_pipeline.py [--videos 24] [--size 160] [--frames 96]
        [--num-frames 8] [--sampling-rate 8] [--crop 112] [--workers 2] [--repeats 2] [--rounds 5]
        [--decoder decord|torchcodec]

On generated H.264 videos (a panning texture with grain, so that decoding costs what real
footage costs, unlike the mostly static synthetic set), for the SAME sampled indices:
  (a) bare decoding, each backend of `data.decoder` side by side: open the file with one thread + one batch call
      of the sorted unique indices (decord's get_batch, torchcodec's get_frames_at), and their ratio
  (b) VideoDataset.__getitem__((i, seed)): sampling + decode + train transforms, in-process, with each decoder
  (c) a DataLoader (of the dataset with --decoder) over the same keys with 1 worker process and with
      N = --workers, taking turns in --rounds rounds (1, N, N, 1, 1, N, ...: the order alternates), so
      that load from other processes hits both alike
(the (a) and (b) rows of all decoders alternate clip by clip, so that load from other processes hits them alike)
and prints clips/s, torchcodec/decord, b/a (target >= 0.8) and, per round and as the median of the per-round
ratios, N workers / 1 worker (target >= 1.6 with 2 workers on 2 cores).
Each DataLoader figure is a whole pass, clips / the time from before the loader's iterator is
created to its last batch: worker start-up and the first batches are counted (no warm-up is
discarded), so no worker's first batch comes for free and the ratio is, if anything, low.
Side fact: get_batch on the same frames given unsorted vs sorted.
Torch runs single-threaded in-process, as in DataLoader workers.

    .venv/bin/python bench/data_pipeline.py --prepared [--videos 8] [--size 160] [--frames 300]
        [--source-gop 250] [--gop 16] [--num-frames 8] [--sampling-rate 32] [--rounds 5]

With --prepared: sources as x264 writes them by default (crf 23, preset medium, up to 3
B-frames) with a keyframe every --source-gop frames, and two sets of copies made from them by
`datasets.prepare` at the same size: "gop only" (a keyframe every --gop frames, nothing else
changed) and "prepared" (the tool's defaults: --gop, fastdecode tune, no B-frames). Then bare
decord reads of the SAME sampled clips from the three, clip by clip back to back (the order
rotates), in --rounds rounds; prints the median clips/s of each and the ratios to the sources
(target >= 2x for the prepared copies with sparse sampling: 8 frames at rate 32).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from action_launch.datasets import DataConfig, build
from action_launch.datasets.decode import DECODERS, open_video, read_frames
from action_launch.datasets.protocols import Source
from action_launch.datasets.synthetic import write_video


def make_videos(folder: str, count: int, size: int, frames: int, seed: int = 0, gop: Optional[int] = None) -> str:
    """`count` videos of a texture panning under a moving shape, plus per-frame grain, with
    keyframe interval `gop` (None: x264's default); writes train.txt and returns the folder."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(count):
        path = os.path.join(folder, f"bench_{k:03d}.mp4")
        if not os.path.exists(path):
            texture = rng.integers(0, 200, (size // 4 + 1, 2 * size // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
            texture = texture.astype(np.uint8)
            clip = np.empty((frames, size, size, 3), np.uint8)
            for t in range(frames):
                x = (2 * t) % size
                clip[t] = texture[:size, x : x + size]
                clip[t, size // 3 : size // 3 + size // 5, (3 * t) % (size - size // 5) :][:, : size // 5] = 240
            clip = np.clip(clip.astype(np.int16) + rng.integers(-12, 13, clip.shape), 0, 255).astype(np.uint8)
            write_video(path, clip, fps=30, gop=gop)
        lines.append(f"{os.path.basename(path)} {k % 4}\n")
    with open(os.path.join(folder, "train.txt"), "w") as f:
        f.writelines(lines)
    return folder


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def loader_rate(loader: Iterable[Sequence[torch.Tensor]]) -> float:
    """Clips/s of one pass over `loader`; the clock starts before its iterator (and so its workers) is
    created, so start-up and the first batches count."""
    t = time.perf_counter()
    clips = sum(len(batch[0]) for batch in loader)
    return _rate(clips, time.perf_counter() - t)


def worker_rounds(loaders: Dict[int, Iterable[Sequence[torch.Tensor]]], rounds: int) -> Dict[int, List[float]]:
    """workers -> clips/s of each round; every round times one pass of each loader, in an order that
    alternates from round to round (1, 2, 2, 1, ...)."""
    rates: Dict[int, List[float]] = {w: [] for w in loaders}
    order = list(loaders)
    for r in range(rounds):
        for w in order if r % 2 == 0 else order[::-1]:
            rates[w].append(loader_rate(loaders[w]))
    return rates


def print_worker_rounds(rates: Dict[int, List[float]], item: float) -> None:
    """The rounds side by side: clips/s of 1 and N workers and their ratio, per round and the medians."""
    one, many = rates
    ratios = [m / o for o, m in zip(rates[one], rates[many])]
    print(f"(c) DataLoader, whole passes (worker start-up counted), {len(ratios)} rounds in alternating order:")
    print(f"    {'round':>5}  {f'{one} worker':>9}  {f'{many} workers':>10}  {f'{many}/{one}':>5}")
    for r, (o, m, q) in enumerate(zip(rates[one], rates[many], ratios)):
        print(f"    {r + 1:5d}  {o:9.1f}  {m:10.1f}  {q:5.2f}")
    med_one, med_many = float(np.median(rates[one])), float(np.median(rates[many]))
    print(
        f"    median {med_one:9.1f}  {med_many:10.1f}  {np.median(ratios):5.2f}  (median of per-round ratios; "
        f"target >= 1.6; {many} workers / (b) = {med_many / item:.2f})"
    )


def _keyframes(path: str) -> int:
    """Keyframes in a video, from the packets (no decoding)."""
    import av

    with av.open(path) as c:
        return sum(p.is_keyframe for p in c.demux(video=0) if p.size)


# What the copies are compared with: videos as ffmpeg/x264 write them by default (crf 23, preset
# medium, a keyframe every 250 frames, up to 3 B-frames), with scene-cut keyframes off so that the
# interval really is --source-gop (x264's scene cuts put one every ~75 frames into this panning content).
SOURCE_X264 = dict(crf=23, preset="medium", tune=None, bframes=3)


def bench_prepared(a) -> int:
    """Sparse clips read from long-gop sources and from two sets of their prepared copies: the
    keyframe interval changed alone, and datasets.prepare's defaults."""
    from action_launch.datasets.prepare import PrepareOptions, prepare_list
    from action_launch.datasets.sampling import clip_indices

    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="bench_prepared_")
    folder = a.dir or tmp.name
    raw = os.path.join(folder, "raw")
    os.makedirs(raw, exist_ok=True)
    make_videos(raw, a.videos, a.size, a.frames)
    sets = {  # name -> (encoded from, options)
        "source": ("raw", PrepareOptions(short_side=a.size, gop=a.source_gop, **SOURCE_X264)),
        "gop only": ("source", PrepareOptions(short_side=a.size, gop=a.gop, **SOURCE_X264)),
        "prepared": ("source", PrepareOptions(short_side=a.size, gop=a.gop)),
    }
    folders = {"raw": raw}
    for name, (src_name, opts) in sets.items():
        folders[name] = os.path.join(folder, name.replace(" ", "_"))
        t0 = time.perf_counter()
        report = prepare_list(
            os.path.join(folders[src_name], "train.txt"), folders[name], opts, workers=a.workers, progress=False
        )
        if report.failed:
            print(f"prepare failed: {report.failed}")
            return 1
        files = [os.path.join(folders[name], f) for f in sorted(os.listdir(folders[name])) if f.endswith(".mp4")]
        options = ", ".join(f"{k} {getattr(opts, k)}" for k in ("gop", "crf", "preset", "tune", "bframes"))
        print(
            f"{name:<9} {options}: {np.mean([_keyframes(f) for f in files]):g} keyframes per video, "
            f"{sum(os.path.getsize(f) for f in files) / 2**20:.1f} MiB in all ({time.perf_counter() - t0:.1f}s)"
        )
    names = [f for f in sorted(os.listdir(folders["source"])) if f.endswith(".mp4")]
    print(f"videos: {a.videos} x {a.frames} frames {a.size}x{a.size} in {folder}")

    # the same clips from every set: one train-mode clip per video per round, seeded
    plans = []
    for r in range(a.rounds):
        round_plan = []
        for k, name in enumerate(names):
            n = len(open_video(os.path.join(folders["source"], name)))
            assert all(len(open_video(os.path.join(folders[s], name))) == n for s in sets), name
            idx = clip_indices(
                n, a.num_frames, a.sampling_rate, 30.0, 30.0, mode="train", rng=np.random.default_rng([r, k])
            )
            round_plan.append((name, idx))
        plans.append(round_plan)
    print(
        f"clip: {a.num_frames} frames x rate {a.sampling_rate} (span {a.num_frames * a.sampling_rate} of "
        f"{a.frames} frames); bare decord open + get_batch; {a.videos} clips per round, {a.rounds} rounds"
    )
    for name, idx in plans[0][:2]:  # warm the page cache and decord's first-use costs
        for s in sets:
            read_frames(open_video(os.path.join(folders[s], name)), idx)

    # wall clock, and CPU time of this process (decoding is single-threaded here): on a shared
    # machine the CPU-time rate is what other processes disturb least. Clip by clip, every set
    # back to back in a rotating order, so that a change of load hits all alike.
    rates = {s: [] for s in sets}
    cpu_rates = {s: [] for s in sets}
    order = list(sets)
    for r, round_plan in enumerate(plans):
        wall = dict.fromkeys(sets, 0.0)
        cpu_time = dict.fromkeys(sets, 0.0)
        for k, (name, idx) in enumerate(round_plan):
            shift = (r + k) % len(order)
            for s in order[shift:] + order[:shift]:
                t, c = time.perf_counter(), time.process_time()
                clip = read_frames(open_video(os.path.join(folders[s], name)), idx)
                wall[s] += time.perf_counter() - t
                cpu_time[s] += time.process_time() - c
                assert clip.shape[0] == a.num_frames
        for s in sets:
            rates[s].append(_rate(len(round_plan), wall[s]))
            cpu_rates[s].append(_rate(len(round_plan), cpu_time[s]))
    med = {s: float(np.median(v)) for s, v in rates.items()}
    cpu = {s: float(np.median(v)) for s, v in cpu_rates.items()}
    for s in sets:
        ratios = [x / y for x, y in zip(rates[s], rates["source"])]
        print(
            f"{s:<9} {med[s]:6.1f} clips/s (median; {cpu[s]:.1f} per CPU-second); per round "
            + " ".join(f"{x:.1f}" for x in rates[s])
            + (
                ""
                if s == "source"
                else f"; /source {med[s] / med['source']:.2f}x wall clock (median of "
                f"per-round ratios {np.median(ratios):.2f}x), {cpu[s] / cpu['source']:.2f}x CPU time"
            )
        )
    print(
        f"target: prepared/source >= 2 (prepared = datasets.prepare defaults); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if tmp:
        tmp.cleanup()
    return 0


BATCH_CALL = {"decord": "get_batch", "torchcodec": "get_frames_at"}
"""Each decoder's one batch call (the (a) rows)."""


def available_decoders(chosen: str) -> List[str]:
    """decord and the other `data.decoder` backends that load here (one that does not is said, and left out;
    `chosen`, the dataset's for (c), must load)."""
    found = ["decord"]
    for name in DECODERS[1:]:
        try:
            open_video(__file__, name)
        except RuntimeError as e:  # cannot load: said in one line
            if name == chosen:
                raise
            print(f"{name}: left out, {e}")
            continue
        except Exception:  # it loaded, and this file is no video
            pass
        found.append(name)
    return found


def decode_rates(plans: Sequence[tuple], keys: Sequence[tuple], sets: Dict[str, object]) -> tuple:
    """Clips/s of (a) bare decoding and (b) `__getitem__`, per decoder: every measurement of one clip runs back to
    back before the next clip's, so that load from other processes hits them all alike."""
    t_bare = dict.fromkeys(sets, 0.0)
    t_item = dict.fromkeys(sets, 0.0)
    for (path, idx), key in zip(plans, keys):
        for d, ds in sets.items():
            t = time.perf_counter()
            read_frames(open_video(path, d), idx)
            t_bare[d] += time.perf_counter() - t
            t = time.perf_counter()
            ds[key]
            t_item[d] += time.perf_counter() - t
    return ({d: _rate(len(keys), t) for d, t in t_bare.items()}, {d: _rate(len(keys), t) for d, t in t_item.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, help="generated videos (default 24; 8 with --prepared)")
    p.add_argument("--size", type=int, default=160, help="frame side of the generated videos")
    p.add_argument("--frames", type=int, help="frames per generated video (default 96; 300 with --prepared)")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--sampling-rate", type=int, help="clip stride (default 8; 32 with --prepared)")
    p.add_argument("--prepared", action="store_true", help="compare sources with their datasets.prepare copies")
    p.add_argument("--source-gop", type=int, default=250, help="with --prepared: keyframe interval of the sources")
    p.add_argument("--gop", type=int, default=16, help="with --prepared: keyframe interval of the prepared copies")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds (medians reported): of the DataLoaders "
        "with 1 and --workers workers, or with --prepared of the three sets",
    )
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="passes over the videos (different seeds)")
    p.add_argument("--dir", help="folder for the videos (default: a temporary one)")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="decord",
        help="data.decoder of the DataLoaders (c); (a) and (b) time every decoder side by side",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.prepared:
        a.videos, a.frames = a.videos or 8, a.frames or 300
        a.sampling_rate = a.sampling_rate or 32
        return bench_prepared(a)
    a.videos, a.frames, a.sampling_rate = a.videos or 24, a.frames or 96, a.sampling_rate or 8
    if a.workers < 2:
        p.error("--workers: at least 2 (the DataLoader is compared with its 1-worker self)")

    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="bench_data_")
    folder = a.dir or tmp.name
    os.makedirs(folder, exist_ok=True)
    t0 = time.perf_counter()
    make_videos(folder, a.videos, a.size, a.frames)
    print(
        f"videos: {a.videos} x {a.frames} frames {a.size}x{a.size} H.264 in {folder} "
        f"({time.perf_counter() - t0:.1f}s to make)"
    )
    short = [a.crop + a.crop // 7, a.crop + a.crop // 7 * 3]
    decoders = available_decoders(a.decoder)
    sets = {
        d: build(
            DataConfig(
                root=folder,
                num_frames=a.num_frames,
                sampling_rate=a.sampling_rate,
                crop_size=a.crop,
                train_short_side=short,
                test_short_side=a.crop,
                num_workers=a.workers,
                decoder=d,
            ),
            "train",
        )
        for d in decoders
    }
    ds = sets[a.decoder]
    keys = [(i, 1000 * r + i) for r in range(a.repeats) for i in range(len(ds))]
    # the exact indices __getitem__ will decode: sampling is the first draw from the seed's generator
    plans = []
    for i, seed in keys:
        vr = open_video(ds.items[i].path)
        source = Source(len(vr), vr.get_avg_fps())
        plans.append((ds.items[i].path, ds.sample_indices(source, np.random.default_rng(seed))))
    print(
        f"clip: {a.num_frames} frames x rate {a.sampling_rate}, train transforms (short side {short}, "
        f"crop {a.crop}, flip); {len(keys)} clips per measurement"
    )

    for path, idx in plans[:4]:  # warm the page cache and the decoders' first-use costs
        for d in decoders:
            read_frames(open_video(path, d), idx)
            sets[d][keys[0]]

    bare, items = decode_rates(plans, keys, sets)
    for d in decoders:
        versus = f"   {d}/decord = {bare[d] / bare['decord']:.2f}" if d != "decord" else ""
        print(f"(a) bare {d:<10} {BATCH_CALL[d]:<14} {bare[d]:8.1f} clips/s{versus}")
    for d in decoders:
        versus = f"   {d}/decord = {items[d] / items['decord']:.2f}" if d != "decord" else ""
        print(
            f"(b) dataset __getitem__, {d:<10} {items[d]:8.1f} clips/s   b/a = {items[d] / bare[d]:.2f}  "
            f"(target >= 0.8){versus}"
        )
    item = items[a.decoder]
    loaders = {
        w: torch.utils.data.DataLoader(ds, batch_size=a.batch_size, sampler=keys, num_workers=w) for w in (1, a.workers)
    }
    print_worker_rounds(worker_rounds(loaders, a.rounds), item)

    # side fact: the same frames requested unsorted
    t_sorted = t_unsorted = 0.0
    rng = np.random.default_rng(0)
    for path, idx in plans:
        uniq = np.unique(idx)
        shuffled = rng.permutation(uniq)
        if len(uniq) > 1 and (shuffled == uniq).all():
            shuffled = uniq[::-1]
        for order, acc in ((uniq, "s"), (shuffled, "u")):
            vr = open_video(path)
            t = time.perf_counter()
            vr.get_batch(order.tolist())
            if acc == "s":
                t_sorted += time.perf_counter() - t
            else:
                t_unsorted += time.perf_counter() - t
    print(
        f"side fact: get_batch unsorted / sorted time = {t_unsorted / t_sorted:.1f}x "
        f"({1000 * t_unsorted / len(plans):.1f} vs {1000 * t_sorted / len(plans):.1f} ms per clip)"
    )
    load = os.getloadavg()[0]
    print(
        f"load average {load:.1f} on {os.cpu_count()} CPUs"
        + ("  (busy machine: c/b is capped by the free cores)" if load > (os.cpu_count() or 1) - 0.5 else "")
    )
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
