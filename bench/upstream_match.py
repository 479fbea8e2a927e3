"""Our presets and data pipelines against the upstream code itself: the same weights or files, the same input.

    python bench/upstream_match.py msg3d --upstream PATH/TO/MS-G3D                       # kenziyuliu/MS-G3D
    python bench/upstream_match.py personality --upstream PATH/TO/PersonalityRecognition # Rgtemze/...
    python bench/upstream_match.py timesformer --upstream PATH/TO/TimeSformer            # facebookresearch/...
    python bench/upstream_match.py tsm --upstream PATH/TO/temporal-shift-module          # mit-han-lab/...
    python bench/upstream_match.py dyreg --upstream PATH/TO/DyReg-GNN                    # bit-ml/DyReg-GNN
    python bench/upstream_match.py stabn --upstream PATH/TO/ST-ABN_PyTorch
    python bench/upstream_match.py pipeline-SYSTEM --upstream CHECKOUT [--workdir DIR]   # the data pipelines
    python bench/upstream_match.py pipeline-stabn --upstream PATH/TO/ST-ABN_PyTorch --mmcv PATH/TO/mmcv  # v0.2.10

Networks: build the upstream model from its checkout, move its BatchNorm statistics and graph residuals (MS-G3D) or
temporal weights (TimeSformer) off their initial values as training does, save its weights as its own code saves
them, load that file with `--load-from`'s loader into our preset, and print one JSON line: the load's format and
counts, and the largest output difference, absolute and relative to the largest output, in eval mode and in train
mode from the same seed (equal only where every dropout and stochastic-depth draw is made in the upstream order).
ST-ABN's modules are loaded from their files without MMAction v1's package imports; the few mmcv 0.x names they use
(initialisers, whose values the loaded weights replace, and an attribute dict) are provided here, and the modules
are chained as its `TSN3D.forward_train` does. DyReg-GNN is also run in its full-resolution test mode (256 x 256).

Data pipelines (`pipeline-timesformer`, `-tsm`, `-dyreg`, `-stabn`, `-msg3d`, `-personality`; bench/pipeline_*.py):
upstream's own dataset classes and transforms against our datasets with the matching `data.protocol`, on real H.264
videos (or frame folders made from them, or skeleton arrays): per setting, one JSON line saying whether the frame
indices are equal and the largest pixel difference (0-255, normalisation undone), in test, val and training mode
(upstream's random draws recorded and replayed into ours). The libraries the upstream code imports (torchvision,
OpenCV, fvcore, ...) are installed once into bench/.upstream-site, never into the project.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import importlib.util
import io
import json
import sys
import tempfile
import types
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pipeline_mmaction
import pipeline_pyslowfast
import pipeline_skeleton
import pipeline_tsn
import torch
from pipeline_common import DYREG_ARGS, import_torchvision, upstream_on_path
from torch import nn

from action_launch import models
from action_launch.models.checkpoints import load_checkpoint

Forward = Callable[[torch.Tensor], torch.Tensor]


def _trained_looking(model: torch.nn.Module, seed: int, params: Tuple[str, ...], scale: float) -> None:
    """BatchNorm statistics away from (0, 1), and the named parameters (zero or tiny at init) drawn."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 1.5 + 0.5)
        for name, param in model.named_parameters():
            if any(p in name for p in params):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _compare(
    name: str,
    theirs: torch.nn.Module,
    their_forward: Forward,
    state: Dict[str, Any],
    ours: torch.nn.Module,
    x: torch.Tensor,
    seed: int,
    our_forward: Optional[Forward] = None,
) -> Dict[str, Any]:
    """Save `state`, load it into `ours` with `--load-from`'s loader, and compare the two forwards on `x`."""
    our_forward = our_forward or ours
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upstream.pt"
        torch.save(state, path)
        report = load_checkpoint(ours, path)
    with torch.no_grad():
        theirs.eval(), ours.eval()
        reference = their_forward(x)
        scale = reference.abs().max().item()
        eval_diff = (our_forward(x) - reference).abs().max().item()
        theirs.train(), ours.train()
        torch.manual_seed(seed)
        train_reference = their_forward(x)
        torch.manual_seed(seed)
        train_diff = (our_forward(x) - train_reference).abs().max().item()
    return {
        "network": name,
        "format": report.format,
        "loaded": len(report.loaded),
        "ignored": len(report.ignored),
        "problems": report.problems(),
        "max_abs_output": scale,
        "eval_max_abs_diff": eval_diff,
        "train_same_seed_max_abs_diff": train_diff,
        "eval_rel_diff": eval_diff / scale,
        "train_same_seed_rel_diff": train_diff / scale,
    }


def msg3d(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """kenziyuliu/MS-G3D `model.msg3d.Model`, NTU RGB+D 60 and Kinetics-Skeleton as its configs build it."""
    sys.path.insert(0, str(upstream))
    from model.msg3d import Model

    for preset, graph, joints, classes, scales in (
        ("msg3d_ntu60", "graph.ntu_rgb_d.AdjMatrixGraph", 25, 60, (13, 6)),
        ("msg3d_kinetics", "graph.kinetics.AdjMatrixGraph", 18, 400, (8, 8)),
    ):
        torch.manual_seed(seed)
        theirs = Model(
            num_class=classes,
            num_point=joints,
            num_person=2,
            num_gcn_scales=scales[0],
            num_g3d_scales=scales[1],
            graph=graph,
        )
        _trained_looking(theirs, seed, ("A_res",), 0.01)
        x = torch.randn(2, 3, 64, joints, 2, generator=torch.Generator().manual_seed(seed + 1))
        yield _compare(preset, theirs, theirs, theirs.state_dict(), models.create(preset), x, seed + 2)


def personality(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """Rgtemze/PersonalityRecognition `model.msg3d_laban.Model` as config/personality/train_joint_laban.yaml builds
    it, against `msg3d_personality` on its graph (`smpl-24-dense`), and on the SMPL tree (not equal: another graph)."""
    sys.path.insert(0, str(upstream))
    from model.msg3d_laban import Model

    torch.manual_seed(seed)
    theirs = Model(
        num_class=5,
        num_point=24,
        num_person=1,
        num_gcn_scales=13,
        num_g3d_scales=6,
        graph="graph.ntu_rgb_d.AdjMatrixGraph",
        in_channels=15,
        layer_channels=12,
    )
    _trained_looking(theirs, seed, ("A_res",), 0.01)
    x = torch.randn(4, 15, 64, 24, 1, generator=torch.Generator().manual_seed(seed + 1))
    forward = lambda clip: theirs(clip[:, :3].contiguous(), clip[:, 3:].contiguous())  # noqa: E731 (xyz, Laban)
    for graph in ("smpl-24-dense", "smpl-24"):
        ours = models.create("msg3d_personality", graph=graph)
        yield _compare(f"msg3d_personality graph={graph}", theirs, forward, theirs.state_dict(), ours, x, seed + 2)


def _timesformer_vit(upstream: Path) -> Any:
    """timesformer/models/vit.py alone: its package __init__ builds the ResNets (fvcore, and more); `torch._six`
    (gone from torch 2) and the registry decorator are the two names it needs from outside."""
    sys.modules.setdefault("torch._six", types.SimpleNamespace(container_abcs=collections.abc))
    for name in ("timesformer", "timesformer.models"):
        package = types.ModuleType(name)
        package.__path__ = [str(upstream / name.replace(".", "/"))]
        sys.modules[name] = package
    build = types.ModuleType("timesformer.models.build")
    build.MODEL_REGISTRY = types.SimpleNamespace(register=lambda *a, **k: lambda cls: cls)
    sys.modules["timesformer.models.build"] = build
    spec = importlib.util.spec_from_file_location("timesformer.models.vit", upstream / "timesformer/models/vit.py")
    vit = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = vit
    spec.loader.exec_module(vit)
    return vit


def timesformer(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """facebookresearch/TimeSformer `VisionTransformer` (the network its `TimeSformer` wraps as `model`), at a CPU
    size, in its three attention types, saved as PySlowFast's `{'model_state': {'model.*'}}`."""
    vit = _timesformer_vit(upstream)
    size = dict(img_size=64, embed_dim=96, depth=3, num_heads=4, num_frames=4, num_classes=7)
    for attention in ("divided_space_time", "joint_space_time", "space_only"):
        torch.manual_seed(seed)
        theirs = vit.VisionTransformer(
            patch_size=16,
            mlp_ratio=4,
            qkv_bias=True,
            drop_path_rate=0.1,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            attention_type=attention,
            **size,
        )
        _trained_looking(theirs, seed, ("temporal_fc", "time_embed"), 0.05)
        state = {"model_state": {f"model.{k}": v for k, v in theirs.state_dict().items()}}
        ours = models.create("timesformer_base", attention=attention, **size)
        x = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(seed + 1))
        yield _compare(f"timesformer {attention}", theirs, theirs, state, ours, x, seed + 2)


def _tsn_input(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> TSN's (N, T*C, H, W)."""
    n, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(n, t * c, h, w)


def _tsn_state(model: torch.nn.Module) -> Dict[str, Any]:
    """As main.py saves it: the DataParallel model's state dict in a checkpoint dict."""
    return {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def tsm(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """mit-han-lab/temporal-shift-module `ops.models.TSN` as scripts/train_tsm_kinetics_rgb_8f.sh builds it (ResNet-50,
    8 segments, shift 1/8 blockres, dropout 0.5, average consensus; no ImageNet download)."""
    import_torchvision()
    sys.path.insert(0, str(upstream))
    from ops.models import TSN

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = TSN(
            174,
            8,
            "RGB",
            base_model="resnet50",
            consensus_type="avg",
            dropout=0.5,
            partial_bn=False,
            pretrain="",
            is_shift=True,
            shift_div=8,
            shift_place="blockres",
        )
    _trained_looking(theirs, seed, ("new_fc.weight",), 0.05)
    x = torch.randn(2, 3, 8, 112, 112, generator=torch.Generator().manual_seed(seed + 1))
    forward = lambda clip: theirs(_tsn_input(clip))  # noqa: E731
    yield _compare(
        "tsm_r50 num_segments=8",
        theirs,
        forward,
        _tsn_state(theirs),
        models.create("tsm_r50", num_segments=8),
        x,
        seed + 2,
    )


def _dyreg_tsn(upstream: Path, seed: int, extra_args: str = "") -> nn.Module:
    """DyReg-GNN's `ops.models.TSN` built with train_model.sh's settings (plus `extra_args`): its modules read the
    command line when imported, so they are imported afresh for each setting."""
    argv, sys.argv = sys.argv, ["main_standard.py", *DYREG_ARGS.split(), *extra_args.split()]
    try:
        with upstream_on_path(upstream), contextlib.redirect_stdout(io.StringIO()):
            from ops.models import TSN

            torch.manual_seed(seed)
            return TSN(
                174,
                16,
                "RGB",
                base_model="resnet50",
                consensus_type="avg",
                dropout=0.5,
                partial_bn=False,
                pretrain="",
                is_shift=True,
                shift_div=8,
                shift_place="blockres",
            )
    finally:
        sys.argv = argv


def dyreg(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """bit-ml/DyReg-GNN `ops.models.TSN` with train_model.sh's settings (graphs at layer2.2, layer3.4, layer4.1, 16
    segments at 224: the graphs are sized for it), graph weights moved off their identity start; then the same
    weights in its `--full_res=True` model (evaluate_model_multi_clip.sh: 256 x 256 input, offset-net input and
    position kernels pooled to the training sizes) against our preset on 256 x 256 input."""
    import_torchvision()
    theirs = _dyreg_tsn(upstream, seed)
    _trained_looking(theirs, seed, ("new_fc.weight", "dynamic_graph", "residual_norm"), 0.02)

    def forward(model: nn.Module) -> Forward:
        def run(clip: torch.Tensor) -> torch.Tensor:
            with contextlib.redirect_stdout(io.StringIO()):
                return model(_tsn_input(clip))[0]  # (logits, auxiliary features)

        return run

    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(seed + 1))
    yield _compare(
        "tsm_r50_dyreg", theirs, forward(theirs), _tsn_state(theirs), models.create("tsm_r50_dyreg"), x, seed + 2
    )
    full_res = _dyreg_tsn(upstream, seed, "--full_res=True")
    # every weight and BatchNorm statistic is the 224 model's; the anchors and pixel indices (`*_buf`) are made
    # for the 256 maps (their values follow the map size, not always their shapes)
    full_res.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.endswith("_buf")}, strict=False)
    x = torch.randn(1, 3, 16, 256, 256, generator=torch.Generator().manual_seed(seed + 3))
    yield _compare(
        "tsm_r50_dyreg full_res (256 input)",
        full_res,
        forward(full_res),
        _tsn_state(theirs),
        models.create("tsm_r50_dyreg"),
        x,
        seed + 4,
    )


def _mmcv_names() -> None:
    """The mmcv 0.x names ST-ABN's modules import: weight initialisers and an attribute-access Config."""

    def init(fill: Callable[[torch.Tensor], Any]) -> Callable[..., None]:
        def apply(module: nn.Module, *args: Any, bias: float = 0, **kwargs: Any) -> None:
            fill(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.constant_(module.bias, bias)

        return apply

    class Config(dict):
        def __init__(self, values: Optional[Dict[str, Any]] = None) -> None:
            super().__init__({k: Config(v) if isinstance(v, dict) else v for k, v in (values or {}).items()})

        __getattr__ = dict.__getitem__
        __setattr__ = dict.__setitem__

    mmcv, cnn, runner = (types.ModuleType(n) for n in ("mmcv", "mmcv.cnn", "mmcv.runner"))
    cnn.constant_init = lambda module, val, bias=0: init(lambda w: nn.init.constant_(w, val))(module, bias=bias)
    cnn.kaiming_init = init(lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"))
    cnn.xavier_init = init(nn.init.xavier_uniform_)
    runner.load_checkpoint = lambda *args, **kwargs: None  # the ImageNet init; weights come from the file
    mmcv.cnn, mmcv.runner, mmcv.Config = cnn, runner, Config
    sys.modules.update({"mmcv": mmcv, "mmcv.cnn": cnn, "mmcv.runner": runner})


def _stabn_modules(upstream: Path) -> Dict[str, Any]:
    """ST-ABN's backbone, neck, pooling, consensus and head modules, loaded from their files."""
    _mmcv_names()
    tenons = "mmaction.models.tenons"
    for package in (
        "mmaction",
        "mmaction.utils",
        "mmaction.models",
        tenons,
        *(
            f"{tenons}.{p}"
            for p in ("backbones", "necks", "cls_heads", "utils", "spatial_temporal_modules", "segmental_consensuses")
        ),
    ):
        module = types.ModuleType(package)
        module.__path__ = [str(upstream / package.replace(".", "/"))]
        sys.modules[package] = module
    out = {}
    for key, name in (
        ("backbone", "backbones.resnet_slow"),
        ("neck", "necks.att_cls_head"),
        ("head", "cls_heads.cls_head"),
        ("pool", "spatial_temporal_modules.simple_spatial_temporal_module"),
        ("consensus", "segmental_consensuses.simple_consensus"),
    ):
        full = f"{tenons}.{name}"
        spec = importlib.util.spec_from_file_location(full, upstream / (full.replace(".", "/") + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        out[key] = module
    return out


def stabn(upstream: Path, seed: int = 0) -> Iterator[Dict[str, Any]]:
    """machine-perception-robotics-group/ST-ABN_PyTorch as config_files/sthv1/st_abn_32.py builds its TSN3D (ResNet-50
    slow path, attention branch, 32 frames at 224: its pools are sized for them), without the ImageNet download;
    logits and attention logits compared."""
    m = _stabn_modules(upstream)
    frames = 32
    torch.manual_seed(seed)
    theirs = nn.Module()
    theirs.backbone = m["backbone"].ResNet_SlowFast(
        depth=50,
        pretrained=None,
        num_stages=4,
        out_indices=[3],
        frozen_stages=-1,
        inflate_freq=(0, 0, 1, 1),
        inflate_style="3x1x1",
        conv1_kernel_t=1,
        conv1_stride_t=1,
        pool1_kernel_t=1,
        pool1_stride_t=1,
        with_cp=False,
        bn_eval=False,
        partial_bn=False,
        style="pytorch",
        nsegments=frames,
    )
    theirs.necks = m["neck"].Att_head(
        in_channels=[1024, 2048],
        out_channels=1024,
        spatial_modulation_config=dict(inplanes=[1024, 2048], planes=2048),
        temporal_modulation_config=dict(scales=(8, 8), param=dict(inplanes=-1, planes=-1, downsample_scale=-1)),
        upsampling_config=dict(scale=(1, 1, 1)),
        downsampling_config=dict(scales=(1, 1, 1), param=dict(inplanes=-1, planes=-1, downsample_scale=-1)),
        level_fusion_config=dict(
            in_channels=[1024, 1024], mid_channels=[1024, 1024], out_channels=2048, ds_scales=[(1, 1, 1), (1, 1, 1)]
        ),
        att_head_config=dict(inplanes=-1, planes=174, loss_weight=0.5),
    )
    theirs.spatial_temporal_module = m["pool"].SimpleSpatialTemporalModule(
        spatial_type="avg", temporal_size=frames, spatial_size=7
    )
    theirs.segmental_consensus = m["consensus"].SimpleConsensus(consensus_type="avg")
    theirs.cls_head = m["head"].ClsHead(
        with_avg_pool=False,
        temporal_feature_size=1,
        spatial_feature_size=1,
        dropout_ratio=0.5,
        in_channels=2048,
        num_classes=174,
    )
    for part in (theirs.backbone, theirs.necks, theirs.cls_head):
        part.init_weights()
    _trained_looking(theirs, seed, (), 0.0)

    def forward(clip: torch.Tensor) -> torch.Tensor:
        """TSN3D.forward_train's chain, one clip per sample: the attention head's logits (its dropout, view, fc) and
        the classifier's, side by side."""
        ax, rx, _, _ = theirs.backbone(clip)
        att = theirs.necks.att_head
        att_logits = att.fc(att.dropout(ax).view(ax.size(0), -1))
        rx = theirs.spatial_temporal_module(rx)
        rx = theirs.segmental_consensus(rx.reshape((-1, 1) + rx.shape[1:])).squeeze(1)
        return torch.cat([theirs.cls_head(rx), att_logits], dim=1)

    ours = models.create("stabn_r50", num_frames=frames)

    def our_forward(clip: torch.Tensor) -> torch.Tensor:
        """The preset's logits and attention logits, side by side."""
        out = ours(clip)
        return torch.cat([out["logits"], out["att_logits"]], dim=1)

    x = torch.randn(1, 3, frames, 224, 224, generator=torch.Generator().manual_seed(seed + 1))
    yield _compare(
        "stabn_r50 (logits and attention logits)",
        theirs,
        forward,
        {"state_dict": theirs.state_dict()},
        ours,
        x,
        seed + 2,
        our_forward,
    )


SYSTEMS = {
    "msg3d": (msg3d, "model/msg3d.py"),
    "personality": (personality, "model/msg3d_laban.py"),
    "timesformer": (timesformer, "timesformer/models/vit.py"),
    "tsm": (tsm, "ops/temporal_shift.py"),
    "dyreg": (dyreg, "ops/dyreg.py"),
    "stabn": (stabn, "mmaction/models/tenons/backbones/resnet_slow.py"),
}
# the data pipelines: upstream's own data code against our datasets, on the same files (bench/pipeline_*.py)
PIPELINES = {
    "pipeline-timesformer": (pipeline_pyslowfast.run, "timesformer/datasets/kinetics.py"),
    "pipeline-tsm": (pipeline_tsn.run, "ops/temporal_shift.py"),
    "pipeline-dyreg": (pipeline_tsn.run, "ops/dyreg.py"),
    "pipeline-stabn": (pipeline_mmaction.run, "mmaction/datasets/rawframes_dataset.py"),
    "pipeline-msg3d": (pipeline_skeleton.run_msg3d, "feeders/feeder.py"),
    "pipeline-personality": (pipeline_skeleton.run_personality, "data_gen/preprocess_personality.py"),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=sorted({**SYSTEMS, **PIPELINES}))
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of the system's upstream repository")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(__file__).resolve().parent / ".pipeline",
        help="pipeline checks: where the videos, frame folders and arrays they read are made (kept)",
    )
    parser.add_argument("--mmcv", type=Path, help="pipeline-stabn: a checkout of open-mmlab/mmcv at tag v0.2.10")
    args = parser.parse_args(argv)
    run, marker = {**SYSTEMS, **PIPELINES}[args.system]
    if not (args.upstream / marker).is_file():
        parser.error(f"--upstream {args.upstream}: no {marker} there (a checkout of {args.system}'s upstream code?)")
    if args.system == "pipeline-stabn" and not (args.mmcv and (args.mmcv / "mmcv" / "image").is_dir()):
        parser.error("pipeline-stabn needs --mmcv PATH, a checkout of open-mmlab/mmcv at tag v0.2.10 (ST-ABN's)")
    if args.system in PIPELINES:
        workdir = args.workdir.resolve() / args.system
        workdir.mkdir(parents=True, exist_ok=True)
        extra = {"mmcv": args.mmcv.resolve()} if args.system == "pipeline-stabn" else {}
        lines = run(args.upstream.resolve(), workdir, **extra)
    else:
        lines = run(args.upstream.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in _quietly(lines):
            print(json.dumps(line), flush=True)
    return 0


def _quietly(lines: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """The lines, with what the upstream code prints while making each sent to stderr (stdout holds the JSON)."""
    while True:
        with contextlib.redirect_stdout(sys.stderr):
            line = next(lines, None)
        if line is None:
            return
        yield line


if __name__ == "__main__":
    sys.exit(main())
