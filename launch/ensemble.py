"""Fuse two runs' scores: `python launch/ensemble.py RUN_A RUN_B [--alpha 1.0]`.

RUN_A/RUN_B are run folders (their `predictions.npz`, written by launch/test.py) or the files.
The fused score of a video is scores_a + alpha * scores_b (MS-G3D adds the joint and bone streams'
outputs, bone scaled by alpha); both runs must have scored the same videos with the same labels
(they are matched by id, so their order may differ). Prints top-1/top-5 of A, B and the fusion.
"""

from __future__ import annotations

import argparse
import sys

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="run folder or predictions.npz (e.g. the joint stream)")
    parser.add_argument("run_b", help="run folder or predictions.npz (e.g. the bone stream)")
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of B's scores")
    parser.add_argument("--out", help="also write the fused predictions.npz here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from action_launch.evaluation.ensemble import ensemble  # imports torch: after parsing, so --help stays fast

    return ensemble(args)


if __name__ == "__main__":
    sys.exit(main())
