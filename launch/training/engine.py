"""The DeepSpeed engine: our config -> a DeepSpeed config, one training step, checkpoint I/O.

The only module that imports DeepSpeed. The optimizer and the LR schedule are ordinary torch objects
built from `optim:` (so SGD with Nesterov and PySlowFast's relative step schedule are available) and
handed to `deepspeed.initialize`, which owns micro-batching, accumulation, clipping, precision and
ZeRO. DeepSpeed steps the scheduler once per optimizer step.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from action_launch.config import Config, OptimConfig, TrainConfig
from action_launch.models.contract import HasNoWeightDecay, HasParameterGroups, SupportsGradCheckpointing
from action_launch.training.batchnorm import sync_batchnorm
from action_launch.training.distributed import DistEnv, enforce_nccl_timeout, resolve_env
from action_launch.training.op_builds import prepare_op_builds, reported_builds
from action_launch.training.schedule import LRSchedule, ScaledLR, ScheduleClock

if TYPE_CHECKING:  # imported where used, at run time
    from action_launch.models.checkpoints import LoadReport

log = logging.getLogger(__name__)


def init_distributed(env: DistEnv, timeout_s: Optional[float] = None) -> torch.device:
    """Bind this process to its device, then start the process group on it (RANK/WORLD_SIZE/MASTER_* from
    `training.distributed`); returns the device.

    The GPU is chosen from LOCAL_RANK before the group starts and handed to NCCL (`device_id`), so no
    collective ever guesses a device from the global rank (which hangs on nodes whose ranks map to GPUs
    differently). `timeout_s` bounds the rendezvous and every collective of the group (None: torch's
    defaults), and NCCL's watchdog is kept on to enforce it (`enforce_nccl_timeout`).
    """
    device = env.device
    build_dir = prepare_op_builds()
    if device.type == "cpu":  # said, not detected: DeepSpeed then does not warn that it fell back to the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)  # our own log lines say what matters; DeepSpeed's INFO floods them
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s) if timeout_s else None
    if not torch.distributed.is_initialized():
        # Its functions take the world group as a default argument, bound at import: imported once the group
        # exists (torch._dynamo imports it, in deepspeed.initialize) they would keep the group alive past
        # `shutdown_distributed`, until the interpreter's own shutdown tears its gloo threads down (an abort).
        importlib.import_module("torch.distributed.nn.functional")

        device_id = device if device.type == "cuda" else None  # None: torch's default, no device bound
        if env.backend == "nccl" and (warning := enforce_nccl_timeout()):
            log.warning(warning)
        if env.world_size == 1:
            # One process needs no rendezvous: an in-memory store instead of a TCP store listening on every interface.
            torch.distributed.init_process_group(
                env.backend,
                store=torch.distributed.HashStore(),
                rank=0,
                world_size=1,
                timeout=timeout,
                device_id=device_id,
            )
        else:
            torch.distributed.init_process_group(env.backend, timeout=timeout, device_id=device_id)
    # on the CPU it builds (once) and loads its comm op, and prints that it loaded it at every start
    with reported_builds(build_dir), contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(
            dist_backend=env.backend,
            auto_mpi_discovery=False,
            verbose=False,
            **({"timeout": timeout} if timeout else {}),
        )
    return device


def shutdown_distributed() -> None:
    """Destroy every process group of this process, the newest first and the world group last, through DeepSpeed,
    which then lets go of its own references to them (its clone of the world group).

    The end of a run that every rank reached: a group whose last reference goes here joins its gloo threads now.
    Left to the interpreter's shutdown, a gloo thread still releasing a collective's tensors needs the GIL when
    Python no longer hands it out, and the process aborts (`terminate called without an active exception`:
    SIGABRT, a finished run reported FAILED). Not after a lost rank: destroying a group whose peer still waits
    in a collective can wait for it.
    """
    import deepspeed.comm as ds_comm
    from torch.distributed import distributed_c10d as c10d

    if not torch.distributed.is_initialized():
        return
    world = torch.distributed.group.WORLD
    # private API: torch has no public list of a process's groups; the map keeps the order of creation
    for group in reversed(list(c10d._world.pg_map)):
        if group is not world:
            ds_comm.destroy_process_group(group)
    ds_comm.destroy_process_group()


def configure_backends(deterministic: bool) -> None:
    """cuDNN autotuning and TF32 matmuls for speed; with `deterministic`, the CUDA knobs that make kernels
    repeatable instead (cuBLAS workspace, deterministic algorithms, no autotuning)."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device) -> Any:
    """The precision context of forward passes under `train.precision`: `torch.autocast` in bf16 or fp16 on
    `device`, a no-op in fp32. Training (the engine) and evaluation (`evaluation_forward`) take it from here."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def evaluation_forward(model: nn.Module, train: TrainConfig, device: torch.device) -> Callable[..., Any]:
    """`model` (already on `device`) run as training runs it, for evaluation: under `train.precision`'s autocast,
    its convolutions channels-last and compiled where `train` says. A compiler failure at the first batch is said once
    and that batch and the rest run eager, as the engine's training falls back."""
    if train.channels_last:
        _channels_last(model)
    compiled: List[Any] = [torch.compile(model)] if train.compile else []

    def forward(inputs: torch.Tensor, **kwargs: Any) -> Any:
        with autocast_context(train.precision, device):
            if compiled:
                try:
                    return compiled[0](inputs, **kwargs)
                except Exception as err:
                    log.warning("train.compile: torch.compile failed (%s); evaluating eager instead", _root_cause(err))
                    compiled.clear()
            return model(inputs, **kwargs)

    return forward


def deepspeed_config(train: TrainConfig, optim: OptimConfig, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed JSON config derived from ours (batch layout, clipping, precision, ZeRO).

    Mixed precision is DeepSpeed's `torch_autocast`: fp32 weights, gradients and optimizer state, the
    forward under `torch.autocast` (fp16 with a gradient scaler). DeepSpeed's `bf16`/`fp16` modes cast
    the weights themselves, which BatchNorm's fp32 running statistics reject (every CNN and GCN here).
    """
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    mixed = AUTOCAST_DTYPES.get(train.precision)
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": optim.clip_grad,
        "torch_autocast": {"enabled": mixed is not None, "dtype": str(mixed or torch.bfloat16)},
        "zero_optimization": {"stage": train.zero_stage},
        # Our optimizers are plain torch ones; ZeRO 1/2 partition their state just the same.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def parameter_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weights get `weight_decay`; norms, biases (all 1-D tensors) and the model's embeddings get none.

    A model may name more no-decay parameters with `no_weight_decay()` (timm's convention) and may
    provide its own groups with `parameter_groups()` returning dicts with `params`, optional
    `weight_decay` (None: the config's) and optional `lr_mult` (TSM's fc x5/x10).
    """
    if isinstance(model, HasParameterGroups):
        groups = []
        for group in model.parameter_groups():
            wd = group.get("weight_decay")
            groups.append(
                {
                    "params": list(group["params"]),
                    "weight_decay": weight_decay if wd is None else wd,
                    "lr_mult": group.get("lr_mult", 1.0),
                }
            )
        return groups
    skip = set(model.no_weight_decay()) if isinstance(model, HasNoWeightDecay) else set()
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
    ]


def build_optimizer(
    groups: List[Dict[str, Any]], optim: OptimConfig, peak_lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over the groups; each group's LR is peak_lr x lr_mult. On a GPU the
    fused kernels: one launch per step for all parameters instead of several per tensor."""
    for group in groups:
        group["lr"] = peak_lr * group["lr_mult"]
    fused = device.type == "cuda"
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups, lr=peak_lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0, fused=fused
        )
    beta1, beta2 = optim.betas
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(beta1, beta2), eps=optim.eps, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    optim: OptimConfig,
    scaled: ScaledLR,
    total_epochs: int,
    micro_batches_per_epoch: int,
    grad_accum: int,
) -> LRSchedule:
    """The run's `training.schedule.LRSchedule` over `optimizer`, one step per optimizer step,
    `micro_batches_per_epoch / grad_accum` steps an epoch from epoch 0."""
    clock = ScheduleClock(Fraction(micro_batches_per_epoch, grad_accum))
    return LRSchedule(optimizer, optim, scaled, total_epochs, clock)


LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


class Engine:
    """A model inside a DeepSpeed engine, with the loss and the step the loop needs.

    Everything it makes lives on `device`; inputs are moved there without blocking (pinned batches), and
    nothing here reads a value back to the host: the loss comes back as a device tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        scaled: ScaledLR,
        world_size: int,
        micro_batches_per_epoch: int,
        loss_fn: LossFn,
        device: torch.device,
        load_universal: bool = False,
    ):
        """`load_universal`: `load` will read a checkpoint converted by `to_universal` (DeepSpeed reads the
        layout of the checkpoints it loads from its config)."""
        import deepspeed

        t = cfg.train
        self.ds_config = deepspeed_config(t, cfg.optim, world_size)
        if load_universal:
            self.ds_config["checkpoint"] = {"load_universal": True}
        model.to(device)
        if t.activation_checkpointing:
            _enable_activation_checkpointing(model)
        self._compile_pending = t.compile
        if t.compile:
            model.compile()  # in place: the state dict keeps its names
        groups = parameter_groups(model, cfg.optim.weight_decay)
        if t.sync_bn:  # after the groups, which a model may find by BatchNorm type; its parameters stay the same
            model = sync_batchnorm(model, device)
        optimizer = build_optimizer(groups, cfg.optim, scaled.lr, device)
        # DeepSpeed steps the schedule once per optimizer step and keeps its state_dict in the checkpoints
        self.schedule = build_scheduler(optimizer, cfg.optim, scaled, t.epochs, micro_batches_per_epoch, t.grad_accum)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.schedule, config=self.ds_config
        )
        # nothing to reduce; DeepSpeed would still flatten, all-reduce and copy back every gradient. Not under ZeRO-1/2,
        # whose optimizer takes its gradient partitions from that reduction (without it: KeyError in its first step)
        if world_size == 1 and t.zero_stage == 0:
            self.ds.enable_backward_allreduce = False
        if t.channels_last:  # after initialize, whose weight broadcast views each weight as contiguous bytes
            _channels_last(model)  # cuDNN follows the weights' layout: activations come out channels-last too
        self.loss_fn = loss_fn
        self.dtype = AUTOCAST_DTYPES.get(t.precision)
        self.precision = t.precision

    @property
    def device(self) -> torch.device:
        return self.ds.device

    @property
    def module(self) -> nn.Module:
        """The bare model (for evaluation hooks and explanations)."""
        return self.ds.module

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far."""
        return self.ds.global_steps

    @property
    def lr(self) -> float:
        """LR of the first parameter group (the base group)."""
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self) -> Any:
        """The precision context of forward passes and losses (a no-op in fp32)."""
        return autocast_context(self.precision, self.device)

    def to_device(self, value: Any) -> Any:
        """A tensor (or a dict/list of them) on the engine's device, copied without blocking (from pinned batches)."""
        if isinstance(value, torch.Tensor):
            return value.to(self.device, non_blocking=True)
        if isinstance(value, Mapping):
            return {k: self.to_device(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.to_device(v) for v in value)
        return value

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The loss of `outputs` against `targets` (moved to the device), in the engine's precision context
        (autocast computes losses in fp32)."""
        with self.autocast():
            return self.loss_fn(outputs, self.to_device(targets))

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, **model_kwargs: Any) -> Tuple[torch.Tensor, bool]:
        """Forward, backward and (at an accumulation boundary) optimizer step on one micro batch.

        `model_kwargs` are extra keyword inputs of the model (a carried memory), moved to the
        device like `inputs`. Returns the detached loss (on the device) and whether an optimizer step happened.
        """
        loss, boundary, _ = self.train_step_outputs(inputs, targets, **model_kwargs)
        return loss, boundary

    def train_step_outputs(
        self, inputs: torch.Tensor, targets: torch.Tensor, **model_kwargs: Any
    ) -> Tuple[torch.Tensor, bool, Any]:
        """`train_step` that also returns the model's outputs, detached (a memory to carry to the next window)."""
        if self._compile_pending:
            return self._first_compiled_step(inputs, targets, model_kwargs)
        self.ds.train()
        boundary = self.ds.is_gradient_accumulation_boundary()
        outputs = self.ds(self.to_device(inputs), **self.to_device(model_kwargs))
        loss = self.loss(outputs, targets)
        self.ds.backward(loss)
        self.ds.step()
        return loss.detach().float(), boundary, _detached(outputs)

    def _first_compiled_step(
        self, inputs: torch.Tensor, targets: torch.Tensor, model_kwargs: Mapping[str, Any]
    ) -> Tuple[torch.Tensor, bool, Any]:
        """The first step compiles the model; if the compiler fails, say why once and train eager."""
        self._compile_pending = False
        try:
            return self.train_step_outputs(inputs, targets, **model_kwargs)
        except Exception as err:
            log.warning("train.compile: torch.compile failed (%s); training eager instead", _root_cause(err))
            # private API: nn.Module.compile() has no public undo; it set this attribute, and None restores eager calls
            self.module._compiled_call_impl = None
            torch.compiler.reset()
            self.ds.zero_grad()  # a backward that failed halfway may have left partial gradients
            return self.train_step_outputs(inputs, targets, **model_kwargs)

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, **model_kwargs: Any) -> Any:
        """Model outputs in eval mode (`model_kwargs` as in `train_step`), in the engine's precision."""
        self.ds.eval()
        return self.ds(self.to_device(inputs), **self.to_device(model_kwargs))

    def close(self) -> None:
        """The end of training: DeepSpeed removes its gradient hooks (`DeepSpeedEngine.destroy`), which otherwise
        keep the engine, its ZeRO optimizer and the process group they hold from ever being collected."""
        self.ds.destroy()

    def save(self, root: Path, tag: str, client_state: Mapping[str, Any]) -> None:
        """Collective: every rank writes its shard of model, optimizer and scheduler state."""
        self.ds.save_checkpoint(str(root), tag=tag, client_state=dict(client_state), save_latest=False)

    @property
    def samples(self) -> int:
        """Clips trained on so far, over all ranks (DeepSpeed counts them each optimizer step and checkpoints them)."""
        return self.ds.global_samples

    def load(self, ckpt: Path) -> Dict[str, Any]:
        """Restore weights, optimizer, scheduler and step from a checkpoint folder (one that `to_universal` wrote, for
        an engine built with `load_universal`); returns its client state."""
        path, client_state = self.ds.load_checkpoint(
            str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {ckpt}")
        if self.ds_config.get("checkpoint", {}).get("load_universal"):
            self._load_buffers(ckpt)
        self.schedule.apply()  # the optimizer state brought the LRs the checkpoint trained with; this run's follow
        return client_state or {}

    def _load_buffers(self, ckpt: Path) -> None:
        """The module's buffers (BatchNorm running statistics) from the checkpoint's model file: DeepSpeed's universal
        load restores parameters only, and leaves every buffer as the freshly built model had it."""
        saved = torch.load(model_state_file(ckpt), map_location=self.device, weights_only=False)["module"]
        buffers = {name: saved[name] for name, _ in self.module.named_buffers() if name in saved}
        self.module.load_state_dict(buffers, strict=False)

    def restart_schedule(self, epoch: Fraction) -> None:
        """Continue the LR schedule from fractional `epoch` at the restored optimizer step, and set the LRs of the next
        step from it: after a resume on another batch layout (`training.layout`), whose steps per epoch differ."""
        self.schedule.restart_at(epoch)


def _detached(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, Mapping):
        return {k: _detached(v) for k, v in outputs.items()}
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_detached(v) for v in outputs)
    return outputs


def model_state_file(ckpt: Path) -> Path:
    """The file holding the (unsharded) module weights of a DeepSpeed checkpoint folder."""
    return ckpt / "mp_rank_00_model_states.pt"


# Optimizers whose state DeepSpeed's universal checkpoint converts: it reads exactly Adam's `exp_avg` and `exp_avg_sq`.
UNIVERSAL_OPTIMIZERS = ("adamw",)


class ResumeRefused(ValueError):
    """A checkpoint this run cannot resume on its world size or ZeRO stage; the message is one line naming the way
    out."""


def zero_shards(ckpt: Path) -> int:
    """Ranks over which ZeRO-1/2 partitioned the optimizer state of `ckpt` (one file each); 0 for a ZeRO-0 checkpoint,
    whose model file holds the whole optimizer state, the same on every rank."""
    return len(list(ckpt.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")))


def needs_conversion(ckpt: Path, saved_stage: Optional[int], zero_stage: int, world_size: int, optimizer: str) -> bool:
    """Whether an engine of ZeRO stage `zero_stage` on `world_size` processes must load `ckpt` converted
    (`to_universal`); raises `ResumeRefused` where no conversion works. `saved_stage`: the stage `ckpt` was saved
    with, if known.

    Measured with DeepSpeed 0.19.8 on the CPU, fp32 and bf16 autocast alike: a ZeRO-0 checkpoint loads into ZeRO-0 on
    any world size as it is; ZeRO-1/2 shards load as they are on their own world size (ZeRO-1 and 2 into each other),
    and on another one once converted to a universal checkpoint, with the same training after it; the converter
    reads Adam's state only (SGD's momentum: KeyError), needs ZeRO shards (none in a ZeRO-0 checkpoint), and a
    universal checkpoint loads into ZeRO-1/2 only (ZeRO-0: AttributeError).
    """
    shards = zero_shards(ckpt)
    weights_only = f"or start a new run from its weights: --load-from {ckpt} name=<new name>"
    if shards == 0:
        if zero_stage == 0:
            return False
        raise ResumeRefused(
            f"{ckpt} was saved with train.zero_stage=0, whose optimizer state DeepSpeed cannot give "
            f"ZeRO-{zero_stage}: resume it with train.zero_stage=0 (on any number of processes), "
            f"{weights_only}"
        )
    saved = f"ZeRO-{saved_stage}" if saved_stage else "ZeRO"
    if zero_stage == 0:
        raise ResumeRefused(
            f"{ckpt} holds {saved} optimizer state in {shards} partitions, which ZeRO-0 cannot load: "
            f"resume it with train.zero_stage={saved_stage or 1} (on any number of processes), "
            f"{weights_only}"
        )
    if shards == world_size:
        return False
    if optimizer not in UNIVERSAL_OPTIMIZERS:
        raise ResumeRefused(
            f"{ckpt} holds optim.name={optimizer} state in {saved} partitions for {shards} processes, "
            f"and DeepSpeed's universal checkpoint converts Adam's state only: resume it on {shards} "
            f"processes (torchrun --nproc_per_node {shards}; submit.py --nodes x --gpus-per-node = "
            f"{shards}), {weights_only}"
        )
    return True


def to_universal(ckpt: Path, dest: Path) -> Path:
    """Convert the ZeRO-1/2 checkpoint `ckpt` into DeepSpeed's universal checkpoint, `dest/<ckpt's name>`, which an
    engine built with `load_universal` loads on any world size and ZeRO-1/2; returns that folder.

    DeepSpeed's converter writes a `latest_universal` file beside the folder (in `dest`), prints its stages and
    draws progress bars: its console output is dropped. It runs in this process (one worker: a process pool would
    fork a process that has threads).
    """
    from deepspeed.checkpoint import ds_to_universal

    out = dest / ckpt.name
    # inject_missing_state: the converter asks for the parallelism info Megatron-style models attach; ours have none
    args = argparse.Namespace(
        input_folder=str(ckpt),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
    return out


def load_weights(model: nn.Module, path: Path, partial: bool = False) -> LoadReport:
    """Load weights only (for `--load-from`): a DeepSpeed checkpoint folder or a state-dict file, in this
    project's names or in a published upstream layout (`models.checkpoints` recognises the format by
    its keys and maps every tensor by name; image ResNets and ViTs go to the model's own inflating loader).

    All or nothing: a tensor outside the classification head that is missing, of another shape or
    unexpected raises `models.checkpoints.CheckpointError` (carrying the report), unless `partial`;
    a head of another size (a new class count) is skipped and reported. The report (a mapping with
    `missing`, `unexpected`, `mismatched`; a `models.checkpoints.LoadReport` with the per-group detail)
    is logged and returned.
    """
    from action_launch.models.checkpoints import load_checkpoint

    report = load_checkpoint(model, Path(path), partial=partial)
    log.info("--load-from %s", report.text(limit=20))
    if report.problems():
        log.warning(
            "--load-from %s: partial load accepted (train.load_partial): %s", path, "; ".join(report.problems())
        )
    return report


def warm_up() -> None:
    """Build DeepSpeed's CPU ops once (about a minute) so later runs and tests start in seconds; says what it built
    (set-up's `make` runs this)."""
    from action_launch.common.console import setup_logging

    setup_logging(True)
    init_distributed(resolve_env())


def _root_cause(err: BaseException) -> str:
    """`Type: first line` of the innermost exception behind `err` (Dynamo wraps a compiler's own error)."""
    while (inner := getattr(err, "inner_exception", None) or err.__cause__) is not None:
        err = inner
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}"[:300]


def _channels_last(model: nn.Module) -> None:
    """Convolution weights channels-last (3D ones channels_last_3d), in place; other tensors keep their layout."""
    layouts: Dict[type, torch.memory_format] = {nn.Conv2d: torch.channels_last, nn.Conv3d: torch.channels_last_3d}
    for module in model.modules():
        # exact types (not subclasses); the isinstance check narrows `module` to a convolution with a weight
        layout = layouts.get(type(module))
        if layout is not None and isinstance(module, (nn.Conv2d, nn.Conv3d)):
            module.weight.data = module.weight.data.contiguous(memory_format=layout)


def _enable_activation_checkpointing(model: nn.Module) -> None:
    if not isinstance(model, SupportsGradCheckpointing):
        raise ValueError(
            f"train.activation_checkpointing: {type(model).__name__} has no set_grad_checkpointing(); "
            f"set it to false for this model"
        )
    model.set_grad_checkpointing(True)
