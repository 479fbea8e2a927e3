"""MS-G3D's and the personality model's data code against our SkeletonDataset, on the same arrays.

- `run_msg3d(upstream)` (kenziyuliu/MS-G3D): NTU RGB+D 60-shaped joint arrays (3 x 300 frames x 25 joints x 2
  people, zero-padded after a random length, some second people absent) and Kinetics-Skeleton-shaped ones
  (18 joints); the bone arrays made by its own `data_gen/gen_bone_data.py` (run as its README says); its
  `feeders.feeder.Feeder` with the feeder arguments of its training and test configs
  (`config/nturgbd-cross-subject/*.yaml`, `config/kinetics-skeleton/*.yaml`) against our dataset with
  configs/msg3d/ntu60_xsub_{joint,bone}.yaml (and the graph `kinetics`), train and val splits.
- `run_personality(upstream)` (Rgtemze/PersonalityRecognition): SMPL-24 xyz chunks (the arrays its
  `udiva_parser.py` + skeleton preprocessing write), their Laban features made by its own
  `data_gen/preprocess_personality.py` (`laban` op), read by its `feeders.feeder.Feeder` with the arguments of
  config/personality/train_joint_laban.yaml, against our dataset with configs/msg3d/personality_udiva_authors.yaml
  (xyz + the authors' Laban features computed on the fly), chunk by chunk.

Each yields one JSON-able line per setting: samples compared, shapes equal, the largest absolute difference.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import yaml
from pipeline_common import upstream_on_path

from action_launch.config import load_config
from action_launch.datasets import build

REPO = Path(__file__).resolve().parent.parent


def _skeletons(rng: np.random.Generator, n: int, joints: int, people: int, frames: int = 300) -> np.ndarray:
    """(n, 3, frames, joints, people) float32 joint positions, each sample zero-padded after a random length, every
    other sample without its second person (as NTU's single-actor samples)."""
    x = rng.normal(0, 0.5, (n, 3, frames, joints, people)).astype(np.float32)
    for i in range(n):
        x[i, :, int(rng.integers(frames // 8, frames + 1)) :] = 0
        if people > 1 and i % 2:
            x[i, ..., 1:] = 0
    return x


def _write_split(folder: Path, part: str, data: np.ndarray, labels: List[int], suffix: str = "_joint") -> None:
    np.save(folder / f"{part}_data{suffix}.npy", data)
    with open(folder / f"{part}_label.pkl", "wb") as f:
        pickle.dump(([f"S001C001P00{i}R001A{label:03d}.skeleton" for i, label in enumerate(labels)], labels), f)


def _feeder_args(upstream: Path, config: str, which: str) -> Dict[str, Any]:
    """The feeder arguments of one upstream config file (data and label paths left out)."""
    args = dict(yaml.safe_load((upstream / config).read_text()).get(which) or {})
    for key in ("data_path", "label_path", "laban_path", "info_path"):
        args.pop(key, None)
    return args


def _compare(theirs: Any, ours: Any, pick=lambda sample: sample[0]) -> Tuple[bool, float]:
    """(every sample has the same shape on both sides, the largest absolute difference) over a whole split."""
    same, worst = True, 0.0
    for i in range(len(ours)):
        a, b = np.asarray(theirs[i][0], dtype=np.float64), pick(ours[i]).numpy().astype(np.float64)
        if a.shape != b.shape:
            same = False
            continue
        worst = max(worst, float(np.abs(a - b).max()))
    return same, worst


def run_msg3d(upstream: Path, workdir: Path, samples: int = 6) -> Iterator[Dict[str, Any]]:
    """The MS-G3D comparisons of the module docstring."""
    rng = np.random.default_rng(0)
    layouts = (
        ("ntu", "ntu/xsub", 25, "nturgbd-cross-subject", "ntu-rgb+d"),
        ("kinetics", "kinetics", 18, "kinetics-skeleton", "kinetics"),
    )
    for dataset, benchmark, joints, config_dir, graph in layouts:
        folder = workdir / "data" / benchmark
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("train", "val"):
            labels = [int(k) for k in rng.integers(0, 60, samples)]
            _write_split(folder, part, _skeletons(rng, samples, joints, 2), labels)
        # gen_bone_data.py reads ../data/<benchmark>/ from its working folder, as its README runs it
        (workdir / "data_gen").mkdir(exist_ok=True)
        subprocess.run(
            [sys.executable, str(upstream / "data_gen" / "gen_bone_data.py"), "--dataset", dataset],
            cwd=workdir / "data_gen",
            check=True,
            capture_output=True,
        )
        with upstream_on_path(upstream):
            from feeders.feeder import Feeder

            for stream in ("joint", "bone"):
                for part, which, split in (("train", "train_feeder_args", "train"), ("val", "test_feeder_args", "val")):
                    phase = "train" if part == "train" else "test"
                    args = _feeder_args(upstream, f"config/{config_dir}/{phase}_{stream}.yaml", which)
                    theirs = Feeder(
                        str(folder / f"{part}_data_{stream}.npy"), str(folder / f"{part}_label.pkl"), **args
                    )
                    cfg = load_config(
                        REPO / "configs/msg3d/ntu60_xsub_joint.yaml",
                        [
                            f"data.root={folder}",
                            f"data.graph={graph}",
                            f"data.skeleton_stream={stream}",
                            "data.train_data=train_data_joint.npy",
                            "data.val_data=val_data_joint.npy",
                        ],
                    )
                    same, worst = _compare(theirs, build(cfg.data, split))
                    yield {
                        "check": f"msg3d {dataset} {stream} {split}",
                        "feeder_args": args,
                        "samples": samples,
                        "shapes_equal": same,
                        "max_abs_diff": worst,
                    }


def run_personality(
    upstream: Path, workdir: Path, participants: int = 4, chunks: int = 3, frames: int = 64
) -> Iterator[Dict[str, Any]]:
    """The personality comparison of the module docstring."""
    rng = np.random.default_rng(1)
    n = participants * chunks
    xyz = rng.normal(0, 0.3, (n, frames, 24, 3)).astype(np.float32)  # (chunk, T, V, xyz) as their arrays are
    xyz[:, :, 0] = 0  # the root at the origin, as their pre-normalisation leaves it
    traits = rng.normal(0, 1, (participants, 5)).astype(np.float32)
    # their preprocessing reads and writes under D:/ziya/st-gcn/<folder>/, a relative path on this system
    folder = workdir / "D:" / "ziya" / "st-gcn" / "body_keypoints_full_train"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "X_train_processed.npy", xyz)
    np.save(folder / "y_train.npy", np.repeat(traits, chunks, axis=0))
    np.save(folder / "info_train.npy", np.array([[p, p, chunks] for p in range(participants)], dtype=np.float64))
    os.environ.setdefault("MPLBACKEND", "Agg")
    with upstream_on_path(upstream), contextlib.chdir(workdir):
        from data_gen import preprocess_personality

        preprocess_personality.preprocess("body_keypoints_full_train", "train", "laban")
        from feeders.feeder import Feeder

        args = _feeder_args(upstream, "config/personality/train_joint_laban.yaml", "train_feeder_args")
        theirs = Feeder(
            -1,
            str(folder / "X_train_processed.npy"),
            str(folder / "y_train.npy"),
            str(folder / "X_train_laban.npy"),
            str(folder / "info_train.npy"),
            **args,
        )
    ours_root = workdir / "ours"
    ours_root.mkdir(exist_ok=True)
    np.save(ours_root / "train_data.npy", xyz.transpose(0, 3, 1, 2)[..., None])
    names = [f"{p}_{c}" for p in range(participants) for c in range(chunks)]
    with open(ours_root / "train_label.pkl", "wb") as f:
        pickle.dump((names, [0] * n), f)
    (ours_root / "big_five.csv").write_text(
        "participant,openness,conscientiousness,extraversion,agreeableness,"
        "neuroticism\n" + "".join(f"{p}," + ",".join(map(str, t)) + "\n" for p, t in enumerate(traits))
    )
    cfg = load_config(REPO / "configs/msg3d/personality_udiva_authors.yaml", [f"data.root={ours_root}"])
    ours = build(cfg.data, "train")
    xyz_same, xyz_worst = _compare([(theirs.data[i],) for i in range(n)], ours, lambda s: s[0][:3])
    laban_same, laban_worst = _compare([(theirs.laban[i],) for i in range(n)], ours, lambda s: s[0][3:])
    target_worst = max(float(np.abs(theirs.label[i] - ours[i][1].numpy()).max()) for i in range(n))
    yield {
        "check": "personality xyz",
        "feeder_args": args,
        "samples": n,
        "shapes_equal": xyz_same,
        "max_abs_diff": xyz_worst,
    }
    yield {
        "check": "personality laban (their preprocess_personality.py vs ours on the fly)",
        "samples": n,
        "shapes_equal": laban_same,
        "max_abs_diff": laban_worst,
        "max_abs_laban": float(np.abs(theirs.laban).max()),
    }
    yield {"check": "personality targets", "samples": n, "max_abs_diff": target_worst}
