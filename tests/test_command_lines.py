"""Every command takes its flags and its key=value overrides in any order."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import REPO

# (command module, arguments with flags before, between and after the overrides, what they parse to)
COMMANDS = [
    ("train", ["a=1", "--no-resume", "b=2", "--test-best"], {"resume": False, "test_best": True}),
    ("test", ["a=1", "--checkpoint", "C", "b=2", "--last"], {"checkpoint": "C", "last": True}),
    ("explain", ["a=1", "--checkpoint", "C", "--video", "v.mp4", "b=2", "--out", "o.png"], {"out": "o.png"}),
    ("submit", ["a=1", "--local", "b=2", "--wait"], {"local": True, "wait": True}),
    ("tune", ["--config", "x.yaml", "a=1", "--num-samples", "3", "b=2"], {"num_samples": 3}),
]


@pytest.mark.parametrize("command, argv, parsed", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_flags_and_overrides_in_any_order(command, argv, parsed):
    args = importlib.import_module(f"action_launch.{command}").parse_args(argv)
    assert args.overrides == ["a=1", "b=2"] and {k: getattr(args, k) for k in parsed} == parsed


def test_a_flag_after_the_overrides_runs():
    """`train.py --config X a=b --print-config` (before: "unrecognized arguments")."""
    proc = subprocess.run(
        [sys.executable, "launch/train.py", "--config", "configs/demo.yaml", "optim.lr=0.5", "--print-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "  lr: 0.5\n" in proc.stdout, proc.stderr[-2000:]
