"""`train.compile`: the model trains compiled; where the compiler fails, one warning says why and it trains eager."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import REPO, run_train, tiny_overrides


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_a_failing_compiler_falls_back_to_eager_with_one_warning():
    proc = subprocess.run(
        [sys.executable, "tests/helpers/compile_fallback.py"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    mode, *losses = proc.stdout.strip().splitlines()[-1].split()
    assert mode == "eager" and len(losses) == 2 and all(math.isfinite(float(v)) for v in losses)
    warnings = [line for line in proc.stderr.splitlines() if "train.compile: torch.compile failed" in line]
    assert len(warnings) == 1 and "CantSplit: the compiler could not tile this graph" in warnings[0], proc.stderr[
        -3000:
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_the_model_trains_compiled(video_set, tmp_path):
    proc = run_train(
        [
            *tiny_overrides(video_set, tmp_path, "compiled"),
            "train.compile=true",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "tracking.enabled=false",
        ],
        timeout=900,
    )
    assert "torch.compile failed" not in proc.stderr + proc.stdout
    assert "epoch 1 validation" in proc.stderr + proc.stdout
