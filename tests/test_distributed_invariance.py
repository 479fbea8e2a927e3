"""Many processes give what one gives: a run on several ranks logs, saves and evaluates what the same run on one
process would, up to float rounding. Real gloo process groups, real DeepSpeed, tiny models on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
from conftest import REPO, final_weights, free_port, run_train, tiny_overrides
from torch import nn

EXIT_STATE = "tests/helpers/exit_state.py"
EXIT_LINE = re.compile(r"rank (\d): process groups left (\d+), initialized (True|False), gloo threads left (\d+)")


def journal(run_dir: Path, key: str) -> List[Tuple[int, float]]:
    """(step, value) of every point of `key` in a run's local metric journal."""
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    return [(e["step"], e["values"][key]) for e in events if e["kind"] == "metrics" and key in e["values"]]


def bn_overrides(data_dir: Path, output_dir: Path, name: str) -> List[str]:
    """`tiny_overrides` with the tiny TSM, which has a BatchNorm after every convolution (4 segments of 4 frames)."""
    timesformer = ("model.name=", "model.num_frames=")
    return [o for o in tiny_overrides(data_dir, output_dir, name) if not o.startswith(timesformer)] + [
        "model.name=tsm_r50_tiny"
    ]


def torchrun(script: str, args: List[str], world: int = 2) -> subprocess.CompletedProcess:
    """`script` on `world` ranks under torchrun (gloo on the CPU), as a user starts it."""
    return run_train(
        ["torch.distributed.run", "--nproc_per_node", str(world), "--master_port", str(free_port()), script, *args],
        script="-m",
    )


# ------------------------------------------------------------------------------ BatchNorm statistics


def _bn_model() -> nn.Module:
    """Two BatchNorms, one with the exponential average and one with the cumulative one (`num_batches_tracked`)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Flatten(), nn.BatchNorm1d(32, momentum=None))


def _average_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank: three training forwards on data of its own, then `average_running_stats`; saves the statistics
    before and after."""
    from action_launch.training.batchnorm import average_running_stats, running_stats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _bn_model().train()
    gen = torch.Generator().manual_seed(rank)
    for _ in range(3):
        model(torch.randn(4, 3, 2, 2, 2, generator=gen) * (rank + 1) + rank)
    before = [t.clone() for t in running_stats(model)]
    count = average_running_stats(model, world)
    torch.save({"before": before, "after": running_stats(model), "count": count}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_running_statistics_become_their_mean_over_the_ranks(tmp_path):
    import torch.multiprocessing as mp

    world = 3
    mp.spawn(_average_on_rank, args=(world, free_port(), str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(r["count"] == 6 for r in ranks)  # 2 BatchNorms x (mean, variance, step counter)
    for i, before in enumerate(ranks[0]["before"]):
        if before.is_floating_point():
            assert not torch.allclose(before, ranks[1]["before"][i])  # each rank's data gave its own statistics
            mean = sum(r["before"][i] for r in ranks) / world
            torch.testing.assert_close(ranks[0]["after"][i], mean)
        else:
            assert int(before) == 3
        for other in ranks[1:]:
            assert torch.equal(ranks[0]["after"][i], other["after"][i])  # bit-equal on every rank


# --------------------------------------------------------------------------------------- train.sync_bn


def test_sync_bn_converts_every_batchnorm_and_keeps_parameters_and_names():
    from action_launch import models
    from action_launch.training.batchnorm import sync_batchnorm
    from action_launch.training.engine import parameter_groups

    model = models.create("tsm_r50_tiny")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    groups = parameter_groups(model, 1e-4)  # TSM groups its norms by type, before the engine converts them
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = sync_batchnorm(model, torch.device("cuda"))  # converts only: the modules stay where they are
    synced = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(synced) == len(norms) > 0 and all(type(m) is nn.SyncBatchNorm for m in synced)
    assert converted.state_dict().keys() == state.keys()  # a checkpoint loads with or without train.sync_bn
    assert all(torch.equal(v, state[k]) for k, v in converted.state_dict().items())
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in converted.parameters()}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(id(m.weight) in no_decay for m in synced)  # BatchNorm scales keep their group: no weight decay
    with pytest.raises(ValueError, match=r"^train.sync_bn=true needs CUDA GPUs"):
        sync_batchnorm(converted, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a finding about the CPU")
def test_syncbatchnorm_does_not_run_on_the_cpu_even_on_one_process():
    """Why train.sync_bn is refused on the CPU: torch's SyncBatchNorm raises on a CPU tensor inside a process group,
    one process included (should a later torch run it, the refusal can go)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        layer = nn.SyncBatchNorm(4).train()
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            layer(torch.randn(2, 4, 3))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a run without GPUs")
@pytest.mark.parametrize("script", ["launch/train.py", "launch/submit.py"])
def test_sync_bn_without_gpus_is_refused_in_one_line(video_set, tmp_path, script):
    local = ["--local"] if script.endswith("submit.py") else []
    proc = subprocess.run(
        [sys.executable, script, *bn_overrides(video_set, tmp_path, "run"), "train.sync_bn=true", *local],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: train.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm refuses CPU tensors (with one process "
        "too); set train.sync_bn=false for a run on the CPU"
    ], proc.stderr[-2000:]
    assert not (tmp_path / "tests").exists()  # refused before DeepSpeed, MLflow or the run folder


def test_recipes_use_sync_bn_where_their_upstream_did():
    """DyReg-GNN's main_standard.py (the TSM and DyReg recipes' reference) converts to SyncBatchNorm under DDP; TSM's
    own main.py and MS-G3D's used DataParallel (each GPU's share normalised alone), ST-ABN MMAction's plain BN."""
    from action_launch.config import load_config

    expected = {
        "configs/tsm/_base_.yaml": True,
        "configs/tsm/ssv2_dyreg_16seg.yaml": True,
        "configs/stabn/ssv1_32f.yaml": False,
        "configs/msg3d/ntu60_xsub_joint.yaml": False,
        "configs/timesformer/k400_8x32.yaml": False,
        "configs/tsm/tiny.yaml": False,
    }
    assert {path: load_config(REPO / path).train.sync_bn for path in expected} == expected


# ----------------------------------------------------------------------------------- whole runs, 2 ranks


@pytest.fixture(scope="module")
def no_bn_runs(video_set, tmp_path_factory) -> Dict[str, object]:
    """The tiny TimeSformer (LayerNorm only, no dropout), deterministic, 3 optimizer steps of 8 clips: on one
    process with micro batch 8, and on 2 ranks with micro batch 4 (the same 8 clips a step, split into two
    shards that differ), through `tests/helpers/exit_state.py`."""
    out = tmp_path_factory.mktemp("invariance")
    common = ["deterministic=true", "train.epochs=1", "train.max_steps_per_epoch=3", "tracking.enabled=false"]
    run_train([*tiny_overrides(video_set, out, "one"), *common, "train.micro_batch_size=8"])
    two = torchrun(EXIT_STATE, [*tiny_overrides(video_set, out, "two"), *common, "train.micro_batch_size=4"])
    return {"one": out / "tests" / "one", "two": out / "tests" / "two", "two_proc": two}


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_two_ranks_log_the_loss_one_process_logs(no_bn_runs):
    one, two = journal(no_bn_runs["one"], "train/loss"), journal(no_bn_runs["two"], "train/loss")
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3]
    assert [v for _, v in two] == pytest.approx([v for _, v in one], rel=1e-5)  # rank 0's shard alone: up to 6% off
    for key in ("val/loss", "val/top1"):
        ((step_one, value_one),) = journal(no_bn_runs["one"], key)
        ((step_two, value_two),) = journal(no_bn_runs["two"], key)
        assert step_one == step_two == 3 and value_two == pytest.approx(value_one, rel=1e-5), key


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_every_rank_ends_with_its_process_groups_destroyed(no_bn_runs):
    """DeepSpeed's group, the world group (and under NCCL the trainer's CPU group) are destroyed and their gloo
    threads joined before the interpreter's shutdown, which otherwise tears them down with a collective's tensors
    still being released (an abort at exit now and then: bench/exits.py counts them)."""
    proc = no_bn_runs["two_proc"]
    states = sorted(EXIT_LINE.findall(proc.stdout))
    assert states == [("0", "0", "False", "0"), ("1", "0", "False", "0")], proc.stdout[-2000:]


def _evaluate_checkpoint(run_dir: Path) -> Dict[str, float]:
    """val/loss and val/top1 of the run's newest checkpoint, computed here on one process, as `launch/test.py`
    would from the saved weights."""
    from torch.utils.data import DataLoader

    from action_launch import datasets, models
    from action_launch.config import load_config
    from action_launch.training.loaders import split_batch
    from action_launch.training.losses import logits_of, make_loss
    from action_launch.training.metrics import classification_metrics

    cfg = load_config(run_dir / "config.yaml")
    model = models.build(cfg.model)
    model.load_state_dict(final_weights(run_dir))
    model.eval()
    loss_fn = make_loss(model, cfg.train.loss)
    scores, labels, loss_sum = [], [], 0.0
    with torch.no_grad():
        for batch in DataLoader(datasets.build(cfg.data, "val"), batch_size=cfg.train.micro_batch_size):
            inputs, targets, _ = split_batch(batch)
            outputs = model(inputs)
            loss_sum += float(loss_fn(outputs, targets)) * len(targets)
            scores.append(logits_of(outputs).float().softmax(-1))
            labels.append(targets)
    all_scores, all_labels = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    return {"val/loss": loss_sum / len(all_labels), "val/top1": classification_metrics(all_scores, all_labels)["top1"]}


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_bn_validation_during_training_is_what_the_checkpoint_gives(video_set, tmp_path):
    """2 ranks, TSM (BatchNorm): the validation logged at the epoch's end scores the model the checkpoint keeps
    (the ranks' running statistics averaged), not each rank's shard with that rank's own statistics."""
    torchrun(
        "launch/train.py",
        [
            *bn_overrides(video_set, tmp_path, "bn"),
            "train.epochs=1",
            "train.micro_batch_size=4",
            "tracking.enabled=false",
        ],
    )
    run_dir = tmp_path / "tests" / "bn"
    logged = {key: journal(run_dir, key)[-1][1] for key in ("val/loss", "val/top1")}
    assert _evaluate_checkpoint(run_dir) == pytest.approx(logged, rel=1e-5)
