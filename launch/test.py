"""Evaluate a checkpoint, or published weights, by the data protocol of the config.

    python launch/test.py --checkpoint C [--config X.yaml] [key.sub=value ...]
    python launch/test.py --weights FILE --config X.yaml [key.sub=value ...]

C is a checkpoint folder (`<run>/checkpoints/step_N`), or a run folder (its `best` checkpoint, else
the newest; `--last` for the newest). Without --config, the config saved in the checkpoint is used.
FILE is a published weight file in any format `--load-from` reads (PySlowFast `.pyth`, TSM `.pth.tar`,
MS-G3D `.pt`, ...): it is evaluated with the config's model and data, without a training run, into a new
folder `<output_dir>/<experiment>/<name>@<file stem>` and a new MLflow run.
Runs the test views of the config's `data.protocol` (`data.test_num_clips` x `data.test_num_crops`,
combined as that protocol's upstream does unless `test.aggregate=mean_softmax|sum|mean` says otherwise),
prints the protocol, writes `predictions.npz` and logs top-1/top-5/mean-class accuracy, macro F1,
per-class accuracy and the confusion matrix (MSE per output for regression) to MLflow.

Several processes split the work and give the one-process results bit for bit (fp32, same kernels):

    torchrun --nproc_per_node 8 launch/test.py --checkpoint C     # one node (GPU LOCAL_RANK each, else CPU + gloo)
    srun --ntasks 16 --gpus-per-task 1 python launch/test.py --checkpoint C

Each rank evaluates whole batches of the one-process pass (whole recordings for memory models) on its own
device; rank 0 gathers the predictions, writes, logs and prints; the other ranks print only errors. A rank
that fails, dies or hangs stops every rank within `train.collective_timeout_s` with one error (exit status 1).
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
        epilog="Overrides: dotted keys parsed as YAML, e.g. test.aggregate=sum test.split=val data.num_workers=0",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint folder, or a run folder")
    source.add_argument("--weights", help="a published weight file (needs --config)")
    parser.add_argument("--config", help="YAML config; default: the checkpoint's own config.yaml")
    parser.add_argument("--last", action="store_true", help="with a run folder: the newest checkpoint, not the best")
    parser.add_argument("--out", help="predictions file (default <run>/predictions.npz)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    from action_launch.evaluation.evaluate import run_test

    return run_test(args.checkpoint, args.weights, args.config, args.last, args.overrides, args.out, not args.no_track)


if __name__ == "__main__":
    sys.exit(main())
