"""Data pipeline throughput: how close the dataset gets to bare decoding, and what workers add.

    .venv/bin/python bench/data_pipeline.py [--videos 24] [--size 160] [--frames 96]
        [--num-frames 8] [--sampling-rate 8] [--crop 112] [--workers 2] [--repeats 2]

On generated H.264 videos (a panning texture with grain, so that decoding costs what real
footage costs, unlike the mostly static synthetic set), for the SAME sampled indices:
  (a) bare decord: open VideoReader(num_threads=1) + one get_batch of the sorted unique indices
  (b) VideoDataset.__getitem__((i, seed)): sampling + decode + train transforms, in-process
  (c) a DataLoader with --workers worker processes over the same keys
and prints clips/s, b/a (target >= 0.8) and c/b (target >= 1.6 with 2 workers on 2 cores).
Side fact: get_batch on the same frames given unsorted vs sorted.
Torch runs single-threaded in-process, as in DataLoader workers, so (b) and (c) compare
one core against --workers cores.

    .venv/bin/python bench/data_pipeline.py --prepared [--videos 8] [--size 160] [--frames 300]
        [--source-gop 250] [--gop 16] [--num-frames 8] [--sampling-rate 32] [--rounds 5] [--tune T]

With --prepared: videos with a long keyframe interval (--source-gop), re-encoded by
`datasets.prepare` with a keyframe every --gop frames (same size, same crf and preset as the
sources, so the keyframe interval is the only difference), then bare decord reads of the SAME
sampled clips from the sources and from the prepared copies, clip by clip back to back (which
one goes first alternates), in --rounds rounds; prints the median clips/s of each and the ratio
(target >= 2x for sparse sampling: 8 frames at rate 32). --tune (e.g. fastdecode) encodes the
copies with that x264 tune as well: then more than the keyframe interval differs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DataConfig, build  # noqa: E402
from datasets.decode import open_video, read_frames  # noqa: E402
from datasets.synthetic import write_video  # noqa: E402


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


def _keyframes(path: str) -> int:
    """Keyframes in a video, from the packets (no decoding)."""
    import av

    with av.open(path) as c:
        return sum(p.is_keyframe for p in c.demux(video=0) if p.size)


def bench_prepared(a) -> int:
    """Sparse clips read from long-gop sources and from their prepared short-gop copies."""
    from datasets.prepare import PrepareOptions, prepare_list
    from datasets.sampling import clip_indices

    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="bench_prepared_")
    folder = a.dir or tmp.name
    raw, src, out = (os.path.join(folder, name) for name in ("raw", "source", "prepared"))
    os.makedirs(raw, exist_ok=True)
    t0 = time.perf_counter()
    make_videos(raw, a.videos, a.size, a.frames)
    # the sources: encoded by the same tool as the copies (same size, crf 18 and preset), with
    # scene-cut keyframes off so their interval really is --source-gop (x264's scene cuts put
    # one every ~75 frames into this panning content): only the keyframe interval differs
    for folder_in, folder_out, gop in ((raw, src, a.source_gop), (src, out, a.gop)):
        opts = PrepareOptions(short_side=a.size, gop=gop, crf=18, preset="veryfast",
                              tune=a.tune if folder_in == src else None)
        report = prepare_list(os.path.join(folder_in, "train.txt"), folder_out, opts, workers=a.workers,
                              progress=False)
        if report.failed:
            print(f"prepare failed: {report.failed}")
            return 1
        t1, t2 = (time.perf_counter(), None) if folder_in == raw else (t1, time.perf_counter())
    names = sorted(f for f in os.listdir(src) if f.endswith(".mp4"))
    pairs = [(os.path.join(src, f), os.path.join(out, f)) for f in names]
    size_src = sum(os.path.getsize(s) for s, _ in pairs) / 2**20
    size_out = sum(os.path.getsize(o) for _, o in pairs) / 2**20
    print(f"videos: {a.videos} x {a.frames} frames {a.size}x{a.size} H.264 in {folder} "
          f"({t1 - t0:.1f}s to make the sources, "
          f"{t2 - t1:.1f}s to prepare the copies with {a.workers} workers)")
    print(f"keyframes per video: sources {np.mean([_keyframes(s) for s, _ in pairs]):g} ({size_src:.1f} MiB "
          f"in all), prepared copies {np.mean([_keyframes(o) for _, o in pairs]):g} ({size_out:.1f} MiB)")

    # the same clips from both: one train-mode clip per video per round, seeded
    plans = []
    for r in range(a.rounds):
        round_plan = []
        for k, (s, o) in enumerate(pairs):
            vr_s, vr_o = open_video(s), open_video(o)
            assert len(vr_s) == len(vr_o), (s, len(vr_s), len(vr_o))
            idx = clip_indices(len(vr_s), a.num_frames, a.sampling_rate, vr_s.get_avg_fps(), 30.0, mode="train",
                               rng=np.random.default_rng([r, k]))
            round_plan.append((s, o, idx))
        plans.append(round_plan)
    print(f"clip: {a.num_frames} frames x rate {a.sampling_rate} (span {a.num_frames * a.sampling_rate} of "
          f"{a.frames} frames); bare decord open + get_batch; {a.videos} clips per round, {a.rounds} rounds")
    for s, o, idx in plans[0][:2]:  # warm the page cache and decord's first-use costs
        read_frames(open_video(s), idx)
        read_frames(open_video(o), idx)

    # wall clock, and CPU time of this process (decoding is single-threaded here): on a
    # shared machine the CPU-time rate is what other processes disturb least
    rates = {"source": [], "prepared": []}
    cpu_rates = {"source": [], "prepared": []}
    for r, round_plan in enumerate(plans):
        wall = {"source": 0.0, "prepared": 0.0}
        cpu_time = {"source": 0.0, "prepared": 0.0}
        # clip by clip, the two copies back to back and in alternating order, so that a
        # change of load from other processes hits both alike
        for k, (s, o, idx) in enumerate(round_plan):
            for which in (("source", "prepared") if (r + k) % 2 == 0 else ("prepared", "source")):
                t, c = time.perf_counter(), time.process_time()
                clip = read_frames(open_video(s if which == "source" else o), idx)
                wall[which] += time.perf_counter() - t
                cpu_time[which] += time.process_time() - c
                assert clip.shape[0] == a.num_frames
        for which in rates:
            rates[which].append(_rate(len(round_plan), wall[which]))
            cpu_rates[which].append(_rate(len(round_plan), cpu_time[which]))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    cpu = {k: float(np.median(v)) for k, v in cpu_rates.items()}
    ratios = [p / s for p, s in zip(rates["prepared"], rates["source"])]
    print("per round clips/s: source " + " ".join(f"{x:.1f}" for x in rates["source"])
          + " | prepared " + " ".join(f"{x:.1f}" for x in rates["prepared"]))
    print(f"source   (gop {a.source_gop:>3})  {med['source']:8.1f} clips/s "
          f"(median; {cpu['source']:.1f} per CPU-second)")
    print(f"prepared (gop {a.gop:>3})  {med['prepared']:8.1f} clips/s "
          f"(median; {cpu['prepared']:.1f} per CPU-second)")
    print(f"prepared/source = {med['prepared'] / med['source']:.2f}x wall clock (median of per-round ratios "
          f"{np.median(ratios):.2f}x), {cpu['prepared'] / cpu['source']:.2f}x CPU time; target >= 2")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs")
    if tmp:
        tmp.cleanup()
    return 0


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
    p.add_argument("--rounds", type=int, default=5, help="with --prepared: alternating rounds (medians reported)")
    p.add_argument("--tune", help="with --prepared: x264 tune of the copies only (e.g. fastdecode)")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="passes over the videos (different seeds)")
    p.add_argument("--dir", help="folder for the videos (default: a temporary one)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.prepared:
        a.videos, a.frames = a.videos or 8, a.frames or 300
        a.sampling_rate = a.sampling_rate or 32
        return bench_prepared(a)
    a.videos, a.frames, a.sampling_rate = a.videos or 24, a.frames or 96, a.sampling_rate or 8

    tmp = None if a.dir else tempfile.TemporaryDirectory(prefix="bench_data_")
    folder = a.dir or tmp.name
    os.makedirs(folder, exist_ok=True)
    t0 = time.perf_counter()
    make_videos(folder, a.videos, a.size, a.frames)
    print(f"videos: {a.videos} x {a.frames} frames {a.size}x{a.size} H.264 in {folder} "
          f"({time.perf_counter() - t0:.1f}s to make)")
    short = [a.crop + a.crop // 7, a.crop + a.crop // 7 * 3]
    cfg = DataConfig(root=folder, num_frames=a.num_frames, sampling_rate=a.sampling_rate, crop_size=a.crop,
                     train_short_side=short, test_short_side=a.crop, num_workers=a.workers)
    ds = build(cfg, "train")
    keys = [(i, 1000 * r + i) for r in range(a.repeats) for i in range(len(ds))]
    # the exact indices __getitem__ will decode: sampling is the first draw from the seed's generator
    plans = []
    for i, seed in keys:
        vr = open_video(ds.items[i].path)
        plans.append((ds.items[i].path, ds.sample_indices(len(vr), vr.get_avg_fps(), np.random.default_rng(seed))))
    print(f"clip: {a.num_frames} frames x rate {a.sampling_rate}, train transforms (short side {short}, "
          f"crop {a.crop}, flip); {len(keys)} clips per measurement")

    for path, idx in plans[:4]:  # warm the page cache and decord's first-use costs
        read_frames(open_video(path), idx)
        ds[keys[0]]

    # (a) and (b) alternate clip by clip, so that load from other processes hits both alike
    t_bare = t_item = 0.0
    for (path, idx), key in zip(plans, keys):
        t = time.perf_counter()
        read_frames(open_video(path), idx)
        t_bare += time.perf_counter() - t
        t = time.perf_counter()
        ds[key]
        t_item += time.perf_counter() - t
    bare, item = _rate(len(keys), t_bare), _rate(len(keys), t_item)

    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, sampler=keys, num_workers=a.workers)
    t = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter()
    rest = sum(b[0].shape[0] for b in it)
    t_end = time.perf_counter()
    loaded = _rate(rest, t_end - t_first)
    loaded_all = _rate(rest + first[0].shape[0], t_end - t)

    print(f"(a) bare decord get_batch      {bare:8.1f} clips/s")
    print(f"(b) dataset __getitem__        {item:8.1f} clips/s   b/a = {item / bare:.2f}  (target >= 0.8)")
    print(f"(c) DataLoader, {a.workers} workers      {loaded:8.1f} clips/s   c/b = {loaded / item:.2f}  "
          f"(target >= 1.6; {loaded_all:.1f} clips/s counting worker start-up)")

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
    print(f"side fact: get_batch unsorted / sorted time = {t_unsorted / t_sorted:.1f}x "
          f"({1000 * t_unsorted / len(plans):.1f} vs {1000 * t_sorted / len(plans):.1f} ms per clip)")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs" + ("  (busy machine: c/b is capped by the free cores)"
                                                                  if load > (os.cpu_count() or 1) - 0.5 else ""))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
