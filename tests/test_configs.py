"""Every config file loads and validates; the published recipes say what the reference says; each tiny
video config trains a short epoch on the synthetic clips (and the TimeSformer one is then tested)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_train

from action_launch.config import load_config
from action_launch.training.schedule import effective_batch_size

CONFIGS = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "sweeps"
)
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
RECIPES = [
    "configs/timesformer/k400_8x32.yaml",
    "configs/timesformer/ssv2.yaml",
    "configs/timesformer/light_muwiges.yaml",
    "configs/msg3d/ntu60_xsub_joint.yaml",
    "configs/msg3d/ntu60_xsub_bone.yaml",
    "configs/msg3d/personality_udiva.yaml",
    "configs/stabn/ssv1_32f.yaml",
    "configs/tsm/ssv2_dyreg_16seg.yaml",
    "configs/hiint/engagement_3class.yaml",
]
TINY_VIDEO = [
    "configs/timesformer/tiny.yaml",
    "configs/stabn/tiny.yaml",
    "configs/tsm/tiny.yaml",
    "configs/tsm/dyreg_tiny.yaml",
]


def test_every_recipe_and_tiny_config_exists():
    assert set(RECIPES + TINY_VIDEO) <= set(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_validates(path):
    from action_launch.datasets.protocols import make_protocol

    cfg = load_config(REPO / path)
    assert isinstance(cfg.model["name"], str)
    if cfg.data.dataset != "skeleton":
        make_protocol(cfg.data)  # the recipe's data protocol accepts its settings
    if "_base_" not in path:
        assert cfg.experiment != "default" and cfg.name != "run", "a runnable config names its run"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_keys_are_config_keys(path):
    """Every swept key and listed value makes a valid config of the recipe it is meant for."""
    from action_launch.sweeps.spec import example_overrides, load_sweep

    for overrides in example_overrides(load_sweep(path)):
        load_config(REPO / "configs/timesformer/tiny.yaml", overrides)


def test_timesformer_recipes():
    k400 = load_config(REPO / "configs/timesformer/k400_8x32.yaml")
    o, t = k400.optim, k400.train
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.005, 0.9, True, 1e-4)
    assert (o.schedule, o.step_epochs, o.warmup_epochs, t.epochs) == ("step", [11, 14], 0.0, 15)
    assert effective_batch_size(t.micro_batch_size, t.grad_accum, 8) == o.base_batch_size == 64
    assert (k400.data.num_frames, k400.data.sampling_rate, k400.data.crop_size) == (8, 32, 224)
    assert k400.model["name"] == "timesformer_base" and k400.model["num_classes"] == 400
    ssv2 = load_config(REPO / "configs/timesformer/ssv2.yaml")
    assert ssv2.model["num_classes"] == 174 and ssv2.data.sampling == "segment" and not ssv2.data.flip
    # as PySlowFast feeds them: K400 1 clip x 3 crops of frames scaled to 224; SSv2 frames in OpenCV's BGR order,
    # inverse-uniform scale jitter
    assert (k400.data.protocol, k400.data.test_num_clips, k400.data.test_num_crops, k400.data.test_short_side) == (
        "pyslowfast",
        1,
        3,
        224,
    )
    assert (ssv2.data.protocol, ssv2.data.channel_order, ssv2.data.scale_sampling) == (
        "pyslowfast",
        "bgr",
        "inverse_uniform",
    )
    light = load_config(REPO / "configs/timesformer/light_muwiges.yaml")
    assert light.model["name"] == "light_timesformer" and light.model["num_frames"] == light.data.num_frames == 32
    assert effective_batch_size(light.train.micro_batch_size, light.train.grad_accum, 8) == 64


def test_msg3d_recipes():
    joint = load_config(REPO / "configs/msg3d/ntu60_xsub_joint.yaml")
    bone = load_config(REPO / "configs/msg3d/ntu60_xsub_bone.yaml")
    for cfg in (joint, bone):
        o, t = cfg.optim, cfg.train
        assert (o.lr, o.nesterov, o.weight_decay, o.step_epochs, t.epochs) == (0.05, True, 5e-4, [30, 40], 50)
        assert (t.micro_batch_size, t.grad_accum, o.base_batch_size) == (16, 2, 32)
        assert cfg.model["name"] == "msg3d_ntu60" and cfg.data.dataset == "skeleton"
    assert (joint.data.skeleton_stream, bone.data.skeleton_stream) == ("joint", "bone")
    assert joint.run_dir().parent == bone.run_dir().parent  # side by side for launch/ensemble.py
    personality = load_config(REPO / "configs/msg3d/personality_udiva.yaml")
    assert personality.model["name"] == "msg3d_personality" and personality.train.loss == "mse"
    assert personality.data.laban and personality.data.graph == "smpl-24"
    assert (personality.checkpoint.best_metric, personality.checkpoint.best_mode) == ("val/participant/mse", "min")
    o, t = personality.optim, personality.train  # the authors' train_joint_laban.yaml
    assert (o.lr, o.nesterov, o.weight_decay, o.step_epochs, t.epochs) == (0.05, True, 1e-3, [200, 300], 200)
    assert (t.micro_batch_size, t.grad_accum, o.base_batch_size) == (16, 1, 16)
    authors = load_config(REPO / "configs/msg3d/personality_udiva_authors.yaml")
    assert authors.model["graph"] == "smpl-24-dense" and authors.optim == personality.optim
    assert (authors.data.laban_formula, personality.data.laban_formula) == ("authors", "described")


def test_stabn_tsm_and_hiint_recipes():
    stabn = load_config(REPO / "configs/stabn/ssv1_32f.yaml")
    o = stabn.optim
    assert (o.lr, o.base_batch_size, o.weight_decay, o.clip_grad, o.step_epochs, stabn.train.epochs) == (
        0.01,
        64,
        5e-4,
        20.0,
        [75, 125],
        150,
    )
    assert stabn.model["num_frames"] == stabn.data.num_frames == 32 and stabn.data.sampling == "segment"
    dyreg = load_config(REPO / "configs/tsm/ssv2_dyreg_16seg.yaml")
    o = dyreg.optim
    assert (o.lr, o.weight_decay, o.clip_grad, o.step_epochs, dyreg.train.epochs) == (
        0.001,
        5e-4,
        20.0,
        [20, 30, 40],
        60,
    )
    assert dyreg.model["dyreg_positions"] == "layer2.2,layer3.4,layer4.1" and dyreg.data.num_frames == 16
    assert (dyreg.data.test_num_clips, dyreg.data.test_num_crops, dyreg.data.flip) == (2, 3, False)
    # as each upstream feeds its network: DyReg's multi-clip script at full resolution, TSM's README's accurate
    # setting, ST-ABN's MMAction pipeline with its colour jitter
    tsm = load_config(REPO / "configs/tsm/_base_.yaml")
    assert (dyreg.data.protocol, dyreg.data.test_crop_size, tsm.data.protocol, tsm.data.test_crop_size) == (
        "tsn",
        256,
        "tsn",
        None,
    )
    assert (stabn.data.protocol, stabn.data.color_jitter, stabn.data.test_num_crops) == ("mmaction", True, 1)
    hiint = load_config(REPO / "configs/hiint/engagement_3class.yaml")
    assert hiint.model["name"] == "hiint_cpmt" and hiint.model["num_classes"] == 3
    assert hiint.checkpoint.best_metric == "val/macro_f1"


def _short_run(path: str, video_set: Path, out: Path, *extra: str):
    return run_train(
        [
            "--config",
            path,
            f"data.root={video_set}",
            f"output_dir={out}",
            "data.num_workers=0",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "train.micro_batch_size=4",
            "optim.base_batch_size=4",
            "train.log_every_steps=1",
            # MLflow's store set-up doubles a run's time on 2 cores; test_train.py covers it, the journal stays
            "tracking.enabled=false",
            *extra,
        ]
    )


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
@pytest.mark.parametrize("path", [p for p in TINY_VIDEO if "timesformer" not in p])
def test_tiny_video_config_trains(path, video_set, tmp_path):
    _short_run(path, video_set, tmp_path)
    cfg = load_config(REPO / path, [f"output_dir={tmp_path}"])
    assert (cfg.run_dir() / "final_metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_tiny_timesformer_trains_tests_and_ensembles(video_set, tmp_path):
    path = "configs/timesformer/tiny.yaml"
    proc = _short_run(path, video_set, tmp_path, "--test-last")
    run_dir = load_config(REPO / path, [f"output_dir={tmp_path}"]).run_dir()
    pred = np.load(run_dir / "predictions.npz")
    assert pred["scores"].shape == (16, 4) and len(set(pred["ids"].tolist())) == 16  # every val video once
    np.testing.assert_allclose(pred["scores"].sum(1), 1.0, rtol=1e-5)  # mean of softmax over 2 clips
    assert "test on 16 samples" in proc.stdout
    # the entry point (in-process: a subprocess costs seconds of imports) on the same run, summing the views' logits
    from action_launch import test as test_entry

    other = tmp_path / "sum.npz"
    assert test_entry.main(["--checkpoint", str(run_dir), "--last", "--out", str(other), "test.aggregate=sum"]) == 0
    summed = np.load(other)
    assert summed["ids"].tolist() == pred["ids"].tolist() and str(summed["aggregate"]) == "sum"
    fused = run_train([str(run_dir), str(other), "--alpha", "0.5"], script="launch/ensemble.py")
    assert "A + 0.5 B: top1" in fused.stdout
