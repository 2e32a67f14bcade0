"""nst_core.recipes: the one-call jobs (transfer, reconstruct, texture) with random weights."""

from __future__ import annotations

import pytest
import torch

from nst_core import Settings, reconstruct, texture, transfer
from nst_core.image import load_image
from nst_core.recipes import RECONSTRUCT_TOLERANCE

FEW = dict(steps=2, first_steps=2)


def check(out: torch.Tensor, shape) -> None:
    assert tuple(out.shape) == tuple(shape)
    assert out.device.type == "cpu"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("preset", ["fast", "quality", "seed"])
def test_transfer_keeps_the_content_size(rand_ext, images, preset):
    content = images.gradient(24, 40)
    out = transfer(rand_ext, content, images.checkerboard(32, 32), preset=preset, **FEW)
    check(out, (1, 3, 24, 40))
    assert not torch.allclose(out, content, atol=1e-3)  # it did something


def test_transfer_size_and_overrides(rand_ext, images):
    seen = []
    out = transfer(rand_ext, images.gradient(48, 64), [images.checkerboard(32, 32), images.stripes(24, 40)],
                   size=32, style_layers="relu1_1,relu2_1", statistic="gram", style_blend=[1, 2],
                   content_layer="relu2_2", progress=seen.append, **FEW)
    check(out, (1, 3, 24, 32))
    assert seen[-1].size == (24, 32)
    assert seen[-1].step == seen[-1].total == 2


def test_transfer_content_batch(rand_ext, images):
    out = transfer(rand_ext, images.gradient(32, 32, batch=2), images.checkerboard(32, 32), **FEW)
    check(out, (2, 3, 32, 32))


def test_transfer_rejects_bad_arguments(rand_ext, images):
    with pytest.raises(ValueError, match="unknown preset"):
        transfer(rand_ext, images.gradient(32, 32), images.checkerboard(32, 32), preset="nope")
    with pytest.raises(ValueError, match="unknown setting"):
        transfer(rand_ext, images.gradient(32, 32), images.checkerboard(32, 32), stepz=3)


def test_reconstruct_has_the_content_size(rand_ext, images):
    content = images.gradient(20, 36)
    seen = []
    out = reconstruct(rand_ext, content, layer="relu2_1", steps=3, progress=seen.append)
    check(out, (1, 3, 20, 36))
    assert [p.step for p in seen] == [1, 2, 3]
    out = reconstruct(rand_ext, content, layer="relu1_1", size=18, steps=2)
    check(out, (1, 3, 10, 18))


def test_reconstruct_stops_early_by_default_and_keeps_the_budget_when_asked(rand_ext, images):
    assert Settings().lbfgs_tolerance == 0 < RECONSTRUCT_TOLERANCE  # only reconstruct stops early by default
    img = images.gradient(32, 32)
    counted = []
    reconstruct(rand_ext, img, "relu1_1", steps=400, progress=counted.append)
    assert len(counted) < 400 and len(counted) % 20 == 0
    fixed = []
    reconstruct(rand_ext, img, "relu1_1", steps=60, lbfgs_tolerance=0.0, progress=fixed.append)
    assert len(fixed) == 60
    with pytest.raises(ValueError, match="lbfgs_tolerance must be a finite number ≥ 0"):
        reconstruct(rand_ext, img, "relu1_1", steps=20, lbfgs_tolerance=-1.0)


@pytest.mark.slow
def test_reconstruct_from_relu2_2_is_near_the_photo_without_speckle(real_ext, data_image):
    """The start is faint noise on gray: from full-range noise, what relu2_2 cannot see of the start stayed
    in the result (colour speckle, and cyan rings where the clip to [0, 1] cut bright skin every outer step)."""
    photo = load_image(str(data_image("shipwreck.jpg")), 64)
    err = lambda x: float((x - photo).pow(2).mean())  # noqa: E731
    default = err(reconstruct(real_ext, photo, "relu2_2", steps=160))
    noisy = err(reconstruct(real_ext, photo, "relu2_2", steps=160, init="noise"))
    print(f"MSE against the photo: default start {default:.5f}, full-range noise {noisy:.5f}")
    assert default < noisy / 3 and default < 0.01


@pytest.mark.parametrize("size", [16, 40])
def test_texture_is_square(rand_ext, images, size):
    out = texture(rand_ext, images.checkerboard(32, 48), size=size, style_layers=["relu1_1", "relu2_1", "relu3_1"],
                  **FEW)
    check(out, (1, 3, size, size))


def test_texture_default_layers_need_16_px(rand_ext, images):
    check(texture(rand_ext, images.checkerboard(32, 32), size=16, **FEW), (1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        texture(rand_ext, images.checkerboard(32, 32), size=12, **FEW)
