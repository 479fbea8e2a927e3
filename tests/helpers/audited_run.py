"""Train, validate and test a config in this process under `DeviceAudit`; print the findings as JSON.

    python tests/helpers/audited_run.py CONFIG key=value ...

A process of its own, as a training run is (its process group and DeepSpeed state end with it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # tests/: helpers.device_audit
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

from helpers.device_audit import DeviceAudit  # noqa: E402

from action_launch.config import load_config  # noqa: E402
from action_launch.evaluation.evaluate import evaluate_checkpoint, resolve_checkpoint  # noqa: E402
from action_launch.training.trainer import Trainer  # noqa: E402

cfg = load_config(sys.argv[1], sys.argv[2:])
with DeviceAudit() as audit:
    trainer = Trainer(cfg, resume=False)
    trainer.fit()
    evaluate_checkpoint(cfg, resolve_checkpoint(trainer.run_dir, "best"), track=False)
print(json.dumps(audit.report()))
