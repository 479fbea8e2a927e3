"""Shared fixtures: a small generated video set, a warm DeepSpeed op cache, and a train.py runner."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
# the log line of each validation a run trained for (not its closing summary's "last validation: ...")
EPOCH_VALIDATION = re.compile(r"epoch \d+ validation: ")


@pytest.fixture
def one_torch_thread():
    """Seed 0 and one intra-op thread: tiny models on 2 shared cores only lose from more threads."""
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count_params(module) -> int:
    """Number of parameters of a module (works on the meta device too)."""
    return sum(p.numel() for p in module.parameters())


def sgd_losses(model, inputs, targets, loss_fn, steps: int = 8, lr: float = 0.05) -> List[float]:
    """Losses of `steps` SGD steps (momentum 0.9) on one batch: the tiny-preset training check."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def deepspeed_ready() -> None:
    """Compile DeepSpeed's CPU ops once per test session (built under the venv's torch_extensions/)."""
    subprocess.run(
        [sys.executable, "-c", "from action_launch.training.engine import warm_up; warm_up()"],
        cwd=REPO,
        check=True,
        timeout=900,
        env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"},
    )


@pytest.fixture(scope="session")
def video_set(tmp_path_factory) -> Path:
    """48 train + 16 val real H.264 clips of the synthetic motion classes (32x32, 24 frames)."""
    from action_launch.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), num_train=48, num_val=16, size=32, frames=24)


def still_running(started: dict, timeout_s: float = 30.0) -> List[int]:
    """The processes of `started` (pid -> start time) still running after waiting up to `timeout_s` for all to end."""
    from action_launch.common.processes import running

    deadline = time.time() + timeout_s
    while True:
        left = [pid for pid, at in started.items() if running(pid, at)]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def tiny_overrides(data_dir: Path, output_dir: Path, name: str = "run") -> List[str]:
    """A run of the tiny TimeSformer on `video_set` that takes seconds on two cores."""
    return [
        f"data.root={data_dir}",
        f"output_dir={output_dir}",
        f"name={name}",
        "experiment=tests",
        "model.name=timesformer_tiny",
        "model.num_classes=4",
        "model.num_frames=4",
        "data.num_frames=4",
        "data.sampling_rate=6",
        "data.train_short_side=[32,36]",
        "data.test_short_side=32",
        "data.crop_size=32",
        "data.num_workers=1",
        "optim.name=adamw",
        "optim.lr=0.002",
        "optim.base_batch_size=8",
        "optim.weight_decay=0.01",
        "optim.schedule=constant",
        "train.epochs=2",
        "train.micro_batch_size=8",
        "train.log_every_steps=1",
    ]


def run_train(
    args: List[str], env: Optional[dict] = None, timeout: int = 600, check: bool = True, script: str = "launch/train.py"
) -> subprocess.CompletedProcess:
    """Run an entry point of the suite as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI"):
        if env is None or key not in env:
            full_env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def final_weights(run_dir: Path):
    """Module weights of the newest complete checkpoint of a run."""
    import torch

    from action_launch.training import checkpoint as ckpt
    from action_launch.training.engine import model_state_file

    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None, f"no complete checkpoint in {run_dir}"
    return torch.load(model_state_file(latest), map_location="cpu", weights_only=False)["module"]
