"""msg3d_personality against the authors' code, on the same weights and input.

    git clone https://github.com/Rgtemze/PersonalityRecognition /tmp/PersonalityRecognition
    python bench/personality_upstream.py --upstream /tmp/PersonalityRecognition

Builds their `model.msg3d_laban.Model` as `config/personality/train_joint_laban.yaml` does, gives it
trained-looking weights (BatchNorm statistics, graph residuals), saves its state dict as their
`save_weights` does, loads that file with `--load-from`'s loader into the preset on their graph
(`smpl-24-dense`) and prints one JSON line: the load's format and counts, the largest output difference
in eval mode, and in train mode from the same seed (equal only if every dropout draws in their order),
and the difference on the SMPL tree the preset uses by default.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from action_launch import models
from action_launch.models.checkpoints import load_checkpoint


def _authors_model(upstream: Path) -> torch.nn.Module:
    sys.path.insert(0, str(upstream))
    from model.msg3d_laban import Model  # the authors' code, imported from their checkout

    return Model(num_class=5, num_point=24, num_person=1, num_gcn_scales=13, num_g3d_scales=6,
                 graph="graph.ntu_rgb_d.AdjMatrixGraph", in_channels=15, layer_channels=12)


def _trained_looking(model: torch.nn.Module, seed: int) -> None:
    """Move BatchNorm statistics and graph residuals off their initial values, as training does."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 1.5 + 0.5)
        for name, param in model.named_parameters():
            if name.endswith("A_res"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)


def compare(upstream: Path, frames: int = 64, batch: int = 4, seed: int = 0) -> Dict[str, Any]:
    """The measurements of the module docstring."""
    torch.manual_seed(seed)
    theirs = _authors_model(upstream)
    _trained_looking(theirs, seed)
    ours = models.create("msg3d_personality", graph="smpl-24-dense")
    tree = models.create("msg3d_personality")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "personality.pt"
        torch.save(theirs.state_dict(), path)
        report = load_checkpoint(ours, path)
        load_checkpoint(tree, path)
    x = torch.randn(batch, 15, frames, 24, 1, generator=torch.Generator().manual_seed(seed + 1))
    xyz, laban = x[:, :3].contiguous(), x[:, 3:].contiguous()
    with torch.no_grad():
        theirs.eval(), ours.eval(), tree.eval()
        reference = theirs(xyz, laban)
        eval_diff = (ours(x) - reference).abs().max().item()
        tree_diff = (tree(x) - reference).abs().max().item()
        theirs.train(), ours.train()
        torch.manual_seed(seed + 2)
        train_reference = theirs(xyz, laban)
        torch.manual_seed(seed + 2)
        train_diff = (ours(x) - train_reference).abs().max().item()
    return {"format": report.format, "loaded": len(report.loaded), "ignored": len(report.ignored),
            "problems": report.problems(), "max_abs_output": reference.abs().max().item(),
            "eval_max_abs_diff": eval_diff, "train_same_seed_max_abs_diff": train_diff,
            "smpl_tree_max_abs_diff": tree_diff}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of Rgtemze/PersonalityRecognition")
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args(argv)
    if not (args.upstream / "model" / "msg3d_laban.py").is_file():
        parser.error(f"--upstream {args.upstream}: no model/msg3d_laban.py there (a PersonalityRecognition checkout?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(json.dumps(compare(args.upstream, frames=args.frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
