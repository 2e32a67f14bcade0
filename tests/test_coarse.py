"""nst_core.coarse: a scale's deep layers on a coarser copy of the image, the rest on the image itself."""

from __future__ import annotations

import pytest
import torch

from nst_core import optimize
from nst_core.coarse import SplitObjective, coarse_hw, is_coarse, scale_objective
from nst_core.image import resize
from nst_core.objective import Objective
from nst_core.optimizer import validate_settings
from nst_core.presets import Settings
from nst_core.targets import ContentTarget, StyleTarget

FINE, DEEP = ("relu1_1", "relu2_1"), ("relu3_1", "relu4_1", "relu5_1")
WEIGHTS = (4.0, 2.0, 1.0, 1.0, 0.25)
SETTINGS = Settings(tv_weight=1.0, style_weight=5.0, autocast_bf16=False, coarse_scale=0.5, coarse_min_size=16)


def _targets(ext, images, hw):
    content = ContentTarget.create(ext, images.gradient(*hw), "relu4_2")
    style = StyleTarget.create(ext, images.checkerboard(64, 64), FINE + DEEP, WEIGHTS)
    return content, style


def test_the_layers_from_block_3_on_are_coarse():
    assert [is_coarse("vgg19", n) for n in FINE + DEEP + ("relu4_2", "conv5_1", "relu2_2", "pool2", "conv3_1")] == \
        [False, False, True, True, True, True, True, False, True, True]
    assert coarse_hw((91, 75), 0.5) == (46, 38)


def test_the_coarse_copy_keeps_a_long_edge_of_at_least_the_minimum():
    """A 512 px run (scales 256, 362, 512) keeps its deep layers at 256 px after the first scale; a 256 px
    run is not split (its coarse copy would be the image itself)."""
    assert coarse_hw((384, 512), 0.5, 256) == (192, 256)
    assert coarse_hw((272, 362), 0.5, 256) == (192, 256)
    assert coarse_hw((768, 1024), 0.5, 256) == (384, 512)
    assert coarse_hw((192, 256), 0.5, 256) == (192, 256) and coarse_hw((136, 181), 0.5, 256) == (136, 181)


def test_the_split_gradient_is_each_part_through_the_resize(rand_ext, images):
    """The same gradient and losses as two separately built objectives, the coarse one differentiated
    through the resize by autograd: fine layers and smoothness at 96×128, deep layers and content at 48×64."""
    hw, small = (96, 128), (48, 64)
    content, style = _targets(rand_ext, images, hw)
    x = 0.7 * images.stripes(*hw) + 0.3 * images.noise(*hw, seed=1)
    split = scale_objective(rand_ext, SETTINGS, hw, content, (style,), first=False)
    assert isinstance(split, SplitObjective) and split.small == small
    xs = x.clone().requires_grad_(True)
    parts = split.gradient(xs)

    total = sum(WEIGHTS)
    fine = StyleTarget.create(rand_ext, images.checkerboard(64, 64), FINE, WEIGHTS[:2], weight=sum(WEIGHTS[:2]) / total)
    deep = StyleTarget.create(rand_ext, images.checkerboard(64, 64), DEEP, WEIGHTS[2:], weight=sum(WEIGHTS[2:]) / total)
    xr = x.clone().requires_grad_(True)
    ref_fine = Objective(rand_ext, SETTINGS, hw, None, (fine,)).gradient(xr)
    ref_deep = Objective(rand_ext, SETTINGS.replace(tv_weight=0.0), small, content, (deep,)).gradient(resize(xr, small))
    assert float((xs.grad - xr.grad).norm() / xr.grad.norm()) < 1e-5
    assert float(parts["content"]) == pytest.approx(float(ref_deep["content"]), rel=1e-5)
    assert float(parts["style"]) == pytest.approx(float(ref_fine["style"] + ref_deep["style"]), rel=1e-5)
    assert float(parts["tv"]) == pytest.approx(float(ref_fine["tv"]), rel=1e-6)
    assert float(parts["total"]) == pytest.approx(float(ref_fine["total"] + ref_deep["total"]), rel=1e-5)


def test_a_tiled_split_gives_the_whole_split_gradient(rand_ext, images):
    """Both parts in tiles of 32 px (several backward passes through the one resize): the same gradient."""
    hw = (96, 128)
    content, style = _targets(rand_ext, images, hw)
    x = 0.7 * images.stripes(*hw) + 0.3 * images.noise(*hw, seed=1)
    grads = []
    for settings in (SETTINGS, SETTINGS.replace(tile=32)):
        obj = scale_objective(rand_ext, settings, hw, content, (style,), first=False)
        assert isinstance(obj, SplitObjective) and obj.fine.tiled == obj.coarse.tiled == (settings.tile == 32)
        xs = x.clone().requires_grad_(True)
        obj.gradient(xs)
        grads.append(xs.grad)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-3


def test_the_split_is_made_only_where_it_has_both_sides(rand_ext, images):
    hw = (96, 128)
    content, style = _targets(rand_ext, images, hw)

    def whole(**changes):
        return scale_objective(rand_ext, SETTINGS.replace(**changes), hw, content, (style,), first=False)

    assert isinstance(scale_objective(rand_ext, SETTINGS, hw, content, (style,), first=True), Objective)
    assert isinstance(whole(coarse_scale=1.0), Objective)
    assert isinstance(whole(coarse_min_size=128), Objective)  # the coarse copy would be the image
    assert isinstance(whole(coarse_min_size=80), SplitObjective) and whole(coarse_min_size=80).small == (60, 80)
    small_hw = (48, 64)  # at 0.25: 12×16, smaller than relu5_1's 16 px cell
    assert isinstance(scale_objective(rand_ext, SETTINGS.replace(coarse_scale=0.25), small_hw, content, (style,),
                                      first=False), Objective)
    assert isinstance(scale_objective(rand_ext, SETTINGS, small_hw, content, (style,), first=False), SplitObjective)
    deep_only = StyleTarget.create(rand_ext, images.checkerboard(64, 64), DEEP)
    assert isinstance(scale_objective(rand_ext, SETTINGS, hw, content, (deep_only,), first=False), Objective)
    shallow_content = ContentTarget.create(rand_ext, images.gradient(*hw), "relu2_1")
    obj = scale_objective(rand_ext, SETTINGS, hw, shallow_content, (style,), first=False)
    assert obj.fine.content is shallow_content and obj.coarse.content is None
    assert sorted(obj.fine.layers) == sorted(FINE) and sorted(obj.coarse.layers) == sorted(DEEP)


@pytest.mark.parametrize("change, message", [(dict(coarse_scale=0.1), "coarse_scale must be in"),
                                             (dict(coarse_scale=0.0), "coarse_scale must be in"),
                                             (dict(coarse_scale=1.5), "coarse_scale must be in"),
                                             (dict(coarse_min_size=0), "coarse_min_size must be at least 1")])
def test_a_coarse_setting_out_of_range_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        validate_settings(Settings(**change))


def test_a_pyramid_run_splits_its_later_scales(rand_ext, images, monkeypatch):
    """Three scales (64, 91, 128 px): the first whole, the others split; the run reports every part."""
    made = []
    real = SplitObjective.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self.small)

    monkeypatch.setattr(SplitObjective, "__init__", spy)
    content, style = _targets(rand_ext, images, (96, 128))
    seen = []
    out = optimize(rand_ext, content, style, settings=SETTINGS.replace(steps=2, min_size=64),
                   progress=lambda p: seen.append((p.size, p.losses)))
    assert out.shape == (1, 3, 96, 128) and bool(torch.isfinite(out).all())
    assert made == [(34, 46), (48, 64)]
    assert [size for size, _ in seen] == [(48, 64)] * 2 + [(68, 91)] * 2 + [(96, 128)] * 2
    assert {"content", "style", "tv"} <= set(seen[-2][1])
