"""Published checkpoints: recognise an upstream checkpoint format by its keys and map it onto our names.

`load_checkpoint(model, path)` (what `--load-from` calls) reads a file (or one of our DeepSpeed
checkpoint folders), unwraps its container, recognises the layout by its keys, renames every tensor
to the model's name, converts the few whose layout differs (exactly, or by the resize the upstream
code itself does), and loads all of it or nothing. Formats, each read from the upstream code:

- `timesformer`: facebookresearch/TimeSformer. PySlowFast `.pyth` files hold
  `{'model_state': {'model.<timm ViT names>'}}` (the registered model wraps `VisionTransformer` as
  `self.model`); DDP-trained copies `{'state_dict': {'module.model.*'}}`. Names below `model.` are
  ours. When the frame count or the number of patches differs, `time_embed` and the patch part of
  `pos_embed` are resized as the reference's `load_pretrained` (timesformer/models/helpers.py) does:
  `F.interpolate(..., mode='nearest')` over the sequence, the CLS position kept.
- `tsm`: mit-han-lab/temporal-shift-module. `{'state_dict': {'module.base_model.*',
  'module.new_fc.*'}}` (DataParallel around `TSN`): a torchvision ResNet whose bottleneck `conv1`
  is wrapped by `TemporalShift` (`conv1.net.weight`), the classifier `new_fc` (or `base_model.fc`
  when trained without dropout).
- `dyreg`: bit-ml/DyReg-GNN, the TSM layout plus, at each graph position, `conv2` replaced by
  `Sequential(SplitBT(block=conv2), DynamicGraphWrapper)`: `conv2.0.block.weight` is the conv,
  `conv2.1.dynamic_graph.*` the graph (fishnet offset net, offset GRU, RSTG; table `_DYREG`),
  `conv2.1.norm_dict.residual_norm.{scale,bias}` (1, C, 1, 1) the residual norm. Per-channel
  affines stored as (1, C, 1, 1) / (1, 1, 1, C) become (C,). The anchor and pixel-position buffers
  (`ph_buf`, `pw_buf`, `arange_h_buf`, `arange_w_buf`) are constants the model recomputes; the
  anchors are checked against the model's.
- `msg3d`: kenziyuliu/MS-G3D `.pt` (a plain state dict, `module.` already stripped by its
  `save_weights`): `sgcn{i}` / `gcn3d{i}` / `tcn{i}` become `blocks.{i-1}.gcn_path` / `.g3d_path` /
  `.tcn`; `MLP.layers.0/1` become `conv` / `bn`; `out_conv` / `out_bn` become `collapse` / `bn`.
  The learned graph residuals `A_res` are stored as the K scales stacked row-wise, (K*V, V); ours
  are (K, V, V), the same numbers (upstream's `view(N, C, T, K, V)` of the aggregated rows).
- `msg3d_personality`: Rgtemze/PersonalityRecognition (`model/msg3d_laban.py`, MS-G3D's layout and
  `.pt` files): its MLPs start with a Dropout, so `MLP.layers.1/2` are `conv` / `bn`; two input
  BatchNorms, `data_bn_x` (M*V*3 xyz) and `data_bn_laban` (M*V*12 Laban), become our one `data_bn`
  over (M, V, 15), interleaved per joint; `l2_gcn3d2` / `l2_sgcn2` / `l2_tcn2`, a copy of the second
  block that its forward never calls, are ignored. Its model runs on `graph: smpl-24-dense`.
- `stabn_mmaction`: machine-perception-robotics-group/ST-ABN_PyTorch (MMAction v1, `TSN3D`):
  `{'state_dict': {'backbone.*', 'necks.*', 'cls_head.fc_cls.*'}}`. The backbone
  (`ResNet_SlowFast`) holds the attention branch (`bn_att`, `att_conv`, `t_att_conv`, ...; table
  `_STABN`), the neck's `att_head.fc` is the attention classifier; the neck's other modules (TPN
  leftovers that its forward never calls) are ignored.
- `mmaction2_resnet`: open-mmlab/mmaction2 ResNet-based recognizers (`Recognizer2D/3D`):
  `backbone.*` with `ConvModule`s (`conv1.conv`, `conv1.bn` -> `conv1`, `bn1`; `downsample.conv/bn`
  -> `downsample.0/1`; TSM's shift wrapper `conv1.conv.net`), `cls_head.fc_cls` -> the head.
- `mmaction`: any other `backbone.*` / `cls_head.fc_cls.*` file: `backbone.` stripped, the head renamed.
- `imagenet_resnet`, `image_vit`: 2D ImageNet ResNets (torchvision) and image ViTs (timm) go to
  the model's own `load_imagenet_resnet` / `load_image_vit` (they inflate, and copy spatial into
  temporal attention), and are reported the same way.
- `native`: our own state dicts and checkpoint folders.

Every load ends in a `LoadReport`: per tensor loaded / resized / skipped as another shape / missing
/ unexpected, plus `new` (a component the file's kind of model has none of at all, kept at its
initialisation: a DyReg graph that starts as the identity, the temporal parts of a TimeSformer
initialised from an image ViT, the attention branch of ST-ABN from an image ResNet, BatchNorm
counters of pre-0.4.1 files) and `ignored` (upstream tensors with no role in the computation), all
grouped by top-level module. The load is refused (`CheckpointError`, carrying the report) when a
tensor outside the classification head is missing, skipped or unexpected, or nothing loads; a head
of another size (a new class count) is the one expected skip. `partial=True` accepts a partial load
(still not an empty one).
"""
from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from action_launch.models.timesformer import resize_pos_embed, resize_time_embed

# What our DeepSpeed checkpoint folders keep the module weights in (`training.engine.model_state_file`).
DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"
# Containers that hold a state dict, in the order they are looked for.
CONTAINER_KEYS = ("model_state", "state_dict", "module", "model")
# A key prefix every key may share that only wraps the model (DataParallel/DDP/DeepSpeed, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Lines of each list shown in an error message (the written report has all of them).
SHOWN = 12


class CheckpointError(ValueError):
    """A checkpoint that cannot initialise the model as asked; `report` says what mapped and what did not."""

    def __init__(self, message: str, report: "LoadReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Ignored:
    """An upstream tensor deliberately not loaded, and why."""

    reason: str


# A rename result: None (no home: unexpected), Ignored, or (model name, conversion or None).
Target = Union[None, Ignored, Tuple[str, Optional[str]]]


# --------------------------------------------------------------------------------------------
# The report


@dataclass(eq=False)
class LoadReport(dict):
    """What a load did. As a mapping it is the short form older callers read: `missing` (model
    tensors not loaded, for whatever reason), `unexpected` (file tensors with no home) and
    `mismatched` (model tensors skipped for another shape). The attributes have the detail."""

    source: str = ""
    format: str = ""
    description: str = ""
    container: str = ""
    model_keys: List[str] = field(default_factory=list)
    head: Set[str] = field(default_factory=set)
    loaded: Dict[str, str] = field(default_factory=dict)  # model name -> file name
    resized: Dict[str, str] = field(default_factory=dict)  # model name -> how
    reshaped: Dict[str, str] = field(default_factory=dict)  # model name -> how (exact, same numbers)
    skipped: Dict[str, str] = field(default_factory=dict)  # model name -> why (file shape vs model shape)
    missing: List[str] = field(default_factory=list)  # model names the file has nothing for
    new: Dict[str, str] = field(default_factory=dict)  # model name -> why it is expected to be absent
    unexpected: List[str] = field(default_factory=list)  # file names with no home
    ignored: Dict[str, str] = field(default_factory=dict)  # file name -> why
    conflicts: List[str] = field(default_factory=list)  # file constants that contradict the model
    read_error: str = ""
    file_prefix: str = ""  # the wrapper prefix (`module.`) removed from every file name before mapping

    def __post_init__(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Refresh the short mapping form from the detail."""
        self.clear()
        self["missing"] = [k for k in self.model_keys if k not in self.loaded]
        self["unexpected"] = list(self.unexpected)
        self["mismatched"] = list(self.skipped)

    # ---------------------------------------------------------------------------- verdict
    def problems(self) -> List[str]:
        """What makes the load partial: non-head tensors missing or skipped, unexpected file tensors, conflicts."""
        out = []
        missing = [k for k in self.missing if k not in self.head]
        skipped = [k for k in self.skipped if k not in self.head]
        if self.read_error:
            out.append(f"the file could not be read ({self.read_error})")
        if missing:
            out.append(f"{len(missing)} model tensor(s) outside the head missing from the file ({_few(missing)})")
        if skipped:
            out.append(f"{len(skipped)} model tensor(s) outside the head of another shape ({_few(skipped)})")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} file tensor(s) with no place in the model ({_few(self.unexpected)})")
        if self.conflicts:
            first = self.conflicts[0] if len(self.conflicts[0]) <= 160 else self.conflicts[0][:157] + "..."
            out.append(f"{len(self.conflicts)} conflict(s) ({first}{'; ...' if len(self.conflicts) > 1 else ''})")
        return out

    @property
    def complete(self) -> bool:
        """Everything but (at most) a head of another size or absent."""
        return not self.problems() and bool(self.loaded)

    # ------------------------------------------------------------------------------ text
    def counts(self) -> Dict[str, int]:
        return {"loaded": len(self.loaded), "resized": len(self.resized), "skipped": len(self.skipped),
                "missing": len(self.missing), "new": len(self.new), "unexpected": len(self.unexpected),
                "ignored": len(self.ignored)}

    def summary(self) -> str:
        """One line: where from, which format, how much loaded."""
        c = self.counts()
        head = f"{self.source}: {self.description or self.format}"
        if self.read_error:
            return f"{head}: unreadable ({self.read_error})"
        return (f"{head}: loaded {c['loaded']} of {len(self.model_keys)} model tensors ({c['resized']} resized, "
                f"{len(self.reshaped)} reshaped), skipped {c['skipped']} of another shape, {c['missing']} missing, "
                f"{c['new']} new (kept at initialisation), {c['unexpected']} unexpected, {c['ignored']} ignored")

    def groups(self) -> Dict[str, Dict[str, int]]:
        """Counts per top-level module (model names), plus the file's own groups for unexpected/ignored."""
        table: Dict[str, Dict[str, int]] = {}

        def add(group: str, column: str) -> None:
            row = table.setdefault(group, dict.fromkeys(("loaded", "resized", "skipped", "missing", "new",
                                                          "unexpected", "ignored"), 0))
            row[column] += 1

        for key in self.model_keys:
            group = key.split(".")[0] + (" (head)" if key in self.head else "")
            if key in self.loaded:
                add(group, "loaded")
                if key in self.resized:
                    add(group, "resized")
            elif key in self.skipped:
                add(group, "skipped")
            elif key in self.new:
                add(group, "new")
            else:
                add(group, "missing")
        for key in self.unexpected:
            add("file: " + _file_group(key), "unexpected")
        for key in self.ignored:
            add("file: " + _file_group(key), "ignored")
        return table

    def text(self, limit: Optional[int] = None) -> str:
        """The whole report: summary, the per-group table, then every non-plain entry (`limit` per list)."""
        lines = [self.summary()]
        if self.container:
            lines.append(f"container: {self.container}")
        table = self.groups()
        if table:
            columns = ("loaded", "resized", "skipped", "missing", "new", "unexpected", "ignored")
            width = max(len(g) for g in table) + 2
            lines.append("group".ljust(width) + " ".join(c.rjust(10) for c in columns))
            for group, row in table.items():
                lines.append(group.ljust(width) + " ".join(str(row[c]).rjust(10) for c in columns))

        def block(title: str, items: Sequence[str]) -> None:
            if not items:
                return
            shown = items if limit is None else items[:limit]
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in shown)
            if len(items) > len(shown):
                lines.append(f"  ... and {len(items) - len(shown)} more")

        block("conflicts", self.conflicts)
        block("skipped as another shape",
              [f"{k}{' [head]' if k in self.head else ''}: {v}" for k, v in self.skipped.items()])
        block("missing", [f"{k}{' [head]' if k in self.head else ''}" for k in self.missing])
        block("unexpected", self.unexpected)
        block("resized", [f"{k}: {v}" for k, v in self.resized.items()])
        block("reshaped", [f"{k}: {v}" for k, v in self.reshaped.items()])
        block("new (kept at initialisation)", [f"{k}: {v}" for k, v in self.new.items()])
        block("ignored", [f"{k}: {v}" for k, v in self.ignored.items()])
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"source": self.source, "format": self.format, "description": self.description,
                "container": self.container, "complete": self.complete, "problems": self.problems(),
                "counts": self.counts(), "groups": self.groups(), "loaded": self.loaded, "resized": self.resized,
                "reshaped": self.reshaped, "skipped": self.skipped, "missing": self.missing, "new": self.new,
                "unexpected": self.unexpected, "ignored": self.ignored, "conflicts": self.conflicts,
                "read_error": self.read_error}

    def write(self, folder: Path, stem: str = "load_report") -> Tuple[Path, Path]:
        """`<stem>.txt` (the text) and `<stem>.json` in `folder`; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        txt, js = folder / f"{stem}.txt", folder / f"{stem}.json"
        txt.write_text(self.text() + "\n")
        js.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return txt, js


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _file_group(key: str) -> str:
    parts = key.split(".")
    wrappers = {"model", "base_model", "backbone", "necks", "cls_head", "module"}
    depth = 1
    while depth < len(parts) - 1 and parts[depth - 1] in wrappers:
        depth += 1
    return ".".join(parts[:depth])


# --------------------------------------------------------------------------------------------
# Reading a file


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str]:
    """The flat state dict in `path` (a file, or a DeepSpeed checkpoint folder) and how it was wrapped.

    Containers `model_state` / `state_dict` / `module` / `model` are unwrapped (nested ones too), and
    a `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile) prefix that every key shares is
    removed. Raises FileNotFoundError, or ValueError for a file that is not a PyTorch state dict.
    """
    state, container, _ = _read(path)
    return state, container


def _read(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """`read_checkpoint`, plus the wrapper prefix it removed from every key."""
    path = Path(path)
    file = path / DEEPSPEED_MODEL_FILE if path.is_dir() else path
    if not file.exists():
        where = f" (no {DEEPSPEED_MODEL_FILE})" if path.is_dir() else ""
        raise FileNotFoundError(f"--load-from: no weights at {path}{where}")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, ModuleNotFoundError, TypeError):
        # Not a weights-only pickle (an optimizer with numpy scalars, a config object): the file is the
        # user's own choice, read it in full as the upstream loaders do.
        try:
            blob = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any failure to unpickle is "not readable"
            raise ValueError(f"{type(err).__name__}: {err}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    trail = []
    while isinstance(blob, Mapping) and not _is_state_dict(blob):
        key = next((k for k in CONTAINER_KEYS if isinstance(blob.get(k), (Mapping, nn.Module))), None)
        if key is None:
            raise ValueError(f"no state dict inside (top-level keys: {_few([str(k) for k in blob], 8)})")
        trail.append(key)
        blob = blob[key].state_dict() if isinstance(blob[key], nn.Module) else blob[key]
    if not isinstance(blob, Mapping):
        raise ValueError(f"holds a {type(blob).__name__}, not a state dict")
    state = dict(blob)
    stripped = []
    for prefix in WRAPPER_PREFIXES:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            stripped.append(prefix)
    container = "".join(f"[{k!r}]" for k in trail) + ("" if not stripped else f" minus {''.join(stripped)!r}")
    return state, container.strip(), "".join(stripped)


def _is_state_dict(blob: Mapping[str, Any]) -> bool:
    return bool(blob) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items())


# --------------------------------------------------------------------------------------------
# The model's head


def _head_modules(model: nn.Module) -> Tuple[str, ...]:
    """Top-level modules whose tensors are sized by the class count (the first is the classifier)."""
    name = type(model).__name__
    if name == "STABN":
        # Both classifiers and the attention branch's class-sized layers (K channels, K x K, K*T -> K).
        return ("fc", "att_fc", "att_conv", "att_bn2", "sa_conv", "ta_conv", "att_logit_conv")
    for attr in ("head", "fc", "classifier"):
        if isinstance(getattr(model, attr, None), nn.Module):  # nn.Identity (no classes): no head tensors
            return (attr,)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linears[-1],) if linears else ()


def head_keys(model: nn.Module) -> Set[str]:
    """Names of the model's tensors that belong to its classification head(s)."""
    modules = _head_modules(model)
    return {k for k in model.state_dict() if any(k.startswith(m + ".") for m in modules)}


def _classifier(model: nn.Module) -> str:
    modules = _head_modules(model)
    return modules[0] if modules else "fc"


# --------------------------------------------------------------------------------------------
# Formats


@dataclass(frozen=True)
class Format:
    """An upstream layout: how to recognise it, where each tensor goes."""

    name: str
    description: str
    detect: Callable[[Sequence[str], nn.Module], bool]
    rename: Callable[[str, nn.Module], Target]
    # Joins file tensors that become one of ours, before renaming: (state, {joined file name: how}).
    join: Optional[Callable[[Mapping[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], Dict[str, str]]]] = None


def _any(keys: Iterable[str], test: Callable[[str], bool]) -> bool:
    return any(test(k) for k in keys)


def _plain(key: str) -> Target:
    return (key, None)


# TimeSformer (facebookresearch/TimeSformer): `vit_base_patch16_224` / `TimeSformer` hold the ViT as `model`.
def _timesformer_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "model.patch_embed.proj.weight" in keys and all(k.startswith("model.") for k in keys)


def _timesformer_rename(key: str, model: nn.Module) -> Target:
    return (key[len("model."):], None) if key.startswith("model.") else None


# TSM (mit-han-lab/temporal-shift-module) and DyReg-GNN (bit-ml/DyReg-GNN): TSN(base_model=ResNet, new_fc).
def _tsn_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return _any(keys, lambda k: k.startswith("base_model.")) and not _any(keys, lambda k: ".dynamic_graph." in k)


def _dyreg_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return _any(keys, lambda k: k.startswith("base_model.")) and _any(keys, lambda k: ".dynamic_graph." in k)


def _tsn_rename(key: str, model: nn.Module) -> Target:
    if key.startswith("new_fc."):
        return (_classifier(model) + key[len("new_fc"):], None)
    if not key.startswith("base_model."):
        return None
    key = key[len("base_model."):]
    # TemporalShift(net=conv1) on the residual branch ("blockres"): the conv is `net`.
    key = re.sub(r"^(layer\d+\.\d+)\.conv1\.net\.", r"\1.conv1.", key)
    if key.startswith("fc."):  # trained with dropout 0: the classifier stays base_model.fc
        return (_classifier(model) + key[len("fc"):], None)
    return _dyreg_rename(key) or (key, None)


# DynamicGraph (ops/dyreg.py, ops/rstg.py, ops/models_utils.py) -> models/dyreg.py DynamicGraph.
# (upstream suffix below `conv2.1.dynamic_graph.`, our suffix below `dyreg.dyreg.`); `*_norm` entries
# are LayerNormAffine*: `scale`/`bias` -> GroupNorm/NodeNorm `weight`/`bias`.
_DYREG = (
    ("project_i3d_linear.", "project_in."),
    ("project_back_i3d_linear.", "project_out."),
    ("norm_dict.dynamic_graph_projection.", "project_norm."),
    ("fishnet.conv1.", "offset_net.reduce."),
    ("fishnet.norm_dict.norm1.", "offset_net.reduce_norm."),
    ("fishnet.tail_conv.0.", "offset_net.down1."),
    ("fishnet.norm_dict.tail_norm_0.", "offset_net.down1_norm."),
    ("fishnet.tail_conv.1.", "offset_net.down2."),
    ("fishnet.norm_dict.tail_norm_1.", "offset_net.down2_norm."),
    ("fishnet.body_trans_conv.0.", "offset_net.up."),
    ("fishnet.norm_dict.body_trans_norm_0.", "offset_net.up_norm."),
    ("fishnet.head_conv.0.", "offset_net.head."),
    ("fishnet.norm_dict.head_norm_0.", "offset_net.head_norm."),
    ("global_conv.0.", "offset_net.fc."),
    ("norm_dict.offset_ln_feats_coords.", "offset_norm."),
    ("offset_lstm.", "offset_gru."),
    ("norm_dict.offset_ln_lstm.", "offset_gru_norm."),
    ("offset_pred.", "offset_fc."),
    ("offset_alpha", "offset_scale"),
    ("kernel_projection1.", "pos_embed."),
    ("rstg.norm_dict.before_graph_norm.", "rstg.input_norm."),
    ("rstg.internal_lstm.", "rstg.time_gru."),
    ("rstg.send_mlp.0.", "rstg.send."),
    ("rstg.norm_dict.send_message_norm.", "rstg.send_norm."),
    ("rstg.att_q.", "rstg.query."),
    ("rstg.att_k.", "rstg.key."),
    ("rstg.att_bias", "rstg.att_bias"),
    ("rstg.norm_dict.update_norm.", "rstg.update_norm."),
    ("rstg.external_lstm.", "rstg.out_gru."),
)
_DYREG_CONSTANTS = {
    "ph_buf": "anchor rows (pixels), recomputed by the model from its `anchors`; checked",
    "pw_buf": "anchor columns (pixels), recomputed by the model from its `anchors`; checked",
    "arange_h_buf": "pixel positions 0..H-1, recomputed by the model",
    "arange_w_buf": "pixel positions 0..W-1, recomputed by the model",
}


def _dyreg_rename(key: str) -> Target:
    """A DyReg-GNN graph-position key (below the ResNet) -> ours, or None if `key` is not one."""
    m = re.match(r"^(layer\d+\.\d+)\.conv2\.(0\.block\.|1\.)(.*)$", key)
    if m is None:
        return None
    block, part, rest = m.groups()
    if part == "0.block.":
        return (f"{block}.conv2.{rest}", None)
    if rest.startswith("norm_dict.residual_norm."):
        param = rest[len("norm_dict.residual_norm."):]
        return (f"{block}.dyreg.norm.{'weight' if param == 'scale' else param}", "squeeze")
    if not rest.startswith("dynamic_graph."):
        return None
    rest = rest[len("dynamic_graph."):]
    if rest in _DYREG_CONSTANTS:
        return Ignored(_DYREG_CONSTANTS[rest])
    for theirs, ours in _DYREG:
        if rest.startswith(theirs):
            tail = rest[len(theirs):]
            squeeze = "norm_dict." in theirs or theirs == "rstg.att_bias"
            if squeeze and tail == "scale":
                tail = "weight"
            return (f"{block}.dyreg.dyreg.{ours}{tail}", "squeeze" if squeeze else None)
    return None


# MS-G3D (kenziyuliu/MS-G3D model/msg3d.py, ms_gcn.py, ms_gtcn.py, ms_tcn.py, mlp.py).
def _msg3d_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return _any(keys, lambda k: re.match(r"^(sgcn|gcn3d)1\.", k) is not None)


def _msg3d_mlp(rest: str, first: int) -> Optional[str]:
    """MLP(in, [out]) = layers [Dropout (only at dropout > 0.001), Conv2d, BatchNorm2d, activation]: the conv
    is `layers.<first>`, the BatchNorm the next one."""
    m = re.match(r"^mlp\.layers\.(\d+)\.(.*)$", rest)
    if m is None or int(m[1]) not in (first, first + 1):
        return None
    return ("conv." if int(m[1]) == first else "bn.") + m[2]


def _msg3d_rename(key: str, model: nn.Module, mlp_conv: int = 0) -> Target:
    if key.startswith(("data_bn.", "fc.")):
        return (key if key.startswith("data_bn.") else _classifier(model) + key[len("fc"):], None)
    m = re.match(r"^(sgcn|gcn3d|tcn)(\d+)\.(.*)$", key)
    if m is None:
        return None
    kind, block, rest = m[1], int(m[2]) - 1, m[3]
    if kind == "tcn":
        return (f"blocks.{block}.tcn.{rest}", None)
    if kind == "sgcn":  # Sequential(MS_GCN, MS_TCN, MS_TCN)
        if rest == "0.A_res":
            return (f"blocks.{block}.gcn_path.0.A_res", "scales")
        if rest.startswith("0."):
            tail = _msg3d_mlp(rest[2:], mlp_conv)
            return None if tail is None else (f"blocks.{block}.gcn_path.0.{tail}", None)
        return (f"blocks.{block}.gcn_path.{rest}", None)
    # gcn3d: MultiWindow_MS_G3D.gcn3d[w] = MS_G3D(gcn3d = Sequential(Unfold, SpatialTemporal_MS_GCN), out_conv, out_bn)
    m = re.match(r"^gcn3d\.(\d+)\.(.*)$", rest)
    if m is None:
        return None
    prefix, rest = f"blocks.{block}.g3d_path.pathways.{m[1]}.", m[2]
    if rest == "gcn3d.1.A_res":
        return (prefix + "gcn.A_res", "scales")
    if rest.startswith("gcn3d.1."):
        tail = _msg3d_mlp(rest[len("gcn3d.1."):], mlp_conv)
        return None if tail is None else (prefix + "gcn." + tail, None)
    for theirs, ours in (("out_conv.", "collapse."), ("out_bn.", "bn.")):
        if rest.startswith(theirs):
            return (prefix + ours + rest[len(theirs):], None)
    return None  # e.g. in1x1 (embed_factor != 1): no such layer here


# The personality variant (Rgtemze/PersonalityRecognition model/msg3d_laban.py, on MS-G3D's modules).
_PERSONALITY_BN = "data_bn_x+data_bn_laban."


def _personality_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "data_bn_laban.weight" in keys and _msg3d_detect(keys, model)


def _personality_join(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """`data_bn_x` (xyz, M*V*3 channels) and `data_bn_laban` (M*V*L) -> one BatchNorm over (M, V, 3 + L):
    channels of each (person, joint) side by side, as the model concatenates them (`MSG3D.forward`)."""
    out, joined = dict(state), {}
    for name in ("weight", "bias", "running_mean", "running_var"):
        xyz, laban = state.get(f"data_bn_x.{name}"), state.get(f"data_bn_laban.{name}")
        if xyz is None or laban is None or xyz.ndim != 1 or xyz.numel() % 3:
            continue
        joints = xyz.numel() // 3
        if laban.ndim != 1 or laban.numel() % joints:
            continue
        out[_PERSONALITY_BN + name] = torch.cat([xyz.reshape(joints, 3), laban.reshape(joints, -1)], 1).reshape(-1)
        del out[f"data_bn_x.{name}"], out[f"data_bn_laban.{name}"]
        joined[_PERSONALITY_BN + name] = f"{joints} (person, joint) groups of 3 xyz + {laban.numel() // joints} Laban"
    if "data_bn_x.num_batches_tracked" in out and out.get("data_bn_laban.num_batches_tracked") is not None:
        out[_PERSONALITY_BN + "num_batches_tracked"] = out.pop("data_bn_x.num_batches_tracked")
        del out["data_bn_laban.num_batches_tracked"]
    return out, joined


def _personality_rename(key: str, model: nn.Module) -> Target:
    if key.startswith(_PERSONALITY_BN):
        return ("data_bn." + key[len(_PERSONALITY_BN):], None)
    if key.startswith(("l2_gcn3d2.", "l2_sgcn2.", "l2_tcn2.")):
        return Ignored("a copy of the second block that the authors' Model builds and its forward never calls")
    return _msg3d_rename(key, model, mlp_conv=1)


# ST-ABN (machine-perception-robotics-group/ST-ABN_PyTorch, MMAction v1 TSN3D + ResNet_SlowFast + Att_head).
_STABN = {
    "conv1": "stem.conv1", "bn1": "stem.bn1",
    "bn_att": "att_bn", "att_conv": "att_conv", "bn_att2": "att_bn2",
    "att_conv3": "sa_conv", "bn_att3": "sa_bn",
    "t_att_conv": "ta_conv", "t_bn_att": "ta_bn", "t_att_conv2": "ta_frame_conv", "fc1": "ta_fc1", "fc2": "ta_fc2",
    "att_conv2": "att_logit_conv",
    "t_att_conv3": "fuse_conv", "bn_att4": "fuse_bn",
    "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4", "att_layer4": "att_layer4",
}


def _stabn_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return _any(keys, lambda k: k.startswith(("backbone.att_layer4.", "backbone.t_att_conv.")))


def _stabn_rename(key: str, model: nn.Module) -> Target:
    if key.startswith("cls_head.fc_cls."):
        return ("fc." + key[len("cls_head.fc_cls."):], None)
    if key.startswith("necks.att_head.fc."):
        return ("att_fc." + key[len("necks.att_head.fc."):], None)
    if key.startswith("necks."):
        return Ignored("Att_head neck module that the ST-ABN forward never calls (only att_head.fc is used)")
    if not key.startswith("backbone."):
        return None
    first, _, rest = key[len("backbone."):].partition(".")
    return (f"{_STABN[first]}.{rest}", None) if first in _STABN else None


# mmaction2 (open-mmlab/mmaction2): Recognizer2D/3D with a ResNet of ConvModules, heads with fc_cls.
def _mmaction2_resnet_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return "backbone.conv1.conv.weight" in keys


def _mmaction_head(key: str, model: nn.Module) -> Target:
    if key.startswith("cls_head.fc_cls."):
        return (_classifier(model) + key[len("cls_head.fc_cls"):], None)
    return None


def _mmaction2_resnet_rename(key: str, model: nn.Module) -> Target:
    if not key.startswith("backbone."):
        return _mmaction_head(key, model)
    key = key[len("backbone."):]
    m = re.match(r"^(.*?)(conv(\d)|downsample)\.(conv|bn)\.(?:net\.)?(.*)$", key)
    if m is None:
        return None
    where, module, index, part, tail = m.groups()
    if module == "downsample":
        return (f"{where}downsample.{0 if part == 'conv' else 1}.{tail}", None)
    return (f"{where}{'conv' if part == 'conv' else 'bn'}{index}.{tail}", None)


def _mmaction_detect(keys: Sequence[str], model: nn.Module) -> bool:
    return _any(keys, lambda k: k.startswith("backbone.")) and all(
        k.startswith(("backbone.", "cls_head.")) for k in keys)


def _mmaction_rename(key: str, model: nn.Module) -> Target:
    return (key[len("backbone."):], None) if key.startswith("backbone.") else _mmaction_head(key, model)


FORMATS: Tuple[Format, ...] = (
    Format("timesformer", "TimeSformer (facebookresearch/TimeSformer: model.* under model_state or state_dict)",
           _timesformer_detect, _timesformer_rename),
    Format("dyreg", "DyReg-GNN (bit-ml/DyReg-GNN: base_model.* with conv2.0.block / conv2.1.dynamic_graph, new_fc)",
           _dyreg_detect, _tsn_rename),
    Format("tsm", "TSM (mit-han-lab/temporal-shift-module: base_model.* with conv1.net, new_fc)",
           _tsn_detect, _tsn_rename),
    Format("msg3d_personality", "MS-G3D personality variant (Rgtemze/PersonalityRecognition: data_bn_x + "
           "data_bn_laban, MLPs after a Dropout, unused l2_* block)", _personality_detect, _personality_rename,
           _personality_join),
    Format("msg3d", "MS-G3D (kenziyuliu/MS-G3D: sgcn*/gcn3d*/tcn* blocks, A_res as (K*V, V))",
           _msg3d_detect, _msg3d_rename),
    Format("stabn_mmaction", "ST-ABN (ST-ABN_PyTorch, MMAction TSN3D: backbone.* attention branch, necks.att_head.fc, "
           "cls_head.fc_cls)", _stabn_detect, _stabn_rename),
    Format("mmaction2_resnet", "mmaction2 ResNet recognizer (backbone.* ConvModules, cls_head.fc_cls)",
           _mmaction2_resnet_detect, _mmaction2_resnet_rename),
    Format("mmaction", "mmaction recognizer (backbone.*, cls_head.fc_cls)", _mmaction_detect, _mmaction_rename),
)
NATIVE = Format("native", "state dict in this project's names", lambda keys, model: True,
                lambda key, model: _plain(key))


def detect_format(state: Mapping[str, Any], model: nn.Module) -> Format:
    """The first format of `FORMATS` that recognises the keys; else `native` (names taken as they are)."""
    keys = list(state)
    for fmt in FORMATS:
        if fmt.detect(keys, model):
            return fmt
    return NATIVE


# --------------------------------------------------------------------------------------------
# Conversions


def _scales(value: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    """MS-G3D A_res: K adjacency scales stacked row-wise (K*V, V) -> (K, V, V), the same numbers."""
    if value.ndim == 2 and len(shape) == 3 and value.shape == (shape[0] * shape[1], shape[2]):
        return value.reshape(shape)
    return None


def _squeeze(value: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    """A per-channel affine stored with singleton axes, (1, C, 1, 1) or (1, 1, 1, C) -> (C,)."""
    if value.numel() == math.prod(shape) and [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return None


def _resize(key: str, value: torch.Tensor, shape: torch.Size, model: nn.Module) -> Optional[Tuple[torch.Tensor, str]]:
    """TimeSformer's position and time embeddings of another length, resized as upstream does."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "pos_embed")):
        return None
    if value.ndim != 3 or len(shape) != 3 or value.shape[0] != 1 or shape[0] != 1 or value.shape[2] != shape[2]:
        return None
    if key == "time_embed":
        return resize_time_embed(value, shape[1]), f"{value.shape[1]} -> {shape[1]} frames, nearest over time"
    if key == "pos_embed":
        return (resize_pos_embed(value, shape[1] - 1),
                f"{value.shape[1] - 1} -> {shape[1] - 1} patch positions, nearest over the sequence (CLS kept)")
    return None


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else str(tuple(t))


# --------------------------------------------------------------------------------------------
# Mapping


def map_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: Format,
                   report: LoadReport) -> Dict[str, torch.Tensor]:
    """Rename and convert `state` (format `fmt`) onto `model`'s names; fills `report`; returns what to load."""
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    joined: Dict[str, str] = {}
    if fmt.join is not None:
        state, joined = fmt.join(state)
    for key, value in state.items():
        target = fmt.rename(key, model)
        named = report.file_prefix + key  # as the file spells it
        if isinstance(target, Ignored):
            report.ignored[named] = target.reason
            continue
        if target is not None and target[0] not in own and _headless(model, target[0]):
            report.ignored[named] = "a classifier tensor, and the model has no classifier (features out)"
            continue
        if target is None or target[0] not in own:
            report.unexpected.append(named)
            continue
        name, how = target
        if name in out:
            report.conflicts.append(f"{name} would come from two file tensors ({report.loaded[name]}, {named})")
            continue
        want = own[name].shape
        if value.shape != want:
            converted = None
            if how == "scales":
                converted = _scales(value, want)
                note = "K scales stacked row-wise (K*V, V) -> (K, V, V)"
            elif how == "squeeze":
                converted = _squeeze(value, want)
                note = "singleton axes dropped"
            if converted is not None:
                report.reshaped[name] = f"{_shape(value)} -> {_shape(want)}: {note}"
                value = converted
            else:
                resized = _resize(name, value, want, model)
                if resized is None:
                    report.skipped[name] = f"file {named} {_shape(value)}, model {_shape(want)}"
                    continue
                value, note = resized
                report.resized[name] = f"{_shape(state[key])} -> {_shape(want)}: {note}"
        out[name] = value.to(own[name].dtype) if value.is_floating_point() else value
        report.loaded[name] = named
        if key in joined:
            report.reshaped[name] = joined[key]
    if fmt.name == "dyreg":
        report.conflicts.extend(_dyreg_anchor_conflicts(model, state, report.file_prefix))
    return out


def _dyreg_anchor_conflicts(model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> List[str]:
    """The file's anchors (ph_buf, pw_buf) against the ones the model's graphs compute."""
    out = []
    modules = dict(model.named_modules())
    for key, value in state.items():
        m = re.match(r"^base_model\.(layer\d+\.\d+)\.conv2\.1\.dynamic_graph\.(ph_buf|pw_buf)$", key)
        graph = modules.get(f"{m[1]}.dyreg.dyreg") if m else None
        if graph is None:
            continue
        grid, side = getattr(graph, "grid", 3), getattr(graph, "map_size", None) or getattr(graph, "pos_grid", None)
        anchors = getattr(graph, "anchors", "center")
        if side is None:
            continue
        if anchors == "center":
            line = torch.full((grid,), side / 2, dtype=torch.float64)
        else:
            line = torch.linspace(0, side, 2 * grid + 1, dtype=torch.float64)[1::2]
        expected = line.repeat_interleave(grid) if m[2] == "ph_buf" else line.repeat(grid)
        if value.numel() != expected.numel() or not torch.allclose(value.double().flatten(), expected):
            out.append(f"{prefix}{key}: anchors {sorted(set(value.flatten().tolist()))} in the file, "
                       f"{sorted(set(expected.tolist()))} in the model ({anchors!r} on a {side}-pixel map)")
    return out


def _headless(model: nn.Module, name: str) -> bool:
    """Whether `name` would be a tensor of the model's classifier, and the model has none (num_classes=0)."""
    classifier = _classifier(model) + "."
    return name.startswith(classifier) and not any(k.startswith(classifier) for k in model.state_dict())


def _expected_new(report: LoadReport, model: nn.Module, state_keys: Iterable[str]) -> None:
    """Move the model tensors a file of this kind cannot have from `missing` to `new`."""
    no_dyreg = not any(".dyreg." in k for k in report.loaded)
    for key in report.missing:
        if ".dyreg." in key and no_dyreg:
            report.new[key] = "no DyReg graph in the file; the graph starts as the identity (zero-initialised norm)"
    _counters_new(report, state_keys)


def _counters_new(report: LoadReport, state_keys: Iterable[str]) -> None:
    """BatchNorm step counters a file saved before PyTorch 0.4.1 (e.g. torchvision's ImageNet ResNets) lacks."""
    if not any(k.endswith("num_batches_tracked") for k in state_keys):
        for key in report.missing:
            if key.endswith("num_batches_tracked"):
                report.new[key] = "the file has no BatchNorm step counters (saved before PyTorch 0.4.1); unused by eval"
    report.missing = [k for k in report.missing if k not in report.new]


def _finish(report: LoadReport, model: nn.Module) -> None:
    report.missing = [k for k in report.model_keys if k not in report.loaded and k not in report.skipped]


# --------------------------------------------------------------------------------------------
# Image checkpoints: the models' own loaders


def _is_image_vit(state: Mapping[str, Any]) -> bool:
    """An image ViT (timm names, any single wrapper prefix): patch embedding and blocks, no temporal attention."""
    keys = list(state)
    return (_any(keys, lambda k: k.endswith("patch_embed.proj.weight"))
            and _any(keys, lambda k: k.endswith("blocks.0.attn.qkv.weight"))
            and not _any(keys, lambda k: ".temporal_attn." in k))


def _is_resnet2d(state: Mapping[str, Any], model: nn.Module) -> bool:
    """A 2D torchvision ResNet the model has to inflate (its own names are not the file's)."""
    from action_launch.models.resnet3d import is_resnet2d_state_dict

    own = model.state_dict()
    return is_resnet2d_state_dict(state) and not all(k in own and own[k].ndim == v.ndim for k, v in state.items())


def _load_image_vit(model: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    vit = model.load_image_vit(state)
    own = list(model.state_dict())
    missing = set(vit.get("missing_keys", []))
    dropped = list(vit.get("dropped_keys", []))
    # the loader strips a `model.` wrapper (TimeSformer's registered models) that every key shares
    prefix = report.file_prefix + ("model." if state and all(k.startswith("model.") for k in state) else "")
    for key in own:
        if key not in missing:
            report.loaded[key] = prefix + key
    for key in vit.get("resized", []):
        report.resized[key] = "resized by TimeSformer.load_image_vit (as the reference's load_pretrained)"
    for key in vit.get("copied_to_temporal", []):
        report.loaded[key] = prefix + key.replace(".temporal_attn.", ".attn.").replace(".temporal_norm1.", ".norm1.")
    for key in dropped:
        if key in missing:
            report.skipped[key] = f"file head of another shape, model {_shape(model.state_dict()[key])}"
    report.unexpected.extend(prefix + k for k in vit.get("unexpected_keys", []))
    _finish(report, model)
    for key in list(report.missing):
        if key == "time_embed" or ".temporal_fc." in key:
            report.new[key] = ("an image ViT has no temporal parameters; starts as the reference initialises it "
                               "(time_embed and temporal_fc zero: every frame at first sees the image ViT)")
    _counters_new(report, state)


def _load_resnet2d(model: nn.Module, state: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    result = model.load_imagenet_resnet(state)
    own = model.state_dict()
    missing = set(result.get("missing", []))
    for key in own:
        if key not in missing:
            report.loaded[key] = key
    renamed = {k: report.file_prefix + k for k in state}
    report.loaded = {k: renamed.get(k, renamed.get(k[len("stem."):], k)) for k in report.loaded}
    for key in result.get("inflated", []):
        report.resized[key] = "2D kernel inflated over time (repeated, divided by the temporal size)"
    for entry in result.get("mismatched", []):
        src, _, dst = entry.partition(" -> ")
        dst = dst or src
        if dst in own and dst in missing:
            report.skipped[dst] = f"file {src} {_shape(state[src]) if src in state else '?'}, model {_shape(own[dst])}"
    report.unexpected.extend(report.file_prefix + k for k in result.get("unexpected", []))
    _finish(report, model)
    backbone = ("stem.", "conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    for key in list(report.missing):
        if not key.startswith(backbone) or ".dyreg." in key:
            report.new[key] = "not part of a 2D image ResNet; keeps the model's initialisation"
    _counters_new(report, state)


# --------------------------------------------------------------------------------------------
# Loading


def map_checkpoint(model: nn.Module, path: Union[str, Path]) -> Tuple[Optional[Dict[str, torch.Tensor]], LoadReport]:
    """Read `path` and map it onto `model`'s names without loading anything.

    Returns (state dict to load, report); the state dict is None where the model's own loader has to do
    the work (`imagenet_resnet`, `image_vit`: see `load_checkpoint`). Unreadable files give (None, a
    report with `read_error`). FileNotFoundError propagates.
    """
    own = model.state_dict()
    report = LoadReport(source=str(path), model_keys=list(own), head=head_keys(model))
    try:
        state, report.container, report.file_prefix = _read(path)
    except ValueError as err:
        report.format, report.description, report.read_error = "unreadable", "not a readable checkpoint", str(err)
        _finish(report, model)
        report.sync()
        return None, report
    if hasattr(model, "load_imagenet_resnet") and _is_resnet2d(state, model):
        report.format, report.description = "imagenet_resnet", "2D ImageNet ResNet (torchvision names), inflated"
        return None, report
    fmt = detect_format(state, model)
    if fmt.name in ("native", "timesformer") and hasattr(model, "load_image_vit") and _is_image_vit(state):
        # No temporal attention in the file (an image ViT, or a space-only / joint TimeSformer): the model's
        # own loader copies spatial into temporal attention where the model has it, as upstream does.
        report.format = "image_vit"
        report.description = ("ViT without temporal attention (timm names" + (", TimeSformer model.*" if fmt.name ==
                              "timesformer" else "") + "), spatial attention copied to temporal where the model has it")
        return None, report
    report.format, report.description = fmt.name, fmt.description
    out = map_state_dict(model, state, fmt, report)
    _finish(report, model)
    _expected_new(report, model, state)
    report.sync()
    return out, report


def load_checkpoint(model: nn.Module, path: Union[str, Path], partial: bool = False) -> LoadReport:
    """Load `path` into `model` (all of it or nothing) and return the report.

    Raises CheckpointError (with `.report`) and leaves the model untouched when the load would be
    partial (see `LoadReport.problems`) and `partial` is False, or when nothing at all would load.
    """
    out, report = map_checkpoint(model, path)
    delegated = out is None and not report.read_error
    backup = None
    if delegated:
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state, _ = read_checkpoint(path)
        try:
            if report.format == "imagenet_resnet":
                _load_resnet2d(model, state, report)
            else:
                _load_image_vit(model, state, report)
        except (ValueError, RuntimeError, KeyError) as err:  # the model's own loader refused the file
            model.load_state_dict(backup)
            _finish(report, model)
            report.sync()
            raise CheckpointError(f"--load-from {path}: {type(model).__name__}'s loader for a {report.description} "
                                  f"refused it: {err}\n{report.text(limit=SHOWN)}", report) from err
        report.sync()
    problems = report.problems()
    refuse = None
    if report.read_error:
        refuse = f"cannot read the file ({report.read_error}): nothing loaded"
    elif not report.loaded:
        refuse = "nothing in the file maps onto the model"
    elif problems and not partial:
        refuse = "partial load refused: " + "; ".join(problems)
    if refuse is not None:
        if backup is not None:
            model.load_state_dict(backup)
        hint = "" if partial or not report.loaded else " (--load-from-partial or train.load_partial=true accepts it)"
        raise CheckpointError(f"--load-from {path}: {refuse}{hint}\n{report.text(limit=SHOWN)}", report)
    if out is not None:
        model.load_state_dict(out, strict=False)
    return report


def mapped_state_dict(model: nn.Module, path: Union[str, Path],
                      partial: bool = False) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """What `load_checkpoint` would load, in our names (for `models.convert`): only the tensors that came
    from the file (converted and resized for `model`), not the model's own initialisation."""
    report = load_checkpoint(model, path, partial=partial)
    own = model.state_dict()
    return {k: own[k].detach().clone() for k in report.loaded}, report
