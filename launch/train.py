"""Train a model: `python launch/train.py --config X.yaml [key.sub=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__" and __package__ is None:  # run as a script: drop launch/ itself from the import path
    sys.path.pop(0)

from action_launch.config import ConfigError, load_config, to_dict


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides: dotted keys parsed as YAML, e.g. optim.lr=0.01 data.num_frames=16",
    )
    parser.add_argument("--config", help="YAML config (with optional _base_); omitted: embedded defaults")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue from the newest complete checkpoint of the run folder (default)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="refuse to start if the run folder already holds checkpoints",
    )
    parser.add_argument(
        "--amend-config",
        action="store_true",
        help="continue a trained run with a changed config (not only epochs, batch layout, workers, "
        "logging): config.yaml stays as the run started, MLflow tags each change changed.<key>",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start the run over in an empty folder; the existing one is kept as <name>.replaced-N",
    )
    parser.add_argument("--resume-from", help="checkpoint folder: weights, optimizer, scheduler, step, RNG state")
    parser.add_argument(
        "--load-from",
        help="weights only, step 0: a checkpoint folder, a state-dict file, or a "
        "published checkpoint (TimeSformer .pyth, MS-G3D .pt, TSM/DyReg-GNN "
        ".pth.tar, ST-ABN mmaction; recognised by its keys). All or nothing: a "
        "classifier head of another size is the one tensor skipped",
    )
    parser.add_argument(
        "--load-from-partial",
        action="store_true",
        help="accept a partial --load-from (same as train.load_partial=true); the report lists what did not load",
    )
    parser.add_argument(
        "--until-epoch",
        type=int,
        metavar="N",
        help="stop once N epochs are done and checkpointed, the run left open for --resume (how a PBT "
        "sweep trial trains one perturbation interval at a time)",
    )
    parser.add_argument("--seed", type=int, help="same as seed=N")
    parser.add_argument("--deterministic", action="store_true", help="same as deterministic=true")
    test = parser.add_mutually_exclusive_group()
    test.add_argument(
        "--test-best", action="store_true", help="after training, evaluate the best checkpoint (launch/test.py)"
    )
    test.add_argument(
        "--test-last", action="store_true", help="after training, evaluate the last checkpoint (launch/test.py)"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser.parse_intermixed_args(argv)  # flags may follow key=value overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.deterministic:
        overrides.append("deterministic=true")
    if args.load_from_partial:
        overrides.append("train.load_partial=true")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from action_launch.training.preflight import PreflightError, check_run

    try:
        check_run(
            cfg, args.resume_from, args.load_from, amend=args.amend_config, restart=args.restart, resume=args.resume
        )
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.restart:
        from action_launch.training.run_config import start_over

        start_over(cfg.run_dir())
    from action_launch.models.checkpoints import CheckpointError
    from action_launch.training.distributed import CollectiveError
    from action_launch.training.engine import ResumeRefused
    from action_launch.training.loaders import DataTimeout
    from action_launch.training.signals import interrupted_line, stop_flag_for_run
    from action_launch.training.trainer import TooManyBadFiles, Trainer

    stop = stop_flag_for_run()  # Ctrl-C: a checkpoint at the next step, then exit 130; a second one: at once
    try:
        trainer = Trainer(
            cfg, resume=args.resume, resume_from=args.resume_from, load_from=args.load_from, stop_requested=stop
        )
    except KeyboardInterrupt:
        print(interrupted_line(cfg.run_dir()), file=sys.stderr)
        return 130
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ResumeRefused as err:  # every rank refuses alike; one says so
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.fit(until_epoch=args.until_epoch)
    except TooManyBadFiles as err:
        print(f"error: {err}", file=sys.stderr)
        trainer.close()  # every rank agreed to stop here
        return 2
    except (CollectiveError, DataTimeout) as err:  # a rank or a data worker died or hung: said in one line
        print(f"error: {err}", file=sys.stderr)
        return 1  # no trainer.close(): destroying the groups could wait for the lost rank
    except KeyboardInterrupt:  # the second Ctrl-C: the MLflow run is KILLED, the newest checkpoint kept
        print(interrupted_line(trainer.run_dir), file=sys.stderr)
        return 130
    if stop.interrupted:  # stopped after a checkpoint, every rank together
        if trainer.env.is_main:
            print(interrupted_line(trainer.run_dir), file=sys.stderr)
        trainer.close()
        return 130
    if (args.test_best or args.test_last) and trainer.env.is_main and trainer.progress.epoch >= cfg.train.epochs:
        from action_launch.evaluation.evaluate import evaluate_after_training

        evaluate_after_training(cfg, trainer.ckpt_root, "best" if args.test_best else "last")
    if trainer.env.is_main:
        print(trainer.summary())
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
