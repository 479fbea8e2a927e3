"""Tensors made without the engine's device, found on the CPU (the class of bug that crashed the first GPU step).

On a CPU-only machine every tensor is on the CPU, so `loss_sum = torch.zeros(())` next to a loss on
cuda:0 passes here and crashes there. `tests/helpers/device_audit.py` records every tensor factory the
suite's own code calls without `device=` while a real training, validation and test pass run
(HIINT's carried memory: tests/test_hiint_memory.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from helpers.device_audit import DeviceAudit


def _define(source: str, where: str):
    """A function compiled as if it stood in the suite's file `where` (how the audit tells our code apart)."""
    namespace = {"torch": torch}
    exec(compile(source, str(REPO / where), "exec"), namespace)
    return namespace["make"]


def test_a_factory_without_device_in_the_suite_is_found():
    no_device = _define("def make():\n    return torch.zeros(())\n", "launch/training/example.py")
    with_device = _define("def make():\n    return torch.zeros((), device='cpu')\n", "launch/training/example.py")
    in_model_init = _define("def make():\n    return torch.zeros(())\n", "models/example.py")
    with DeviceAudit() as audit:
        no_device(), with_device(), torch.zeros(())  # the last one is this test's own, not the suite's
    assert audit.report() == ["launch/training/example.py:2 in make(): torch.zeros(...) without device="]
    with DeviceAudit() as audit:
        in_model_init.__code__ = in_model_init.__code__.replace(co_name="__init__")
        in_model_init()  # a module's constructor makes weights on the CPU; `.to(device)` moves them
    assert audit.report() == []


def audited_run(config: str, overrides) -> list:
    proc = subprocess.run(
        [sys.executable, "tests/helpers/audited_run.py", config, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.usefixtures("deepspeed_ready")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_validation_and_test_make_every_tensor_on_the_engine_device(video_set, tmp_path, precision):
    # TSM: BatchNorm (the models that could not train in bf16), segment sampling, a multi-view test split
    overrides = [
        f"data.root={video_set}",
        f"output_dir={tmp_path}",
        "train.epochs=1",
        "train.max_steps_per_epoch=3",
        "train.log_every_steps=1",
        "data.num_workers=0",
        "tracking.enabled=false",
        f"train.precision={precision}",
        "data.test_num_clips=2",
    ]
    assert audited_run("configs/tsm/tiny.yaml", overrides) == []
