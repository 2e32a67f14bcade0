"""The memory estimate."""

import re

import pytest

from nst_core import get_preset
from nst_core.image import fit_long_edge
from nst_core.memory import (DoesNotFit, activation_floats, estimate_bytes, lbfgs_history, plan_memory,
                             required_bytes)


def test_activation_count_matches_the_layer_shapes_by_hand():
    # conv1_1 + relu1_1 at 32x32 with 64 channels
    assert activation_floats("vgg19", (32, 32), "relu1_1") == 2 * 64 * 32 * 32
    # ... + conv1_2, relu1_2 (64 ch) + pool1 (64 ch at 16x16)
    assert activation_floats("vgg19", (32, 32), "pool1") == 4 * 64 * 32 * 32 + 64 * 16 * 16


def test_estimate_grows_with_pixels_and_lbfgs_history_is_bounded():
    p = get_preset("quality")
    layers = list(p.style_layers) + [p.content_layer]
    small = estimate_bytes((256, 256), layers, p.settings)
    big = estimate_bytes((1024, 1024), layers, p.settings)
    assert 10 < big / small < 17  # ~16x the pixels, plus the fixed weights and float64 chunks
    lb = p.settings.replace(optimizer="lbfgs", lbfgs_history=100, lbfgs_memory_mb=256)
    # history bounded by 256 MiB: the estimate stays within activations + 256 MiB + small change
    assert estimate_bytes((2048, 2048), layers, lb) - estimate_bytes((2048, 2048), layers, p.settings) < 300 * 2**20


def test_checkpointing_lowers_the_estimate_and_the_w2_goals_are_counted():
    p = get_preset("quality")
    layers = list(p.style_layers) + [p.content_layer]
    plain = estimate_bytes((1024, 1024), layers, p.settings)
    ckpt = estimate_bytes((1024, 1024), layers, p.settings.replace(checkpoint=True))
    assert ckpt < 0.75 * plain
    gram = estimate_bytes((1024, 1024), layers, p.settings, statistic="gram")
    # moments keeps one transported copy of each style layer: relu1_1 alone is 64·1024² floats
    assert plain - gram > 4 * 64 * 1024 * 1024


def test_the_plan_turns_on_checkpointing_then_refuses_with_a_size_that_fits():
    p = get_preset("quality")
    layers = list(p.style_layers) + [p.content_layer]
    hw = (768, 1024)
    plain = required_bytes(estimate_bytes(hw, layers, p.settings))
    light = required_bytes(estimate_bytes(hw, layers, p.settings.replace(checkpoint=True)))
    assert plan_memory(hw, layers, p.settings, plain + 1) == p.settings
    assert plan_memory(hw, layers, p.settings, light + 1).checkpoint is True
    with pytest.raises(DoesNotFit, match=r"largest that fits is about (\d+) px") as err:
        plan_memory(hw, layers, p.settings, light // 3)
    edge = int(re.search(r"about (\d+) px", str(err.value)).group(1))
    assert 16 < edge < 1024
    small = fit_long_edge(hw, edge)
    assert required_bytes(estimate_bytes(small, layers, p.settings.replace(checkpoint=True))) <= light // 3
    assert isinstance(err.value, ValueError)  # one line from the CLI, a readable error in ComfyUI


def test_lbfgs_history_is_bounded_by_memory():
    assert lbfgs_history(3 * 64 * 64, 100, 1024) == 100
    assert lbfgs_history(3 * 1024 * 1024, 100, 1024) == 2 ** 30 // (8 * 3 * 1024 * 1024) == 42
    assert lbfgs_history(10**10, 100, 1) == 3
