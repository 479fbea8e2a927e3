"""An engine with `train.compile=true` whose compiler fails at the first step: prints the losses of two steps.

The failure is a real one of `torch.compile`: a backend that raises, as Inductor does when it cannot
lower a graph. Run in a process of its own (it starts a process group).
"""

from __future__ import annotations

import os

import torch

from action_launch import models
from action_launch.config import load_config
from action_launch.training.distributed import resolve_env
from action_launch.training.engine import Engine, init_distributed
from action_launch.training.losses import make_loss
from action_launch.training.schedule import scale_lrs


def broken_backend(graph_module, example_inputs):
    raise RuntimeError("CantSplit: the compiler could not tile this graph")


os.environ.update(RANK="0", WORLD_SIZE="1")
device = init_distributed(resolve_env())
cfg = load_config(None, ["model.name=timesformer_tiny", "train.compile=true", "optim.name=adamw"])
torch.manual_seed(0)
model = models.build(cfg.model)
engine = Engine(model, cfg, scale_lrs(cfg.optim, 8), 1, 10, make_loss(model, cfg.train.loss), device)
model.compile(backend=broken_backend)  # the compile the engine asked for, with a compiler that fails
x, y = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 1])
losses = [float(engine.train_step(x, y)[0]) for _ in range(2)]
print("eager" if model._compiled_call_impl is None else "compiled", *losses)
