"""bench/gpu_throughput.py on the CPU with every tiny preset: it runs (so it cannot rot), and every model trains
through the engine in bf16 (autocast over fp32 weights; BatchNorm models included)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from action_launch import models
from conftest import REPO


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_every_tiny_preset_trains_in_bf16_through_the_engine_and_the_plain_loop():
    proc = subprocess.run([sys.executable, "bench/gpu_throughput.py", "--presets", "tiny", "--precision", "bf16",
                           "--steps", "2", "--rounds", "1", "--warmup", "1", "--tiny-batch", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["preset"] for r in rows] == [p for p in models.list_presets() if p.endswith("_tiny")]
    for row in rows:
        assert not [k for k in row if k.endswith("error")], row
        assert row["plain_clips_s"] > 0 and row["engine_clips_s"] > 0 and row["engine_vs_plain"] > 0, row
        assert row["gflops_train_per_clip"] > 0 and row["precision"] == "bf16", row
    assert "| preset | batch | plain clips/s (MFU) | engine clips/s (MFU) | engine/plain |" in proc.stdout
