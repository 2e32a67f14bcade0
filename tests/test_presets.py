"""nst_core.presets: named settings are data, with a strict ``Settings.replace``."""

from __future__ import annotations

import dataclasses

import pytest

from nst_core import DEFAULT_PRESET, PRESETS, Preset, Settings, get_preset, pyramid_sizes
from nst_core.layers import parse_layers
from nst_core.presets import DEFAULT_STYLE_LAYERS, INITS, OPTIMIZERS
from nst_core.statistics import STATISTICS


def test_named_presets_exist():
    assert {"seed", "fast", "quality"} <= set(PRESETS)
    assert DEFAULT_PRESET == "quality" and DEFAULT_PRESET in PRESETS
    for name, p in PRESETS.items():
        assert isinstance(p, Preset) and p.name == name and p.description
        assert get_preset(name) is p


def test_seed_preset_is_the_original_recipe():
    p = get_preset("seed")
    assert p.content_layer == "conv5_1"
    assert p.statistic == "gram_normalized"
    assert p.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert p.settings.optimizer == "lbfgs"
    # one scale, whatever the size
    assert len(pyramid_sizes((4096, 4096), p.settings.min_size)) == 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    p = get_preset(name)
    parse_layers(list(p.style_layers))
    parse_layers([p.content_layer])
    assert p.statistic in STATISTICS
    assert p.settings.optimizer in OPTIMIZERS
    assert p.settings.tile == 0 and p.settings.autocast_bf16 is None  # tiles when needed, bf16 by capability
    if p.style_layer_weights is not None:
        assert len(p.style_layer_weights) == len(p.style_layers)
        assert all(w >= 0 for w in p.style_layer_weights)
    assert p.settings.steps >= 1 and p.settings.min_size >= 1


def test_fast_and_quality_use_adam_with_a_pyramid():
    for name in ("fast", "quality"):
        s = get_preset(name).settings
        assert s.optimizer == "adam"
        assert len(pyramid_sizes((512, 512), s.min_size)) > 1
    assert get_preset("fast").settings.steps < get_preset("quality").settings.steps


def test_get_preset_unknown():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*fast.*quality.*seed"):
        get_preset("nope")


def test_settings_replace_ignores_none():
    s = Settings()
    r = s.replace(steps=None, lr=None, optimizer="lbfgs", tv_weight=0.5)
    assert r is not s
    assert r.steps == s.steps and r.lr == s.lr
    assert r.optimizer == "lbfgs" and r.tv_weight == 0.5
    assert s.optimizer == "adam" and s.tv_weight == 0.0  # the original is unchanged


def test_settings_replace_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rate', 'stepz'\]"):
        Settings().replace(stepz=3, learning_rate=0.1)


def test_settings_are_frozen_and_presets_share_no_state():
    s = get_preset("quality").settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 1
    changed = s.replace(steps=1)
    assert get_preset("quality").settings.steps != 1 and changed.steps == 1
    assert DEFAULT_STYLE_LAYERS == get_preset("quality").style_layers


def test_a_preset_run_with_another_statistic_takes_that_statistics_weights():
    from nst_core.presets import LOSS_WEIGHTS, settings_for

    seed = get_preset("seed")
    assert settings_for(seed) == seed.settings
    moments = settings_for(seed, "moments")
    assert (moments.content_weight, moments.style_weight) == LOSS_WEIGHTS["moments"]  # not 1000 on a W2 loss
    assert moments.optimizer == "lbfgs"
    for name in PRESETS:
        p = get_preset(name)
        assert (p.settings.content_weight, p.settings.style_weight) == LOSS_WEIGHTS[p.statistic]
    with pytest.raises(ValueError, match="histogram"):
        settings_for(seed, "histogram")


def test_settings_have_no_dead_fields():
    """Every field of Settings is read by the engine (optimize, objective, memory or tiles)."""
    import dataclasses
    import pathlib

    import nst_core

    root = pathlib.Path(nst_core.__file__).parent
    code = "".join(p.read_text() for p in root.glob("*.py") if p.name != "presets.py")
    for f in dataclasses.fields(nst_core.Settings):
        assert f".{f.name}" in code, f"Settings.{f.name} is never read"
