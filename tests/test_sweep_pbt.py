"""What PBT may perturb: `pbt.mutate` checked when the sweep file is read, and the mutations handed to Ray's
PopulationBasedTraining perturbed by Ray's own explore step (the one an exploit runs)."""

from __future__ import annotations

import pytest
from ray.tune.schedulers.pbt import _explore

from action_launch.config import load_config
from action_launch.sweeps.run import make_scheduler
from action_launch.sweeps.spec import SweepError, parse_sweep


def _explored(raw: dict, config: dict, resample_probability: float) -> dict:
    spec = parse_sweep(raw)
    pbt = make_scheduler("pbt", spec, load_config("configs/demo.yaml"))
    new, _ = _explore(config, pbt._hyperparam_mutations, resample_probability, (1.2, 0.8), None)
    return new


@pytest.mark.parametrize("resample_probability", [0.0, 1.0])
def test_a_grid_entry_in_pbt_mutate_moves_among_its_values(resample_probability):
    """A grid entry PBT mutates moves to a neighbouring value of its list (or one drawn afresh), where Ray took
    the grid for a nested config and failed at the first exploit (TypeError: 'float' object is not subscriptable)."""
    raw = {
        "space": {"data.num_frames": {"grid": [4, 8, 16]}, "optim.lr": {"loguniform": [1e-4, 1e-2]}},
        "pbt": {"mutate": ["data.num_frames", "optim.lr"]},
    }
    seen = {
        _explored(raw, {"data.num_frames": 8, "optim.lr": 1e-3}, resample_probability)["data.num_frames"]
        for _ in range(40)
    }
    assert seen <= {4, 8, 16} and len(seen) >= 2


def test_a_joint_choice_entry_moves_as_one():
    """A joint entry's value (a tuple in the trial's config, as Ray samples it) shifts to a neighbouring pair."""
    raw = {
        "space": {
            "data.num_frames,data.sampling_rate": {"choice": [[8, 8], [16, 4], [32, 2]]},
            "optim.lr": {"loguniform": [1e-4, 1e-2]},
        },
        "pbt": {"mutate": ["data.num_frames,data.sampling_rate"]},
    }
    seen = {
        tuple(
            _explored(raw, {"data.num_frames,data.sampling_rate": (16, 4), "optim.lr": 1e-3}, 0.0)[
                "data.num_frames,data.sampling_rate"
            ]
        )
        for _ in range(40)
    }
    assert seen <= {(8, 8), (32, 2)} and seen


@pytest.mark.parametrize(
    "space, mutate, message",
    [
        (
            {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "optim.min_lr": {"same_as": "optim.lr"}},
            "optim.min_lr",
            "pbt.mutate: optim.min_lr is derived from optim.lr; mutate that entry instead",
        ),
        (
            {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "optim.min_lr": {"same_as": "optim.lr"}},
            "optim.lr",
            "pbt.mutate: optim.lr is followed by optim.min_lr, which a mutation would leave at the trial's first value",
        ),
        (
            {
                "data.num_frames": [8, 16],
                "optim.warmup_epochs": {"depends_on": "data.num_frames", "cases": {8: 1}, "default": 0},
            },
            "data.num_frames",
            "pbt.mutate: data.num_frames is followed by optim.warmup_epochs",
        ),
    ],
)
def test_pbt_mutate_refuses_what_a_mutation_would_break(space, mutate, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep({"space": space, "pbt": {"mutate": [mutate]}})


def test_pbt_is_synchronous_unless_asked_otherwise():
    """Asynchronous PBT made no exploit in a 4-trial sweep (bench/faults.py): synchronous is the default."""
    space = {"space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}
    cfg = load_config("configs/demo.yaml")
    assert make_scheduler("pbt", parse_sweep(space), cfg)._synch is True
    assert make_scheduler("pbt", parse_sweep({**space, "pbt": {"synch": False}}), cfg)._synch is False
