"""End-to-end training with the real DeepSpeed engine and MLflow store, in subprocesses as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch
from conftest import final_weights, free_port, run_train, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ready")]


def journal_metrics(run_dir, key):
    events = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    return [(e["step"], e["values"][key]) for e in events if e["kind"] == "metrics" and key in e["values"]]


@pytest.fixture(scope="module")
def reference_run(video_set, tmp_path_factory):
    """An uninterrupted deterministic run (with dropout, accumulation and mid-epoch checkpoints)."""
    out = tmp_path_factory.mktemp("runs")
    overrides = tiny_overrides(video_set, out, "reference") + [
        "model.drop_path_rate=0.2",
        "train.grad_accum=2",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=10",
        "deterministic=true",
        "train.epochs=3",
    ]
    proc = run_train(["--config", "configs/demo.yaml", *overrides])
    return out / "tests" / "reference", overrides, proc


def test_training_lowers_the_loss(video_set, tmp_path):
    proc = run_train([*tiny_overrides(video_set, tmp_path, "learn"), "train.epochs=6", "optim.lr=0.003"])
    losses = [v for _, v in journal_metrics(tmp_path / "tests" / "learn", "train/loss")]
    assert len(losses) == 6 * 6  # 48 clips / micro batch 8 = 6 optimizer steps per epoch, logged every step
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.05, f"loss did not fall: first epoch {first:.3f}, last epoch {last:.3f}"
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout


def test_mlflow_run_contents(reference_run):
    from mlflow.tracking import MlflowClient

    run_dir, overrides, _ = reference_run
    client = MlflowClient(f"sqlite:///{run_dir.parents[1] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'reference'")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "timesformer_tiny" and params["train.grad_accum"] == "2"
    # effective batch 8 x 2 x 1 = 16 against base 8 under the linear rule: LR doubles
    assert float(params["optim.scaled_lr"]) == pytest.approx(0.004) and params["optim.effective_batch_size"] == "16"
    assert run.data.tags["world_size"] == "1" and len(run.data.tags["git.commit"]) in (40, 7)
    assert "host" in run.data.tags and "git.dirty" in run.data.tags
    loss_history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss_history] == list(range(1, 10))  # 3 optimizer steps per epoch x 3 epochs
    top1 = client.get_metric_history(run.info.run_id, "val/top1")
    assert [m.step for m in top1] == [3, 6, 9]
    for key in (
        "val/top5",
        "val/mean_class_acc",
        "val/loss",
        "train/lr",
        "train/clips_per_s",
        "train/data_wait_ms",
        "data/bad_files",
    ):
        assert client.get_metric_history(run.info.run_id, key), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "confusion_matrix.png", "final_metrics.json"} <= artifacts


def test_resolved_config_reproduces_the_run(reference_run, tmp_path):
    run_dir, _, _ = reference_run
    proc = run_train(["--config", str(run_dir / "config.yaml"), "--print-config"])
    assert proc.stdout == (run_dir / "config.yaml").read_text()


def test_resume_mid_epoch_is_bit_identical(reference_run, tmp_path):
    run_dir, overrides, _ = reference_run
    resumed = [*overrides, f"output_dir={tmp_path}"]
    # stop after optimizer step 4: epoch 2, micro batch 2 of 6 (mid-epoch, accumulation boundary)
    run_train(
        ["--config", "configs/demo.yaml", "--stop-after-step", "4", *resumed], script="tests/helpers/faulty_train.py"
    )
    partial = tmp_path / "tests" / "reference"
    assert json.loads((partial / "checkpoints" / "step_00000004" / "meta.json").read_text())["micro_in_epoch"] == 2
    proc = run_train(["--config", str(partial / "config.yaml"), "train.log_every_steps=3"])
    assert "resumed from" in proc.stdout and "optimizer step 4" in proc.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])  # one run, continued
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/top1")] == [3, 6, 9]
    assert run.data.params["train.log_every_steps"] == "1" and run.data.tags["changed.train.log_every_steps"] == "3"
    expected, got = final_weights(run_dir), final_weights(partial)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_until_epoch_pauses_with_the_run_open_and_resumes_bit_identically(reference_run, tmp_path):
    """--until-epoch N (a PBT trial's interval): stop after epoch N's checkpoint with the MLflow run still open and
    no final outputs; the next process continues it, and the result is the uninterrupted run's, in one run."""
    run_dir, overrides, _ = reference_run
    resumed = ["--config", "configs/demo.yaml", *overrides, f"output_dir={tmp_path}"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    paused = tmp_path / "tests" / "reference"
    for epoch in (1, 2):
        proc = run_train([*resumed, "--until-epoch", str(epoch)])
        assert f"paused after epoch {epoch} of 3" in proc.stderr + proc.stdout
        assert max(json.loads(m.read_text())["epoch"] for m in paused.glob("checkpoints/step_*/meta.json")) == epoch
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "RUNNING" and not (paused / "confusion_matrix.png").exists()
    run_train(resumed)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])  # one run, continued
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/top1")] == [3, 6, 9]
    lr_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")]
    assert len(lr_steps) == len(set(lr_steps)) == 9  # no step logged twice
    expected, got = final_weights(run_dir), final_weights(paused)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_kill_during_save_leaves_a_resumable_run(reference_run, tmp_path):
    run_dir, overrides, _ = reference_run
    resumed = [*overrides, f"output_dir={tmp_path}"]
    proc = run_train(
        ["--config", "configs/demo.yaml", "--die-in-save-of", "5", *resumed],
        script="tests/helpers/faulty_train.py",
        check=False,
    )
    assert proc.returncode == 9
    ckpts = tmp_path / "tests" / "reference" / "checkpoints"
    assert (ckpts / ".tmp-step_00000005").exists() and not (ckpts / "step_00000005").exists()
    proc = run_train(["--config", str(tmp_path / "tests" / "reference" / "config.yaml")])
    assert "removed incomplete checkpoint" in proc.stdout and "optimizer step 4" in proc.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    for key in ("train/loss", "train/lr"):  # step 5, logged before the kill and replayed after it: one point
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert 5 in steps and len(steps) == len(set(steps)), (key, sorted(steps))
    expected, got = final_weights(run_dir), final_weights(tmp_path / "tests" / "reference")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_existing_checkpoints_and_no_resume_refuse_to_overwrite(reference_run):
    run_dir, overrides, _ = reference_run
    proc = run_train(["--no-resume", *overrides], check=False)
    assert proc.returncode != 0 and "already holds checkpoints" in proc.stderr


def test_two_processes_under_torchrun_with_zero(video_set, tmp_path):
    port = free_port()
    proc = run_train(
        [
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "launch/train.py",
            *tiny_overrides(video_set, tmp_path, "ddp"),
            "train.zero_stage=1",
            "train.micro_batch_size=4",
            "train.epochs=1",
            "optim.clip_grad=1.0",
        ],
        script="-m",
    )
    assert "world size 2; effective batch 8 = micro 4 x accumulation 1 x world 2" in proc.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.tags["world_size"] == "2" and run.data.params["optim.effective_batch_size"] == "8"
    assert float(run.data.params["optim.scaled_lr"]) == pytest.approx(0.002)
    ckpt = next((tmp_path / "tests" / "ddp" / "checkpoints").glob("step_*"))
    assert sorted(p.name for p in ckpt.glob("zero_pp_rank_*")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    # 48 clips over 2 ranks x micro 4 = 6 steps; every rank saw its own shard, all ranks logged nothing twice
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6


def test_load_weights_skips_a_head_of_another_shape(tmp_path):
    from action_launch import models
    from action_launch.training.engine import load_weights

    source = models.create("timesformer_tiny", num_classes=4)
    torch.save({"module": source.state_dict()}, tmp_path / "weights.pt")
    target = models.create("timesformer_tiny", num_classes=7)
    report = load_weights(target, tmp_path / "weights.pt")
    assert sorted(report["mismatched"]) == ["head.bias", "head.weight"]
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert target.head.weight.shape == (7, source.head.weight.shape[1])
    with pytest.raises(FileNotFoundError, match="--load-from"):
        load_weights(target, tmp_path / "missing.pt")


def test_resume_from_another_runs_checkpoint(reference_run, tmp_path):
    run_dir, overrides, _ = reference_run
    source = run_dir / "checkpoints" / "step_00000004"
    proc = run_train(
        ["--config", "configs/demo.yaml", *overrides, f"output_dir={tmp_path}", "--resume-from", str(source)]
    )
    assert (
        "resumed from" in proc.stdout
        and "1 of 3 epochs done, 2 micro batches into the next, optimizer step 4" in proc.stdout
    )
    expected, got = final_weights(run_dir), final_weights(tmp_path / "tests" / "reference")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    bad = run_train(
        [
            "--config",
            "configs/demo.yaml",
            *overrides,
            f"output_dir={tmp_path / 'x'}",
            "--resume-from",
            str(tmp_path / "nowhere"),
        ],
        check=False,
    )
    assert bad.returncode != 0 and "not a complete checkpoint folder" in bad.stderr


def _list_with_bad_videos(video_set: Path, root: Path) -> Dict[str, Optional[bytes]]:
    """train.txt under `root`: the video set's 48 clips with 4 bad files spread among them; returns the bad files."""
    root.mkdir()
    good = (video_set / "train" / "0000.mp4").read_bytes()
    bad = {"missing.mp4": None, "empty.mp4": b"", "truncated.mp4": good[: len(good) // 2], "junk.mp4": b"\x00junk" * 40}
    for name, data in bad.items():
        if data is not None:
            (root / name).write_bytes(data)
    lines = [f"{video_set / line}" for line in (video_set / "train.txt").read_text().splitlines()]
    for k, name in enumerate(bad):  # spread over the list
        lines.insert(12 * k + 5, f"{root / name} {k}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text(
        "".join(f"{video_set / l}\n" for l in (video_set / "val.txt").read_text().splitlines())
    )
    (root / "classes.txt").write_text((video_set / "classes.txt").read_text())
    return bad


def test_too_many_bad_videos_stop_the_run_before_it_starts(video_set, tmp_path):
    """data.check_files (auto for a small list) scans the lists up front: past data.max_bad_fraction the run
    stops with one error line and every bad file with its reason, exit 2, before a run folder, DeepSpeed or
    MLflow exists."""
    root = tmp_path / "data"
    bad = _list_with_bad_videos(video_set, root)
    proc = run_train(tiny_overrides(root, tmp_path / "out", "bad") + ["data.max_bad_fraction=0.02"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "video_reader.cc:" not in proc.stderr and " @ 0x" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert f"4 of 52 videos in {root / 'train.txt'} are unreadable, more than data.max_bad_fraction=0.02" in error
    listing = proc.stderr.split(error, 1)[1].strip().splitlines()
    assert sorted(line.split(":")[0].strip() for line in listing) == sorted(str(root / name) for name in bad)
    reasons = dict(line.strip().split(": ", 1) for line in listing)
    assert reasons[str(root / "missing.mp4")] == "missing" and reasons[str(root / "empty.mp4")] == "empty file"
    assert reasons[str(root / "junk.mp4")].startswith("decode error")
    assert not (tmp_path / "out").exists()


def test_below_the_ceiling_the_scan_says_how_many_will_be_skipped(video_set, tmp_path, capsys):
    root = tmp_path / "data"
    _list_with_bad_videos(video_set, root)
    from action_launch.config import load_config
    from action_launch.training.preflight import check_run

    here = [f"data.root={root}", f"output_dir={tmp_path}"]  # not the repository's runs/, which a demo may have filled
    check_run(load_config("configs/demo.yaml", [*here, "data.max_bad_fraction=0.1"]))  # 4 of 52 is below 10%: no error
    assert (
        f"data check: 4 of 52 videos in {root / 'train.txt'} are unreadable and will be skipped"
        in capsys.readouterr().err
    )
    check_run(load_config("configs/demo.yaml", [*here, "data.check_files=never"]))  # not scanned
    assert capsys.readouterr().err == ""


def test_too_many_bad_videos_stop_the_run_in_one_message(video_set, tmp_path):
    """Unscanned (data.check_files=never), past data.max_bad_fraction the training process, not a DataLoader
    worker, stops the run: one error line listing the bad files every worker found, exit 2, no traceback, each
    file warned about and logged once, no decord lines, a checkpoint to resume from once the data is fixed, and
    the MLflow run marked FAILED."""
    root = tmp_path / "data"
    bad = _list_with_bad_videos(video_set, root)
    overrides = tiny_overrides(root, tmp_path / "out", "bad") + [
        "data.num_workers=2",
        "data.max_bad_fraction=0.02",
        "train.epochs=2",
        "data.check_files=never",
    ]
    proc = run_train(overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "video_reader.cc:" not in proc.stderr and " @ 0x" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "of 52 videos" in error and "found unreadable so far, more than data.max_bad_fraction=0.02" in error
    listed = proc.stderr.split(error, 1)[1].split()
    found = [name for name in bad if any(token.endswith(f"/{name}:") for token in listed)]
    assert len(found) >= 2
    for name in bad:
        assert proc.stdout.count(f"skipping unreadable video {root / name}:") <= 1, name
    log = (tmp_path / "out" / "tests" / "bad" / "bad_files.tsv").read_text().splitlines()
    assert len(log) == len(set(log)) >= len(found)
    assert list((tmp_path / "out" / "tests" / "bad" / "checkpoints").glob("step_*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"
