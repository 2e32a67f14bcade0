"""nst_core.objective: one objective, whole or in tiles; the whole image is the grid of one tile."""

from __future__ import annotations

import itertools
from typing import Dict, Tuple

import pytest
import torch

from nst_core.objective import Objective
from nst_core.presets import Settings
from nst_core.targets import ContentTarget, StyleTarget

HW = (80, 112)


def _grad(obj: Objective, x: torch.Tensor, exact: bool = True, **kw) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    parts = obj.gradient(x, exact, **kw)
    return x.grad, parts


def _one_tile(obj: Objective) -> Objective:
    """A whole-image ``obj`` evaluated by the tiled path on a grid of one tile without a halo: a gather
    pass of its own, a crop, owned slices, the image-sized terms in the last tile's backward."""
    obj.tiled = True
    obj._offset = lambda: (0, 0)
    assert [t.crop for t in obj.geo.tiles()] == [t.own for t in obj.geo.tiles()] == [(0, HW[0], 0, HW[1])]
    return obj


@pytest.fixture
def setup(rand_ext, images):
    def make(statistic: str, masked: bool, **settings):
        mask = torch.zeros(1, 1, *HW)
        mask[..., :, :50] = 1
        c = ContentTarget.create(rand_ext, images.gradient(*HW), "relu4_2", mask=mask if masked else None)
        first = StyleTarget.create(rand_ext, images.checkerboard(64, 64), statistic=statistic,
                                   mask=mask if masked else None)
        regions = ((first, StyleTarget.create(rand_ext, images.stripes(64, 64), statistic=statistic)) if masked
                   else (first,))
        s = Settings(tv_weight=1.0, style_weight=5.0, autocast_bf16=False, **settings)
        extra = lambda im: 0.3 * (im - 0.5).pow(2).mean()  # noqa: E731 - a caller's term (frames' temporal loss)

        def build(whole: bool) -> Objective:
            obj = Objective(rand_ext, s, HW, c, regions, extra)
            return obj if whole else _one_tile(obj)

        return build

    return make


@pytest.mark.parametrize("statistic, masked", list(itertools.product(("moments", "gram", "gram_normalized"),
                                                                     (False, True))))
def test_the_whole_image_is_the_objective_of_one_tile(setup, images, statistic, masked):
    """Content (with its mask), style per region (masks), smoothness and the extra term: the same
    gradient and losses through the tiled path with one tile as through the whole image."""
    build = setup(statistic, masked, transport_every=3)
    whole, tiled = build(True), build(False)
    assert not whole.tiled and len(whole.geo.tiles()) == 1
    x0 = 0.7 * images.stripes(*HW) + 0.3 * images.noise(*HW, seed=1)
    x1 = (x0 + 0.05 * images.noise(*HW, seed=3)).clamp(0, 1)
    for x, exact in ((x0, True), (x1, False)):  # a refresh, then a step between refreshes (W2: stored goals)
        (g_whole, p_whole), (g_tiled, p_tiled) = _grad(whole, x, exact), _grad(tiled, x, exact)
        assert float((g_tiled - g_whole).norm() / g_whole.norm()) < 1e-5, exact
        assert set(p_tiled) == set(p_whole) == {"content", "style", "tv", "extra", "total"}
        for k in p_whole:
            assert float(p_tiled[k]) == pytest.approx(float(p_whole[k]), rel=1e-5, abs=1e-9), (k, exact)


def test_the_whole_image_gathers_its_statistics_from_the_pass_itself(setup, images, rand_ext, monkeypatch):
    """One forward and one backward per step, refresh or not: no gather pass over the whole image."""
    obj = setup("moments", False, transport_every=3)(True)
    calls = []
    real = type(rand_ext).forward
    monkeypatch.setattr(type(rand_ext), "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    x = images.stripes(*HW)
    for exact in (True, False, False):
        _grad(obj, x, exact)
    assert len(calls) == 3


def test_a_step_stopped_between_tiles_leaves_nothing_half_gathered(rand_ext, images):
    """``between_tiles`` may raise (a Cancel) in the gather pass: the next step's statistics are whole."""
    c = ContentTarget.create(rand_ext, images.gradient(*HW), "relu4_2")
    s = (StyleTarget.create(rand_ext, images.checkerboard(64, 64)),
         StyleTarget.create(rand_ext, images.stripes(64, 64), statistic="gram", mask=torch.ones(1, 1, *HW)))
    settings = Settings(style_weight=5.0, autocast_bf16=False, tile=32)
    stopped, fresh = (Objective(rand_ext, settings, HW, c, s, halo=128) for _ in range(2))
    x = images.stripes(*HW)
    calls = []

    def stop_at_third() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _grad(stopped, x, True, between_tiles=stop_at_third)
    assert len(calls) == 3 < len(stopped.geo.tiles())  # stopped inside the gather pass
    g, _ = _grad(stopped, x, True)
    want, _ = _grad(fresh, x, True)
    assert float((g - want).norm() / want.norm()) < 1e-5
