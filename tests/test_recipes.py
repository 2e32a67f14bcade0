"""nst_core.recipes: the one-call jobs (transfer, reconstruct, texture) with random weights."""

from __future__ import annotations

import pytest
import torch

from nst_core import reconstruct, texture, transfer

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


@pytest.mark.parametrize("size", [16, 40])
def test_texture_is_square(rand_ext, images, size):
    out = texture(rand_ext, images.checkerboard(32, 48), size=size, style_layers=["relu1_1", "relu2_1", "relu3_1"],
                  **FEW)
    check(out, (1, 3, size, size))


def test_texture_default_layers_need_16_px(rand_ext, images):
    check(texture(rand_ext, images.checkerboard(32, 32), size=16, **FEW), (1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        texture(rand_ext, images.checkerboard(32, 32), size=12, **FEW)
