"""nst_core.tiles: the objective evaluated in tiles is the whole image's, in less memory, without seams.

The fast tests use the random-weights VGG and generated images; the ``slow`` ones use the original
weights and the sample photos at 192 px (tile 64–96) and print the figures they check.
"""

from __future__ import annotations

import itertools
from typing import Dict, Tuple

import pytest
import torch

from nst_core import tiles, transfer
from nst_core.image import load_image
from nst_core.memory import DoesNotFit, choose_tile, estimate_bytes, required_bytes, tiled_bytes
from nst_core.objective import Objective
from nst_core.presets import Settings, get_preset
from nst_core.targets import ContentTarget, StyleTarget
from nst_core.tiles import cuts, tile_grid

QUALITY = get_preset("quality")
LAYERS = list(QUALITY.style_layers) + [QUALITY.content_layer]


def _grad(obj, x: torch.Tensor, exact: bool = True) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    parts = obj.gradient(x, exact)
    return x.grad, parts


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


# --------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("hw, tile, halo", [((80, 112), 32, 16), ((144, 192), 64, 32), ((101, 77), 48, 0),
                                            ((37, 300), 96, 64)])
def test_every_feature_position_is_owned_by_exactly_one_tile(hw, tile, halo):
    for offset in [(0, 0), (16, 32), (tile - 16, 16)]:
        grid = tile_grid(hw, tile, halo, offset, 16)
        for y0, y1, x0, x1 in (t.crop for t in grid):
            assert 0 <= y0 < y1 <= hw[0] and 0 <= x0 < x1 <= hw[1]
            assert y0 % 16 == 0 and x0 % 16 == 0  # every layer's grid of a crop is a slice of the whole's
        for stride in (1, 2, 4, 8, 16):  # ceil-mode pooling: a layer has ⌈H/stride⌉×⌈W/stride⌉ positions
            count = torch.zeros(-(-hw[0] // stride), -(-hw[1] // stride), dtype=torch.int32)
            for t in grid:
                (gy, gx), (ly, lx) = t.owned(stride, hw)
                crop_grid = (-(-(t.crop[1] - t.crop[0]) // stride), -(-(t.crop[3] - t.crop[2]) // stride))
                assert 0 <= ly.start <= ly.stop <= crop_grid[0] and 0 <= lx.start <= lx.stop <= crop_grid[1]
                assert gy.start - ly.start == t.crop[0] // stride and gx.start - lx.start == t.crop[2] // stride
                count[gy, gx] += 1
            assert bool((count == 1).all()), (hw, tile, offset, stride)


def test_cuts_are_aligned_shifted_and_leave_no_sliver():
    assert cuts(192, 64, 0, 16) == [0, 64, 128, 192]
    assert cuts(192, 64, 48, 16) == [0, 48, 112, 176, 192]
    assert cuts(200, 64, 0, 16) == [0, 64, 128, 200]  # 192 would leave an 8 px sliver
    assert cuts(140, 64, 0, 16) == [0, 64, 140]  # 128 would leave a 12 px sliver
    assert cuts(50, 64, 16, 16) == [0, 16, 50]


def test_only_the_scales_larger_than_the_tile_are_tiled(rand_ext, content_img, style_img):
    c = ContentTarget.create(rand_ext, content_img, "relu3_1")
    s = StyleTarget.create(rand_ext, style_img, ["relu1_1", "relu3_1"])
    tiled = Settings(tile=48)
    assert len(Objective(rand_ext, tiled, (64, 96), c, (s,)).geo.tiles()) > 1
    for whole in (Objective(rand_ext, tiled, (48, 48), c, (s,)), Objective(rand_ext, Settings(), (64, 96), c, (s,))):
        assert not whole.tiled and [t.crop for t in whole.geo.tiles()] == [(0, whole.hw[0], 0, whole.hw[1])]
    with pytest.raises(ValueError, match=r"tile must be a whole number of px ≥ 0.*got -16"):
        Objective(rand_ext, Settings(tile=-16), (64, 96), c, (s,))


# --------------------------------------------------------------------------- the same objective


@pytest.mark.parametrize("statistic, masked", list(itertools.product(("moments", "gram", "gram_normalized"),
                                                                     (False, True))))
def test_a_halo_covering_the_image_gives_the_whole_gradient_and_losses(rand_ext, images, statistic, masked):
    """Regions, the content-strength mask, smoothness: tile by tile, the same numbers as the whole image."""
    hw = (80, 112)
    mask = torch.zeros(1, 1, *hw)
    mask[..., :, :50] = 1
    c = ContentTarget.create(rand_ext, images.gradient(*hw), "relu4_2", mask=mask if masked else None)
    first = StyleTarget.create(rand_ext, images.checkerboard(64, 64), statistic=statistic,
                               mask=mask if masked else None)
    regions = (first, StyleTarget.create(rand_ext, images.stripes(64, 64), statistic=statistic)) if masked else (first,)
    settings = Settings(tv_weight=1.0, style_weight=5.0, autocast_bf16=False)
    x = 0.7 * images.stripes(*hw) + 0.3 * images.noise(*hw, seed=1)
    g_whole, p_whole = _grad(Objective(rand_ext, settings, hw, c, regions), x)
    g_tiled, p_tiled = _grad(Objective(rand_ext, settings.replace(tile=32), hw, c, regions, halo=128), x)
    assert _cos(g_tiled, g_whole) > 0.99999
    assert float((g_tiled - g_whole).norm() / g_whole.norm()) < 1e-4
    for k in ("content", "style", "tv", "total"):
        assert float(p_tiled[k]) == pytest.approx(float(p_whole[k]), rel=1e-5), k


@pytest.mark.parametrize("statistic", ("moments", "gram"))
def test_an_image_not_a_multiple_of_16_gives_the_whole_gradient_up_to_its_edges(rand_ext, images, statistic):
    """91×75 px (the layers' last cells cut by the edge), tiles of 32 px: the whole image's gradient and
    losses, and the deep layers reach the last rows and columns as they reach the first (the mean |gradient|
    of each side's outermost 2 px: 0.87–1.58× the image's; with floor-mode pooling 0.55–0.64 at the bottom
    and right)."""
    hw = (91, 75)
    c = ContentTarget.create(rand_ext, images.gradient(*hw), "relu4_2")
    s = (StyleTarget.create(rand_ext, images.checkerboard(64, 64), ["relu4_1", "relu5_1"], statistic=statistic),)
    settings = Settings(tv_weight=0.0, style_weight=5.0, autocast_bf16=False)
    x = 0.7 * images.stripes(*hw) + 0.3 * images.noise(*hw, seed=1)
    whole = Objective(rand_ext, settings, hw, c, s)
    tiled = Objective(rand_ext, settings.replace(tile=32), hw, c, s, halo=128)
    assert tiled.geo.grid["relu5_1"] == (6, 5) and len(tiled.geo.tiles()) == 6  # 3 × 2
    (g_whole, p_whole), (g_tiled, p_tiled) = _grad(whole, x), _grad(tiled, x)
    assert float((g_tiled - g_whole).norm() / g_whole.norm()) < 1e-4
    for k in ("content", "style", "total"):
        assert float(p_tiled[k]) == pytest.approx(float(p_whole[k]), rel=1e-5), k
    a = g_tiled.abs().mean(1)[0]
    a = a / a.mean()
    sides = {"top": a[:2].mean(), "bottom": a[-2:].mean(), "left": a[:, :2].mean(), "right": a[:, -2:].mean()}
    assert min(sides.values()) > 0.75, {k: round(float(v), 2) for k, v in sides.items()}


def test_stored_goals_give_the_whole_gradient_between_refreshes(rand_ext, images):
    hw = (80, 112)
    c = ContentTarget.create(rand_ext, images.gradient(*hw), "relu4_2")
    s = (StyleTarget.create(rand_ext, images.checkerboard(64, 64)),)
    settings = Settings(tv_weight=1.0, style_weight=5.0, autocast_bf16=False, transport_every=10)
    whole = Objective(rand_ext, settings, hw, c, s)
    tiled = Objective(rand_ext, settings.replace(tile=32), hw, c, s, halo=128)
    x0 = images.stripes(*hw)
    x1 = (x0 + 0.05 * images.noise(*hw, seed=3)).clamp(0, 1)
    _grad(whole, x0, True), _grad(tiled, x0, True)
    (g_whole, p_whole), (g_tiled, p_tiled) = _grad(whole, x1, False), _grad(tiled, x1, False)
    assert _cos(g_tiled, g_whole) > 0.99999
    assert float(p_tiled["style"]) == float(p_whole["style"]) == 0.0  # not a refresh: no W2 value
    assert tiled.terms[(0, "relu1_1")].goal is not None
    every_step = Objective(rand_ext, settings.replace(tile=32, transport_every=1), hw, c, s)
    assert not every_step.terms[(0, "relu1_1")].store_goals  # every step refreshes: nothing to keep


@pytest.mark.parametrize("statistic", ("moments", "gram_normalized"))
def test_a_large_style_image_is_analysed_in_tiles(rand_ext, images, statistic):
    target = StyleTarget.create(rand_ext, images.checkerboard(96, 128, tile=12), statistic=statistic)
    whole = target.at_size(rand_ext, 128)
    exact = tiles.tiled_style(rand_ext, target, [(96, 128)], tile=16, halo=128)  # every crop is the image
    near = tiles.style_at(rand_ext, target, 128, tile=32, halo=32)  # crops of 96 px: in tiles, approximate
    for n in target.layers:
        for a, b, c in zip(exact[n].stat, near[n].stat, whole[n].stat):
            assert float((a.to(c) - c).norm() / c.norm()) < 1e-5, n
            assert float((b.to(c) - c).norm() / c.norm()) < 0.15, n


def test_tiled_runs_are_deterministic_and_the_grid_moves(rand_ext, images):
    c = ContentTarget.create(rand_ext, images.gradient(64, 96), "relu3_1")
    s = StyleTarget.create(rand_ext, images.checkerboard(64, 64), ["relu1_1", "relu2_1", "relu3_1"])
    settings = get_preset("fast").settings.replace(tile=32, steps=3, first_steps=3, min_size=1 << 20)
    from nst_core import optimize

    a, b = (optimize(rand_ext, c, s, settings=settings) for _ in range(2))
    assert torch.equal(a, b)
    obj = Objective(rand_ext, settings, (64, 96), c, (s,))
    offsets = {obj._offset() for _ in range(20)}
    assert len(offsets) > 5 and all(o % 4 == 0 and 0 <= o < 32 for off in offsets for o in off)


# --------------------------------------------------------------------------- memory model


def test_choose_tile_whole_when_it_fits_else_the_largest_tile_that_does():
    s = QUALITY.settings
    style = list(QUALITY.style_layers)
    hw = (2048, 1536)
    whole = required_bytes(estimate_bytes(hw, LAYERS, s, style_layers=style))
    assert choose_tile(hw, LAYERS, s, int(whole / 0.75) + 1, style_layers=style) == 0  # (3/4 of it may be used)
    big = choose_tile(hw, LAYERS, s, whole // 2, style_layers=style)
    small = choose_tile(hw, LAYERS, s, whole * 2 // 5, style_layers=style)
    assert big % 16 == 0 and small % 16 == 0 and 128 <= small < big < max(hw)
    assert required_bytes(tiled_bytes(hw, small, LAYERS, s, style_layers=style)) <= 0.75 * (whole * 2 // 5)
    with pytest.raises(DoesNotFit, match=r"even in tiles of 128 px.*the largest that fits in tiles is about \d+ px"):
        choose_tile(hw, LAYERS, s, whole // 5, style_layers=style)


def test_peak_memory_with_a_small_tile_is_less_than_half_the_whole_image(rand_ext, images, monkeypatch):
    """The live tensor bytes of building one scale's objective and one refresh step (the profiler's count)."""
    from bench.tiles import peak_tensor_bytes

    hw = (320, 320)  # (at 192 px the fixed costs of a pass, ~30 MiB of weight copies, would weigh as much)
    c = ContentTarget.create(rand_ext, images.gradient(*hw), QUALITY.content_layer)
    s = (StyleTarget.create(rand_ext, images.checkerboard(96, 96), QUALITY.style_layers,
                            QUALITY.style_layer_weights),)
    x = images.stripes(*hw).requires_grad_(True)

    def peak(tile: int) -> int:
        return peak_tensor_bytes(lambda: Objective(rand_ext, QUALITY.settings.replace(tile=tile), hw, c, s)
                                 .gradient(x, True))[1]

    monkeypatch.setattr(tiles, "DEFAULT_HALO", 32)
    whole, tiled = peak(0), peak(64)
    print(f"\npeak tensor bytes at 320² px: whole {whole / 2**20:.1f} MiB, tiles of 64 px + 32 px halo "
          f"{tiled / 2**20:.1f} MiB (ratio {tiled / whole:.2f})")
    assert whole > 10 * 2**20  # the count saw the activations
    assert tiled < 0.5 * whole


# --------------------------------------------------------------------------- the node and the command


@pytest.fixture
def fit(pack, monkeypatch, rand_ext, images):
    """The node's fit_memory with a stand-in memory manager reporting ``state["free"]`` bytes."""
    import sys

    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    state = {"free": 1 << 40, "asked": []}
    monkeypatch.setattr(bridge, "make_room", lambda n, device: state["asked"].append(n))
    monkeypatch.setattr(bridge, "free_bytes", lambda device: state["free"])
    node = pack.NODE_CLASS_MAPPINGS["NST_StyleTransferOptimize"]
    c = ContentTarget.create(rand_ext, images.gradient(48, 64), QUALITY.content_layer)
    s = (StyleTarget.create(rand_ext, images.checkerboard(64, 64), QUALITY.style_layers),)

    def run(settings: Settings, size: int) -> Settings:
        return node.fit_memory(rand_ext, settings, c, s, "content", size, torch.device("cpu"))

    state["run"] = run
    return state


def test_the_node_switches_to_tiles_rather_than_refusing(fit):
    s, style = QUALITY.settings, list(QUALITY.style_layers)
    hw = (768, 1024)
    assert fit["run"](s, 1024).tile == "off"  # plenty of memory: the whole image
    light = required_bytes(estimate_bytes(hw, LAYERS, s.replace(checkpoint=True), style_layers=style))
    fit["free"] = light  # not even with checkpointing, in the 3/4 of it a plan may use
    tiled = fit["run"](s, 1024)
    assert tiled.tile % 16 == 0 and 128 <= tiled.tile < 1024 and not tiled.checkpoint
    assert required_bytes(tiled_bytes(hw, tiled.tile, LAYERS, s, style_layers=style)) <= 0.75 * fit["free"]
    fit["free"] = light // 50
    with pytest.raises(ValueError, match=r"even in tiles of 128 px"):  # (the pack's own DoesNotFit)
        fit["run"](s, 1024)


def test_a_tile_set_on_the_node_is_kept_and_its_memory_asked_for(fit):
    s = QUALITY.settings.replace(tile=256)
    fit["free"] = 1  # not consulted
    assert fit["run"](s, 1024).tile == 256
    style = list(QUALITY.style_layers)
    assert fit["asked"] == [required_bytes(tiled_bytes((768, 1024), 256, LAYERS, s, style_layers=style))]


def test_the_node_runs_in_tiles(nodes):
    with torch.inference_mode():
        ext = nodes["NST_LoadVGGExtractor"].load("original VGG19 (bundled)", "vgg19", "max", "replicate")[0]
        ct = nodes["NST_ContentTarget"].build(ext, torch.rand(1, 48, 64, 3), "relu4_2", 1.0)[0]
        st = nodes["NST_GramStyleTarget"].build(ext, torch.rand(1, 48, 48, 3),
                                                "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", "", "", "moments", 1.0)[0]
        out = nodes["NST_StyleTransferOptimize"].run(ext, "fast", 2, 1.0, 1.0, 1.0, 64, "auto", 0,
                                                     content_target=ct, style_target=st, tile=32)[0]
    assert out.shape == (1, 48, 64, 3) and bool(torch.isfinite(out).all())


def test_the_command_parses_tile(monkeypatch):
    from nst_core.cli import build_parser

    parse = lambda *a: build_parser().parse_args(["transfer", "c.jpg", "s.jpg", "-o", "o.png", *a])  # noqa: E731
    assert parse().tile == "auto" and parse("--tile", "off").tile == "off" and parse("--tile", "512").tile == 512
    with pytest.raises(SystemExit):
        parse("--tile", "8")


def test_the_plan_reads_the_free_memory(monkeypatch):
    from nst_core import plan

    monkeypatch.setattr(plan, "device_free_bytes", lambda device: 6 * 2**30)
    style = list(QUALITY.style_layers)
    assert plan.make_plan((256, 256), LAYERS, QUALITY.settings, "cpu", style_layers=style).tile == 0
    assert 128 <= plan.make_plan((2048, 2048), LAYERS, QUALITY.settings, "cpu", style_layers=style).tile < 2048
    monkeypatch.setattr(plan, "device_free_bytes", lambda device: None)  # unknown: never tiles by itself
    assert plan.make_plan((2048, 2048), LAYERS, QUALITY.settings, "cpu", style_layers=style).tile == 0


def test_device_free_bytes_on_the_cpu_is_a_positive_number():
    from nst_core.memory import device_free_bytes

    free = device_free_bytes("cpu")
    assert free is None or free > 2**20


# --------------------------------------------------------------------------- real weights (slow)


def _photos(data_image, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return tuple(load_image(str(data_image(name)), size) for name in ("starry_night.jpg", "shipwreck.jpg"))


def _bands(hw: Tuple[int, int], cuts_px, width: int = 4) -> torch.Tensor:
    """Pixels within ``width`` px of the rows and columns ``cuts_px``."""
    band = torch.zeros(hw, dtype=torch.bool)
    for cut in cuts_px:
        band[max(0, cut - width):cut + width, :] = True
        band[:, max(0, cut - width):cut + width] = True
    return band


@pytest.mark.slow
def test_w2_gradient_at_a_refresh_matches_the_whole_image_without_seams(real_ext, data_image):
    content, style = _photos(data_image, 192)
    hw = tuple(content.shape[-2:])
    c = ContentTarget.create(real_ext, content, QUALITY.content_layer)
    s = (StyleTarget.create(real_ext, style, QUALITY.style_layers, QUALITY.style_layer_weights),)
    settings = QUALITY.settings.replace(content_weight=0.0, tv_weight=0.0, tile=64)  # the W2 loss alone
    x = 0.6 * content + 0.4 * torch.nn.functional.interpolate(style, size=hw, mode="bilinear")
    g_whole, _ = _grad(Objective(real_ext, settings.replace(tile=0), hw, c, s), x)
    energy = lambda g: g.pow(2).sum((0, 1))  # noqa: E731 - per pixel

    full = Objective(real_ext, settings, hw, c, s, halo=192)  # every crop is the whole image
    cos_full = _cos(_grad(full, x)[0], g_whole)
    fixed = Objective(real_ext, settings, hw, c, s, halo=32)  # a realistic halo, the grid held still
    fixed._offset = lambda: (0, 0)
    g_fixed, _ = _grad(fixed, x)
    cos_halo = _cos(g_fixed, g_whole)
    band = _bands(hw, (64, 128))  # that grid's borders
    ratio = lambda g: float(energy(g)[band].sum() / energy(g_whole)[band].sum()) / float(  # noqa: E731
        energy(g)[~band].sum() / energy(g_whole)[~band].sum())
    err = lambda g: float(energy(g - g_whole)[band].sum() / energy(g_whole)[band].sum()) / float(  # noqa: E731
        energy(g - g_whole)[~band].sum() / energy(g_whole)[~band].sum())
    shifted = Objective(real_ext, settings, hw, c, s, halo=32)  # as in a run: the grid moves every step
    g_mean = sum(_grad(shifted, x)[0] for _ in range(8)) / 8
    print(f"\nW2 gradient at a refresh, tiles of 64 px at 192 px: cosine {cos_full:.6f} (halo covers the image), "
          f"{cos_halo:.5f} (halo 32 px). Energy at the borders over elsewhere, relative to the whole image's: "
          f"{ratio(g_fixed):.3f}; error energy there over elsewhere: fixed grid {err(g_fixed):.2f}, "
          f"mean of 8 shifted steps {err(g_mean):.2f}")
    assert cos_full > 0.9999
    assert cos_halo > 0.99
    assert ratio(g_fixed) < 1.05  # no excess gradient energy along a step's borders
    assert err(g_fixed) < 1.5 and err(g_mean) < 1.5  # no seam: the error along tile borders is as elsewhere's


RUN = dict(steps=20)  # the quality preset, shortened: 35 + 20 steps over two scales (136 and 192 px)
TILE = 64  # with the default 64 px halo: crops of 128–192 px, most of each a halo


@pytest.fixture(scope="module")
def runs(real_ext, data_image):
    """Whole, whole with noise 1e-4 on the content, and tiled runs at 192 px, computed when first asked for."""
    content, style = _photos(data_image, 192)
    done: Dict[str, torch.Tensor] = {}

    def get(name: str) -> torch.Tensor:
        if name not in done:
            if name == "whole":
                done[name] = transfer(real_ext, content, [style], "quality", **RUN)
            elif name == "noisy":
                noise = 1e-4 * torch.randn(content.shape, generator=torch.Generator().manual_seed(0))
                done[name] = transfer(real_ext, (content + noise).clamp(0, 1), [style], "quality", **RUN)
            else:
                done[name] = transfer(real_ext, content, [style], "quality", tile=TILE, **RUN)
        return done[name]

    get.images = (content, style)
    return get


@pytest.mark.slow
def test_the_run_is_sensitive_to_tiny_input_changes(runs):
    """The floor the tiled run is held to: noise of 1e-4 on the content (PSNR 80 dB) moves the output
    by far more (the optimisation is chaotic), by how much depends on the pictures."""
    floor = _psnr(runs("noisy"), runs("whole"))
    print(f"\nnoise floor at 192 px: PSNR(whole, whole with 1e-4 noise) = {floor:.2f} dB")
    assert 20 < floor < 50


@pytest.mark.slow
def test_tiles_are_not_a_visible_change(runs):
    """Tiles with the default halo move the output no further from the whole run than 1e-4 noise on the
    content does: the run's own floor, whatever the pictures. A tiling that breaks does not pass: with
    tiles of 96 px, no halo (45 % gradient error) gives 23.9 dB against a floor of 35.9, a 32 px halo
    (6.7 %) 32.4 dB, the default 64 px (0.3 %, the bf16 floor) 41.0 dB; with tiles of 64 px, 39.1 dB."""
    floor = _psnr(runs("noisy"), runs("whole"))
    tiled = _psnr(runs("tiled"), runs("whole"))
    print(f"\nPSNR(tiled {TILE} px + {tiles.DEFAULT_HALO} px halo, whole) = {tiled:.2f} dB; noise floor {floor:.2f} dB")
    assert tiled >= floor - 1.0


@pytest.mark.slow
def test_the_referee_scores_tiled_and_whole_runs_within_five_percent(runs, real_ext):
    from bench.referee import Referee

    referee = Referee(*runs.images, real_ext)
    whole, tiled = referee.score(runs("whole")), referee.score(runs("tiled"))
    print(f"\nreferee: whole content {whole['content']:.4f} style {whole['style']:.4f}; "
          f"tiled content {tiled['content']:.4f} style {tiled['style']:.4f}")
    for k in ("content", "style"):
        assert tiled[k] == pytest.approx(whole[k], rel=0.05), k


@pytest.mark.slow
def test_no_seam_settles_on_the_tile_lattice(runs):
    """Cuts lie on multiples of 16 px: the output's edge energy there is no higher than elsewhere,
    relative to the whole run's (a seam that settled would show on those lines)."""

    def lattice_ratio(img: torch.Tensor) -> float:
        dx = (img[..., :, 1:] - img[..., :, :-1]).pow(2).mean((0, 1, 2))  # across column c-1 | c, c = 1..W-1
        dy = (img[..., 1:, :] - img[..., :-1, :]).pow(2).mean((0, 1, 3))
        on_x, on_y = torch.arange(1, img.shape[-1]) % 16 == 0, torch.arange(1, img.shape[-2]) % 16 == 0
        return float((dx[on_x].mean() + dy[on_y].mean()) / (dx[~on_x].mean() + dy[~on_y].mean()))

    whole, tiled = lattice_ratio(runs("whole")), lattice_ratio(runs("tiled"))
    print(f"\nedge energy on the 16 px lattice over elsewhere: whole {whole:.3f}, tiled {tiled:.3f}")
    assert tiled <= whole * 1.05
