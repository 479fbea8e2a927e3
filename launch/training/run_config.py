"""A run folder's `config.yaml`: written when the run starts, never rewritten once the run trained.

A run has trained once its folder holds a complete checkpoint. A later start of it (a resume, a no-op rerun of a
finished run) may change only the continuation keys: how far to train (`train.epochs`), how the processes it now
has share the work (micro batch, accumulation, ZeRO stage, the Slurm resources: `training.layout` maps the
checkpoint onto them), how to run (workers, timeouts, logging, checkpoint cadence, tracking) and how to evaluate
(the `test:` section, which training never reads). Any other change is refused in one line naming the differing
keys, unless the start says `--amend-config` (a PBT exploit's mutated LR, a researcher's deliberate change mid-run)
or starts the run over (`--restart`, which keeps the trained folder beside it). An accepted change leaves
`config.yaml` as the run started: the MLflow run records it as a `changed.<key>` tag and each checkpoint keeps the
config it was saved with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from action_launch.config import Config, dump_config, flatten, to_dict
from action_launch.training import checkpoint as ckpt

CONFIG_FILE = "config.yaml"
CONTINUATION_KEYS = (
    "experiment",
    "name",
    "output_dir",  # the folder's own address, however it is written
    "deterministic",
    "train.epochs",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.zero_stage",
    "optim.keep_effective_batch",
    "train.compile",
    "train.activation_checkpointing",
    "train.channels_last",
    "train.eval_every_epochs",
    "train.log_every_steps",
    "train.collective_timeout_s",
    "train.data_timeout_s",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "data.persistent_workers",
    "data.max_bad_fraction",
    "data.bad_files_log",
    "data.check_files",
)
CONTINUATION_SECTIONS = ("tracking.", "slurm.", "test.")  # how it is tracked, where it runs, how it is evaluated
SHOWN_CHANGES = 6  # differing keys the refusal lists before "and N more"


class ConfigChanged(ValueError):
    """A start of a trained run with a config that differs in keys other than the continuation keys; one line."""


def has_trained(run_dir: Path) -> bool:
    """Whether the run in `run_dir` has trained: it holds a complete checkpoint."""
    return ckpt.latest_checkpoint(Path(run_dir) / "checkpoints") is not None


def _plain(cfg: Config) -> Dict[str, Any]:
    """`cfg` flattened to dotted keys, with values as its YAML file holds them (tuples as lists)."""
    return flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))


def config_changes(saved: Dict[str, Any], cfg: Config) -> Dict[str, Tuple[Any, Any]]:
    """Keys whose value in `cfg` differs from the flattened saved config `saved`: {key: (saved, new)}. Keys that
    only one of them has (a field added or removed by a later version of the code) are not compared."""
    new = _plain(cfg)
    return {key: (saved[key], new[key]) for key in new if key in saved and saved[key] != new[key]}


def is_continuation(key: str) -> bool:
    """Whether `key` may change when a trained run starts again (see the module docstring)."""
    return key in CONTINUATION_KEYS or key.startswith(CONTINUATION_SECTIONS)


def saved_config(run_dir: Path) -> Dict[str, Any]:
    """The flattened `config.yaml` of `run_dir` ({} if there is none or it is not a mapping)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    tree = yaml.safe_load(path.read_text())
    return flatten(tree) if isinstance(tree, dict) else {}


def check_unchanged(cfg: Config, run_dir: Path, amend: bool = False) -> Dict[str, Tuple[Any, Any]]:
    """The changes of `cfg` against the trained run in `run_dir` that this start may make; raises ConfigChanged
    where it changes other keys than the continuation keys and `amend` is not given. {} for a run that has not
    trained."""
    if not has_trained(run_dir):
        return {}
    changes = config_changes(saved_config(run_dir), cfg)
    refused = [key for key in changes if not is_continuation(key)]
    if refused and not amend:
        shown = ", ".join(changed_line({key: changes[key] for key in refused[:SHOWN_CHANGES]}))
        more = f" and {len(refused) - SHOWN_CHANGES} more" if len(refused) > SHOWN_CHANGES else ""
        raise ConfigChanged(
            f"{run_dir} has trained with another config ({shown}{more}) and its config.yaml never changes: start a "
            f"new run with name=<new name>, continue this one with the change on the record with --amend-config, "
            f"or start it over with --restart (the trained folder is kept beside it)"
        )
    return changes


def _text(value: Any) -> str:
    """A config value as an override would write it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")


def write_config(cfg: Config, run_dir: Path) -> bool:
    """Write `config.yaml` for a run that has not trained (or whose file is missing); False where the trained run's
    file stays as it is."""
    path = Path(run_dir) / CONFIG_FILE
    if path.is_file() and has_trained(run_dir):
        return False
    dump_config(cfg, path)
    return True


def start_over(run_dir: Path) -> None:
    """`--restart`: the main process sets the run's folder aside (`set_aside`) and says so, before any rank opens it
    (the ranks meet first, when the process group starts)."""
    from action_launch.training.distributed import resolve_env

    if resolve_env().is_main and Path(run_dir).exists():
        print(f"--restart: {run_dir} kept as {set_aside(run_dir)}; the run starts over", flush=True)


def set_aside(run_dir: Path) -> Path:
    """`--restart`: move the folder of the run aside as `<name>.replaced-N` (the first N free) so that the run starts
    over in an empty folder, and nothing of what it trained is lost; returns where it went."""
    run_dir = Path(run_dir)
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.replaced-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


def changed_line(changes: Dict[str, Tuple[Any, Any]]) -> List[str]:
    """`key: old -> new` for each change (the log line of an accepted change)."""
    return [f"{key}: {_text(old)} -> {_text(new)}" for key, (old, new) in changes.items()]
