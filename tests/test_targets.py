"""nst_core.targets: ContentTarget / StyleTarget are graph-free, frozen values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nst_core
from nst_core import ContentTarget, Settings, StyleTarget
from nst_core import statistics as st
from nst_core.image import resize

LAYERS = ("relu1_1", "relu2_1", "relu3_1")
EXT = []  # the random extractor, for assert_same_targets (set by the autouse fixture below)


@pytest.fixture(autouse=True)
def _remember_extractor(rand_ext):
    EXT[:] = [rand_ext]


def style_tensors(target: StyleTarget, ext):
    for layer_style in target.at_size(ext, 32).values():
        yield from layer_style.stat
        if layer_style.cov_sqrt is not None:
            yield layer_style.cov_sqrt
    yield from target.images


def assert_same_targets(a: "StyleTarget | dict", b: "StyleTarget | dict", atol: float = 1e-5) -> None:
    """Same per-layer statistics; takes StyleTargets or their ``{layer: LayerStyle}`` dicts."""
    a = a.at_size(EXT[0], 32) if isinstance(a, StyleTarget) else a
    b = b.at_size(EXT[0], 32) if isinstance(b, StyleTarget) else b
    assert a.keys() == b.keys()
    for n in a:
        ta, tb = a[n], b[n]
        assert len(ta.stat) == len(tb.stat)
        for x, y in zip(ta.stat, tb.stat):
            assert torch.allclose(x, y, atol=atol, rtol=1e-4), n
        assert ta.norm == pytest.approx(tb.norm, rel=1e-4)


# --------------------------------------------------------------------------- values without a graph


def test_content_target_holds_no_graph(rand_ext, images):
    img = images.gradient(32, 32).requires_grad_(True)
    c = ContentTarget.create(rand_ext, img, "relu2_1")
    for t in (c.at_size(rand_ext, c.size), c.image):
        assert not t.requires_grad and t.grad_fn is None
    assert c.at_size(rand_ext, c.size).shape == (1, 128, 16, 16)
    assert c.size == (32, 32)
    assert c.extractor_signature == rand_ext.signature


@pytest.mark.parametrize("statistic", st.STATISTICS)
def test_style_target_holds_no_graph(rand_ext, images, statistic):
    img = images.checkerboard(32, 32).requires_grad_(True)
    s = StyleTarget.create(rand_ext, img, LAYERS, statistic=statistic)
    tensors = list(style_tensors(s, rand_ext))
    assert len(tensors) > len(LAYERS)
    for t in tensors:
        assert not t.requires_grad and t.grad_fn is None
    assert s.extractor_signature == rand_ext.signature


def test_targets_are_frozen(rand_ext, images):
    c = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1")
    s = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.weight = 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.image = torch.zeros(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.statistic = "gram"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.layers = ("relu1_1",)


def test_to_returns_a_new_object(rand_ext, images):
    c = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1", weight=0.5)
    c2 = c.to("cpu")
    assert c2 is not c and isinstance(c2, ContentTarget)
    assert c2.weight == 0.5 and c2.layer == "relu2_1"
    assert torch.equal(c2.at_size(rand_ext, c.size), c.at_size(rand_ext, c.size))
    s = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments")
    s2 = s.to("cpu")
    assert s2 is not s and isinstance(s2, StyleTarget)
    assert_same_targets(s, s2, atol=0)


def test_creating_targets_does_not_mutate_the_input(rand_ext, images):
    img = images.gradient(32, 32) * 1.4 - 0.2  # out of range: clamping must happen on a copy
    snapshot = img.clone()
    c = ContentTarget.create(rand_ext, img, "relu2_1")
    s = StyleTarget.create(rand_ext, img, LAYERS)
    assert torch.equal(img, snapshot)
    rgba = torch.cat([images.checkerboard(32, 32), torch.full((1, 1, 32, 32), 0.5)], dim=1)
    rgba_snapshot = rgba.clone()
    StyleTarget.create(rand_ext, [rgba], LAYERS)
    ContentTarget.create(rand_ext, rgba, "relu2_1")
    assert torch.equal(rgba, rgba_snapshot)
    # and the targets keep their own copy: later edits of the caller's tensor do not reach them
    img.fill_(0.5)
    assert not torch.equal(c.image, img) and not torch.equal(s.images[0], img)
    assert c.image.min() >= 0 and c.image.max() <= 1


# --------------------------------------------------------------------------- provenance


def test_optimize_refuses_targets_from_another_extractor(rand_ext, rand_ext_avg, images):
    s = StyleTarget.create(rand_ext_avg, images.checkerboard(32, 32), LAYERS)
    c = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1")
    assert s.extractor_signature != rand_ext.signature
    settings = Settings(steps=1, min_size=1000)
    with pytest.raises(ValueError, match="style target was made with extractor"):
        nst_core.optimize(rand_ext, c, s, settings=settings)
    with pytest.raises(ValueError, match="content target was made with extractor"):
        nst_core.optimize(rand_ext_avg, c, None, settings=settings)


def test_blend_refuses_targets_from_another_extractor(rand_ext, rand_ext_avg, images):
    a = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS)
    b = StyleTarget.create(rand_ext_avg, images.stripes(32, 32), LAYERS)
    with pytest.raises(ValueError, match="extractor signature"):
        a.blend(b)


def test_blend_refuses_other_layers_or_statistics_or_types(rand_ext, images):
    a = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS)
    with pytest.raises(ValueError, match="layers"):
        a.blend(StyleTarget.create(rand_ext, images.stripes(32, 32), LAYERS[:2]))
    with pytest.raises(ValueError, match="statistic"):
        a.blend(StyleTarget.create(rand_ext, images.stripes(32, 32), LAYERS, statistic="gram"))
    with pytest.raises(TypeError, match="StyleTarget"):
        a.blend(images.stripes(32, 32))


# --------------------------------------------------------------------------- blending


@pytest.mark.parametrize("statistic", st.STATISTICS)
def test_a_batch_of_two_equals_blending_the_two(rand_ext, images, statistic):
    a, b = images.checkerboard(32, 32), images.stripes(32, 32)
    batch = StyleTarget.create(rand_ext, torch.cat([a, b]), LAYERS, statistic=statistic)
    listed = StyleTarget.create(rand_ext, [a, b], LAYERS, statistic=statistic)
    blended = StyleTarget.create(rand_ext, a, LAYERS, statistic=statistic).blend(
        StyleTarget.create(rand_ext, b, LAYERS, statistic=statistic))
    assert len(batch.images) == 2 and batch.blend_weights == (1.0, 1.0)
    assert_same_targets(batch, blended)
    assert_same_targets(batch, listed)
    # and it is the average of the two images' statistics
    fa = rand_ext(a, ["relu2_1"])["relu2_1"]
    fb = rand_ext(b, ["relu2_1"])["relu2_1"]
    want = st.blend([st.compute(statistic, fa), st.compute(statistic, fb)], [1, 1])
    for got, w in zip(batch.at_size(rand_ext, 32)["relu2_1"].stat, want):
        assert torch.allclose(got, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("statistic", ["gram", "moments"])
def test_blend_with_a_weight_gives_the_weighted_statistics(rand_ext, images, statistic):
    a, b = images.checkerboard(32, 32), images.stripes(32, 32)
    ta = StyleTarget.create(rand_ext, a, LAYERS, statistic=statistic)
    tb = StyleTarget.create(rand_ext, b, LAYERS, statistic=statistic)
    mixed = ta.blend(tb, weight=3.0)
    assert mixed.blend_weights == (1.0, 3.0) and len(mixed.images) == 2
    assert len(ta.images) == 1 and ta.blend_weights == (1.0,)  # the original is untouched
    ta_, tb_, mixed_ = (t.at_size(rand_ext, 32) for t in (ta, tb, mixed))
    for n in LAYERS:
        want = st.blend([ta_[n].stat, tb_[n].stat], [1.0, 3.0])
        for got, w in zip(mixed_[n].stat, want):
            assert torch.allclose(got, w, atol=1e-6)
        # not simply one of the two
        assert not torch.allclose(mixed_[n].stat[-1], ta_[n].stat[-1])
    assert_same_targets(mixed, StyleTarget.create(rand_ext, [a, b], LAYERS, statistic=statistic,
                                                  blend_weights=[1, 3]))
    # the blend is also what the optimiser sees at other sizes
    assert_same_targets(
        StyleTarget.create(rand_ext, [resize(a, (24, 24)), resize(b, (24, 24))], LAYERS, statistic=statistic,
                           blend_weights=[1, 3]),
        mixed.at_size(rand_ext, 24),
    )


def test_differently_sized_style_images(rand_ext, images):
    s = StyleTarget.create(rand_ext, [images.checkerboard(32, 48), images.stripes(40, 24)], LAYERS,
                           blend_weights=[2, 1])
    assert [tuple(im.shape[-2:]) for im in s.images] == [(32, 48), (40, 24)]
    assert s.at_size(rand_ext, 48)["relu3_1"].stat[1].shape == (1, 256, 256)


def test_layer_weights_are_normalised(rand_ext, images):
    s = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, layer_weights=[2, 1, 1])
    assert s.layer_weights == pytest.approx((0.5, 0.25, 0.25))
    assert s.layers == LAYERS


# --------------------------------------------------------------------------- sizes


def test_content_at_size(rand_ext, images):
    c = ContentTarget.create(rand_ext, images.gradient(48, 64), "relu2_1")
    full = rand_ext(c.image, ["relu2_1"])["relu2_1"]
    assert torch.allclose(c.at_size(rand_ext, (48, 64)), full, atol=1e-6)
    small = c.at_size(rand_ext, (24, 32))
    assert small.shape == (1, 128, 12, 16)
    want = rand_ext(resize(c.image, (24, 32)), ["relu2_1"])["relu2_1"]
    assert torch.allclose(small, want, atol=1e-6)


def test_style_size_rules(rand_ext, images):
    s = StyleTarget.create(rand_ext, images.checkerboard(64, 64), LAYERS)
    assert s.style_size((64, 64), 32) == (32, 32)            # follows the output size
    assert s.style_size((64, 64), 256) == (64, 64)           # never enlarged at scale 1
    assert s.style_size((20, 100), 32, min_edge=16) == (16, 80)  # never below what the layers need
    s2 = StyleTarget.create(rand_ext, images.checkerboard(64, 64), LAYERS, style_scale=2.0)
    assert s2.style_size((64, 64), 40) == (80, 80)           # scale > 1 may enlarge
    half = StyleTarget.create(rand_ext, images.checkerboard(64, 64), LAYERS, style_scale=0.5)
    assert half.style_size((64, 64), 64) == (32, 32)


# --------------------------------------------------------------------------- validation


def test_mismatched_layer_weight_count(rand_ext, images):
    with pytest.raises(ValueError, match="2 layer weights for 3 style layers"):
        StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, layer_weights=[1, 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [({"layer_weights": [1, -1, 1]}, "layer weight must be a finite number ≥ 0"),
     ({"layer_weights": [1, float("nan"), 1]}, "layer weight"),
     ({"layer_weights": [0, 0, 0]}, "all 0"),
     ({"blend_weights": [-2]}, "style blend weight"),
     ({"blend_weights": [1, 1]}, "2 style blend weights for 1 style images"),
     ({"weight": -1}, "style weight"),
     ({"weight": float("inf")}, "style weight"),
     ({"style_scale": 20}, "style scale"),
     ({"statistic": "histogram"}, "statistic 'histogram' is not supported"),
     ({"layers": []}, "empty"),
     ({"layers": ""}, "empty"),
     ({"layers": ["relu1_1", "rleu2_1"]}, "Did you mean 'relu2_1'")],
)
def test_style_target_validation(rand_ext, images, kwargs, message):
    kwargs = {"layers": LAYERS, **kwargs}
    with pytest.raises(ValueError, match=message):
        StyleTarget.create(rand_ext, images.checkerboard(32, 32), **kwargs)


def test_style_image_too_small(rand_ext, images):
    with pytest.raises(ValueError, match=r"8×8 px, too small for layer relu5_1.*at least 16 px"):
        StyleTarget.create(rand_ext, images.checkerboard(8, 8), ["relu1_1", "relu5_1"])
    StyleTarget.create(rand_ext, images.checkerboard(8, 8), ["relu1_1", "relu4_1"])  # 8 px is enough there


def test_no_style_image(rand_ext):
    with pytest.raises(ValueError, match="no style image"):
        StyleTarget.create(rand_ext, [], LAYERS)


def test_content_target_validation(rand_ext, images):
    with pytest.raises(ValueError, match="content weight"):
        ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1", weight=-0.5)
    with pytest.raises(ValueError, match="Did you mean 'relu4_2'"):
        ContentTarget.create(rand_ext, images.gradient(32, 32), "relu4_2x")
    with pytest.raises(ValueError, match="too small for layer relu4_2"):
        ContentTarget.create(rand_ext, images.gradient(4, 32), "relu4_2")
    with pytest.raises(ValueError, match="content image contains NaN"):
        ContentTarget.create(rand_ext, torch.full((1, 3, 8, 8), float("nan")), "relu1_1")


def test_the_memo_of_derived_features_is_bounded_by_bytes(rand_ext, images, monkeypatch):
    """A target ComfyUI caches keeps at most MEMO_BYTES of derived features (the newest entry always)."""
    from nst_core import targets

    bound = 5 * 2**19  # 2.5 MiB; relu1_1 of a 112 px output alone is 2.0 MiB
    monkeypatch.setattr(targets, "MEMO_BYTES", bound)
    c = ContentTarget.create(rand_ext, images.gradient(96, 128), "relu1_1")
    for edge in (64, 80, 96, 112):
        c.at_size(rand_ext, (edge * 2 // 3, edge))
    held = sum(t.numel() * t.element_size() for t in c._memo.items.values())
    assert held <= bound, f"the memo holds {held / 2**20:.1f} MiB, above its bound of {bound / 2**20:.1f} MiB"
    assert list(c._memo.items)[-1][1] == (74, 112)  # the entry in use is kept
    one = targets._Memo(limit_bytes=1)
    one.get(("a",), lambda: torch.zeros(1000), lambda t, d: t)
    assert len(one.items) == 1  # even above the bound, the newest entry stays
