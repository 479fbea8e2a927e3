"""Evaluate a checkpoint: `python launch/test.py --checkpoint C [--config X.yaml] [key.sub=value ...]`.

C is a checkpoint folder (`<run>/checkpoints/step_N`), or a run folder (its `best` checkpoint, else
the newest; `--last` for the newest). Without --config, the config saved in the checkpoint is used.
Runs the multi-view protocol of the test split (`data.test_num_clips` x `data.test_num_crops` views,
combined by `test.aggregate=mean_softmax|sum`), writes `<run>/predictions.npz` and logs
top-1/top-5/mean-class accuracy, macro F1, per-class accuracy and the confusion matrix (MSE per
output for regression) to the run in MLflow.
"""
from __future__ import annotations

import argparse
import sys

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.config import ConfigError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Overrides: dotted keys parsed as YAML, e.g. test.aggregate=sum "
                                            "test.split=val data.num_workers=0")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder")
    parser.add_argument("--config", help="YAML config; default: the checkpoint's own config.yaml")
    parser.add_argument("--last", action="store_true", help="with a run folder: the newest checkpoint, not the best")
    parser.add_argument("--out", help="predictions file (default <run>/predictions.npz)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from action_launch.evaluation.evaluate import evaluate_checkpoint, load_eval_config, resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(args.checkpoint, "last" if args.last else "best")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = args.config or checkpoint / "config.yaml"
    try:
        cfg, ecfg = load_eval_config(config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from action_launch.common.console import setup_logging

    setup_logging(True)
    metrics = evaluate_checkpoint(cfg, checkpoint, ecfg, out=args.out, track=not args.no_track)
    for key, value in metrics.items():
        print(f"test/{key}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
