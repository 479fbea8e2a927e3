"""train.py with injected faults, for the resume tests.

--stop-after-step K   ask the trainer to stop after optimizer step K, the way a preemption signal does
--die-in-save-of K    kill the process (os._exit, no clean-up) halfway through writing checkpoint K
"""

import argparse
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402

from action_launch.config import load_config  # noqa: E402
from action_launch.training.trainer import Trainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--stop-after-step", type=int)
parser.add_argument("--die-in-save-of", type=int)
parser.add_argument("overrides", nargs="*")
args = parser.parse_args()

if args.die_in_save_of is not None:
    real_save = torch.save
    marker = f".tmp-step_{args.die_in_save_of:08d}"

    def dying_save(obj, f, *a, **k):
        if marker in str(f):
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            os._exit(9)
        return real_save(obj, f, *a, **k)

    torch.save = dying_save

holder = {}
stop = (
    (lambda: holder["trainer"].engine.global_step >= args.stop_after_step) if args.stop_after_step else (lambda: False)
)
trainer = Trainer(load_config(args.config, args.overrides), stop_requested=stop)
holder["trainer"] = trainer
trainer.fit()
