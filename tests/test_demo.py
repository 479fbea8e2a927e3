"""`make demo`, shortened: generate clips, train with the demo config, end with the MLflow UI command."""

import os
import subprocess

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ready")]


def test_make_demo_short(tmp_path):
    data = tmp_path / "clips"
    args = (
        f"train.epochs=1 optim.warmup_epochs=0 train.max_steps_per_epoch=4 output_dir={tmp_path / 'runs'} "
        "data.num_workers=1"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        ["make", "demo", f"DEMO_DATA={data}", "DEMO_SET=--num-train 64 --num-val 16", f"DEMO_ARGS={args}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (data / "train.txt").read_text().count("\n") == 64
    assert "epoch 1 validation: val/top1" in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" in proc.stdout
    assert "python launch/compare.py --experiment demo" in proc.stdout
    run_dir = tmp_path / "runs" / "demo" / "tsm_tiny"
    assert (run_dir / "config.yaml").exists() and (run_dir / "confusion_matrix.png").exists()
