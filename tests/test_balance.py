"""balance.py: the style weight scaled by the pair's content-to-style distance."""

import pytest
import torch

from nst_core import ContentTarget, Settings, StyleTarget, optimize
from nst_core.balance import (MAX_FACTOR, REFERENCE_DISTANCE, balance_factor, balanced_style_weight,
                              style_distance)
from nst_core.image import load_image

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def test_the_factor_is_one_at_the_reference_and_falls_with_distance():
    ref = REFERENCE_DISTANCE["moments"]
    assert balance_factor(ref, 1.0) == pytest.approx(1.0)
    assert balance_factor(2 * ref, 1.0) == pytest.approx(0.5)
    assert balance_factor(2 * ref, 0.5) == pytest.approx(0.5**0.5)
    assert balance_factor(2 * REFERENCE_DISTANCE["gram"], 1.0, "gram") == pytest.approx(0.5)
    assert balance_factor(1e-9, 1.0) == MAX_FACTOR
    assert balance_factor(5.0, 0.0) == 1.0


def test_a_style_far_from_the_content_is_measured_farther(real_ext, data_image):
    starry = load_image(str(data_image("starry_night.jpg")), 128)
    shipwreck = load_image(str(data_image("shipwreck.jpg")), 128)
    content = ContentTarget.create(real_ext, starry)

    def distance(style):
        return style_distance(real_ext, content, [StyleTarget.create(real_ext, style, LAYERS)], 128)

    same, other, flat = distance(starry), distance(shipwreck), distance(torch.full_like(starry, 0.5))
    assert same < 0.02 < other < flat  # itself: none; a gray field is farther than another painting


def test_optimize_runs_with_the_balanced_weight(real_ext, data_image):
    content_img = load_image(str(data_image("shipwreck.jpg")), 64)
    content = ContentTarget.create(real_ext, content_img)
    style = StyleTarget.create(real_ext, torch.full((1, 3, 64, 64), 0.5), LAYERS)
    base = Settings(steps=3, min_size=64, style_weight=25.0)
    balanced = optimize(real_ext, content, style, settings=base.replace(style_balance=1.0))
    weight = balanced_style_weight(real_ext, content, [style], 25.0, 1.0, 64)
    assert weight < 25.0 * 0.5  # a gray style is far from a painting
    by_hand = optimize(real_ext, content, style, settings=base.replace(style_weight=weight))
    assert torch.equal(balanced, by_hand)
    assert not torch.equal(balanced, optimize(real_ext, content, style, settings=base))


def test_a_negative_balance_is_refused(real_ext, content_img):
    with pytest.raises(ValueError, match="style_balance"):
        optimize(real_ext, ContentTarget.create(real_ext, content_img), None,
                 settings=Settings(steps=1, style_balance=-1))


def test_every_statistic_has_a_reference_distance():
    from nst_core.statistics import STATISTICS

    assert set(REFERENCE_DISTANCE) == set(STATISTICS)
