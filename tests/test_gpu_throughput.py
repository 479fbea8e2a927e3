"""bench/gpu_throughput.py on the CPU with every tiny preset: it runs (so it cannot rot), every model trains
through the engine in bf16 (autocast over fp32 weights; BatchNorm models included), and every video preset
reports what one DataLoader worker delivers on prepared videos and how many workers feed the engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from action_launch import models

# Families whose recipes decode video (or frame folders), and those that read skeleton or feature arrays.
VIDEO_FAMILIES = ("timesformer", "light_timesformer", "stabn", "tsm")
ARRAY_FAMILIES = ("msg3d", "hiint")


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
def test_every_tiny_preset_trains_in_bf16_through_the_engine_and_the_plain_loop():
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu_throughput.py",
            "--presets",
            "tiny",
            "--precision",
            "bf16",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--tiny-batch",
            "4",
            "--data-videos",
            "4",
            "--data-clips",
            "8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["preset"] for r in rows] == [p for p in models.list_presets() if p.endswith("_tiny")]
    for row in rows:
        assert not [k for k in row if k.endswith("error")], row
        assert row["plain_clips_s"] > 0 and row["engine_clips_s"] > 0 and row["engine_vs_plain"] > 0, row
        assert row["gflops_train_per_clip"] > 0 and row["precision"] == "bf16", row
        if row["preset"].startswith(VIDEO_FAMILIES):
            assert row["data_clips_s_per_worker"] > 0 and row["workers_to_feed"] >= 1, row
        else:
            assert row["preset"].startswith(ARRAY_FAMILIES), f"{row['preset']}: a video or an array family?"
            assert row["data_clips_s_per_worker"] is None and row["workers_to_feed"] is None, row
    assert (
        "| preset | batch | plain clips/s (MFU) | engine clips/s (MFU) | engine/plain | data clips/s per worker "
        "| workers to feed (recipe) |"
    ) in proc.stdout
