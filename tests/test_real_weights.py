"""End to end with the real original VGG19 weights, at a small size (runs by default; marked ``slow``).

Checks, with numbers, that a short transfer moves the output's style statistics toward the style image
while its content features stay closer to the content image than the style image's are.
"""

from __future__ import annotations

from typing import List

import pytest
import torch

import nst_core
from nst_core import statistics as st
from nst_core.image import resize

pytestmark = pytest.mark.slow

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
STEPS = 20


def style_distances(ext, image: torch.Tensor, style: torch.Tensor) -> List[float]:
    """Per layer: MSE between Gram/(C·H·W) matrices, relative to the style Gram's mean square."""
    with torch.no_grad():
        a, b = ext(image, STYLE_LAYERS), ext(style, STYLE_LAYERS)
    out = []
    for n in STYLE_LAYERS:
        ga, gb = st.gram(a[n])[0], st.gram(b[n])[0]
        out.append(float((ga - gb).pow(2).mean() / gb.pow(2).mean()))
    return out


def content_distance(ext, image: torch.Tensor, content: torch.Tensor) -> float:
    """MSE between relu4_2 activations (both images at the content's size)."""
    image = resize(image, tuple(content.shape[-2:]))
    with torch.no_grad():
        fa, fb = ext(image, ["relu4_2"])["relu4_2"], ext(content, ["relu4_2"])["relu4_2"]
    return float((fa - fb).pow(2).mean())


def check_transfer(ext, content: torch.Tensor, style: torch.Tensor, max_ratio: float) -> None:
    """Run a short transfer; the mean style distance must drop below ``max_ratio`` × the content image's."""
    seen = []
    out = nst_core.transfer(ext, content, style, preset="quality", steps=STEPS, min_size=10_000,
                            progress=seen.append)
    assert out.shape == content.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert seen[-1].step == STEPS

    before = style_distances(ext, content, style)
    after = style_distances(ext, out, style)
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    assert mean_after < max_ratio * mean_before, (before, after)
    assert sum(a < b for a, b in zip(after, before)) >= 4, (before, after)

    kept = content_distance(ext, out, content)
    style_far = content_distance(ext, style, content)
    assert kept < 0.75 * style_far, (kept, style_far)
    # the output really changed: it is not the content image
    assert (out - content).abs().mean() > 0.01


def test_transfer_with_original_weights_on_generated_images(real_ext, images):
    assert real_ext.weights_name == "original" and real_ext.preprocessing == "caffe"
    # measured: 0.93 -> 0.71 (a smooth gradient is far from a hard-edged checkerboard)
    check_transfer(real_ext, images.gradient(72, 96), images.checkerboard(96, 96, tile=6), max_ratio=0.85)


def test_transfer_with_original_weights_on_sample_photos(real_ext, data_image):
    content = nst_core.load_image(str(data_image("shipwreck.jpg")), long_edge=112)
    style = nst_core.load_image(str(data_image("starry_night.jpg")), long_edge=112)
    # measured: 0.54 -> 0.20
    check_transfer(real_ext, content, style, max_ratio=0.6)
