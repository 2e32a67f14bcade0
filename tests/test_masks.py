"""Spatial control: style regions from masks and a content-strength mask (targets.mask_at, optimize regions)."""

from __future__ import annotations

import pytest
import torch

from nst_core import ContentTarget, Settings, StyleTarget, optimize
from nst_core import statistics as st
from nst_core.targets import mask_at
from nst_core.transport import transport_residual

LAYERS = ("relu1_1", "relu2_1", "relu3_1")
SIZE = 64


def run_settings(**kw) -> Settings:
    base = dict(steps=60, min_size=1 << 20, lr=0.05, ema_decay=0.5, style_weight=5.0, content_weight=0.2,
                autocast_bf16=False, transport_every=5)
    base.update(kw)
    return Settings(**base)


def halves(h: int = SIZE, w: int = SIZE):
    left = torch.zeros(1, 1, h, w)
    left[..., : w // 2] = 1
    return left, 1 - left


def region_w2(ext, image, target: StyleTarget, mask) -> float:
    """The W2 distance of the image's features under ``mask`` to ``target``'s statistics, summed over layers."""
    feats = ext(image, list(LAYERS))
    targets = target.at_size(ext, SIZE)
    total = 0.0
    for n in LAYERS:
        f = feats[n].flatten(2)
        w = mask_at(mask, tuple(feats[n].shape[-2:]), f.device).flatten(2)
        w2, _ = transport_residual(f, targets[n], w)
        total += float(w2.mean()) / targets[n].norm
    return total


def test_two_masked_styles_each_paint_their_own_half(rand_ext, images):
    left, right = halves()
    a = StyleTarget.create(rand_ext, images.checkerboard(SIZE, SIZE), LAYERS, mask=left)
    b = StyleTarget.create(rand_ext, images.stripes(SIZE, SIZE), LAYERS, mask=right)
    content = ContentTarget.create(rand_ext, images.gradient(SIZE, SIZE), "relu2_1")
    out = optimize(rand_ext, content, [a, b], settings=run_settings())
    for mask, own, other in ((left, a, b), (right, b, a)):
        inside_own = region_w2(rand_ext, out, own, mask)
        inside_other = region_w2(rand_ext, out, other, mask)
        assert inside_own < 0.8 * inside_other, (inside_own, inside_other)


def test_an_unmasked_style_covers_what_the_masks_leave(rand_ext, images):
    left, right = halves()
    a = StyleTarget.create(rand_ext, images.checkerboard(SIZE, SIZE), LAYERS, mask=left)
    rest = StyleTarget.create(rand_ext, images.stripes(SIZE, SIZE), LAYERS)
    out = optimize(rand_ext, None, [a, rest], init="noise", size=SIZE, settings=run_settings(content_weight=0))
    assert region_w2(rand_ext, out, rest, right) < 0.8 * region_w2(rand_ext, out, a, right)
    with pytest.raises(ValueError, match="more than one style target without a mask"):
        optimize(rand_ext, None, [rest, rest], init="noise", size=SIZE, settings=run_settings(steps=1))


def test_a_content_mask_holds_the_content_harder_where_it_is_white(rand_ext, images):
    left, _ = halves()
    style = StyleTarget.create(rand_ext, images.checkerboard(SIZE, SIZE), LAYERS)
    photo = images.gradient(SIZE, SIZE)

    def content_error(mask) -> float:
        c = ContentTarget.create(rand_ext, photo, "relu2_1", mask=mask)
        out = optimize(rand_ext, c, style, settings=run_settings(style_weight=20.0))
        f = rand_ext(out, ["relu2_1"])["relu2_1"]
        t = rand_ext(photo, ["relu2_1"])["relu2_1"]
        w = mask_at(left, tuple(f.shape[-2:]), f.device)
        return float(((f - t).pow(2) * w).sum() / (t.pow(2) * w).sum())

    assert content_error(left[0]) < 0.9 * content_error(None)


def test_a_soft_mask_leaves_no_seam(rand_ext, images):
    """Gradient energy of the output along the mask's edge is no higher than a few pixels away from it."""
    ramp = torch.linspace(-6, 6, SIZE).sigmoid().view(1, 1, 1, SIZE).expand(1, 1, SIZE, SIZE)
    a = StyleTarget.create(rand_ext, images.checkerboard(SIZE, SIZE), LAYERS, mask=ramp)
    b = StyleTarget.create(rand_ext, images.stripes(SIZE, SIZE), LAYERS, mask=1 - ramp)
    out = optimize(rand_ext, None, [a, b], init="noise", size=SIZE, settings=run_settings(content_weight=0, tv_weight=0.5))
    dx = (out[..., :, 1:] - out[..., :, :-1]).pow(2).mean(dim=(0, 1, 2))  # energy per column boundary
    edge = float(dx[SIZE // 2 - 2 : SIZE // 2 + 1].mean())
    near = float(torch.cat([dx[SIZE // 2 - 14 : SIZE // 2 - 6], dx[SIZE // 2 + 6 : SIZE // 2 + 14]]).mean())
    assert edge <= 1.25 * near, (edge, near)


def test_masks_follow_each_layers_grid_and_stay_soft():
    soft = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    small = mask_at(soft, (8, 8), torch.device("cpu"))
    assert small.shape == (1, 1, 8, 8)
    assert 0 < float(small.min()) < 0.1 and 0.9 < float(small.max()) < 1  # averaged, not thresholded
    assert torch.all(small[..., 1:] > small[..., :-1])


def test_bad_masks_are_refused_clearly(rand_ext, images):
    with pytest.raises(ValueError, match="all black"):
        StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, mask=torch.zeros(32, 32))
    with pytest.raises(ValueError, match=r"shape \[H,W\], \[B,H,W\] or \[B,1,H,W\]"):
        StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, mask=torch.ones(1, 3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1", mask=torch.full((32, 32), float("nan")))
    with pytest.raises(TypeError, match="MASK"):
        ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1", mask=[[1.0]])


def test_weighted_moments_of_a_hard_mask_are_the_moments_of_the_region(rand_ext, images):
    left, _ = halves(32, 32)
    x = images.checkerboard(32, 32)
    f = rand_ext(x, ["relu1_1"])["relu1_1"]
    mean, second = st.moments(f, left)
    inside = f[..., :16]
    want_mean, want_second = st.moments(inside)
    assert torch.allclose(mean, want_mean, atol=1e-6) and torch.allclose(second, want_second, rtol=1e-5, atol=1e-6)
