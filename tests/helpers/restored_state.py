"""Build a Trainer, which resumes the run, and write what it restored without training: rank 0's module state, LRs
and progress.

    python tests/helpers/restored_state.py --out FILE [--resume-from CKPT] --config X key=value ...   (or torchrun)
"""

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402

from action_launch.config import load_config  # noqa: E402
from action_launch.training.trainer import Trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--resume-from")
parser.add_argument("--config")
parser.add_argument("overrides", nargs="*")
args = parser.parse_args()

trainer = Trainer(load_config(args.config, args.overrides), resume_from=args.resume_from)
if trainer.env.is_main:
    torch.save(
        {
            "module": trainer.engine.module.state_dict(),
            "progress": asdict(trainer.progress),
            "lrs": [group["lr"] for group in trainer.engine.optimizer.param_groups],
        },
        args.out,
    )
trainer.comm.barrier("the end of the restore check")
