"""TSM (models/tsm.py) and DyReg-GNN (models/dyreg.py): counts, shift, identity at init, training."""
import inspect
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F

from action_launch import models
from action_launch.models.dyreg import DynamicGraph, DyRegResidual, dyreg_kwargs
from action_launch.models.tsm import TSM, temporal_shift

from conftest import count_params, sgd_losses

TSM_R50_PARAMS = 23_864_558  # torchvision ResNet-50 without its fc (23,508,032) + Linear(2048, 174)
# Added by DyReg at layer2.2 / layer3.4 / layer4.1, measured here; the reference measured
# 1.14M / 1.84M / 1.86M on its own module.
DYREG_PARAMS = {"layer2.2": (1_141_640, 1.14e6), "layer3.4": (1_836_040, 1.84e6), "layer4.1": (1_859_592, 1.86e6)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _block(model: TSM, name: str):
    stage, index = name.split(".")
    return getattr(model, stage)[int(index)]


# --------------------------------------------------------------------------------------------
# Paper presets


def test_paper_parameter_counts():
    with torch.device("meta"):
        tsm = models.create("tsm_r50")
        dyreg = models.create("tsm_r50_dyreg")
    assert count_params(tsm) == TSM_R50_PARAMS
    added = 0
    for name, (exact, reference) in DYREG_PARAMS.items():
        n = count_params(_block(dyreg, name).dyreg)
        assert n == exact, name
        assert abs(n - reference) / reference < 0.02, name
        added += n
    assert count_params(dyreg) == TSM_R50_PARAMS + added == 28_701_830


def test_paper_shapes_on_meta():
    with torch.device("meta"):
        model = models.create("tsm_r50_dyreg")
        assert model(torch.empty(2, 3, 16, 224, 224)).shape == (2, 174)
        graph = _block(model, "layer4.1").dyreg.dyreg
        assert graph(torch.empty(2, 16, 512, 7, 7)).shape == (2, 16, 512, 7, 7)


@pytest.mark.parametrize("channels,side", [(128, 28), (256, 14), (512, 7)])
def test_paper_graphs_real_forward_backward(channels, side):
    # The paper-size graphs at their paper map sizes, on a real (small) batch: B=2, T=2.
    torch.manual_seed(0)
    wrapper = DyRegResidual(channels, **dyreg_kwargs(channels, side))
    torch.nn.init.ones_(wrapper.norm.weight)  # open the residual so gradients reach the graph
    x = torch.randn(2 * 2, channels, side, side)
    y = wrapper(x, 2)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    graph = wrapper.dyreg
    assert graph.offset_scale.grad.abs().sum() > 0  # the regions can start to move
    assert graph.rstg.time_gru.weight_hh_l0.grad.abs().sum() > 0


def test_paper_graph_settings_follow_the_reference():
    # node width 128 / 256 / 256 (layer4 projects 512 -> 256), position grid = the 224-input map.
    def expect(node_dim, pos_grid, offset_grid, strides):
        return dict(node_dim=node_dim, offset_dim=128, pos_grid=pos_grid, offset_grid=offset_grid,
                    offset_strides=strides)

    assert dyreg_kwargs(128, 28) == expect(128, 28, 6, (2, 2))
    assert dyreg_kwargs(256, 14) == expect(256, 14, 6, (2, 1))
    assert dyreg_kwargs(512, 7) == expect(256, 7, 5, (1, 1))


# --------------------------------------------------------------------------------------------
# Temporal shift


def test_temporal_shift_moves_one_eighth_each_way_with_zero_padding():
    n, t, c = 2, 3, 16
    # value = 1000 * clip + 100 * (frame + 1) + channel, laid out (N*T, C, 1, 1) as TSM sees it.
    x = torch.tensor([[1000 * i + 100 * (f + 1) + ch for ch in range(c)] for i in range(n) for f in range(t)],
                     dtype=torch.float32).reshape(n * t, c, 1, 1)
    out = temporal_shift(x, t, shift_div=8).reshape(n, t, c)
    src = x.reshape(n, t, c)
    fold = c // 8
    for f in range(t):
        # channels [0, fold): the next frame's values, zeros at the last frame
        expected_back = src[:, f + 1, :fold] if f + 1 < t else torch.zeros(n, fold)
        # channels [fold, 2 fold): the previous frame's values, zeros at the first frame
        expected_fwd = src[:, f - 1, fold:2 * fold] if f > 0 else torch.zeros(n, fold)
        assert torch.equal(out[:, f, :fold], expected_back)
        assert torch.equal(out[:, f, fold:2 * fold], expected_fwd)
        assert torch.equal(out[:, f, 2 * fold:], src[:, f, 2 * fold:])
    # exactly 1/8 of the channels per direction moved, the clips never mix
    assert int((out != src).any(dim=(0, 1)).sum()) == 2 * fold


def test_temporal_shift_needs_whole_clips():
    with pytest.raises(ValueError, match="num_segments"):
        temporal_shift(torch.zeros(5, 8, 2, 2), 2)


# --------------------------------------------------------------------------------------------
# Tiny presets: any T and map size, identity at init, training


@pytest.mark.parametrize("name", ["tsm_r50_tiny", "tsm_r50_dyreg_tiny"])
@pytest.mark.parametrize("frames,size", [(4, (64, 64)), (6, (48, 80))])
def test_tiny_forward_any_clip_length_and_size(name, frames, size):
    torch.manual_seed(0)
    model = models.create(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, frames, *size))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("frames,size", [(3, (8, 8)), (5, (11, 6))])
def test_dynamic_graph_any_clip_length_and_size(frames, size):
    torch.manual_seed(0)
    graph = DynamicGraph(16, offset_dim=16, pos_grid=8, offset_grid=6, offset_strides=(1, 1))
    x = torch.randn(2, frames, 16, *size)
    assert graph(x).shape == x.shape
    # Offsets start at zero (learnable scale 0): every region sits at the centre anchor.
    offsets = graph.offsets(x.reshape(-1, 16, *size), 2, frames)
    assert torch.equal(offsets, torch.zeros_like(offsets))
    kernel = graph.kernels(offsets, *size)
    assert kernel.shape == (2 * frames, 9, *size)
    torch.testing.assert_close(kernel.sum(dim=(-2, -1)), torch.ones(2 * frames, 9))


def test_grid_anchors_spread_the_regions():
    graph = DynamicGraph(8, offset_dim=8, pos_grid=6, offset_grid=4, offset_strides=(1, 1), anchors="grid")
    kernel = graph.kernels(torch.zeros(1, 9, 4), 9, 9)[0]  # anchors at pixel centres 1, 4, 7
    peaks = [divmod(int(k.argmax()), 9) for k in kernel]
    assert peaks == [(i, j) for i in (1, 4, 7) for j in (1, 4, 7)]


def test_dyreg_residual_is_the_identity_at_init():
    torch.manual_seed(0)
    wrapper = DyRegResidual(16, **dyreg_kwargs(16, 8, max_node_dim=8, offset_dim=16))
    x = torch.randn(2 * 3, 16, 8, 8)
    assert torch.equal(wrapper(x, 3), x)


def test_tsm_with_dyreg_equals_tsm_at_init():
    torch.manual_seed(0)
    plain = models.create("tsm_r50_tiny").eval()
    graph = models.create("tsm_r50_dyreg_tiny").eval()
    missing, unexpected = graph.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".dyreg." in k for k in missing)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(graph(x), plain(x))


def test_dyreg_positions_are_checked():
    with pytest.raises(ValueError, match="layer2.0"):
        models.create("tsm_r50_tiny", dyreg_positions="layer2.5")


@pytest.mark.parametrize("name", ["tsm_r50_tiny", "tsm_r50_dyreg_tiny"])
def test_tiny_preset_trains(name):
    torch.manual_seed(0)
    model = models.create(name, dropout=0.0)
    x, y = torch.randn(4, 3, 4, 64, 64), torch.tensor([0, 1, 2, 3])
    losses = sgd_losses(model, x, y, F.cross_entropy)
    assert losses[-1] < losses[0], losses
    if model.dyreg_positions:  # the graphs left the identity
        assert any(_block(model, n).dyreg.norm.weight.abs().sum() > 0 for n in model.dyreg_positions)


# --------------------------------------------------------------------------------------------
# Optimiser groups and constructor signature


def test_parameter_groups_follow_tsm():
    model = models.create("tsm_r50_dyreg_tiny")
    groups = {g["name"]: g for g in model.parameter_groups(weight_decay=5e-4)}
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups["fc_weight"]["params"] == [model.fc.weight] and groups["fc_weight"]["lr_mult"] == 5.0
    assert groups["fc_bias"]["params"] == [model.fc.bias] and groups["fc_bias"]["lr_mult"] == 10.0
    assert groups["fc_weight"]["weight_decay"] == groups["weight"]["weight_decay"] == 5e-4
    for name in ("bias", "norm", "fc_bias"):
        assert groups[name]["weight_decay"] == 0.0
    norm_ids = {id(p) for p in groups["norm"]["params"]}
    assert id(model.bn1.weight) in norm_ids and id(model.layer2[0].dyreg.norm.weight) in norm_ids
    bias_ids = {id(p) for p in groups["bias"]["params"]}
    assert id(model.layer2[0].dyreg.dyreg.rstg.time_gru.bias_hh_l0) in bias_ids
    assert id(model.conv1.weight) in {id(p) for p in groups["weight"]["params"]}
    assert models.create("tsm_r50_tiny").parameter_groups()[0]["weight_decay"] is None


def test_engine_uses_the_tsm_groups():
    from action_launch.training.engine import parameter_groups

    model = models.create("tsm_r50_dyreg_tiny")
    groups = parameter_groups(model, weight_decay=5e-4)
    by_param = {id(p): (g["weight_decay"], g["lr_mult"]) for g in groups for p in g["params"]}
    assert by_param[id(model.fc.weight)] == (5e-4, 5.0) and by_param[id(model.fc.bias)] == (0.0, 10.0)
    assert by_param[id(model.conv1.weight)] == (5e-4, 1.0) and by_param[id(model.bn1.bias)] == (0.0, 1.0)
    assert len(by_param) == len(list(model.parameters()))


def test_constructor_arguments_have_plain_type_hints():
    allowed = (int, float, str, bool, Tuple[int, ...])
    for name, p in inspect.signature(TSM.__init__).parameters.items():
        if name != "self":
            assert p.annotation in allowed, (name, p.annotation)
