"""TimeSformer: paper parameter counts, shapes, the divided block's layout, init, training, ViT inflation."""

import inspect
import math

import pytest
import torch
from conftest import count_params

from action_launch import models
from action_launch.models.timesformer import ATTENTION_TYPES, Block, TimeSformer, inflate_vit_state_dict

TINY = dict(
    img_size=32, patch_size=8, num_frames=4, embed_dim=64, depth=2, num_heads=4, num_classes=4, drop_path_rate=0.0
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides) -> TimeSformer:
    torch.manual_seed(0)
    return TimeSformer(**{**TINY, **overrides}).eval()


# ---------------------------------------------------------------------------------- presets


def test_paper_parameter_count_divided():
    with torch.device("meta"):
        model = models.create("timesformer_base")
    assert count_params(model) == 121_566_352


@pytest.mark.parametrize(
    "attention, expected",
    [
        ("joint_space_time", 86_112_400),  # + time_embed (8 x 768)
        ("space_only", 86_106_256),  # an image ViT-B/16 with a 400-class head
    ],
)
def test_paper_parameter_count_without_temporal_attention(attention, expected):
    with torch.device("meta"):
        model = models.create("timesformer_base", attention=attention)
    assert count_params(model) == expected
    assert round(expected / 1e6, 2) == 86.11


def test_presets():
    assert {"timesformer_base", "timesformer_tiny", "light_timesformer", "light_timesformer_tiny"} <= set(
        models.list_presets()
    )
    light = models.get_preset("light_timesformer").kwargs
    base = models.get_preset("timesformer_base").kwargs
    assert light["num_frames"] == 32 and light["num_classes"] == 12
    assert {k: v for k, v in light.items() if k not in ("num_frames", "num_classes")} == {
        k: v for k, v in base.items() if k not in ("num_frames", "num_classes")
    }
    model = models.create("timesformer_tiny")
    assert 150_000 < count_params(model) < 160_000
    assert count_params(model) == 155_972
    light_tiny = models.create("light_timesformer_tiny")
    assert light_tiny.num_frames == 8 and light_tiny.num_classes == 12


def test_constructor_is_fully_annotated_with_plain_types():
    # The launcher checks config overrides against these annotations.
    params = models.get_preset("timesformer_base").parameters()
    for name, param in params.items():
        assert param.annotation in (int, float, bool, str), name
        assert param.default is not inspect.Parameter.empty, name
    assert params["attention"].default == "divided_space_time"


def test_invalid_attention_lists_valid_choices():
    with pytest.raises(ValueError) as err:
        TimeSformer(**{**TINY, "attention": "space_time"})
    for valid in ATTENTION_TYPES:
        assert valid in str(err.value)


def test_no_weight_decay_names_exist():
    for attention in ATTENTION_TYPES:
        model = tiny(attention=attention)
        names = model.no_weight_decay()
        assert names <= set(dict(model.named_parameters()))
        expected = {"pos_embed", "cls_token"} | ({"time_embed"} if attention != "space_only" else set())
        assert names == expected


# ---------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
def test_forward_shapes_and_embedding_interpolation(attention):
    model = tiny(attention=attention)
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 4)
    # Another clip length and a non-square, larger frame: embeddings are interpolated.
    out = model(torch.randn(2, 3, 6, 48, 40))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert model(torch.randn(1, 3, 2, 24, 24)).shape == (1, 4)


def _reference_divided_block(blk: Block, x: torch.Tensor, t: int) -> torch.Tensor:
    """The divided block spelled out with loops (eval mode): token 1 + n*T + t is patch n of frame t."""
    b, length, d = x.shape
    n = (length - 1) // t
    cls, patches = x[:, 0], x[:, 1:].reshape(b, n, t, d)
    after_time = torch.empty_like(patches)
    for i in range(n):  # attention over time at every patch location
        seq = patches[:, i]
        after_time[:, i] = seq + blk.temporal_fc(blk.temporal_attn(blk.temporal_norm1(seq)))
    cls_out, patch_res = [], torch.empty_like(patches)
    for f in range(t):  # attention over space within every frame, with its own copy of CLS
        seq = torch.cat([cls[:, None], after_time[:, :, f]], dim=1)
        res = blk.attn(blk.norm1(seq))
        cls_out.append(res[:, 0])
        patch_res[:, :, f] = res[:, 1:]
    y = torch.cat(
        [(cls + torch.stack(cls_out, 1).mean(1))[:, None], (after_time + patch_res).reshape(b, n * t, d)], dim=1
    )
    return y + blk.mlp(blk.norm2(y))


def test_divided_block_matches_loop_reference():
    torch.manual_seed(0)
    blk = Block(16, num_heads=2).eval()
    torch.nn.init.normal_(blk.temporal_fc.weight, std=0.3)  # make the temporal branch matter
    t, n = 3, 5
    x = torch.randn(2, 1 + n * t, 16)
    torch.testing.assert_close(blk(x, t), _reference_divided_block(blk, x, t), rtol=1e-5, atol=1e-5)


def test_no_embeddings_means_invariance_to_frame_and_patch_order():
    # With position and time embeddings zeroed, permuting frames or patch locations must not
    # change the logits; a reshape that mixed patches and frames would break this.
    model = tiny()
    with torch.no_grad():
        model.pos_embed[:, 1:].zero_()
        model.time_embed.zero_()
        for blk in model.blocks:
            torch.nn.init.normal_(blk.temporal_fc.weight, std=0.2)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 32, 32)
    ref = model(x)
    torch.testing.assert_close(model(x[:, :, [2, 0, 3, 1]]), ref, rtol=1e-4, atol=1e-5)
    # Swap the top-left and bottom-right 8x8 patches of every frame.
    y = x.clone()
    y[..., :8, :8], y[..., 24:, 24:] = x[..., 24:, 24:], x[..., :8, :8]
    torch.testing.assert_close(model(y), ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(model(torch.randn_like(x)), ref)


# ---------------------------------------------------------------------------------- init


def test_temporal_fc_starts_at_zero_so_the_temporal_branch_is_the_identity():
    model = tiny()
    for blk in model.blocks:
        assert torch.count_nonzero(blk.temporal_fc.weight) == 0
        assert torch.count_nonzero(blk.temporal_fc.bias) == 0
    x = torch.randn(1, 1 + 16 * 4, 64)
    assert torch.equal(model.blocks[0]._temporal(x, 4), x)

    clip = torch.randn(2, 3, 4, 32, 32)
    ref = model(clip)
    # Whatever the temporal attention computes is discarded at init ...
    with torch.no_grad():
        for blk in model.blocks:
            for p in list(blk.temporal_attn.parameters()) + list(blk.temporal_norm1.parameters()):
                p.normal_(std=1.0)
    torch.testing.assert_close(model(clip), ref, rtol=0, atol=0)
    # ... and only because temporal_fc is zero: with a non-zero temporal_fc the output moves.
    # (A weight, not a constant bias: LayerNorm would cancel a per-token constant shift.)
    with torch.no_grad():
        model.blocks[0].temporal_fc.weight.normal_(std=0.1)
    assert not torch.allclose(model(clip), ref, atol=1e-4)


def test_init_statistics():
    model = tiny()
    assert torch.count_nonzero(model.time_embed) == 0  # zero, as in the reference code
    assert 0.015 < model.pos_embed.std().item() < 0.025
    assert 0.015 < model.blocks[0].attn.qkv.weight.std().item() < 0.025
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert model.blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6
    drop = [blk.drop_path.p for blk in TimeSformer(**{**TINY, "depth": 3, "drop_path_rate": 0.1}).blocks]
    assert drop == pytest.approx([0.0, 0.05, 0.1])


def test_drop_path_draws_as_the_reference():
    """vit_utils.drop_path: keep + rand(rows, 1, ...) floored, x / keep times that; from one seed the same rows
    are dropped (so a seeded training step matches the reference's), whole rows, the rest scaled by 1 / keep."""
    from action_launch.models.timesformer import DropPath

    x = torch.randn(64, 5, 8)
    torch.manual_seed(7)
    ours = DropPath(0.3).train()(x)
    torch.manual_seed(7)
    mask = (0.7 + torch.rand(64, 1, 1)).floor_()
    torch.testing.assert_close(ours, x.div(0.7) * mask, rtol=0, atol=0)
    kept = ours.flatten(1).ne(0).all(1)
    assert 0 < kept.sum() < 64 and ours[~kept].eq(0).all()
    assert torch.equal(DropPath(0.3).eval()(x), x)


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time"])
def test_tiny_model_learns_a_fixed_labelling(attention):
    model = tiny(attention=attention).train()
    gen = torch.Generator().manual_seed(0)
    # Each class is a fixed random clip; samples are that clip plus noise.
    templates = torch.randn(4, 3, 4, 32, 32, generator=gen)
    labels = torch.arange(8) % 4
    clips = templates[labels] + 0.5 * torch.randn(8, 3, 4, 32, 32, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(clips), labels)
        opt.zero_grad()
        loss.backward()
        # The CLS stream starts tiny (0.02) and LayerNorm amplifies its gradient; without a clip
        # this 2-block model on 8 samples oscillates after a few steps.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(4), abs=0.1)  # near-uniform predictions at init
    assert losses[-1] < 0.7 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 9, losses
    if attention == "divided_space_time":  # temporal_fc leaves zero once trained
        assert model.blocks[0].temporal_fc.weight.abs().sum() > 0


# ---------------------------------------------------------------------------------- ViT inflation


def _fake_image_vit(num_classes: int = 10, img_size: int = 32) -> dict:
    """A timm-named image ViT state dict: a space-only TimeSformer has exactly those keys."""
    torch.manual_seed(3)
    vit = TimeSformer(**{**TINY, "attention": "space_only", "num_classes": num_classes, "img_size": img_size})
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_()
    sd = vit.state_dict()
    sd["fc_norm.weight"] = torch.ones(64)  # a key a TimeSformer has no place for
    return sd


def test_load_image_vit_inflates_spatial_into_temporal_and_drops_the_head():
    vit = _fake_image_vit(num_classes=10)
    model = tiny(num_classes=4)
    fresh_time = model.time_embed.detach().clone()
    report = model.load_image_vit(vit)
    state = model.state_dict()

    for i in range(2):
        for name in (
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm1.weight",
            "norm1.bias",
        ):
            assert torch.equal(state[f"blocks.{i}.{name}"], vit[f"blocks.{i}.{name}"])
            assert torch.equal(state[f"blocks.{i}.temporal_{name}"], vit[f"blocks.{i}.{name}"])
        assert torch.equal(state[f"blocks.{i}.mlp.fc2.weight"], vit[f"blocks.{i}.mlp.fc2.weight"])
        assert torch.count_nonzero(state[f"blocks.{i}.temporal_fc.weight"]) == 0
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight"):
        assert torch.equal(state[name], vit[name])
    # A copy, not a shared tensor: training temporal weights must not move the spatial ones.
    assert state["blocks.0.temporal_attn.qkv.weight"].data_ptr() != state["blocks.0.attn.qkv.weight"].data_ptr()

    assert sorted(report["dropped_keys"]) == ["head.bias", "head.weight"]
    assert report["unexpected_keys"] == ["fc_norm.weight"]
    assert set(report["missing_keys"]) == {"time_embed", "head.weight", "head.bias"} | {
        f"blocks.{i}.temporal_fc.{p}" for i in range(2) for p in ("weight", "bias")
    }
    assert len(report["copied_to_temporal"]) == 2 * 6
    assert torch.equal(model.time_embed, fresh_time)
    assert model.head.weight.shape == (4, 64)

    # Inflated with temporal_fc zero, a one-frame clip gives exactly the image ViT's features.
    image_vit = TimeSformer(**{**TINY, "attention": "space_only", "num_classes": 10}).eval()
    image_vit.load_state_dict({k: v for k, v in vit.items() if k != "fc_norm.weight"})
    frame = torch.randn(2, 3, 1, 32, 32)
    torch.testing.assert_close(model.forward_features(frame), image_vit.forward_features(frame))


def test_load_image_vit_same_classes_keeps_head_and_resizes_pos_embed():
    vit = _fake_image_vit(num_classes=4, img_size=32)  # 4x4 patch grid
    model = tiny(img_size=48)  # 6x6 patch grid
    report = model.load_image_vit(vit)
    assert report["resized"] == ["pos_embed"]
    assert report["dropped_keys"] == []
    assert torch.equal(model.head.weight, vit["head.weight"])
    assert model.pos_embed.shape == (1, 37, 64)
    assert torch.equal(model.pos_embed[:, 0], vit["pos_embed"][:, 0])
    assert model(torch.randn(1, 3, 4, 48, 48)).shape == (1, 4)


@pytest.mark.parametrize("src_size,dst_size", [(32, 48), (48, 32), (24, 40)])
def test_image_vit_pos_embed_is_resized_as_the_reference_one_dimensional_nearest(src_size, dst_size):
    # The reference (TimeSformer timesformer/models/helpers.py, load_pretrained): when num_patches + 1 !=
    # pos_embed.size(1), the CLS position is kept and the patch positions, taken as one sequence
    # (1, D, n), go through F.interpolate(size=num_patches, mode='nearest'): new patch i is old patch
    # floor(i * n / num_patches), whatever the grids' shapes (no 2-D or bicubic resampling).
    vit = _fake_image_vit(num_classes=4, img_size=src_size)
    model = tiny(img_size=dst_size)
    report = model.load_image_vit(vit)
    assert report["resized"] == ["pos_embed"]
    n, m = (src_size // 8) ** 2, (dst_size // 8) ** 2
    src, out = vit["pos_embed"], model.pos_embed.detach()
    assert out.shape == (1, 1 + m, 64)
    assert torch.equal(out[:, 0], src[:, 0])
    expected = torch.stack([src[0, 1 + (i * n) // m] for i in range(m)])
    assert torch.equal(out[0, 1:], expected)


def test_time_embed_of_another_clip_length_is_resized_nearest_as_the_reference():
    # load_pretrained: 'time_embed' of another length goes through F.interpolate(size=num_frames,
    # mode='nearest') over time: frame t takes old frame floor(t * T_old / T_new).
    vit = _fake_image_vit(num_classes=4)
    vit["time_embed"] = torch.randn(1, 4, 64)
    for frames in (8, 3):
        model = tiny(num_frames=frames)
        report = model.load_image_vit(vit)
        assert report["resized"] == ["time_embed"]
        expected = torch.stack([vit["time_embed"][0, (t * 4) // frames] for t in range(frames)])
        assert torch.equal(model.time_embed.detach()[0], expected)


def test_inflation_filter_for_other_attention_types_and_wrapped_checkpoints():
    vit = _fake_image_vit(num_classes=4)
    model = tiny(attention="joint_space_time")
    new_state, report = inflate_vit_state_dict(model, {"model": {f"module.{k}": v for k, v in vit.items()}})
    assert report["copied_to_temporal"] == []
    assert report["missing_keys"] == ["time_embed"]
    assert set(new_state) == set(model.state_dict()) - {"time_embed"}
    # The reference repository's checkpoint layout: {'model_state': {'model.<name>': ...}}.
    _, report = inflate_vit_state_dict(model, {"model_state": {f"model.{k}": v for k, v in vit.items()}})
    assert report["missing_keys"] == ["time_embed"] and report["unexpected_keys"] == ["fc_norm.weight"]


def test_inflation_rejects_incompatible_shapes():
    vit = _fake_image_vit()
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        tiny(patch_size=4).load_image_vit(vit)


def test_activation_checkpointing_gives_the_same_gradients():
    """`train.activation_checkpointing` recomputes the blocks in backward: same loss, same gradients."""
    model = models.create("timesformer_tiny")
    x = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=0)
