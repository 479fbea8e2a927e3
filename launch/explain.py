"""Explain a prediction: `python launch/explain.py --checkpoint C --video V --out out.gif [--config X.yaml]
[--layer NAME] [--target-class K] [key.sub=value ...]`.

Loads the model of checkpoint C (a checkpoint folder, or a run folder: its `best` checkpoint, else
the newest), reads video V (a file, or a frame folder for `data.dataset=rawframes`) the way the
config's validation split does (the centred clip, short-side resize, centre crop, normalisation),
and computes Grad-CAM (`evaluation.gradcam`) for the predicted class, or class K, over layer NAME
(default: the last feature-map layer the class score depends on, found from the model). For
ST-ABN the model's own spatial attention map and per-frame temporal attention are drawn too.

The frames are rendered side by side with the heat maps over them (input | Grad-CAM | ST-ABN
attention), as an animated GIF (`--out x.gif`, one image per frame) or a PNG strip (`--out
x.png`, frames top to bottom), and the image is logged as an artifact under `explain/` of the
checkpoint's MLflow run (`--no-track` skips that; a file outside the run folder is copied into
`<run>/explain/` first). Without --config, the config saved in the checkpoint is used.
"""

from __future__ import annotations

import argparse
import sys

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: dotted keys parsed as YAML, e.g. data.test_short_side=256",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its best checkpoint)")
    parser.add_argument("--video", required=True, help="video file (or frame folder for data.dataset=rawframes)")
    parser.add_argument("--out", required=True, help="output image: .gif (animated) or .png (strip)")
    parser.add_argument("--config", help="YAML config; default: the checkpoint's own config.yaml")
    parser.add_argument("--layer", help="module whose output Grad-CAM explains (a name from model.named_modules())")
    parser.add_argument("--target-class", type=int, help="class to explain (default: the predicted one)")
    parser.add_argument("--no-track", action="store_true", help="do not log the image to MLflow")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    from action_launch.evaluation.explain import explain  # imports torch: after parsing, so --help stays fast

    return explain(args)


if __name__ == "__main__":
    sys.exit(main())
