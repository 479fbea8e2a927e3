"""Our presets against the upstream code itself: the same weights, the same input, the largest difference.

    python bench/upstream_match.py msg3d --upstream PATH/TO/MS-G3D                       # kenziyuliu/MS-G3D
    python bench/upstream_match.py personality --upstream PATH/TO/PersonalityRecognition # Rgtemze/...
    python bench/upstream_match.py timesformer --upstream PATH/TO/TimeSformer            # needs einops

For each network: build the upstream model from its checkout, move its BatchNorm statistics and graph
residuals (MS-G3D) or temporal weights (TimeSformer) off their initial values as training does, save its
weights as its own code saves them, load that file with `--load-from`'s loader into our preset, and print
one JSON line: the load's format and counts, the largest output difference in eval mode, and in train
mode from the same seed (equal only where every dropout and stochastic-depth draw is made in the
upstream order). TSM, DyReg-GNN and ST-ABN need torchvision or MMAction v1 and are not run here.
"""
from __future__ import annotations

import argparse
import collections.abc
import importlib.util
import json
import sys
import tempfile
import types
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from action_launch import models
from action_launch.models.checkpoints import load_checkpoint

Forward = Callable[[torch.Tensor], torch.Tensor]


def _trained_looking(model: torch.nn.Module, seed: int, params: Tuple[str, ...], scale: float) -> None:
    """BatchNorm statistics away from (0, 1), and the named parameters (zero or tiny at init) drawn."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 1.5 + 0.5)
        for name, param in model.named_parameters():
            if any(p in name for p in params):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _compare(name: str, theirs: torch.nn.Module, their_forward: Forward, state: Dict[str, Any],
             ours: torch.nn.Module, x: torch.Tensor, seed: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upstream.pt"
        torch.save(state, path)
        report = load_checkpoint(ours, path)
    with torch.no_grad():
        theirs.eval(), ours.eval()
        reference = their_forward(x)
        eval_diff = (ours(x) - reference).abs().max().item()
        theirs.train(), ours.train()
        torch.manual_seed(seed)
        train_reference = their_forward(x)
        torch.manual_seed(seed)
        train_diff = (ours(x) - train_reference).abs().max().item()
    return {"network": name, "format": report.format, "loaded": len(report.loaded), "ignored": len(report.ignored),
            "problems": report.problems(), "max_abs_output": reference.abs().max().item(),
            "eval_max_abs_diff": eval_diff, "train_same_seed_max_abs_diff": train_diff}


def msg3d(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """kenziyuliu/MS-G3D `model.msg3d.Model`, NTU RGB+D 60 and Kinetics-Skeleton as its configs build it."""
    sys.path.insert(0, str(upstream))
    from model.msg3d import Model

    for preset, graph, joints, classes, scales in (("msg3d_ntu60", "graph.ntu_rgb_d.AdjMatrixGraph", 25, 60, (13, 6)),
                                                   ("msg3d_kinetics", "graph.kinetics.AdjMatrixGraph", 18, 400, (8, 8))):
        torch.manual_seed(seed)
        theirs = Model(num_class=classes, num_point=joints, num_person=2, num_gcn_scales=scales[0],
                       num_g3d_scales=scales[1], graph=graph)
        _trained_looking(theirs, seed, ("A_res",), 0.01)
        x = torch.randn(2, 3, 64, joints, 2, generator=torch.Generator().manual_seed(seed + 1))
        yield _compare(preset, theirs, theirs, theirs.state_dict(), models.create(preset), x, seed + 2)


def personality(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """Rgtemze/PersonalityRecognition `model.msg3d_laban.Model` as config/personality/train_joint_laban.yaml builds
    it, against `msg3d_personality` on its graph (`smpl-24-dense`), and on the SMPL tree (not equal: another graph)."""
    sys.path.insert(0, str(upstream))
    from model.msg3d_laban import Model

    torch.manual_seed(seed)
    theirs = Model(num_class=5, num_point=24, num_person=1, num_gcn_scales=13, num_g3d_scales=6,
                   graph="graph.ntu_rgb_d.AdjMatrixGraph", in_channels=15, layer_channels=12)
    _trained_looking(theirs, seed, ("A_res",), 0.01)
    x = torch.randn(4, 15, 64, 24, 1, generator=torch.Generator().manual_seed(seed + 1))
    forward = lambda clip: theirs(clip[:, :3].contiguous(), clip[:, 3:].contiguous())  # noqa: E731 (xyz, Laban)
    for graph in ("smpl-24-dense", "smpl-24"):
        ours = models.create("msg3d_personality", graph=graph)
        yield _compare(f"msg3d_personality graph={graph}", theirs, forward, theirs.state_dict(), ours, x, seed + 2)


def _timesformer_vit(upstream: Path) -> Any:
    """timesformer/models/vit.py alone: its package __init__ builds the ResNets (fvcore, and more); `torch._six`
    (gone from torch 2) and the registry decorator are the two names it needs from outside."""
    sys.modules.setdefault("torch._six", types.SimpleNamespace(container_abcs=collections.abc))
    for name in ("timesformer", "timesformer.models"):
        package = types.ModuleType(name)
        package.__path__ = [str(upstream / name.replace(".", "/"))]
        sys.modules[name] = package
    build = types.ModuleType("timesformer.models.build")
    build.MODEL_REGISTRY = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    sys.modules["timesformer.models.build"] = build
    spec = importlib.util.spec_from_file_location("timesformer.models.vit", upstream / "timesformer/models/vit.py")
    vit = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = vit
    spec.loader.exec_module(vit)
    return vit


def timesformer(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """facebookresearch/TimeSformer `VisionTransformer` (the network its `TimeSformer` wraps as `model`), at a CPU
    size, in its three attention types, saved as PySlowFast's `{'model_state': {'model.*'}}`."""
    vit = _timesformer_vit(upstream)
    size = dict(img_size=64, embed_dim=96, depth=3, num_heads=4, num_frames=4, num_classes=7)
    for attention in ("divided_space_time", "joint_space_time", "space_only"):
        torch.manual_seed(seed)
        theirs = vit.VisionTransformer(patch_size=16, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.1,
                                       norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), attention_type=attention,
                                       **size)
        _trained_looking(theirs, seed, ("temporal_fc", "time_embed"), 0.05)
        state = {"model_state": {f"model.{k}": v for k, v in theirs.state_dict().items()}}
        ours = models.create("timesformer_base", attention=attention, **size)
        x = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(seed + 1))
        yield _compare(f"timesformer {attention}", theirs, theirs, state, ours, x, seed + 2)


SYSTEMS = {"msg3d": (msg3d, "model/msg3d.py"), "personality": (personality, "model/msg3d_laban.py"),
           "timesformer": (timesformer, "timesformer/models/vit.py")}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of the system's upstream repository")
    args = parser.parse_args(argv)
    run, marker = SYSTEMS[args.system]
    if not (args.upstream / marker).is_file():
        parser.error(f"--upstream {args.upstream}: no {marker} there (a checkout of {args.system}'s upstream code?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in run(args.upstream.resolve()):
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
