"""nst_core.optimizer: pyramid, optimisers, callbacks, validation (random weights, tiny images)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, strategies as hs

import nst_core
from nst_core import Cancelled, ContentTarget, Progress, Settings, StyleTarget, optimize, pyramid_sizes
from nst_core.image import fit_long_edge
from nst_core.losses import content_loss, style_loss, tv_loss
from nst_core.optimizer import AveragedIterate, pyramid, steps_per_scale
from nst_core.presets import get_preset

LAYERS = ("relu1_1", "relu2_1", "relu3_1")
ONE_SCALE = 10_000  # a min_size above every test image: a single pyramid scale


@pytest.fixture(scope="module")
def content(rand_ext, images) -> ContentTarget:
    return ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1")


@pytest.fixture(scope="module")
def style(rand_ext, images) -> StyleTarget:
    return StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="gram")


def quick(**kw) -> Settings:
    base = dict(optimizer="adam", steps=4, min_size=ONE_SCALE, lr=0.05, ema_decay=0.5, lbfgs_max_iter=4,
                autocast_bf16=False)
    base.update(kw)
    return Settings(**base)


def total_loss(ext, image, content, style, s: Settings) -> float:
    """The objective, rebuilt from the public loss functions (single scale, style image = output size)."""
    with torch.no_grad():
        feats = ext(image, list(style.layers) + [content.layer])
        c = content_loss(feats[content.layer], content.at_size(ext, content.size))
        targets = style.at_size(ext, max(content.size))
        sl = sum(w * style_loss(feats[n], targets[n]) for n, w in zip(style.layers, style.layer_weights))
        return float(s.content_weight * content.weight * c + s.style_weight * style.weight * sl
                     + s.tv_weight * tv_loss(image))


def assert_valid_image(out: torch.Tensor, shape) -> None:
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == tuple(shape)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert not out.requires_grad


# --------------------------------------------------------------------------- pyramid & helpers


def test_pyramid_sizes_example():
    sizes = pyramid_sizes((96, 128), 32)
    assert [max(hw) for hw in sizes] == [32, 45, 64, 91, 128]
    assert sizes[-1] == (96, 128)
    assert sizes[0] == fit_long_edge((96, 128), 32) == (24, 32)


def test_pyramid_single_scale_when_min_size_is_large():
    assert pyramid_sizes((48, 64), 64) == [(48, 64)]
    assert pyramid_sizes((48, 64), 500) == [(48, 64)]


@given(h=hs.integers(16, 700), w=hs.integers(16, 700), min_size=hs.integers(16, 400), min_edge=hs.sampled_from([1, 4, 16]),
       step=hs.sampled_from([math.sqrt(2), 2.0, 1.25]))
def test_pyramid_sizes_properties(h, w, min_size, min_edge, step):
    sizes = pyramid_sizes((h, w), min_size, min_edge, step)
    assert sizes[-1] == (h, w)
    edges = [max(hw) for hw in sizes]
    assert edges == sorted(set(edges))  # strictly ascending
    for small, big in zip(edges, edges[1:]):
        assert abs(big / small - step) < 0.6 / small * step  # step × (with rounding)
    if len(sizes) > 1:
        assert min(edges) >= min_size  # none below min_size (only the final size itself may be)
    # and it goes as low as allowed: one more step would break a limit
    nxt = round(min(edges) / step)
    assert nxt < min_size or min(fit_long_edge((h, w), nxt)) < min_edge
    for hw in sizes[:-1]:
        assert hw == fit_long_edge((h, w), max(hw))  # aspect kept
        assert min(hw) >= min_edge


def test_steps_per_scale():
    three, two = [(48, 64), (68, 91), (96, 128)], [(48, 64), (96, 128)]
    assert steps_per_scale(Settings(steps=5, first_steps=9), three) == [9, 5, 5]
    assert steps_per_scale(Settings(steps=5), two) == [5, 5]
    assert steps_per_scale(Settings(steps=5, first_steps=9), three[-1:]) == [5]
    # the later scales with a coarse copy (here: 512 px and 362 px, whose deep layers see 256 px) get coarse_steps
    quality = get_preset("quality").settings
    assert steps_per_scale(quality, [(192, 256), (272, 362), (384, 512)]) == [70, 45, 45]
    assert steps_per_scale(quality, [(96, 128), (136, 181), (192, 256)]) == [70, 80, 80]  # 256 px: no copy
    assert steps_per_scale(quality.replace(coarse_scale=1.0), [(192, 256), (272, 362), (384, 512)]) == [70, 80, 80]
    assert quality.replace(steps=40).coarse_steps == 22  # the preset's ratios kept (45 × 40 / 80)
    # the quality pyramid: ×2 steps from half the output size
    assert [max(hw) for hw in pyramid(quality, (384, 512))] == [256, 512]
    assert [max(hw) for hw in pyramid(quality, (192, 256))] == [128, 256]
    assert steps_per_scale(quality, pyramid(quality, (384, 512))) == [70, 45]
    assert steps_per_scale(quality, pyramid(quality, (192, 256))) == [70, 80]


def test_averaged_iterate_is_the_bias_corrected_ema():
    ema = AveragedIterate(torch.zeros(2), decay=0.5)
    ema.update(torch.tensor([1.0, 2.0]))
    assert torch.allclose(ema.value(), torch.tensor([1.0, 2.0]))  # one sample: exactly it
    ema.update(torch.tensor([3.0, 4.0]))
    # avg = 0.5*(0.5*x1) + 0.5*x2 = [1.75, 2.5]; / (1 - 0.25)
    assert torch.allclose(ema.value(), torch.tensor([1.75, 2.5]) / 0.75)


# --------------------------------------------------------------------------- it optimises


@pytest.mark.parametrize("statistic", ["gram", "gram_normalized", "moments"])
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_optimizers_reduce_the_loss(rand_ext, content, images, optimizer, statistic):
    style = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic=statistic)
    s = quick(optimizer=optimizer, steps=10, style_weight=10.0, ema_decay=0.8, lbfgs_max_iter=5)
    out = optimize(rand_ext, content, style, init="content", settings=s)
    assert_valid_image(out, (1, 3, 32, 32))
    before = total_loss(rand_ext, content.image, content, style, s)
    after = total_loss(rand_ext, out, content, style, s)
    assert before > 0
    assert after < 0.9 * before, (before, after)


def test_content_only_reconstruction_from_noise(rand_ext, content):
    s = quick(optimizer="lbfgs", steps=12)
    noise = optimize(rand_ext, content, None, init="noise", settings=quick(steps=1, lr=0.0))
    out = optimize(rand_ext, content, None, init="noise", settings=s)
    loss = lambda img: float(content_loss(rand_ext(img, ["relu2_1"])["relu2_1"], content.at_size(rand_ext, content.size)))
    assert loss(out) < 0.5 * loss(noise)


def test_tv_weight_smooths(rand_ext, content, style):
    rough = optimize(rand_ext, content, style, init="noise", settings=quick(steps=6))
    smooth = optimize(rand_ext, content, style, init="noise", settings=quick(steps=6, tv_weight=200.0))
    assert tv_loss(smooth) < 0.8 * tv_loss(rough)


def test_output_size_and_aspect(rand_ext, images, style):
    c = ContentTarget.create(rand_ext, images.gradient(24, 40), "relu2_1")
    out = optimize(rand_ext, c, style, settings=quick(steps=2), size=20)
    assert_valid_image(out, (1, 3, 12, 20))
    out = optimize(rand_ext, c, style, settings=quick(steps=2))
    assert_valid_image(out, (1, 3, 24, 40))


def test_style_only_sizes(rand_ext, style, images):
    out = optimize(rand_ext, None, style, init="noise", settings=quick(steps=2), size=24)
    assert_valid_image(out, (1, 3, 24, 24))
    init = images.gradient(20, 28, batch=2)
    out = optimize(rand_ext, None, style, init=init, settings=quick(steps=2))
    assert_valid_image(out, (2, 3, 20, 28))


# --------------------------------------------------------------------------- determinism & batches


def test_same_seed_same_output(rand_ext, content, style):
    s = quick(steps=3, seed=7)
    a = optimize(rand_ext, content, style, init="noise", settings=s)
    b = optimize(rand_ext, content, style, init="noise", settings=s)
    assert torch.equal(a, b)
    c = optimize(rand_ext, content, style, init="noise", settings=s.replace(seed=8))
    assert not torch.allclose(a, c, atol=1e-3)


def test_same_seed_same_output_with_content_init_and_lbfgs(rand_ext, content, style):
    s = quick(optimizer="lbfgs", steps=4)
    assert torch.equal(optimize(rand_ext, content, style, settings=s), optimize(rand_ext, content, style, settings=s))


@pytest.mark.parametrize("init", ["noise", "gray"])
def test_random_inits_depend_on_the_seed(rand_ext, content, style, init):
    s = quick(steps=1, lr=0.0)  # lr 0: the output is the initial image
    a = optimize(rand_ext, content, style, init=init, settings=s)
    b = optimize(rand_ext, content, style, init=init, settings=s.replace(seed=1))
    assert not torch.equal(a, b)
    assert torch.equal(a, optimize(rand_ext, content, style, init=init, settings=s))
    if init == "gray":
        assert abs(float(a.mean()) - 0.5) < 0.02 and float(a.std()) < 0.1


def test_content_init_starts_from_the_content(rand_ext, content, style):
    out = optimize(rand_ext, content, style, init="content", settings=quick(steps=1, lr=0.0))
    assert torch.allclose(out, content.image, atol=1e-6)


def test_content_batch_gives_a_batch(rand_ext, images, style):
    batch = torch.cat([images.gradient(32, 32), images.stripes(32, 32)])
    c = ContentTarget.create(rand_ext, batch, "relu2_1")
    out = optimize(rand_ext, c, style, settings=quick(steps=3))
    assert_valid_image(out, (2, 3, 32, 32))
    assert not torch.allclose(out[0], out[1], atol=1e-2)
    # each output stays closer to its own content than to the other one
    assert (out[0] - batch[0]).abs().mean() < (out[0] - batch[1]).abs().mean()
    assert (out[1] - batch[1]).abs().mean() < (out[1] - batch[0]).abs().mean()
    # an init image of batch 1 is shared by the batch
    out = optimize(rand_ext, c, style, init=images.noise(32, 32), settings=quick(steps=1))
    assert out.shape == (2, 3, 32, 32)


def test_init_batch_mismatch(rand_ext, images, style):
    c = ContentTarget.create(rand_ext, images.gradient(32, 32, batch=2), "relu2_1")
    with pytest.raises(ValueError, match="init batch has 3 images but the content batch has 2"):
        optimize(rand_ext, c, style, init=images.noise(32, 32, batch=3), settings=quick(steps=1))


# --------------------------------------------------------------------------- callbacks


def test_progress_and_preview_over_two_scales(rand_ext, images, style):
    c = ContentTarget.create(rand_ext, images.gradient(36, 48), "relu2_1")
    s = quick(steps=3, first_steps=4, min_size=32, transport_every=2, preview_every=3)
    sizes = pyramid_sizes((36, 48), 32, rand_ext.min_edge(LAYERS + ("relu2_1",)))
    assert len(sizes) == 2
    seen, previews = [], []
    out = optimize(rand_ext, c, style, settings=s, progress=seen.append,
                   preview=lambda step, img: previews.append((step, img)))
    assert_valid_image(out, (1, 3, 36, 48))
    assert all(isinstance(p, Progress) for p in seen)
    assert [p.step for p in seen] == list(range(1, 8))
    assert {p.total for p in seen} == {4 + 3}
    assert [p.scale for p in seen] == [0] * 4 + [1] * 3
    assert {p.scales for p in seen} == {2}
    assert [p.size for p in seen] == [sizes[0]] * 4 + [sizes[1]] * 3
    with_losses = [p.step for p in seen if p.losses is not None]
    assert with_losses == [1, 3, 5, 7]  # the W2 refresh steps (k = 0, 2 at each scale)
    for p in seen:
        if p.losses is not None:
            assert {"content", "style", "total"} <= set(p.losses)
            assert all(isinstance(v, float) and math.isfinite(v) for v in p.losses.values())
            assert "tv" not in p.losses  # tv_weight is 0
    assert [step for step, _ in previews] == [3, 6]
    assert [tuple(img.shape) for _, img in previews] == [(1, 3, *sizes[0]), (1, 3, *sizes[1])]
    for _, img in previews:
        assert not img.requires_grad and torch.isfinite(img).all()


def test_lbfgs_progress_counts_function_evaluations(rand_ext, content, style):
    seen, previews = [], []
    s = quick(optimizer="lbfgs", steps=7, lbfgs_max_iter=3, preview_every=2, tv_weight=1.0)
    optimize(rand_ext, content, style, settings=s, progress=seen.append,
             preview=lambda step, img: previews.append((step, tuple(img.shape))))
    assert [p.step for p in seen] == list(range(1, 8))
    assert {p.total for p in seen} == {7}
    assert [p.step for p in seen if p.losses is not None] == list(range(1, 8))  # every evaluation is exact
    assert "tv" in seen[-1].losses
    assert previews == [(2, (1, 3, 32, 32)), (4, (1, 3, 32, 32)), (6, (1, 3, 32, 32))]


def test_losses_are_reported_with_their_weights(rand_ext, content, style):
    seen = []
    s = quick(steps=1, content_weight=2.0, style_weight=3.0)
    optimize(rand_ext, content, style, settings=s, progress=seen.append)
    losses = seen[0].losses
    assert losses["total"] == pytest.approx(2.0 * losses["content"] + 3.0 * losses["style"], rel=1e-5)
    # the first reading is the loss at the content image: no content loss, the full style loss
    assert losses["content"] == pytest.approx(0.0, abs=1e-9)
    assert losses["style"] == pytest.approx(total_loss(rand_ext, content.image, content, style,
                                                       Settings(content_weight=0.0)), rel=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_cancel_stops_the_run_and_the_next_run_works(rand_ext, content, style, optimizer):
    calls, seen = [], []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) == 3

    s = quick(optimizer=optimizer, steps=8)
    with pytest.raises(Cancelled, match="step 3 of 8"):
        optimize(rand_ext, content, style, settings=s, progress=seen.append, cancel=cancel)
    assert len(calls) == 3
    assert [p.step for p in seen] == [1, 2]  # asked before reporting: step 3 never reported
    assert issubclass(Cancelled, RuntimeError)
    seen.clear()
    out = optimize(rand_ext, content, style, settings=s.replace(steps=2), progress=seen.append,
                   cancel=lambda: False)
    assert_valid_image(out, (1, 3, 32, 32))
    assert [p.step for p in seen] == [1, 2]


@pytest.mark.parametrize("optimizer, stop_after", [("adam", 4), ("adam", 17), ("lbfgs", 17)])
def test_a_tiled_step_stops_within_one_tile(rand_ext, images, monkeypatch, optimizer, stop_after):
    """Cancel is asked before every tile (gather pass and gradient pass): once it says stop, no other tile
    is evaluated, and the step in progress is dropped (never reported)."""
    c = ContentTarget.create(rand_ext, images.gradient(64, 96), "relu2_1")
    s = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments")
    tiles = []
    real = type(rand_ext).forward
    monkeypatch.setattr(type(rand_ext), "forward", lambda self, *a, **k: tiles.append(1) or real(self, *a, **k))
    seen = []
    settings = quick(optimizer=optimizer, steps=3, tile=32, transport_every=2)  # 6 to 12 tiles a pass
    with pytest.raises(Cancelled) as stopped:
        optimize(rand_ext, c, s, settings=settings, progress=seen.append, cancel=lambda: len(tiles) >= stop_after)
    assert len(tiles) == stop_after  # the tile in progress finished, no other started
    assert f"during step {len(seen) + 1} of 3" in str(stopped.value)


def test_cancel_callback_errors_propagate(rand_ext, content, style):
    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize(rand_ext, content, style, settings=quick(steps=2), cancel=cancel)


# --------------------------------------------------------------------------- ComfyUI's inference mode


def test_works_inside_inference_mode(rand_ext, images):
    s = quick(steps=3)
    c_img, s_img = images.gradient(32, 32), images.checkerboard(32, 32)
    with torch.inference_mode():
        c = ContentTarget.create(rand_ext, c_img.clone(), "relu2_1")
        st = StyleTarget.create(rand_ext, s_img.clone(), LAYERS, statistic="moments")
        inside = optimize(rand_ext, c, st, settings=s)
        mixed = optimize(rand_ext, c, st.blend(st), settings=s)
    assert_valid_image(inside, (1, 3, 32, 32))
    # the same result as outside inference mode
    c2 = ContentTarget.create(rand_ext, c_img, "relu2_1")
    st2 = StyleTarget.create(rand_ext, s_img, LAYERS, statistic="moments")
    outside = optimize(rand_ext, c2, st2, settings=s)
    assert torch.allclose(inside, outside, atol=1e-5)
    assert torch.allclose(mixed, outside, atol=1e-4)
    assert not torch.allclose(inside, c_img, atol=1e-3)  # it did move
    # targets made inside inference mode also work outside it
    again = optimize(rand_ext, c, st, settings=s)
    assert torch.allclose(again, outside, atol=1e-5)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes, message",
    [({"steps": 0}, "steps must be at least 1"),
     ({"first_steps": 0}, "first_steps must be at least 1"),
     ({"min_size": 0}, "min_size"),
     ({"transport_every": 0}, "transport_every"),
     ({"lbfgs_max_iter": 0}, "lbfgs_max_iter"),
     ({"content_weight": -1.0}, "content_weight must be a finite number ≥ 0"),
     ({"style_weight": -0.1}, "style_weight"),
     ({"tv_weight": float("nan")}, "tv_weight"),
     ({"lr": float("inf")}, "lr"),
     ({"ema_decay": 1.0}, "ema_decay"),
     ({"optimizer": "sgd"}, "optimizer 'sgd' is not supported")],
)
def test_invalid_settings(rand_ext, content, style, changes, message):
    with pytest.raises(ValueError, match=message):
        optimize(rand_ext, content, style, settings=quick().replace(**changes))


def test_nothing_to_optimise(rand_ext):
    with pytest.raises(ValueError, match="nothing to optimise"):
        optimize(rand_ext, None, None, settings=quick())


def test_unknown_init(rand_ext, content, style):
    with pytest.raises(ValueError, match="init 'zeros' is not supported"):
        optimize(rand_ext, content, style, init="zeros", settings=quick())


def test_output_too_small_for_the_layers(rand_ext, images):
    c = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu4_2")
    st = StyleTarget.create(rand_ext, images.checkerboard(32, 32), ["relu1_1", "relu5_1"])
    with pytest.raises(ValueError, match=r"8×8 px, too small for the layers used \(at least 16 px"):
        optimize(rand_ext, c, st, settings=quick(steps=1), size=8)
    with pytest.raises(ValueError, match="too small"):
        optimize(rand_ext, None, st, init="noise", settings=quick(steps=1), size=12)


def test_non_finite_loss_is_reported(rand_ext, content, style):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        optimize(rand_ext, content, style, settings=quick(steps=2, style_weight=1e39),
                 progress=lambda p: None)


def test_public_api():
    for name in nst_core.__all__:
        assert hasattr(nst_core, name), name


# --------------------------------------------------------------------------- known bugs


def test_lbfgs_makes_one_update_per_function_evaluation(rand_ext, content, monkeypatch):
    class CountingLBFGS(torch.optim.LBFGS):
        updates = 0

        def _add_grad(self, step_size, update):  # torch's L-BFGS moves the parameters only here
            type(self).updates += 1
            return super()._add_grad(step_size, update)

    monkeypatch.setattr(torch.optim, "LBFGS", CountingLBFGS)
    seen = []
    optimize(rand_ext, content, None, init="noise", settings=quick(optimizer="lbfgs", steps=6, lbfgs_max_iter=3),
             progress=seen.append)
    assert len(seen) == 6  # function evaluations, as documented
    assert CountingLBFGS.updates == 6


def test_lbfgs_stops_when_an_outer_step_leaves_the_image_unchanged(rand_ext, content):
    """lbfgs_tolerance: a scale ends after the first outer step (lbfgs_max_iter evaluations, then the clip)
    that moves the image by less than the tolerance, RMS over its values in 0..1; 0 uses every evaluation."""
    m = 4
    run = lambda steps, tol=0.0: optimize(rand_ext, content, None, init="noise",  # noqa: E731
                                          settings=quick(optimizer="lbfgs", steps=steps, lbfgs_max_iter=m,
                                                         lbfgs_tolerance=tol))
    # the image after k outer steps (a run is deterministic), and how far each outer step moved it
    after = [run(k * m) for k in range(1, 9)]
    moves = [float((b - a).pow(2).mean().sqrt()) for a, b in zip(after, after[1:])]
    assert moves[0] > 3 * moves[-1] > 0  # it settles
    tol = sorted(moves)[len(moves) // 2] * 1.0001  # some outer steps move more, some less
    first = next(k for k, mv in enumerate(moves) if mv < tol)  # moves[k]: outer step k + 2
    seen = []
    out = optimize(rand_ext, content, None, init="noise", progress=seen.append,
                   settings=quick(optimizer="lbfgs", steps=8 * m, lbfgs_max_iter=m, lbfgs_tolerance=tol))
    assert len(seen) == (first + 2) * m < 8 * m  # stopped right after the first outer step that moved less
    assert torch.equal(out, after[first + 1]) and seen[-1].total == 8 * m  # the budget stays the total shown
    everything = []
    optimize(rand_ext, content, None, init="noise", progress=everything.append,
             settings=quick(optimizer="lbfgs", steps=8 * m, lbfgs_max_iter=m))
    assert len(everything) == 8 * m  # tolerance 0 (the default): every evaluation


def test_compile_without_a_cpp_compiler_is_a_clear_error(rand_ext, images, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("nst_core.optimizer").shutil, "which", lambda name: None)
    c = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu1_1")
    with pytest.raises(ValueError, match="C\\+\\+ compiler"):
        optimize(rand_ext, c, None, "content", Settings(steps=1, compile=True))


def test_w2_transport_is_refreshed_every_n_steps_whoever_watches(rand_ext, images, content, monkeypatch):
    import importlib

    transport = importlib.import_module("nst_core.transport")
    moments = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments")
    calls = []
    real = transport.transport_map
    monkeypatch.setattr(transport, "transport_map", lambda *a: calls.append(1) or real(*a))
    unwatched = optimize(rand_ext, content, moments, "content", quick(steps=6, transport_every=3))
    assert len(calls) == 2 * len(LAYERS)  # steps 0 and 3
    calls.clear()
    seen = []
    watched = optimize(rand_ext, content, moments, "content", quick(steps=6, transport_every=3),
                       progress=lambda p: seen.append(p.losses))
    assert len(calls) == 2 * len(LAYERS)  # reading the losses forces no refresh
    assert torch.equal(watched, unwatched)  # and the image is the same, bit for bit
    read = [s for s in seen if s is not None]
    assert len(read) == 2 and all(s["style"] > 0 for s in read)


def test_lagged_transport_reaches_the_exact_runs_loss(rand_ext, images):
    """Texture from noise: refreshing every 3 steps ends close to refreshing every step."""
    moments = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments")
    s = Settings(optimizer="adam", steps=40, min_size=ONE_SCALE, lr=0.05, ema_decay=0.5)

    def style_loss_of(image):
        with torch.no_grad():
            feats = rand_ext(image, LAYERS)
            targets = moments.at_size(rand_ext, 32)
            return float(sum(style_loss(feats[n], targets[n]) for n in LAYERS))

    start = style_loss_of(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    exact = style_loss_of(optimize(rand_ext, None, moments, "noise", s, size=32))
    lagged = style_loss_of(optimize(rand_ext, None, moments, "noise", s.replace(transport_every=3), size=32))
    assert exact < 0.3 * start
    assert lagged < 1.25 * exact  # (lag slows a texture from noise a little)


def test_channels_last_is_the_default_and_gives_the_same_image(rand_ext, content, style):
    assert Settings().channels_last is True
    nhwc = optimize(rand_ext, content, style, "content", quick(steps=3))
    nchw = optimize(rand_ext, content, style, "content", quick(steps=3, channels_last=False))
    # the layouts' kernels sum in different orders; Adam's normalised step turns the rounding of
    # near-zero gradients into steps of up to lr in a few pixels (measured on an AVX-512 CPU: mean
    # 2.3e-4, max 0.015), while a layout bug would move every pixel
    d = (nhwc - nchw).abs()
    assert float(d.mean()) < 1e-3 and float(d.max()) < 0.05


def test_the_pyramid_starts_at_a_fraction_of_the_output_size():
    from nst_core.optimizer import smallest_scale

    s = Settings(min_size=128, pyramid_start=0.5)
    assert smallest_scale(s, (384, 512)) == 256 and smallest_scale(s, (192, 256)) == 128
    assert [max(hw) for hw in pyramid_sizes((384, 512), smallest_scale(s, (384, 512)))] == [256, 362, 512]
    assert smallest_scale(Settings(min_size=128), (384, 512)) == 128  # 0: min_size alone
    from nst_core.optimizer import validate_settings

    with pytest.raises(ValueError, match="pyramid_start"):
        validate_settings(Settings(pyramid_start=1.5))


@pytest.mark.parametrize("step", [1.0, 0.5, float("inf"), float("nan")])
def test_a_pyramid_step_of_at_most_1_or_not_finite_is_refused(step):
    from nst_core.optimizer import validate_settings

    with pytest.raises(ValueError, match="pyramid_step must be a finite ratio > 1"):
        validate_settings(Settings(pyramid_step=step))


def test_the_run_the_plan_and_the_frames_follow_the_pyramid_step(rand_ext, content, style):
    """pyramid_step=2 from a 32 px start to 128 px: scales of 32, 64 and 128 px in the run and in the
    frames' count of iterations (both through :func:`nst_core.optimizer.pyramid`, as the plan)."""
    from nst_core.frames import steps_per_frame

    s = Settings(steps=1, min_size=32, pyramid_step=2.0, autocast_bf16=False)
    assert [max(hw) for hw in pyramid(s, (96, 128))] == [32, 64, 128]
    assert [max(hw) for hw in pyramid(s.replace(pyramid_step=math.sqrt(2)), (96, 128))] == [32, 45, 64, 91, 128]
    assert steps_per_frame(rand_ext, s, (96, 128), LAYERS) == 3
    assert steps_per_frame(rand_ext, s.replace(pyramid_step=math.sqrt(2)), (96, 128), LAYERS) == 5
    seen = []
    optimize(rand_ext, content, style, settings=s, size=128, progress=lambda p: seen.append(max(p.size)))
    assert seen == [32, 64, 128]


# --------------------------------------------------------------------------- Adam across the pyramid


def _adam_step_sizes(monkeypatch, ext, content, style, settings):
    """Mean |Δx| of every Adam step, with the scale it was taken at."""
    steps = []
    real = torch.optim.Adam.step

    def step(self, *a, **k):
        x = self.param_groups[0]["params"][0]
        before = x.detach().clone()
        out = real(self, *a, **k)
        steps.append((tuple(x.shape[-2:]), float((x.detach() - before).abs().mean())))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    optimize(ext, content, style, settings=settings)
    monkeypatch.undo()
    sizes = sorted({hw for hw, _ in steps})
    late = [sum([d for hw, d in steps if hw == s][-10:]) / 10 for s in sizes]
    return sizes, late


def test_a_pixels_gradient_scales_with_one_over_the_pixel_count(rand_ext, content, style):
    """The premise of the rescale: every loss is a mean over positions."""
    from nst_core.image import resize

    def grad_rms(hw):
        obj = sys.modules["nst_core.objective"].Objective(rand_ext, quick(), hw, content, (style,))
        x = resize(content.image, hw).clone().requires_grad_(True)
        with torch.no_grad():
            x.add_(0.05)  # away from the content target
        obj.gradient(x)
        return float(x.grad.pow(2).mean().sqrt())

    small, big = grad_rms((32, 32)), grad_rms((64, 64))
    assert 2.5 < small / big < 6  # 4× the pixels: a quarter of the gradient


def test_adams_state_is_resized_where_the_device_has_the_kernel(monkeypatch):
    """MPS builds without a bicubic kernel: the carried moments are resized on image.resize_device's
    answer (the CPU there) and come back to the state's device, with the same values."""
    import importlib

    image = importlib.import_module("nst_core.image")
    gen = torch.Generator().manual_seed(0)
    m, v = torch.randn(1, 3, 12, 16, generator=gen), torch.rand(1, 3, 12, 16, generator=gen)
    want = nst_core.optimizer.carry_adam_state(m, v, (24, 32))
    asked = []
    real = image.resize_device
    monkeypatch.setattr(image, "resize_device", lambda device: asked.append(device) or real(device))
    got = nst_core.optimizer.carry_adam_state(m, v, (24, 32))
    assert asked == [m.device, v.device]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_adams_state_carried_up_the_pyramid_keeps_the_step_size(rand_ext, images, monkeypatch):
    """Without the rescale the effective rate fell at every scale (to about 0.4 of the first at the third)."""
    c = ContentTarget.create(rand_ext, images.gradient(64, 64), "relu2_1")
    s = StyleTarget.create(rand_ext, images.checkerboard(64, 64), LAYERS)
    settings = Settings(steps=30, min_size=32, lr=0.02, autocast_bf16=False, style_weight=5)
    sizes, late = _adam_step_sizes(monkeypatch, rand_ext, c, s, settings)
    assert len(sizes) == 3
    kept = late[-1] / late[0]
    module = sys.modules["nst_core.optimizer"]
    unscaled = lambda m, v, hw: (torch.nn.functional.interpolate(m, size=hw, mode="bicubic"),  # noqa: E731
                                 torch.nn.functional.interpolate(v, size=hw, mode="bilinear").clamp_min(0))
    monkeypatch.setattr(module, "carry_adam_state", unscaled)
    _, old = _adam_step_sizes(monkeypatch, rand_ext, c, s, settings)
    assert kept > 1.3 * (old[-1] / old[0]), (late, old)


# --------------------------------------------------------------------------- Settings.tile: one meaning


def test_tile_0_means_automatic_as_on_the_node_and_off_means_never(rand_ext, images, monkeypatch):
    """``Settings.tile = 0`` (the default) is "auto", as the node's tile = 0 and the command's --tile auto:
    the planner tiles when the whole image would not fit; "off" never tiles; a size is kept."""
    from nst_core import optimizer

    c = ContentTarget.create(rand_ext, images.gradient(48, 64), "relu4_2")
    s = StyleTarget.create(rand_ext, images.checkerboard(64, 64))
    monkeypatch.setattr(optimizer, "device_free_bytes", lambda device: 4 * 2**30)
    big = (2048, 2048)  # planned, not run
    for auto in (0, "auto"):
        planned = optimizer.resolve_tile(Settings(tile=auto), rand_ext, big, c, (s,), 1)
        assert 128 <= planned.tile < 2048, planned.tile  # tiles: the whole image needs about 11 GiB
        assert optimizer.resolve_tile(Settings(tile=auto), rand_ext, (48, 64), c, (s,), 1).tile == 0  # whole
    assert optimizer.resolve_tile(Settings(tile="off"), rand_ext, big, c, (s,), 1).tile == 0  # never
    assert optimizer.resolve_tile(Settings(tile=512), rand_ext, big, c, (s,), 1).tile == 512  # as set
    # a run with too little memory for even the smallest tiles is refused before any work, with "off" it runs
    monkeypatch.setattr(optimizer, "device_free_bytes", lambda device: 2**20)
    with pytest.raises(ValueError, match="needs about .* GiB"):
        optimize(rand_ext, c, s, settings=Settings(steps=1, min_size=64))
    assert optimize(rand_ext, c, s, settings=Settings(steps=1, min_size=64, tile="off")).shape == (1, 3, 48, 64)


@pytest.mark.parametrize("tile", [8, -1, "sometimes", 1.5, True])
def test_a_bad_tile_setting_says_what_is_accepted(rand_ext, images, tile):
    c = ContentTarget.create(rand_ext, images.gradient(48, 64), "relu4_2")
    with pytest.raises(ValueError, match=r"tile must be 'auto' \(or 0.*'off' \(never\) or a tile size of at least "
                                         r"16 px"):
        optimize(rand_ext, c, None, settings=Settings(steps=1, tile=tile))
