"""nst_core.canvas: the output optimised inside a larger canvas whose margin is cut off at the end."""

from __future__ import annotations

import pytest
import torch

import nst_core
from nst_core import optimize
from nst_core.canvas import Canvas, extend
from nst_core.coarse import scale_objective
from nst_core.image import resize
from nst_core.presets import Settings, get_preset
from nst_core.targets import ContentTarget, StyleTarget

SETTINGS = Settings(steps=3, min_size=24, tv_weight=1.0, style_weight=5.0, autocast_bf16=False, margin=4)


def _targets(ext, images, hw, mask=None):
    content = ContentTarget.create(ext, images.gradient(*hw), "relu2_2", mask=mask)
    style = StyleTarget.create(ext, images.checkerboard(64, 64), ("relu1_1", "relu2_1"))
    return content, style


def test_the_extension_goes_on_with_the_slope():
    """A ramp goes on across the edge (within 0..1); masks are mirrored; no margin is no change."""
    ramp = torch.linspace(0.2, 0.8, 7).view(1, 1, 1, 7).expand(1, 1, 5, 7)
    out = extend(ramp, 3)
    assert out.shape[-2:] == (11, 13)
    assert torch.allclose(out[0, 0, 5, :], torch.tensor([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                         1.0, 1.0]), atol=1e-6)
    assert torch.equal(out[..., 3:8, 3:10], ramp)
    assert torch.equal(extend(ramp, 3, smooth=False)[0, 0, 5, :3], ramp[0, 0, 0, 1:4].flip(0))
    assert extend(ramp, 0) is ramp
    tiny = torch.rand(1, 3, 2, 2)
    assert extend(tiny, 4).shape[-2:] == (10, 10)  # too small to mirror: repeated


def test_a_vignette_gets_no_fold_at_the_edge():
    """An image that darkens toward its edge keeps darkening beyond it: no valley for the style to paint."""
    y = torch.linspace(-1, 1, 32).view(1, 1, 32, 1).expand(1, 3, 32, 24)
    vignette = 0.2 + 0.5 * (1 - y.abs())
    rows = extend(vignette, 6)[0, 0, :, 10]
    assert bool((rows[1:7] - rows[:6] > 0).all())  # still rising toward the interior
    assert bool((extend(vignette, 6, smooth=False)[0, 0, :7, 10].diff() < 0).all())  # the plain mirror folds


def test_the_canvas_geometry():
    canvas = Canvas((384, 512), 8)
    assert canvas.margin_at((384, 512)) == 8 and canvas.margin_at((192, 256)) == 4 and canvas.margin_at((6, 8)) == 1
    assert canvas.around((272, 362)) == (284, 374)
    x = torch.rand(1, 3, 192, 256)
    assert torch.equal(canvas.inner(extend(x, 4), (192, 256)), x)
    off = Canvas((384, 512), 0)
    assert off.margin_at((384, 512)) == 0 and off.around((20, 30)) == (20, 30) and off.inner(x, (192, 256)) is x
    fn = lambda t: t.shape  # noqa: E731
    assert off.cropping(fn, (192, 256)) is fn and canvas.cropping(None, (192, 256)) is None
    assert canvas.cropping(fn, (192, 256))(extend(x, 4)) == x.shape


def test_the_targets_are_extended_to_the_canvas(rand_ext, images):
    hw = (40, 48)
    cmask = torch.zeros(1, 1, 20, 24)
    cmask[..., :, :12] = 1
    content, style = _targets(rand_ext, images, hw, mask=cmask)
    region = StyleTarget.create(rand_ext, images.stripes(64, 64), ("relu1_1",), mask=cmask)
    canvas = Canvas(hw, 4)
    c, (s, r) = canvas.targets(content, (style, region))
    assert c.image.shape[-2:] == (48, 56) and torch.allclose(canvas.inner(c.image, hw), content.image, atol=1e-6)
    assert c.mask.shape[-2:] == (48, 56) and float(c.mask[..., :26].min()) == 1.0 and float(c.mask[..., 32:].max()) == 0
    assert s is style and r.mask.shape[-2:] == (48, 56) and c.layer == content.layer and c.weight == content.weight
    assert Canvas(hw, 0).targets(content, [style]) == (content, (style,))


def test_a_run_on_a_canvas_gives_the_output_and_shows_only_it(rand_ext, images):
    """The output, the previews, the progress sizes and the caller's extra loss all see the output part."""
    hw = (36, 48)
    content, style = _targets(rand_ext, images, hw)
    seen, previews, sizes = [], [], []

    def extra(image):
        seen.append(tuple(image.shape[-2:]))
        return image.mean() * 0

    out = optimize(rand_ext, content, style, settings=SETTINGS.replace(preview_every=1), extra_loss=extra,
                   preview=lambda k, img: previews.append(tuple(img.shape[-2:])),
                   progress=lambda p: sizes.append(p.size))
    assert out.shape == (1, 3, *hw)
    assert sorted(set(seen)) == [(18, 24), (26, 34), (36, 48)] and set(previews) == set(seen) == set(sizes)
    lbfgs = optimize(rand_ext, content, style, settings=SETTINGS.replace(optimizer="lbfgs", steps=2, lbfgs_max_iter=2))
    assert lbfgs.shape == (1, 3, *hw)
    init = optimize(rand_ext, content, style, init=images.noise(20, 30), settings=SETTINGS)
    assert init.shape == (1, 3, *hw)


def test_the_margin_does_not_change_the_style_size(rand_ext, images):
    """The style statistics of a scale are the output part's (a 48 px long edge), not the canvas's (56 px);
    a split scale's coarse copy gets the output part's size in proportion."""
    hw, whole = (36, 48), (44, 56)
    content, style = _targets(rand_ext, images, hw)
    style = StyleTarget.create(rand_ext, images.checkerboard(64, 64), ("relu1_1", "relu4_1"))
    settings = SETTINGS.replace(coarse_scale=0.5, coarse_min_size=16)
    scale_objective(rand_ext, settings, whole, content, (style,), first=True, output_hw=hw)
    assert [k[1] for k in style._memo.items] == [48]
    split = scale_objective(rand_ext, settings, whole, content, (style,), first=False, output_hw=hw)
    assert split.small == (22, 28) and [k[1] for k in split.coarse.regions[0]._memo.items] == [24]


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_a_bad_margin_is_refused(rand_ext, images, bad):
    content, style = _targets(rand_ext, images, (32, 32))
    with pytest.raises(ValueError, match="margin must be a whole number"):
        optimize(rand_ext, content, style, settings=SETTINGS.replace(margin=bad))


def test_the_presets_use_a_margin():
    assert get_preset("quality").settings.margin == 8 and get_preset("fast").settings.margin == 8
    assert get_preset("seed").settings.margin == 0 and Settings().margin == 0


def _edge_lines(out: torch.Tensor, content: torch.Tensor) -> dict:
    """Each edge's outer 2 rows (columns) against rows 3–5 in, of the output less the content (gray levels)."""
    d = (out - resize(content, tuple(out.shape[-2:]))).mean(1)[0] * 255
    sides = {"top": d, "bottom": d.flip(0), "left": d.t(), "right": d.t().flip(0)}
    return {k: float(t[:2].mean() - t[3:6].mean()) for k, t in sides.items()}


@pytest.mark.slow
def test_no_line_along_the_output_edges(real_ext, data_image):
    """A smooth, dark portrait-like image under The Starry Night at 128 px: no line along any edge.

    Without the margin the top and bottom rows come out 20–41 gray levels darker than the rows just
    inside (the edge padding's flat context, painted as an outline; the interior's own rows differ by
    up to 18 at the 90th percentile); with it, 0–14, fp32 or bf16.
    """
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 96), indexing="ij")
    face = torch.exp(-((xx / 0.45) ** 2 + (yy / 0.6) ** 2))
    content = torch.stack([0.12 + 0.6 * face, 0.10 + 0.45 * face, 0.10 + 0.35 * face])[None]
    content = (content + 0.03 * torch.sin(xx * 20) * face).clamp(0, 1)
    style = nst_core.load_image(str(data_image("starry_night.jpg")))
    lines = _edge_lines(nst_core.transfer(real_ext, content, [style], size=128), content)
    without = _edge_lines(nst_core.transfer(real_ext, content, [style], size=128, margin=0), content)
    print("\nedge lines (gray levels):", {k: round(v, 1) for k, v in lines.items()},
          "without the margin:", {k: round(v, 1) for k, v in without.items()})
    assert max(abs(v) for v in lines.values()) < 20, lines
    assert min(without.values()) < -20, without  # the line this test guards against
