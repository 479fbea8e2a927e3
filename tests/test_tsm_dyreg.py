"""TSM (models/tsm.py) and DyReg-GNN (models/dyreg.py): counts, shift, identity at init, training,
and DyReg computed as the reference code (bit-ml/DyReg-GNN) computes it, in float64."""

import inspect
import math
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from conftest import count_params, sgd_losses

from action_launch import models
from action_launch.models.dyreg import DynamicGraph, DyRegResidual, dyreg_kwargs, offset_net_geometry
from action_launch.models.tsm import TSM, temporal_shift

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
    # ops/models_config.py, ResNet-50 with --bottleneck_graph --ch_div=4: node width 128 / 256 / 256
    # (layer4 projects 512 -> 256), H = iH = the 224-input map: 28 / 14 / 7.
    assert dyreg_kwargs(128, 28) == {"node_dim": 128, "offset_dim": 128, "map_size": 28}
    assert dyreg_kwargs(256, 14) == {"node_dim": 256, "offset_dim": 128, "map_size": 14}
    assert dyreg_kwargs(512, 7) == {"node_dim": 256, "offset_dim": 128, "map_size": 7}


# --------------------------------------------------------------------------------------------
# DyReg as the reference computes it (bit-ml/DyReg-GNN, ops/dyreg.py, ops/rstg.py,
# ops/models_utils.py), in float64. `_ref_*` below are written from the reference's equations and
# tensor layouts, not from models/dyreg.py; they read our module's parameters by name.

# ops/models_utils.py get_fishnet_params: map side -> strides, paddings and the LayerNorm sizes
# (norm_size) of the reference's offset net. The body (transposed) conv comes back to norm_size[0].
_REF_FISHNET = {
    32: ([(2, 2), (2, 2)], [(0, 0), (0, 0)], [15, 7, 7]),
    28: ([(2, 2), (2, 2)], [(0, 0), (0, 0)], [13, 6, 6]),
    16: ([(2, 2), (1, 1)], [(0, 0), (1, 1)], [7, 7, 7]),
    14: ([(2, 2), (1, 1)], [(0, 0), (1, 1)], [6, 6, 6]),
    8: ([(1, 1), (1, 1)], [(0, 0), (1, 1)], [6, 6, 6]),
    7: ([(1, 1), (1, 1)], [(0, 0), (1, 1)], [5, 5, 5]),
}


def _ref_ln2d(x, norm):
    """LayerNormAffine2D: LayerNorm over (C, H, W), then scale/bias per channel."""
    return F.layer_norm(x, x.shape[1:]) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


def _ref_ln_xc(x, shape, norm):
    """LayerNormAffineXC: LayerNorm over the trailing `shape`, then scale/bias on the last axis."""
    return F.layer_norm(x, shape) * norm.weight + norm.bias


def _ref_fishnet(net, x, side):
    """Fishnet.forward + the global conv (ops/dyreg.py create_offset_modules, offset_generator='big')."""
    strides, padding, norm_size = _REF_FISHNET[side]
    x = _ref_ln2d(F.relu(F.conv2d(x, net.reduce.weight, net.reduce.bias)), net.reduce_norm)
    tail0 = _ref_ln2d(
        F.relu(F.conv2d(x, net.down1.weight, net.down1.bias, stride=strides[0], padding=padding[0])), net.down1_norm
    )
    assert tail0.shape[-2:] == (norm_size[0], norm_size[0])
    x = _ref_ln2d(
        F.relu(F.conv2d(tail0, net.down2.weight, net.down2.bias, stride=strides[1], padding=padding[1])), net.down2_norm
    )
    assert x.shape[-2:] == (norm_size[1], norm_size[1])
    x = F.conv_transpose2d(x, net.up.weight, net.up.bias, stride=strides[1], padding=padding[1])
    assert x.shape[-2:] == (norm_size[0], norm_size[0])
    x = _ref_ln2d(F.relu(x), net.up_norm) + tail0
    x = _ref_ln2d(
        F.relu(F.conv2d(x, net.head.weight, net.head.bias, stride=strides[1], padding=padding[1])), net.head_norm
    )
    assert x.shape[-2:] == (norm_size[-1], norm_size[-1])
    x = F.conv2d(x, net.fc.weight, net.fc.bias)  # kernel norm_size[-1]: acts as a fully connected layer
    assert x.shape[-2:] == (1, 1)
    return F.adaptive_avg_pool2d(x, 1)


def _ref_atanh(x):
    x = x.clamp(-1 + 1e-7, 1 - 1e-7)
    return 0.5 * (torch.log(1 + x) - torch.log(1 - x))


def _ref_kernel(offsets, H, W, init_regions="center", h=3, w=3):
    """get_dynamic_kernel: offsets (BT, N, 4) -> (BT, N, H, W)."""
    if init_regions == "center":
        ph = (H / 2 * torch.ones(1, h, 1, dtype=offsets.dtype)).repeat(1, 1, w).view(1, h * w, 1)
        pw = (W / 2 * torch.ones(1, w, 1, dtype=offsets.dtype)).repeat(1, h, 1)  # the reference: H / 2 (square maps)
    else:
        ph = torch.linspace(0, H, 2 * h + 1, dtype=offsets.dtype)[1::2].unsqueeze(-1).unsqueeze(0)
        pw = torch.linspace(0, W, 2 * w + 1, dtype=offsets.dtype)[1::2].unsqueeze(-1).unsqueeze(0)
        ph = ph.repeat(1, 1, w).view(1, h * w, 1)
        pw = pw.repeat(1, h, 1)
    regions_h = torch.exp(offsets[:, :, 0]).unsqueeze(-1) * (H / (2 * h) + 1) + 1
    regions_w = torch.exp(offsets[:, :, 1]).unsqueeze(-1) * (W / (2 * w) + 1) + 1
    regions_dh = torch.tanh(offsets[:, :, 2].unsqueeze(-1) + _ref_atanh(2 * ph / H - 1)) * (H / 2) + H / 2 - ph
    regions_dw = torch.tanh(offsets[:, :, 3].unsqueeze(-1) + _ref_atanh(2 * pw / W - 1)) * (W / 2) + W / 2 - pw
    arange_h = torch.arange(0, H, dtype=offsets.dtype).view(1, 1, H)
    arange_w = torch.arange(0, W, dtype=offsets.dtype).view(1, 1, W)
    kernel_h = F.relu(regions_h - torch.abs(arange_h - torch.clamp(ph + regions_dh, 0, H - 1))).unsqueeze(-1)
    kernel_w = F.relu(regions_w - torch.abs(arange_w - torch.clamp(pw + regions_dw, 0, W - 1))).unsqueeze(-2)
    kernel = torch.matmul(kernel_h, kernel_w)
    return kernel / (torch.sum(kernel, dim=(2, 3), keepdim=True) + 1e-37)


def _ref_rstg(rstg, inp):
    """RSTG.forward with GRU, send_layers=1, combine_by_sum, update_layers=0, dot attention.

    inp: B x T x C x N -> B x T x C x N; inside, nodes are B x N x T x C as the reference keeps them.
    """
    B, T, C, N = inp.shape

    def norm4(x, norm):  # get_norm on B x N x T x C: LayerNorm over (N, C) per (B, T)
        return _ref_ln_xc(x.permute(0, 2, 1, 3), (N, C), norm).permute(0, 2, 1, 3)

    nodes = norm4(inp.permute(0, 3, 1, 2), rstg.input_norm)
    for _ in range(3):
        nodes = rstg.time_gru(nodes.reshape(B * N, T, C))[0].view(B, N, T, C)
        nodes1 = nodes.unsqueeze(1).repeat(1, N, 1, 1, 1)
        nodes2 = nodes.unsqueeze(2).repeat(1, 1, N, 1, 1)
        messages = F.relu(F.linear(nodes1 + nodes2, rstg.send.weight, rstg.send.bias))
        messages = _ref_ln_xc(messages.permute(0, 3, 1, 2, 4), (N, N, C), rstg.send_norm).permute(0, 2, 3, 1, 4)
        q = F.linear(nodes, rstg.query.weight, rstg.query.bias).permute(0, 2, 1, 3)
        k = F.linear(nodes, rstg.key.weight, rstg.key.bias).permute(0, 2, 3, 1)
        corr = torch.matmul(q, k).unsqueeze(-1).permute(0, 2, 3, 1, 4)
        aggregated = F.relu((F.softmax(corr, dim=2) * messages).sum(dim=2) + rstg.att_bias)
        nodes = norm4(nodes + aggregated, rstg.update_norm)
    nodes = rstg.out_gru(nodes.reshape(B * N, T, C))[0].view(B, N, T, C)
    return nodes.permute(0, 2, 3, 1)


def _ref_dynamic_graph(g, feats, iH, init_regions="center"):
    """DynamicGraph.forward: feats B x T x C x H x W; iH the training map side (full_res when H != iH)."""
    B, T, _, H, W = feats.shape
    BT, N, D = B * T, 9, g.offset_dim
    x = feats.reshape(BT, *feats.shape[2:])
    if g.project:  # project_i3d_linear + the dynamic_graph_projection LayerNormAffine2D
        x = _ref_ln2d(F.conv2d(x, g.project_in.weight, g.project_in.bias), g.project_norm)
    C = x.shape[1]
    full_res = (iH, iH) != (H, W)
    # get_offsets
    offset_in = F.adaptive_avg_pool2d(x, (iH, iH)) if full_res else x  # input_pooling
    gf = _ref_fishnet(g.offset_net, offset_in, iH).view(BT, N, D)
    gf = _ref_ln_xc(gf, (N, D), g.offset_norm)
    gf = gf.view(B, T, N, D).permute(0, 2, 1, 3).contiguous().view(B * N, T, D)
    of = g.offset_gru(gf)[0].view(B, N, T, D).permute(0, 2, 1, 3).contiguous().view(BT, N, D)
    of = _ref_ln_xc(of, (N, D), g.offset_gru_norm)
    offsets = F.linear(of, g.offset_fc.weight, g.offset_fc.bias) * g.offset_scale
    kernel = _ref_kernel(offsets, H, W, init_regions)
    # set_input: differentiable_resize_area + the kernel position embedding
    act = torch.matmul(x.view(BT, C, H * W), kernel.view(BT, N, H * W).permute(0, 2, 1)).view(B, T, C, N)
    location = kernel
    if full_res:  # kernel_location_pool, not renormalised
        location = F.adaptive_avg_pool2d(kernel, (iH, iH))
    location = F.linear(location.reshape(B, T, N, iH * iH), g.pos_embed.weight, g.pos_embed.bias)
    nodes = _ref_rstg(g.rstg, act + location.permute(0, 1, 3, 2))
    # remap_nodes
    out = torch.matmul(nodes.reshape(BT, C, N), kernel.view(BT, N, H * W)).view(BT, C, H, W)
    if g.project:
        out = F.conv2d(out, g.project_out.weight, g.project_out.bias)
    return out.view(B, T, *out.shape[1:]), offsets


def _ref_residual(wrapper, x, num_frames, iH, init_regions="center"):
    """DynamicGraphWrapper (rstg_combine='plus'): x + LayerNormAffine2D(dynamic_graph(x)) on BT x C x H x W."""
    y, offsets = _ref_dynamic_graph(wrapper.dyreg, x.view(-1, num_frames, *x.shape[1:]), iH, init_regions)
    return x + _ref_ln2d(y.reshape(x.shape), wrapper.norm), offsets


def _randomise(module, offset_scale):
    """Every parameter random (norm scales around 1), the offset scale as given: a graph in training."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
            if name.endswith("norm.weight"):
                p.add_(1.0)
        module.dyreg.offset_scale.copy_(torch.tensor(offset_scale, dtype=torch.float64))


def test_kernel_hand_values_integer_pixels():
    # 5 x 5 map, centre anchors, zero offsets: half-width 5/6 + 2 = 17/6, centre 2.5, pixels at
    # 0..4: distances 2.5, 1.5, 0.5, 0.5, 1.5 -> 1/3, 4/3, 7/3, 7/3, 4/3, i.e. (1, 4, 7, 7, 4) / 23.
    graph = DynamicGraph(4, offset_dim=4, map_size=5).double()
    profile = torch.tensor([1.0, 4, 7, 7, 4], dtype=torch.float64) / 23
    kernel = graph.kernels(torch.zeros(1, 9, 4, dtype=torch.float64), 5, 5)[0]
    for k in kernel:
        torch.testing.assert_close(k, torch.outer(profile, profile), rtol=0, atol=1e-15)
    # Centre offsets +-20: the centres (5 and 0 before clamping) are clamped to [0, 4]: rows
    # centred at 4 -> (0, 0, 5, 11, 17) / 33, columns at 0 -> (17, 11, 5, 0, 0) / 33.
    offsets = torch.tensor([0.0, 0.0, 20.0, -20.0], dtype=torch.float64).expand(1, 9, 4)
    rows = torch.tensor([0.0, 0, 5, 11, 17], dtype=torch.float64) / 33
    kernel = graph.kernels(offsets, 5, 5)[0]
    for k in kernel:
        torch.testing.assert_close(k, torch.outer(rows, rows.flip(0)), rtol=0, atol=1e-15)
    # A size offset ln 2 on rows only: half-width 2 * (5/6 + 1) + 1 = 14/3 -> (13, 19, 25, 25, 19) / 101.
    offsets = torch.tensor([math.log(2.0), 0.0, 0.0, 0.0], dtype=torch.float64).expand(1, 9, 4)
    rows = torch.tensor([13.0, 19, 25, 25, 19], dtype=torch.float64) / 101
    torch.testing.assert_close(graph.kernels(offsets, 5, 5)[0, 4], torch.outer(rows, profile), rtol=0, atol=1e-15)


def test_grid_anchors_hand_values():
    # 9 x 9, grid anchors at 9 (2k + 1) / 6 = 1.5, 4.5, 7.5 (linspace(0, 9, 7)[1::2]), half-width
    # 9/6 + 2 = 3.5: around 1.5 the pixels 0..8 get (2, 3, 3, 2, 1, 0, 0, 0, 0) / 11, around 4.5
    # (0, 0, 1, 2, 3, 3, 2, 1, 0) / 12, around 7.5 (cut by the border) (0, 0, 0, 0, 0, 1, 2, 3, 3) / 9;
    # node n sits at row n // 3, column n % 3.
    graph = DynamicGraph(4, offset_dim=4, map_size=9, anchors="grid").double()
    kernel = graph.kernels(torch.zeros(1, 9, 4, dtype=torch.float64), 9, 9)[0]
    profiles = [
        torch.tensor([2.0, 3, 3, 2, 1, 0, 0, 0, 0], dtype=torch.float64) / 11,
        torch.tensor([0.0, 0, 1, 2, 3, 3, 2, 1, 0], dtype=torch.float64) / 12,
        torch.tensor([0.0, 0, 0, 0, 0, 1, 2, 3, 3], dtype=torch.float64) / 9,
    ]
    for n in range(9):
        torch.testing.assert_close(kernel[n], torch.outer(profiles[n // 3], profiles[n % 3]), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        kernel, _ref_kernel(torch.zeros(1, 9, 4, dtype=torch.float64), 9, 9, "grid")[0], rtol=0, atol=1e-15
    )


def test_kernels_equal_the_reference_on_random_offsets():
    torch.manual_seed(0)
    offsets = torch.randn(6, 9, 4, dtype=torch.float64) * 2  # large enough that some centres clamp
    for anchors in ("center", "grid"):
        graph = DynamicGraph(4, offset_dim=4, map_size=7, anchors=anchors).double()
        for side in (7, 14, 28):
            torch.testing.assert_close(
                graph.kernels(offsets, side, side), _ref_kernel(offsets, side, side, anchors), rtol=0, atol=1e-14
            )


def test_offset_net_geometry_is_the_references():
    # Every side the reference tabulates: strides, padding (the first conv's is always 0) and the
    # side the last conv covers.
    for side, (strides, padding, norm_size) in _REF_FISHNET.items():
        assert offset_net_geometry(side) == ((strides[0][0], strides[1][0]), padding[1][0], norm_size[-1]), side
    # The intermediate sides at the paper's maps, 28 -> 13 -> 6 -> 13 -> 6 -> 1 at layer2.
    sizes = {}
    for side in (28, 14, 7):
        graph = DynamicGraph(8, offset_dim=4, map_size=side)
        net = graph.offset_net
        sizes[side] = []
        hooks = [
            m.register_forward_hook(lambda m, i, o, seen=sizes[side]: seen.append(o.shape[-1]))
            for m in (net.down1, net.down2, net.up, net.head, net.fc)
        ]
        graph.offsets(torch.randn(2, 8, side, side), 1, 2)
        for h in hooks:
            h.remove()
        assert net.fc.kernel_size == (_REF_FISHNET[side][2][-1],) * 2
    assert sizes == {28: [13, 6, 13, 6, 1], 14: [6, 6, 6, 6, 1], 7: [5, 5, 5, 5, 1]}


@pytest.mark.parametrize("in_channels,node_dim,side", [(16, 16, 28), (16, 16, 14), (24, 16, 7)])
@pytest.mark.parametrize("offset_scale", [(0.0, 0.0, 0.0, 0.0), (0.7, -0.5, 1.5, -1.2)], ids=["zero", "active"])
def test_dyreg_residual_equals_the_reference_float64(in_channels, node_dim, side, offset_scale):
    # The paper's geometry (maps 28 / 14 / 7, a projection where node_dim < in_channels), narrow
    # channels to keep it fast; every parameter random, the residual open; B=2, T=3.
    wrapper = DyRegResidual(in_channels, node_dim=node_dim, offset_dim=8, map_size=side).double()
    _randomise(wrapper, offset_scale)
    x = torch.randn(2 * 3, in_channels, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, ref_offsets = _ref_residual(wrapper, x, 3, side)
        offsets = wrapper.dyreg.offsets(
            wrapper.dyreg.project_norm(wrapper.dyreg.project_in(x)) if wrapper.dyreg.project else x, 2, 3
        )
        out = wrapper(x, 3)
    torch.testing.assert_close(offsets, ref_offsets, rtol=0, atol=1e-12)
    if any(offset_scale):  # the regions really moved (and some centres reach the border)
        assert ref_offsets.abs().max() > 0.5
    assert (expected - x).abs().max() > 0.1  # the graph branch is not negligible
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("train_side,side", [(7, 8), (14, 16)])
def test_other_map_size_is_the_references_full_res_mode(train_side, side):
    # ops/models_config.py with --full_res: H = 8 / 16 at the 256 input, iH = 7 / 14 from training.
    wrapper = DyRegResidual(16, node_dim=16, offset_dim=8, map_size=train_side).double()
    _randomise(wrapper, (0.7, -0.5, 1.5, -1.2))
    x = torch.randn(2 * 2, 16, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, _ = _ref_residual(wrapper, x, 2, train_side)
        torch.testing.assert_close(wrapper(x, 2), expected, rtol=1e-10, atol=1e-10)


def test_tsm_places_dyreg_between_conv2_and_bn2():
    # ops/dyreg.py make_rstg with --bottleneck_graph: conv2 = Sequential(SplitBT(conv2), DynamicGraphWrapper),
    # so the graph sees conv2's output and bn2 sees the graph's.
    model = models.create("tsm_r50_dyreg_tiny").eval()
    block = model.layer3[0]
    seen = {}
    hooks = [
        block.conv2.register_forward_hook(lambda m, i, o: seen.__setitem__("conv2", o)),
        block.dyreg.register_forward_hook(lambda m, i, o: seen.__setitem__("dyreg", (i[0], o))),
        block.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("bn2", i[0])),
    ]
    with torch.no_grad():
        torch.nn.init.ones_(block.dyreg.norm.weight)  # open the residual: its output differs from its input
        model(torch.randn(1, 3, 4, 64, 64))
    for h in hooks:
        h.remove()
    dyreg_in, dyreg_out = seen["dyreg"]
    assert dyreg_in is seen["conv2"] and seen["bn2"] is dyreg_out and not torch.equal(dyreg_in, dyreg_out)


# --------------------------------------------------------------------------------------------
# Temporal shift


def test_temporal_shift_moves_one_eighth_each_way_with_zero_padding():
    n, t, c = 2, 3, 16
    # value = 1000 * clip + 100 * (frame + 1) + channel, laid out (N*T, C, 1, 1) as TSM sees it.
    x = torch.tensor(
        [[1000 * i + 100 * (f + 1) + ch for ch in range(c)] for i in range(n) for f in range(t)], dtype=torch.float32
    ).reshape(n * t, c, 1, 1)
    out = temporal_shift(x, t, shift_div=8).reshape(n, t, c)
    src = x.reshape(n, t, c)
    fold = c // 8
    for f in range(t):
        # channels [0, fold): the next frame's values, zeros at the last frame
        expected_back = src[:, f + 1, :fold] if f + 1 < t else torch.zeros(n, fold)
        # channels [fold, 2 fold): the previous frame's values, zeros at the first frame
        expected_fwd = src[:, f - 1, fold : 2 * fold] if f > 0 else torch.zeros(n, fold)
        assert torch.equal(out[:, f, :fold], expected_back)
        assert torch.equal(out[:, f, fold : 2 * fold], expected_fwd)
        assert torch.equal(out[:, f, 2 * fold :], src[:, f, 2 * fold :])
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
    graph = DynamicGraph(16, offset_dim=16, map_size=8)
    x = torch.randn(2, frames, 16, *size)
    assert graph(x).shape == x.shape
    # Offsets start at zero (learnable scale 0): every region sits at the centre anchor.
    offsets = graph.offsets(x.reshape(-1, 16, *size), 2, frames)
    assert torch.equal(offsets, torch.zeros_like(offsets))
    kernel = graph.kernels(offsets, *size)
    assert kernel.shape == (2 * frames, 9, *size)
    torch.testing.assert_close(kernel.sum(dim=(-2, -1)), torch.ones(2 * frames, 9))


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


@pytest.mark.parametrize("preset,dropout_at", [("tsm_r50_tiny", "pooled"), ("tsm_r50_dyreg_tiny", "map")])
def test_training_dropout_falls_where_each_reference_code_puts_it(preset, dropout_at):
    """TSM's TSN: new_fc(dropout(pooled frame features)). DyReg-GNN's TSN (Something-Something branch): the
    ResNet's avgpool is an identity and its fc a Dropout, so the flattened last map (N*T, C*h*w) is dropped
    out, then pooled (rstg_avgpool), then new_fc. From one seed the model draws the same masks as each."""
    torch.manual_seed(0)
    model = models.create(preset).train()
    assert model.dropout_at == dropout_at
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.5)  # a visible head (TSN's init is 0.001)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        ours = model(x)
        fmap = model.forward_map(x)  # training-mode BatchNorm: the same batch statistics, no random draws
        torch.manual_seed(3)
        pooled = (
            F.dropout(fmap.mean(dim=(2, 3)), 0.5, training=True)
            if dropout_at == "pooled"
            else F.dropout(fmap.flatten(1), 0.5, training=True).view_as(fmap).mean(dim=(2, 3))
        )
        reference = model.fc(pooled).reshape(2, 4, -1).mean(dim=1)
    torch.testing.assert_close(ours, reference)
    other = models.create(preset, dropout_at="map" if dropout_at == "pooled" else "pooled")
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.manual_seed(3)
        assert not torch.allclose(other.train()(x), ours)  # the other place draws other masks
        other.load_state_dict(model.state_dict())  # (that step moved its BatchNorm statistics)
        torch.testing.assert_close(other.eval()(x), model.eval()(x))  # and eval is the same network
    with pytest.raises(ValueError, match="model.dropout_at"):
        models.create(preset, dropout_at="head")
