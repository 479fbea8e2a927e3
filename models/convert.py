"""Convert a published checkpoint into this project's names once: `python -m action_launch.models.convert
SRC DST --model PRESET [key=value ...]`.

SRC is anything `--load-from` reads (an upstream TimeSformer `.pyth`, MS-G3D `.pt`, TSM / DyReg-GNN
`.pth.tar`, ST-ABN mmaction checkpoint, an ImageNet ResNet or image ViT, one of our checkpoint
folders); it is recognised by its keys and mapped onto the preset's names exactly as `--load-from`
maps it (`models.checkpoints`), with the same all-or-nothing rule and report. DST gets a plain state
dict (`torch.save(dict)`) holding the tensors that came from SRC, converted for the model built from
PRESET and the `key=value` constructor overrides (e.g. `num_frames=16` resizes TimeSformer's time
embedding, `num_classes=10` leaves a head of another size out). `--load-from DST` then loads it
without any conversion. The report is printed and written beside DST (`DST.report.txt`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml


def _overrides(pairs: List[str]) -> Dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"override {pair!r} is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m action_launch.models.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint file or folder, in any layout --load-from reads")
    parser.add_argument("dst", help="where to write the plain state dict (in this project's names)")
    parser.add_argument("--model", required=True, help="preset the weights are for (models.list_presets())")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="write what maps even if tensors outside the head are missing or unexpected",
    )
    parser.add_argument("overrides", nargs="*", help="constructor overrides of the preset, key=value (YAML values)")
    return parser.parse_intermixed_args(argv)  # overrides may follow --model


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from action_launch import models
    from action_launch.models.checkpoints import CheckpointError, mapped_state_dict

    try:
        model = models.create(args.model, **_overrides(args.overrides))
    except (KeyError, TypeError, ValueError) as err:
        print(f"error: --model {args.model}: {err}", file=sys.stderr)
        return 2
    try:
        state, report = mapped_state_dict(model, Path(args.src), partial=args.partial)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dst = Path(args.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    text = report.text()
    dst.with_name(dst.name + ".report.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {len(state)} tensors to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
