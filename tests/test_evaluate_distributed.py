"""launch/test.py on several processes gives what it gives on one: real gloo process groups started by torchrun
(or, for the faults, by hand as a bare `srun` starts them), the real MLflow store, tiny models on the `video_set`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from conftest import REPO, free_port, tiny_overrides

from action_launch import models
from action_launch.config import dump_config, load_config
from action_launch.training import checkpoint as ckpt
from action_launch.training.distributed import DistEnv, local_device

# One view, 3 videos a batch: 16 videos make batches of 3, ..., 3, 1. A batch of another size (an interleaved shard's
# 2, a lone 1) takes other kernels for the same video: the scores would differ in their last bits. No DataLoader
# worker (it changes no result) and MLflow only where a test reads it: each of them costs seconds per process.
VIDEO_TEST = ["data.test_num_clips=1", "data.test_num_crops=1", "test.batch_size=3", "data.num_workers=0"]
NO_MLFLOW = "tracking.enabled=false"
LAUNCH_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "MLFLOW_TRACKING_URI",
    "OMP_NUM_THREADS",
)


def make_run(output_dir: Path, overrides: List[str], model: torch.nn.Module, base: Optional[Path] = None) -> Path:
    """A run folder `<output_dir>/tests/run` with one complete checkpoint (step 7) of `model`; its config is `base`
    with `overrides`. Returns the checkpoint folder."""
    cfg = load_config(base, [*overrides, f"output_dir={output_dir}", "name=run", "experiment=tests"])
    folder = cfg.run_dir() / "checkpoints" / ckpt.tag_for(7)
    folder.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, folder / "mp_rank_00_model_states.pt")
    dump_config(cfg, folder / "config.yaml")
    (folder / ckpt.META).write_text(json.dumps({"step": 7}))
    return folder


def clean_env(**extra: str) -> Dict[str, str]:
    """This environment without a launcher's variables (an earlier in-process run may have exported them); one torch
    thread in every process, as torchrun gives each of several."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def launch(world: int, args: List[str], logs: Path) -> Dict[int, str]:
    """`launch/test.py args` on `world` processes (torchrun; one: plain python); each rank's stdout + stderr."""
    command = [sys.executable, "launch/test.py", *args]
    if world > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(world),
            "--master_port",
            str(free_port()),
            "--log-dir",
            str(logs),
            "--redirects",
            "3",
            "launch/test.py",
            *args,
        ]
    proc = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{world} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    if world == 1:
        return {0: proc.stdout + proc.stderr}
    return {
        rank: "".join(p.read_text() for p in sorted(logs.glob(f"*/attempt_0/{rank}/std*.log"))) for rank in range(world)
    }


def predictions(run_dir: Path) -> Dict[str, np.ndarray]:
    """The arrays of a run folder's `predictions.npz`."""
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def metrics_of(run_dir: Path) -> Dict[str, float]:
    """The metrics of `test/metrics.json` (what the evaluation measured, not where it ran)."""
    record = json.loads((run_dir / "test" / "metrics.json").read_text())
    return {k: v for k, v in record.items() if k not in ("checkpoint", "processes")}


def assert_same_predictions(got: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> None:
    """Bit-identical fp32 scores, the same labels and ids."""
    assert got["scores"].dtype == expected["scores"].dtype == np.float32
    assert np.array_equal(got["scores"], expected["scores"]), np.abs(got["scores"] - expected["scores"]).max()
    assert np.array_equal(got["labels"], expected["labels"]) and got["ids"].tolist() == expected["ids"].tolist()


@pytest.fixture(scope="module")
def tiny_timesformer() -> torch.nn.Module:
    """The weights every evaluation here reads (seeded; untrained: what matters is that they are the same)."""
    torch.manual_seed(0)
    return models.create("timesformer_tiny", num_classes=4, num_frames=4)


@pytest.fixture(scope="module")
def one_process(video_set, tiny_timesformer, tmp_path_factory) -> Path:
    """The reference: the run folder of the tiny TimeSformer's checkpoint evaluated by one process."""
    out = tmp_path_factory.mktemp("one_process")
    make_run(out, tiny_overrides(video_set, out), tiny_timesformer)
    (log,) = launch(1, ["--checkpoint", str(out / "tests" / "run"), *VIDEO_TEST, NO_MLFLOW], out / "logs").values()
    assert "test/top1:" in log
    return out / "tests" / "run"


def journal_metrics(run_dir: Path) -> List[dict]:
    """The metrics events of a run folder's tracking journals, its own and its evaluations' (written whether MLflow
    is on or not)."""
    from action_launch.tracking.tracker import evaluation_folders

    paths = [run_dir / folder / "journal.jsonl" for folder in ("tracking", *evaluation_folders(run_dir))]
    events = [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]
    return [e for e in events if e["kind"] == "metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_one_process_predictions_bit_for_bit(world, one_process, video_set, tiny_timesformer, tmp_path):
    make_run(tmp_path, tiny_overrides(video_set, tmp_path), tiny_timesformer)
    run_dir = tmp_path / "tests" / "run"
    track = [] if world == 3 else [NO_MLFLOW]
    started = time.monotonic()
    output = launch(world, ["--checkpoint", str(run_dir), *VIDEO_TEST, *track], tmp_path / "logs")
    print(f"{world} ranks: {time.monotonic() - started:.1f} s")
    assert_same_predictions(predictions(run_dir), predictions(one_process))
    # rank 0 alone printed and logged (one metrics event, at the checkpoint's step); the others said nothing
    assert output[0].count("test/top1:") == 1 and all(output[r] == "" for r in range(1, world)), output
    (logged,) = journal_metrics(run_dir)
    assert logged["step"] == 7 and logged["values"]["test/top1"] == metrics_of(one_process)["top1"]
    assert metrics_of(run_dir) == metrics_of(one_process)
    # whole batches of the one-process pass, each rank on its own device: rank r took batches r, r+W, ... of
    # 3, 3, 3, 3, 3, 1 videos
    processes = json.loads((run_dir / "test" / "metrics.json").read_text())["processes"]
    assert processes == {"world_size": world, "devices": ["cpu"] * world, "samples": {2: [9, 7], 3: [6, 6, 4]}[world]}
    if track:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {f"test/{k}": v for k, v in metrics_of(one_process).items() if isinstance(v, float)}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/top1")] == [7]


@pytest.mark.slow
def test_published_weights_on_two_ranks_make_one_record(one_process, video_set, tiny_timesformer, tmp_path):
    """--weights: rank 0 alone picks the new folder and starts the new MLflow run (W ranks would make W of each)."""
    config = tmp_path / "tiny.yaml"
    dump_config(load_config(None, [*tiny_overrides(video_set, tmp_path), "experiment=tests"]), config)
    weights = tmp_path / "published.pth"
    torch.save({"state_dict": tiny_timesformer.state_dict()}, weights)
    output = launch(2, ["--weights", str(weights), "--config", str(config), *VIDEO_TEST, NO_MLFLOW], tmp_path / "logs")
    folders = sorted(p.name for p in (tmp_path / "tests").iterdir())
    assert folders == ["run@published"], folders
    folder = tmp_path / "tests" / "run@published"
    assert_same_predictions(predictions(folder), predictions(one_process))
    assert f"results in {folder}" in output[0] and output[1] == ""
    (logged,) = journal_metrics(folder)
    assert logged["values"]["test/top1"] == metrics_of(one_process)["top1"]
    events = [json.loads(line) for line in (folder / "tracking" / "journal.jsonl").read_text().splitlines()]
    (tags,) = [e["values"] for e in events if e["kind"] == "tags"]
    assert tags["world_size"] == "2" and tags["eval.weights"] == str(weights.resolve()), tags


def write_recordings(root: Path, lengths: List[int]) -> None:
    """A multi-person feature set for HIINT: recording n has `lengths[n]` windows (labels from a seeded draw)."""
    rng = np.random.default_rng(0)
    lines = []
    for n, windows in enumerate(lengths):
        for w in range(windows):
            for p in range(2):
                np.save(root / f"i{n}_w{w}_p{p}.npy", rng.normal(size=(10, 8, 1)).astype(np.float32))
            lines.append(f"i{n} {w} {rng.integers(3)} i{n}_w{w}_p0.npy i{n}_w{w}_p1.npy")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_model_with_memory_walks_whole_recordings_per_rank(tmp_path):
    """HIINT carries memory across a recording's windows: blocks of `batch_size` whole recordings go to the ranks,
    and each window's memory and batch are those of the one-process pass."""
    data = tmp_path / "data"
    data.mkdir()
    lengths = [5, 3, 4, 2, 6]  # batch 2: blocks (5, 3), (4, 2), (6); two ranks: blocks 0 and 2, block 1
    write_recordings(data, lengths)
    torch.manual_seed(0)
    model = models.create("hiint_cpmt_tiny")
    results = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        folder = make_run(out, [f"data.root={data}", "tracking.enabled=false"], model, REPO / "configs/hiint/tiny.yaml")
        launch(world, ["--checkpoint", str(folder), "test.batch_size=2"], out / "logs")
        results[world] = out / "tests" / "run"
    assert_same_predictions(predictions(results[2]), predictions(results[1]))
    processes = json.loads((results[2] / "test" / "metrics.json").read_text())["processes"]
    assert processes["samples"] == [5 + 3 + 6, 4 + 2]
    assert metrics_of(results[2]) == metrics_of(results[1])


def test_each_rank_takes_the_gpu_of_its_local_rank():
    """cuda:LOCAL_RANK of the visible GPUs (modulo their count: a task shown only its own GPU takes cuda:0), else
    the CPU; not cuda:0 for every rank of a node."""
    assert [local_device(r, 8) for r in range(8)] == [torch.device("cuda", r) for r in range(8)]
    assert [local_device(r, 4) for r in (4, 5, 7)] == [torch.device("cuda", r) for r in (0, 1, 3)]
    assert [local_device(r, 1) for r in range(3)] == [torch.device("cuda", 0)] * 3
    assert local_device(3, 0) == torch.device("cpu")
    env = DistEnv(rank=5, world_size=8, local_rank=1, master_addr="127.0.0.1", master_port=1)
    assert env.device == local_device(1, torch.cuda.device_count() if torch.cuda.is_available() else 0)


# ------------------------------------------------------------------------------------------------------ faults


def start_ranks(args: List[str], world: int, logs: Path) -> List[subprocess.Popen]:
    """One `launch/test.py` per rank, as a bare `srun` starts them (no torchrun to end the others); output to
    `logs/<rank>.txt`."""
    port, procs = free_port(), []
    logs.mkdir()
    for rank in range(world):
        env = clean_env(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        with open(logs / f"{rank}.txt", "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "launch/test.py", *args],
                    cwd=REPO,
                    env=env,
                    text=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def end_all(procs: List[subprocess.Popen]) -> None:
    """Kill what is left of the ranks (and their DataLoader workers: each rank leads its own session)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stalled_file_run(video_set: Path, tmp_path: Path, tiny_timesformer, *overrides: str) -> List[str]:
    """A run whose test list holds, in rank 1's first batch of two ranks, a named pipe that no one writes: reading
    it waits for ever (a stalled file system). Returns the command line of its evaluation."""
    data = tmp_path / "data"
    data.mkdir()
    lines = [f"{video_set / line}" for line in (video_set / "val.txt").read_text().splitlines()]
    os.mkfifo(data / "stalled.mp4")
    lines.insert(4, f"{data / 'stalled.mp4'} 0")  # batches of 3: index 4 is in batch 1, rank 1's first
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    (data / "train.txt").write_text((video_set / "train.txt").read_text())
    (data / "classes.txt").write_text((video_set / "classes.txt").read_text())
    make_run(tmp_path, [*tiny_overrides(video_set, tmp_path), f"data.val_list={data / 'val.txt'}"], tiny_timesformer)
    return [
        "--checkpoint",
        str(tmp_path / "tests" / "run"),
        *VIDEO_TEST,
        "tracking.enabled=false",
        "train.collective_timeout_s=30",
        *overrides,
    ]


def error_lines(text: str) -> List[str]:
    """The `error:` lines of a rank's output, which must hold no traceback."""
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("error:")]


def assert_nothing_written(run_dir: Path) -> None:
    """No predictions, metrics or tracking journal: an evaluation that failed on any rank leaves no result."""
    assert not (run_dir / "predictions.npz").exists() and not (run_dir / "test").exists()
    assert not (run_dir / "tracking").exists()


def wait_all(procs: List[subprocess.Popen], timeout_s: float) -> List[float]:
    """Wait for every process; the monotonic time each ended at."""
    ended: Dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for k, proc in enumerate(procs):
            if k not in ended and proc.poll() is not None:
                ended[k] = time.monotonic()
        time.sleep(0.05)
    assert len(ended) == len(procs), f"ranks {sorted(set(range(len(procs))) - set(ended))} still running"
    return [ended[k] for k in range(len(procs))]


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank_with_its_error(video_set, tiny_timesformer, tmp_path):
    """Rank 1's DataLoader worker is stuck on the stalled file: its batch time limit raises on rank 1, which tells
    rank 0 at their next agreement instead of leaving it to wait."""
    args = stalled_file_run(video_set, tmp_path, tiny_timesformer, "data.num_workers=1", "train.data_timeout_s=3")
    procs = start_ranks(args, 2, tmp_path / "logs")
    try:
        ended = wait_all(procs, 120)
    finally:
        end_all(procs)
    out = [(tmp_path / "logs" / f"{rank}.txt").read_text() for rank in range(2)]
    assert [p.returncode for p in procs] == [1, 1], out
    (error,) = error_lines(out[0])
    assert error.startswith(
        "error: rank 0: rank 1 failed: DataTimeout: test DataLoader: no batch from its 1 worker(s) in 3 s"
    ) and error.endswith("every rank stops"), error
    (own,) = error_lines(out[1])
    assert own.startswith("error: test DataLoader: no batch"), own
    assert ended[0] - ended[1] < 10  # rank 0 did not wait for the collective timeout (30 s)
    assert_nothing_written(tmp_path / "tests" / "run")


@pytest.mark.slow
def test_a_killed_rank_ends_the_others_at_once(video_set, tiny_timesformer, tmp_path):
    """Rank 1 reads the stalled file in its own process and is killed there: rank 0, waiting at an agreement, finds
    the closed connection at once and names the rank."""
    args = stalled_file_run(video_set, tmp_path, tiny_timesformer, "data.num_workers=0")
    procs = start_ranks(args, 2, tmp_path / "logs")
    log0 = tmp_path / "logs" / "0.txt"
    try:
        deadline = time.monotonic() + 120
        while "test protocol" not in log0.read_text():  # logged once the process group is up
            assert time.monotonic() < deadline and procs[0].poll() is None, log0.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(1.0)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        ended = wait_all(procs[:1], 60)[0]
    finally:
        end_all(procs)
    out = log0.read_text()
    assert procs[0].returncode == 1, out[-3000:]
    (error,) = error_lines(out)
    assert error.startswith("error: rank 0:") and "rank 1 did not answer" in error, error
    assert "collective_timeout_s=30" in error, error
    print(f"rank 0 ended {ended - killed:.1f} s after rank 1 was killed")
    assert ended - killed < 15  # not the 30 s timeout: a closed connection is found at once
    assert_nothing_written(tmp_path / "tests" / "run")
