"""The run configuration's schema: one dataclass per section, a default and a docstring for every field.

The `data:` section is owned by the data layer (`datasets.config.DataConfig`: the keys every kind reads, read as
the subclass of the kind `data.dataset` names); the `model:` section is
free-form here and checked against the chosen preset's constructor by the validator. `EvalConfig` is the
`test:` section, which only the evaluator reads (one recipe serves `train.py` and `test.py`).
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from action_launch.config.validation import must
from action_launch.datasets.config import DataConfig


@dataclass
class OptimConfig:
    """Optimizer, learning-rate scaling and schedule."""

    name: Literal["sgd", "adamw"] = "sgd"
    """Optimizer: SGD (momentum, optional Nesterov) or AdamW."""
    lr: float = 0.005
    """Base learning rate, valid for `base_batch_size` clips per optimizer step."""
    base_batch_size: int = 64
    """Batch size that `lr` (and `warmup_start_lr`, `final_lr`) were tuned for."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """How the LR follows the effective batch (micro x accumulation x world size)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum for SGD."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-4
    """L2 weight decay for weights; norms, biases and embeddings get none."""
    clip_grad: float = 0.0
    """Clip the global gradient L2 norm to this value (0 disables)."""
    schedule: Literal["step", "cosine", "constant"] = "step"
    """LR schedule over epochs (fractional: the LR changes every optimizer step)."""
    step_epochs: List[float] = field(default_factory=list)
    """`step` schedule: epochs at which the LR changes."""
    step_lrs: List[float] = field(default_factory=list)
    """`step` schedule: relative LR of each interval (len(step_epochs)+1); empty means 1, 0.1, 0.01, ..."""
    warmup_epochs: float = 0.0
    """Linear warmup length in epochs."""
    warmup_start_lr: float = 0.0
    """LR at the start of the warmup, for `base_batch_size` (scaled like `lr`)."""
    final_lr: float = 0.0
    """LR at the end of the cosine schedule, for `base_batch_size` (scaled like `lr`)."""
    keep_effective_batch: bool = False
    """On another number of processes than the `slurm:` section describes (nodes x GPUs per node, 1 per node without
    GPUs), change `train.grad_accum` to keep the effective batch (and LR): under `submit.py --nodes N`, torchrun, Slurm
    or one process alike; refused in one line where no whole accumulation keeps it."""


@dataclass
class TrainConfig:
    """Loop length, batch layout, precision and logging cadence."""

    epochs: int = 15
    """Training epochs."""
    micro_batch_size: int = 8
    """Clips per device per forward/backward."""
    grad_accum: int = 1
    """Micro batches accumulated per optimizer step."""
    max_steps_per_epoch: Optional[int] = None
    """Cap on micro batches per epoch (smoke tests, quick sweeps); None uses the whole set."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32, or mixed precision: fp32 weights and optimizer, the forward under `torch.autocast` in bf16 or fp16
    (fp16 needs a GPU and gets a gradient scaler)."""
    compile: bool = False
    """Compile the model with `torch.compile`; where the compiler fails, the model runs eager (one warning says why)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (models with `set_grad_checkpointing`): less memory,
    ~30% more compute."""
    channels_last: bool = False
    """Keep the model's convolution weights and inputs channels-last (3D/2D CNNs; faster on tensor cores where
    measured)."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage."""
    sync_bn: bool = False
    """Turn the model's BatchNorms into `torch.nn.SyncBatchNorm`: each step normalises with the statistics of the
    global batch (every rank's micro batch), as one process with the whole batch would, at one all-reduce per layer.
    CUDA only (a CPU run is refused). Off, a rank normalises with its own micro batch's statistics (DataParallel's
    and plain DDP's behaviour); the running statistics are averaged over the ranks before each validation and
    checkpoint either way."""
    loss: Literal["cross_entropy", "mse", "bce"] = "cross_entropy"
    """Loss for models without their own `compute_loss`."""
    load_partial: bool = False
    """Accept a partial `--load-from` (`--load-from-partial`): tensors outside the head missing, unexpected or of
    another shape are reported, not refused (a file that maps nothing is still refused)."""
    eval_every_epochs: int = 1
    """Validate every N epochs (and always after the last)."""
    log_every_steps: int = 10
    """Log training metrics every N optimizer steps."""
    collective_timeout_s: float = field(default=300.0, metadata=must(lambda s: s > 0, "> 0"))
    """Longest wait of any collective (gradient all-reduce, stop agreement, validation gather, checkpoint barrier)
    for the other ranks; past it every rank stops with an error naming the collective (a rank that died is found
    at once where its connection closes). NCCL's watchdog ends the process at the same bound."""
    data_timeout_s: float = field(default=120.0, metadata=must(lambda s: s >= 0, ">= 0"))
    """Longest wait for one batch from the DataLoader workers (their start included) before the run stops with
    an error (0: no bound); below `collective_timeout_s`, so the rank whose worker is stuck reports first."""


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 0
    """Also save every N optimizer steps (0: only at epoch ends)."""
    keep_last: int = 3
    """Step checkpoints kept besides the best one."""
    best_metric: str = "val/top1"
    """Validation metric that selects the `best` checkpoint."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or smaller `best_metric` is better."""


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    """Log to MLflow (the run folder keeps a local copy of every metric either way)."""
    uri: Optional[str] = None
    """Tracking URI; default `$MLFLOW_TRACKING_URI` or `sqlite:///<output_dir>/mlflow.db`."""
    experiment: Optional[str] = None
    """MLflow experiment name; default the run's `experiment`."""
    run_name: Optional[str] = None
    """MLflow run name; default the run's `name` (`launch/submit.py` names each task of a job array
    `<name>/<grid point>`, e.g. `grid/optim.lr=0.1,seed=0`)."""
    tags: Dict[str, str] = field(default_factory=dict)
    """Extra run tags, e.g. `mlflow.parentRunId` (set by `launch/tune.py` to nest a trial under its sweep)."""


@dataclass
class SlurmConfig:
    """Slurm resources of `launch/submit.py`; each field can be overridden by the flag of the same name."""

    nodes: int = 1
    """Nodes of the job (`--nodes`)."""
    gpus_per_node: int = 0
    """GPUs per node; one task per GPU, or one task per node when 0 (CPU)."""
    cpus_per_task: int = 1
    """CPU cores per task (data loader workers run on these)."""
    mem_gb: Optional[float] = None
    """Memory per node in GB; None leaves the partition's default."""
    partition: Optional[str] = None
    """Slurm partition; None uses the cluster's default."""
    account: Optional[str] = None
    """Slurm account to charge."""
    qos: Optional[str] = None
    """Quality of service."""
    constraint: Optional[str] = None
    """Node feature constraint (e.g. `a100`)."""
    time: str = "01:00:00"
    """Time limit per allocation, [D-]HH:MM:SS or minutes; a requeued job gets it again."""
    job_name: Optional[str] = None
    """Job name; default `<experiment>/<name>`."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which Slurm signals the job to checkpoint and requeue."""
    max_requeues: int = 3
    """Requeues after preemption or time limit before the job gives up."""
    array_parallelism: int = 16
    """Jobs of an array (grid) that may run at the same time."""


@dataclass
class Config:
    """A whole run."""

    experiment: str = "default"
    """Experiment name: groups runs in `output_dir/<experiment>/` and in MLflow."""
    name: str = "run"
    """Run name: the run folder is `output_dir/<experiment>/<name>/`."""
    output_dir: str = "runs"
    """Root folder of all runs (and of the default SQLite MLflow store)."""
    seed: int = 0
    """Seed of every random number generator of the run."""
    deterministic: bool = False
    """Use deterministic torch algorithms (slower; makes CPU runs bit-reproducible)."""
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "timesformer_tiny"})
    """`name`: a preset of `models.list_presets()`; other keys override the preset's constructor arguments."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    test: EvalConfig = field(default_factory=lambda: EvalConfig())
    """How `launch/test.py` and `train.py --test-best` evaluate; training reads none of it."""

    def run_dir(self) -> Path:
        """Folder holding this run's config, checkpoints and local metrics."""
        return Path(self.output_dir) / self.experiment / self.name

    def run_name(self) -> str:
        """Name of this run's MLflow run: `tracking.run_name`, else `name`."""
        return self.tracking.run_name or self.name


Aggregate = Literal["mean_softmax", "sum", "mean"]


@dataclass
class EvalConfig:
    """The `test:` section: how a checkpoint is evaluated (`launch/test.py`, `train.py --test-best`)."""

    aggregate: Optional[Aggregate] = None
    """How the views of a video are combined: `mean_softmax` (mean of probabilities), `sum` (sum of logits) or
    `mean` (mean of logits); None: as the upstream of `data.protocol` does (`pyslowfast` sums, `tsn` and
    `mmaction` average the logits, `native` the probabilities). Regression outputs are always averaged."""
    split: Literal["test", "val"] = "test"
    """Data split to evaluate: `test` (`data.test_list`, falling back to `data.val_list`) or `val`."""
    batch_size: int = field(default=0, metadata=must(lambda n: n >= 0, ">= 0"))
    """Videos per forward (each with all its views); 0 uses `train.micro_batch_size`."""


@functools.cache
def field_docs(cls: type) -> Dict[str, str]:
    """The docstring under each field of a config dataclass, as one line (`{}` where the source is not at hand)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    class_def = tree.body[0]
    if not isinstance(class_def, ast.ClassDef):  # the source of a class is its class statement
        raise TypeError(f"field_docs: {cls!r} is not a class")
    body = class_def.body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
