"""Multi-view evaluation of a checkpoint: per-video scores, metrics, `predictions.npz`, MLflow.

Runs with plain torch (no DeepSpeed: evaluation needs no optimizer and no ZeRO), in one process or in several
(`torchrun`, a Slurm step: `evaluation_ranks`). A batch from the test split is either plain clips `(B, C, T, H, W)`
(any model input without a view axis: skeletons, per-person features) or the views of each video,
`(B, V, C, T, H, W)` (temporal clips x spatial crops, from `data.test_num_clips` x
`data.test_num_crops`; a dataset whose test split returns views has a `num_views` attribute). The V views of a
video are run as one batch of B*V clips and combined:

- `mean_softmax` (default; DyReg/TSM protocol): mean over views of the softmax probabilities;
- `sum`: sum over views of the logits (TimeSformer sums its views' predictions);
- regression models (MSE loss, `task == "regression"`): the mean of the outputs, whatever the setting;
  when the dataset names each sample's `participants`, outputs and targets are then averaged per
  participant before the per-output MSE (the personality protocol), and the ids are the participants.

A model that carries memory from window to window (`carries_memory = True`, HIINT) is run on
batches whose slots walk whole recordings in window order, with its memory carried
(`training.memory`); its scores are then put back in dataset order.

Several processes give what one gives, bit for bit: the one-process pass is a fixed sequence of batches
(`evaluation_groups`), and rank r of W computes groups r, r+W, ... of it (`training.loaders.BatchShardSampler`) on
its own device (`cuda:LOCAL_RANK`, else the CPU), so every sample is computed in the batch it has in one process. A
group is one batch, or, for a model that carries memory, the batches of a block of `batch_size` whole recordings
(one per slot), so memory never crosses ranks. The ranks agree after every batch that none failed (`Ranks`, over
`training.distributed.Collectives`: every wait bounded by `train.collective_timeout_s`), then gather their
predictions once, on the host, and put them in dataset order; only rank 0 writes and logs.

Results (rank 0): `<run>/predictions.npz` (`scores` (N, K), `labels`, `ids` (video paths), `aggregate`,
`checkpoint`), `<run>/test/metrics.json` (with the processes that computed them), the confusion matrix
(`confusion_matrix.json` + `.png`), and the metrics `test/top1`, `test/top5`, `test/mean_class_acc`, `test/macro_f1`,
`test/class_acc/<class>` (or `test/mse` and `test/mse/<output>` for regression) logged at the checkpoint's step to
an MLflow run of the evaluation's own, nested under the training run (which gets a tag `eval.latest_run_id` naming
it, and keeps its own times and status), through `launch.tracking.Tracker`.

The evaluation options are the config's `test:` section (`test.aggregate=sum`, ...), which only the evaluator
reads: one recipe serves `train.py` (and its `--test-best`) and `test.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast, get_args

import numpy as np
import torch
from torch import nn

from action_launch.common.files import atomic_write
from action_launch.config import (
    Aggregate,
    Config,
    EvalConfig,
    TrainConfig,
    dump_config,
    flatten,
    load_config,
    to_dict,
)
from action_launch.datasets.contract import (
    class_names_of,
    num_views_of,
    output_names_of,
    participants_of,
    protocol_of,
    sample_ids,
)
from action_launch.evaluation.ranks import EvaluationStopped, Ranks, evaluation_ranks
from action_launch.training import checkpoint as ckpt
from action_launch.training.confusion import class_labels, save_confusion_json, save_confusion_matrix
from action_launch.training.distributed import CollectiveError
from action_launch.training.loaders import BatchShardSampler, SequenceStreamSampler, make_loader, sequences_of
from action_launch.training.losses import logits_of
from action_launch.training.memory import WindowMemory, carries_memory
from action_launch.training.metrics import (
    average_by_group,
    classification_metrics,
    confusion_matrix,
    is_regression,
    regression_metrics,
)
from action_launch.training.prediction import predictions

log = logging.getLogger("launch.evaluate")

AGGREGATES = get_args(Aggregate)


def load_eval_config(path: Optional[Union[str, Path]], overrides: Sequence[str] = ()) -> Tuple[Config, EvalConfig]:
    """The run config of a YAML file plus `key=value` overrides, and its `test:` section (`test.*` overrides win)."""
    cfg = load_config(path, overrides)
    return cfg, cfg.test


# ------------------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(path: Union[str, Path], which: str = "best") -> Path:
    """A checkpoint folder from a checkpoint folder, a `checkpoints/` folder or a run folder.

    For the last two, `which` picks the `best` one (falling back to the newest) or the `last` one.
    """
    path = Path(path)
    if (path / ckpt.META).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        raise FileNotFoundError(f"--checkpoint {path}: no such folder")
    found = (ckpt.best_checkpoint(root) if which == "best" else None) or ckpt.latest_checkpoint(root)
    if found is None:
        raise FileNotFoundError(f"--checkpoint {path}: no complete checkpoint folder (with {ckpt.META}) in {root}")
    return found


def run_dir_of(checkpoint: Path) -> Optional[Path]:
    """The run folder a checkpoint folder belongs to (`<run>/checkpoints/step_N`), if it is laid out so."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def load_model(cfg: Config, checkpoint: Path) -> nn.Module:
    """The config's model with the checkpoint's weights; any missing or mis-shaped tensor is an error."""
    from action_launch import models
    from action_launch.training.engine import load_weights  # imports DeepSpeed only inside the engine class

    model = models.build(cfg.model)
    report = load_weights(model, checkpoint)
    if report["missing"] or report["mismatched"]:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit model {cfg.model['name']!r}: "
            f"missing {report['missing'][:5]}, other shape {report['mismatched'][:5]}"
        )
    return model


# ------------------------------------------------------------------------------------- prediction


def aggregate_views(outputs: torch.Tensor, how: str) -> torch.Tensor:
    """Combine per-view outputs (B, V, K) into one score per video (B, K).

    `mean_softmax`: mean of the views' probabilities; `sum`: sum of their logits; `mean`: mean of
    the raw outputs (regression).
    """
    outputs = outputs.float()
    if how == "mean_softmax":
        return outputs.softmax(-1).mean(1)
    if how == "sum":
        return outputs.sum(1)
    if how == "mean":
        return outputs.mean(1)
    raise ValueError(f"unknown aggregate {how!r}; expected one of {', '.join(AGGREGATES)} or mean")


def _has_view_axis(inputs: torch.Tensor, views: Optional[bool]) -> bool:
    return inputs.ndim == 6 if views is None else views


def _logits_per_view(outputs: Any, inputs: torch.Tensor, views: Optional[bool]) -> torch.Tensor:
    """The logits of `outputs` per view (B, V, K) (V = 1 for plain inputs)."""
    logits = logits_of(outputs)
    return logits.reshape(*inputs.shape[:2], -1) if _has_view_axis(inputs, views) else logits.unsqueeze(1)


def has_views(dataset: Any, split: str) -> bool:
    """Whether the samples carry a view axis: a dataset whose test split returns (V, ...) views says so
    with a `num_views` attribute (the video and raw-frame datasets); others (skeletons, per-person
    features, multi-person clips) return plain samples."""
    return split == "test" and num_views_of(dataset) is not None


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Any,
    how: str,
    device: torch.device,
    views: Optional[bool] = None,
    ranks: Optional[Ranks] = None,
    steps: int = 0,
    train: Optional[TrainConfig] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Scores (N, K) and labels of every batch of `loader`, in the loader's order; with `train`, the model runs as
    training ran it (`train.precision`'s autocast, channels-last, compiled: `training.engine.evaluation_forward`),
    else bare in fp32.

    A model that carries memory (`training.memory`) gets, for each window, the memory its
    recording's previous window left in the previous batch: give it a loader whose batches walk
    each recording in order (`evaluation_groups`). With `ranks`, the loader holds this rank's share and the ranks
    agree after each of `steps` batches (the most any rank has; a rank whose share is shorter agrees for the rest),
    so that a rank that fails stops the others within a batch.
    """
    from action_launch.training.engine import evaluation_forward  # imports DeepSpeed only inside the engine class

    model.eval().to(device)
    memory = WindowMemory() if carries_memory(model) else None
    ranks = ranks or Ranks.one_process(device)
    run = evaluation_forward(model, train, device) if train is not None else model

    def forward(inputs: torch.Tensor, **kwargs: Any) -> Any:
        if memory is not None and _has_view_axis(inputs, views):
            raise ValueError(
                "a model that carries memory is evaluated on one view per window: set "
                "data.test_num_clips=1 and data.test_num_crops=1"
            )
        inputs = inputs.to(device, non_blocking=True)
        return run(inputs.flatten(0, 1) if _has_view_axis(inputs, views) else inputs, **kwargs)

    scores, labels = [], []
    for inputs, outputs, targets in predictions(loader, forward, memory, device):
        scores.append(aggregate_views(_logits_per_view(outputs, inputs, views), how))
        labels.append(np.asarray(targets))
        ranks.agree(f"the agreement after batch {len(scores)} of {steps}")
    for step in range(len(scores), steps):
        ranks.agree(f"the agreement after batch {step + 1} of {steps} (this rank's share has {len(scores)})")
    if not scores:  # a rank with no batch (more ranks than groups)
        return np.empty((0, 0), dtype=np.float32), np.empty(0)
    return torch.cat(scores).cpu().numpy(), np.concatenate(labels)  # one copy to the host, after the pass


def evaluation_groups(dataset: Any, batch_size: int, memory: bool) -> List[List[List[int]]]:
    """The batches of the one-process evaluation pass, in the groups that one rank walks in order: every sample once,
    in dataset order, one batch per group; for a model that carries memory, the recordings (`sequences_of`) in
    blocks of `batch_size`, each block's batches walking its recordings window by window, one per slot (a block
    whose recordings are of unequal length shrinks at its end), so memory never leaves a group."""
    if not memory:
        size = len(dataset)
        return [[list(range(start, min(start + batch_size, size)))] for start in range(0, size, batch_size)]
    sequences = sequences_of(dataset)
    if sequences is None:
        raise ValueError(
            f"a model that carries memory needs a dataset of recordings (data.dataset=multiperson); "
            f"{type(dataset).__name__} has none"
        )
    blocks = [sequences[start : start + batch_size] for start in range(0, len(sequences), batch_size)]
    # shuffle=False: the sampler yields plain indices (not the training's `(index, seed)` keys)
    return [
        list(cast(Iterable[List[int]], SequenceStreamSampler(block, batch_size, shuffle=False))) for block in blocks
    ]


def evaluation_loader(
    dataset: Any, groups: Sequence[Sequence[Sequence[int]]], cfg: Config, name: str, rank: int = 0, world_size: int = 1
) -> Any:
    """The loader of rank `rank`'s share of an evaluation pass (`training.loaders.make_loader`: the training loaders'
    workers and batch time limit, `train.data_timeout_s`): groups rank, rank + world_size, ... of `groups`."""
    sampler = BatchShardSampler(groups, world_size, rank)
    return make_loader(
        dataset,
        sampler,
        1,
        cfg.data,
        cfg.seed,
        drop_last=False,  # the sampler makes the batches
        timeout_s=cfg.train.data_timeout_s,
        name=name,
    )


def most_batches(groups: Sequence[Sequence[Sequence[int]]], world_size: int) -> int:
    """The number of batches of the longest share of `groups` over `world_size` ranks: every rank's agreements."""
    return max(len(BatchShardSampler(groups, world_size, rank)) for rank in range(world_size))


def loader_indices(loader: Any) -> np.ndarray:
    """Dataset indices of an evaluation loader's samples, in the order it yields them."""
    return np.array([i for batch in loader.batch_sampler for i in batch], dtype=np.int64)


def in_dataset_order(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows of `values` (row j is the sample of dataset index `indices[j]`) sorted by dataset index."""
    return values[np.argsort(indices, kind="stable")]


def video_ids(dataset: Any) -> List[str]:
    """An id per sample: the dataset's `ids` or `sample_names`, its list items' paths, or the index."""
    ids = sample_ids(dataset)  # datasets.contract: ids, sample_names or the list items' paths
    return ids if ids is not None else [str(i) for i in range(len(dataset))]


# ---------------------------------------------------------------------------------------- metrics


def evaluation_metrics(
    scores: np.ndarray, labels: np.ndarray, regression: bool = False, class_names: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """Classification: top1, top5, mean_class_acc, macro_f1 and class_acc/<class> (percent).
    Regression: mse (mean over outputs) and mse/<output>, outputs named by `class_names` (the
    dataset's `output_names`) or by index."""
    if regression:
        return regression_metrics(scores, labels, class_names)
    labels = labels.astype(np.int64)
    out = classification_metrics(scores, labels)
    cm = confusion_matrix(scores.argmax(1), labels, scores.shape[1])
    names = class_labels(class_names, scores.shape[1])
    for i, row in enumerate(cm):
        if row.sum():
            out[f"class_acc/{names[i]}"] = float(row[i] / row.sum()) * 100
    return out


def save_predictions(path: Path, scores: np.ndarray, labels: np.ndarray, ids: Sequence[str], **extra: Any) -> Path:
    """Write `predictions.npz` atomically (scores, labels, ids and any extra scalars)."""
    return atomic_write(
        path,
        lambda tmp: np.savez(
            tmp,
            scores=scores,
            labels=labels,
            ids=np.asarray(list(ids), dtype=str),
            allow_pickle=True,  # numpy's default, named so that mypy does not match the arrays below to it
            **{k: np.asarray(v) for k, v in extra.items()},
        ),
    )


def load_predictions(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """`predictions.npz` of a run folder, or the file itself."""
    path = Path(path)
    file = path / "predictions.npz" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no predictions at {file}; run launch/test.py (or train.py --test-best) first")
    with np.load(file, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ------------------------------------------------------------------------------------------- run

AGGREGATE_WORDS = {
    "sum": "the sum of their logits",
    "mean": "the mean of their logits",
    "mean_softmax": "the mean of their softmax probabilities",
}


def view_aggregate(ecfg: EvalConfig, dataset: Any, regression: bool) -> str:
    """How the views of a sample are combined: regression outputs are averaged; else `test.aggregate`, or, when
    it is unset, the rule of the dataset's protocol (its upstream's; `mean_softmax` for datasets without one)."""
    if regression:
        return "mean"
    if ecfg.aggregate:
        return ecfg.aggregate
    protocol = protocol_of(dataset)
    return protocol.aggregate if protocol is not None else "mean_softmax"


def protocol_params(dataset: Any, split: str, how: str) -> Dict[str, str]:
    """The `test.*` params that say how a split was evaluated: the data protocol, its clips and crops, the view
    sizes and how views were combined (a dataset without views, or the val split, has 1 view)."""
    protocol = protocol_of(dataset)
    out = {"test.split": split, "test.views": str(dataset.num_views if has_views(dataset, split) else 1)}
    if protocol is not None:
        out["test.protocol"] = protocol.name
        if has_views(dataset, split):
            out.update({f"test.{k}": v for k, v in protocol.describe().items() if k not in ("protocol", "aggregate")})
    out["test.aggregate"] = how
    return out


def protocol_line(params: Mapping[str, str], regression: bool) -> str:
    """One line for the log: the protocol, views and how they are combined."""
    views = int(params["test.views"])
    text = f"test protocol {params.get('test.protocol', 'none')} on the {params['test.split']} split: "
    if "test.num_clips" in params:
        text += (
            f"{params['test.num_clips']} clip(s) x {params['test.num_crops']} crop(s) = {views} view(s) of "
            f"{params['test.crop_size']} px (short side {params['test.short_side']})"
        )
    else:
        text += f"{views} view(s) per sample"
    how = "the mean of the outputs" if regression else AGGREGATE_WORDS[params["test.aggregate"]]
    return text + (f", combined by {how}" if views > 1 else "")


@dataclass
class Predictions:
    """A split's predictions gathered from every rank, in dataset order, with their metrics."""

    scores: np.ndarray
    labels: np.ndarray
    ids: List[str]
    how: str
    params: Dict[str, str]
    metrics: Dict[str, float]
    class_names: Optional[Sequence[str]]
    regression: bool
    processes: Dict[str, Any]
    """world_size, each rank's device and its number of samples."""


@dataclass
class Evaluation:
    """What one evaluation pass wrote and measured."""

    metrics: Dict[str, float]
    params: Dict[str, str]
    files: List[Path]


def evaluate_model(cfg: Config, model: nn.Module, ecfg: EvalConfig, ranks: Optional[Ranks] = None) -> Predictions:
    """Evaluate `model` on `ecfg.split` by the data protocol, each rank of `ranks` (default: this process alone) on
    its share of the one-process batches (`evaluation_groups`); every rank gets the predictions of all, in dataset
    order, and their metrics."""
    from action_launch import datasets

    ranks = ranks or Ranks.one_process()
    regression = is_regression(cfg, model)
    dataset = datasets.build(cfg.data, ecfg.split)
    how = view_aggregate(ecfg, dataset, regression)
    params = {
        **protocol_params(dataset, ecfg.split, how),
        "test.split": cfg.data.split_read(ecfg.split),
        "test.precision": cfg.train.precision,
    }
    log.info("%s; in %s (train.precision)", protocol_line(params, regression), cfg.train.precision)
    # a model that carries memory walks each recording's windows in order, memory carried
    groups = evaluation_groups(dataset, ecfg.batch_size or cfg.train.micro_batch_size, carries_memory(model))
    loader = evaluation_loader(dataset, groups, cfg, ecfg.split, ranks.rank, ranks.world_size)
    steps = most_batches(groups, ranks.world_size)
    ranks.plan(steps)
    ranks.agree("the agreement before the evaluation")
    scores, labels = predict(model, loader, how, ranks.device, has_views(dataset, ecfg.split), ranks, steps, cfg.train)
    shares = ranks.collect((str(ranks.device), loader_indices(loader), scores, labels))
    indices, scores, labels = _in_dataset_order(shares)
    all_ids = video_ids(dataset)
    ids = [all_ids[i] for i in indices]
    participants = participants_of(dataset)
    if regression and participants is not None:
        scores, labels, ids = average_by_group(scores, labels, [participants[i] for i in indices])
    class_names = output_names_of(dataset) if regression else class_names_of(dataset)
    processes = {
        "world_size": ranks.world_size,
        "devices": [s[0] for s in shares],
        "samples": [len(s[1]) for s in shares],
    }
    return Predictions(
        scores,
        labels,
        ids,
        how,
        params,
        evaluation_metrics(scores, labels, regression, class_names),
        class_names,
        regression,
        processes,
    )


def _in_dataset_order(
    shares: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dataset indices, scores and labels of every rank's share `(device, indices, scores, labels)`, sorted by index
    (a rank without a batch has none)."""
    shares = [share for share in shares if len(share[1])]
    indices = np.concatenate([share[1] for share in shares])
    scores = in_dataset_order(np.concatenate([share[2] for share in shares]), indices)
    labels = in_dataset_order(np.concatenate([share[3] for share in shares]), indices)
    return np.sort(indices), scores, labels


def save_evaluation(
    pred: Predictions, ecfg: EvalConfig, run_dir: Path, source: str, step: int, out: Optional[Union[str, Path]] = None
) -> Evaluation:
    """Write predictions, metrics and the confusion matrix under `run_dir` (`source` names the weights in them):
    rank 0's part of an evaluation."""
    out = Path(out) if out else run_dir / "predictions.npz"
    save_predictions(out, pred.scores, pred.labels, pred.ids, aggregate=pred.how, checkpoint=source)
    test_dir = run_dir / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    (test_dir / "metrics.json").write_text(
        json.dumps(
            {
                "checkpoint": source,
                "step": step,
                "eval": asdict(ecfg),
                "protocol": pred.params,
                "processes": pred.processes,
                **pred.metrics,
            },
            indent=2,
        )
    )
    files = [out, test_dir / "metrics.json"]
    if not pred.regression:
        k = pred.scores.shape[1]
        cm = confusion_matrix(pred.scores.argmax(1), pred.labels.astype(np.int64), k)
        files += [
            save_confusion_json(cm, test_dir / "confusion_matrix.json", pred.class_names),
            save_confusion_matrix(cm, test_dir / "confusion_matrix.png", class_names=pred.class_names),
        ]
    log.info(
        "test on %d samples (%s, %s, %d process(es)): %s",
        len(pred.scores),
        source,
        pred.how,
        pred.processes["world_size"],
        " ".join(f"{k} {v:.4g}" for k, v in pred.metrics.items() if "/" not in k),
    )
    return Evaluation(pred.metrics, pred.params, files)


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: Union[str, Path],
    ecfg: Optional[EvalConfig] = None,
    out: Optional[Union[str, Path]] = None,
    track: bool = True,
    ranks: Optional[Ranks] = None,
) -> Dict[str, float]:
    """Evaluate one checkpoint folder on `ecfg.split`, over `ranks` (default: this process alone); rank 0 writes
    predictions and metrics and logs them into the training run. Returns the metrics (on every rank)."""
    ecfg = ecfg or EvalConfig()
    ranks = ranks or Ranks.one_process()
    checkpoint = Path(checkpoint)
    with ranks.together():
        pred = evaluate_model(cfg, load_model(cfg, checkpoint), ecfg, ranks)
    if not ranks.is_main:
        return pred.metrics
    run_dir = run_dir_of(checkpoint) or cfg.run_dir()
    step = int(ckpt.read_meta(checkpoint).get("step", 0)) if (checkpoint / ckpt.META).is_file() else 0
    result = save_evaluation(pred, ecfg, run_dir, str(checkpoint.resolve()), step, out)
    if track:
        _track_checkpoint(cfg, run_dir, checkpoint, step, result)
    return result.metrics


def load_published_weights(cfg: Config, weights: Path) -> Tuple[nn.Module, Any]:
    """The config's model with a published weight file (any format `--load-from` reads) and the load report. The
    whole network must load, its classifier included: evaluating a head the file does not hold is refused."""
    from action_launch import models
    from action_launch.models.checkpoints import CheckpointError, load_checkpoint

    model = models.build(cfg.model)
    try:
        report = load_checkpoint(model, weights)
    except CheckpointError as err:
        raise ValueError(str(err).replace("--load-from", "--weights", 1)) from None
    head = sorted(k for k in report.head if k not in report.loaded)
    if head:
        why = report.skipped.get(head[0]) or "absent from the file"
        raise ValueError(
            f"--weights {weights}: the classifier {head[0]} does not load ({why}); set "
            f"model.num_classes to the file's class count and use the data its head was trained on"
        )
    return model, report


def evaluation_folder(cfg: Config, weights: Path) -> Path:
    """A new folder for one evaluation of published weights: `<output_dir>/<experiment>/<name>@<file stem>`, with
    `-2`, `-3`, ... when earlier evaluations are there (each evaluation keeps its own record)."""
    base = Path(cfg.output_dir) / cfg.experiment / f"{cfg.name}@{weights.stem}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def evaluate_weights(
    cfg: Config,
    weights: Union[str, Path],
    ecfg: Optional[EvalConfig] = None,
    out: Optional[Union[str, Path]] = None,
    track: bool = True,
    ranks: Optional[Ranks] = None,
) -> Tuple[Dict[str, float], Optional[Path]]:
    """Evaluate a published weight file with the config's model and data protocol, without a training run, over
    `ranks` (default: this process alone). Rank 0 writes the results to a new `evaluation_folder`, once they are
    complete, and logs a new MLflow run (config as params, the file and its sha256 as tags). Returns the metrics and
    the folder (None on the other ranks)."""
    ecfg = ecfg or EvalConfig()
    ranks = ranks or Ranks.one_process()
    weights = Path(weights)
    with ranks.together():
        model, report = load_published_weights(cfg, weights)
        log.info(
            "--weights %s: %s, %d tensors loaded", weights, report.description or report.format, len(report.loaded)
        )
        pred = evaluate_model(cfg, model, ecfg, ranks)
    if not ranks.is_main:
        return pred.metrics, None
    run_dir = evaluation_folder(cfg, weights)
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "load_report.txt").write_text(report.text())
    result = save_evaluation(pred, ecfg, run_dir, str(weights.resolve()), 0, out)
    if track:
        from action_launch.training.trainer import run_tags

        config = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith("tracking.tags.")}
        tags = {
            **run_tags(ranks.world_size),
            "eval.weights": str(weights.resolve()),
            "eval.weights_sha256": _sha256(weights),
            "eval.weights_format": report.format,
        }
        result.files += [run_dir / "config.yaml", run_dir / "load_report.txt"]
        _track(cfg, run_dir, {**config, **result.params}, tags, 0, result, run_name=run_dir.name)
    return result.metrics, run_dir


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file: which weights an evaluation read, whatever the file is later renamed to."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _track_checkpoint(cfg: Config, run_dir: Path, checkpoint: Path, step: int, result: Evaluation) -> None:
    """Log an evaluation of a training run's checkpoint as an MLflow run of its own (a journal folder of its own),
    nested under the training run: evaluating never reopens the training run, so its times and status stay."""
    from action_launch.tracking.tracker import (
        EVALUATED_TAG,
        LATEST_EVALUATION_TAG,
        PARENT_TAG,
        Journal,
        annotate_run,
        new_evaluation_folder,
    )

    training = Journal(run_dir).state()
    parent = training.get("run_id")
    folder = new_evaluation_folder(run_dir)
    if training.get("store"):  # the training run's store, behind a sweep's server that may be gone since
        Journal(run_dir, folder).save_state(store=training["store"])
    tags = {EVALUATED_TAG: str(checkpoint.resolve()), **({PARENT_TAG: parent} if parent else {})}
    name = f"{training.get('run_name', cfg.run_name())} test {checkpoint.name}"
    run_id = _track(
        cfg, run_dir, {**result.params, "test.checkpoint": checkpoint.name}, tags, step, result, name, folder
    )
    if run_id and parent:  # from the training run to its latest evaluation (a tag: no new attempt, no new end)
        annotate_run(run_dir, {LATEST_EVALUATION_TAG: run_id})


def _track(
    cfg: Config,
    run_dir: Path,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    step: int,
    result: Evaluation,
    run_name: Optional[str] = None,
    folder: str = "tracking",
) -> Optional[str]:
    """Log an evaluation as a new MLflow run named `run_name` whose journal is `run_dir/folder` (the metrics at
    `step`, the result files as artifacts); the run id, or None when it did not reach MLflow (kept in the journal).
    The store and experiment default to those of the run folder's training run."""
    from action_launch.tracking.tracker import Journal, Tracker, default_tracking_uri

    state = Journal(run_dir).state()
    uri = cfg.tracking.uri or state.get("uri") or default_tracking_uri(cfg.output_dir)
    tracker = Tracker(
        run_dir,
        uri,
        cfg.tracking.experiment or state.get("experiment") or cfg.experiment,
        run_name or state.get("run_name", cfg.run_name()),
        cfg.tracking.enabled,
        folder=folder,
    )
    tracker.start(params, tags)
    tracker.log_metrics({f"test/{k}": v for k, v in result.metrics.items()}, step)
    for file in result.files:
        try:
            tracker.log_artifact(file, "test")
        except ValueError:  # a --out outside the run folder stays where it is
            log.info("not logging %s as an artifact: outside the run folder %s", file, run_dir)
    tracker.finish("FINISHED")
    return tracker.run_id if tracker.online else None


def evaluate_after_training(cfg: Config, ckpt_root: Path, which: str) -> Dict[str, float]:
    """`train.py --test-best/--test-last`: evaluate the best (else newest) or the newest checkpoint, as `test:` says."""
    return evaluate_checkpoint(cfg, resolve_checkpoint(ckpt_root, which), cfg.test)


def run_test(
    checkpoint: Optional[str],
    weights: Optional[str],
    config: Optional[str],
    last: bool,
    overrides: Sequence[str],
    out: Optional[str],
    track: bool,
) -> int:
    """`launch/test.py`: evaluate a checkpoint (or run folder) or published weights, in this process or as one rank
    of a torchrun or Slurm job (`evaluation_ranks`); rank 0 prints the metrics. Exit status 2, with one line, for
    what cannot be evaluated as asked; 1 when a rank failed, died or hung (every rank stops)."""
    import sys

    from action_launch.config import ConfigError
    from action_launch.training.loaders import DataTimeout

    def fail(message: str, status: int = 2) -> int:
        print(message, file=sys.stderr)
        return status

    if weights and not config:
        return fail("error: --weights needs --config (the model and the data protocol to evaluate it with)")
    if weights and not Path(weights).is_file():
        return fail(f"error: --weights {weights}: no such file")
    try:
        if weights:
            folder = None
            cfg, ecfg = load_eval_config(config, overrides)
        elif checkpoint:
            folder = resolve_checkpoint(checkpoint, "last" if last else "best")
            cfg, ecfg = load_eval_config(config or folder / "config.yaml", overrides)
        else:  # test.py requires one of the two
            return fail("error: give --checkpoint (a checkpoint or run folder) or --weights")
    except FileNotFoundError as err:
        return fail(f"error: {err}")
    except ConfigError as err:
        return fail(f"config error: {err}")
    try:
        with evaluation_ranks(cfg.train.collective_timeout_s, cfg.data.num_workers) as ranks:
            if weights:
                metrics, run_dir = evaluate_weights(cfg, weights, ecfg, out=out, track=track, ranks=ranks)
            else:  # cast: `folder` is resolved above wherever there are no weights
                metrics = evaluate_checkpoint(cfg, cast(Path, folder), ecfg, out=out, track=track, ranks=ranks)
                run_dir = None
    except ValueError as err:  # a protocol that does not fit the data, weights that do not fit the model
        return fail(f"error: {err}")
    except (CollectiveError, EvaluationStopped, DataTimeout) as err:  # a rank or a data worker died, hung or failed
        return fail(f"error: {err}", 1)
    if not ranks.is_main:
        return 0
    if run_dir is not None:
        print(f"results in {run_dir}")
    for key, value in metrics.items():
        print(f"test/{key}: {value:.4f}")
    return 0
