"""Clip transforms: layouts, sizes, positions, determinism from an explicit generator."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from action_launch.datasets import transforms as T


def _frames(t=4, h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_to_tchw_is_a_view_keeping_dtype():
    f = _frames()
    x = T.to_tchw(f)
    assert x.shape == (4, 3, 24, 40) and x.dtype == torch.uint8
    assert torch.equal(x[1, 2], torch.from_numpy(f[1, :, :, 2]))
    assert x.data_ptr() == torch.from_numpy(f).data_ptr()  # no copy
    assert T.to_tchw(f.astype(np.float32) / 255).dtype == torch.float32
    with pytest.raises(ValueError, match="T, H, W, C"):
        T.to_tchw(f[0])
    with pytest.raises(ValueError, match="uint8 or float"):
        T.to_tchw(f.astype(np.int32))


def test_uint8_and_float_resize_agree_within_rounding():
    f = _frames()
    u = T.short_side_resize(T.to_tchw(f), 15)
    x = T.short_side_resize(T.to_tchw(f.astype(np.float32) / 255), 15)
    assert u.dtype == torch.uint8 and x.dtype == torch.float32
    assert (u.float() / 255 - x).abs().max() <= 1 / 255 + 1e-6


def test_short_side_resize_keeps_aspect_and_matches_interpolate():
    x = T.to_tchw(_frames()).float() / 255
    y = T.short_side_resize(x, 12)
    assert y.shape == (4, 3, 12, 20)
    ref = F.interpolate(x, size=(12, 20), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(y, ref)
    portrait = T.to_tchw(_frames(h=40, w=24))
    assert T.short_side_resize(portrait, 12).shape == (4, 3, 20, 12)
    assert T.short_side_resize(x, 24) is x  # no-op at the same size


def test_random_short_side_range_and_determinism():
    x = T.to_tchw(_frames())
    sizes = {T.random_short_side_resize(x, 16, 20, np.random.default_rng(s)).shape[-2] for s in range(60)}
    assert sizes == {16, 17, 18, 19, 20}
    with pytest.raises(ValueError, match="empty"):
        T.random_short_side_resize(x, 20, 16, np.random.default_rng(0))


def test_random_crop_covers_positions_and_is_seeded():
    x = T.to_tchw(_frames())
    a = T.random_crop(x, 16, np.random.default_rng(5))
    b = T.random_crop(x, 16, np.random.default_rng(5))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    # locate each crop's top row: all 9 possible ones are reached
    tops = set()
    for s in range(80):
        c = T.random_crop(x, 16, np.random.default_rng(s))
        tops.add(next(t for t in range(9) for l in range(25) if torch.equal(c, x[..., t : t + 16, l : l + 16])))
    assert tops == set(range(9))
    with pytest.raises(ValueError, match="larger"):
        T.random_crop(x, 30, np.random.default_rng(0))


def test_centre_and_three_crops():
    x = T.to_tchw(_frames())  # 24 x 40: landscape, crops move along the width
    left, centre, right = T.three_crop(x, 24)
    assert torch.equal(left, x[..., :, 0:24])
    assert torch.equal(centre, x[..., :, 8:32])
    assert torch.equal(right, x[..., :, 16:40])
    assert torch.equal(T.center_crop(x, 24), centre)
    assert torch.equal(T.center_crop(x, 10), x[..., 7:17, 15:25])
    p = T.to_tchw(_frames(h=40, w=24))
    top, _, bottom = T.three_crop(p, 24)
    assert torch.equal(top, p[..., 0:24, :]) and torch.equal(bottom, p[..., 16:40, :])


def test_flip():
    x = T.to_tchw(_frames())
    assert torch.equal(T.horizontal_flip(x, np.random.default_rng(0), p=1.0), x.flip(-1))
    assert T.horizontal_flip(x, np.random.default_rng(0), p=0.0) is x
    flips = sum(not torch.equal(T.horizontal_flip(x, np.random.default_rng(s)), x) for s in range(100))
    assert 30 < flips < 70


def test_normalize_to_cthw():
    x = T.to_tchw(_frames())
    y = T.normalize(x, [0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    assert y.shape == (3, 4, 24, 40) and y.dtype == torch.float32 and y.is_contiguous()
    assert torch.allclose(y[1, 2], (x[2, 1].float() / 255 - 0.4) / 0.25, atol=1e-5)
    xf = x.float() / 255  # float input is on the 0-1 scale
    assert torch.allclose(T.normalize(xf, [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]), y, atol=1e-5)


def test_multi_scale_crop_sizes_positions_and_seed():
    x = T.to_tchw(_frames(h=64, w=80))
    for s in range(50):
        assert T.multi_scale_crop(x, 32, np.random.default_rng(s)).shape == (4, 3, 32, 32)
    a = T.multi_scale_crop(x, 32, np.random.default_rng(3))
    assert torch.equal(a, T.multi_scale_crop(x, 32, np.random.default_rng(3)))
    # scale 1 with no distortion and a fixed offset: the crop is the top-left 64x64, resized
    rng = np.random.default_rng(0)
    y = T.multi_scale_crop(x, 64, rng, scales=(1.0,), more_fix_crop=False)
    corners = [x[..., :, o : o + 64] for o in (0, 16, 8)]
    assert any(torch.equal(y, c) for c in corners)


def test_train_and_eval_chains():
    f = _frames(t=3, h=24, w=40)
    a = T.train_clip(f, 16, [18, 24], [0.45] * 3, [0.225] * 3, np.random.default_rng(1))
    b = T.train_clip(f, 16, [18, 24], [0.45] * 3, [0.225] * 3, np.random.default_rng(1))
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    c = T.train_clip(f, 16, [18, 24], [0.45] * 3, [0.225] * 3, np.random.default_rng(1), multi_scale=True)
    assert c.shape == (3, 3, 16, 16)
    e = T.eval_clip(f, 16, 20, [0.0] * 3, [1.0] * 3)
    expected = T.center_crop(T.short_side_resize(T.to_tchw(f), 20), 16).permute(1, 0, 2, 3).float() / 255
    assert torch.allclose(e, expected, atol=1e-6)
    assert T.eval_clip(f, 16, 20, [0.0] * 3, [1.0] * 3, crop_index=0).shape == (3, 3, 16, 16)
