"""nst_core.plan and ``nst … --plan``: the plan before a run, the word before a large one."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from nst_core import get_preset, plan as planning
from nst_core.cli import main
from nst_core.memory import estimate_bytes, required_bytes, tiled_bytes, usable_bytes
from nst_core.plan import make_plan, rough_seconds

QUALITY = get_preset("quality")
LAYERS = list(QUALITY.style_layers) + [QUALITY.content_layer]
STYLE = list(QUALITY.style_layers)
GiB = 2**30


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(tmp_path / "content.png")
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(tmp_path / "style.png")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1), i, 1).astype(np.uint8)).save(
            frames / f"f{i}.png")
    return tmp_path


def test_the_plan_names_the_way_the_peak_and_the_free_memory_it_compared_against():
    s = QUALITY.settings
    whole = make_plan((1024, 768), LAYERS, s, "cpu", style_layers=STYLE, free_bytes=64 * GiB)
    assert whole.settings.tile == "off" and not whole.settings.checkpoint and whole.way == "the whole image at once"
    assert whole.estimate == estimate_bytes((1024, 768), LAYERS, whole.settings, style_layers=STYLE)
    tight = make_plan((4096, 4096), LAYERS, s, "cpu", style_layers=STYLE, free_bytes=16 * GiB)
    assert tight.way == f"tiles of {tight.tile} px" and 128 <= tight.tile < 4096
    assert tight.estimate == tiled_bytes((4096, 4096), tight.tile, LAYERS, tight.settings, style_layers=STYLE)
    assert required_bytes(tight.estimate) <= usable_bytes(16 * GiB)  # headroom for the rest of the server
    line = tight.summary()
    assert re.search(r"4096×4096 px on cpu, tiles of \d+ px; about [\d.]+ GiB at the peak of 16.0 GiB free "
                     r"\(12.0 GiB usable\)", line), line
    assert tight.is_large and not make_plan((256, 256), LAYERS, s, "cpu", style_layers=STYLE,
                                            free_bytes=64 * GiB).is_large
    text = "\n".join(tight.lines())
    for word in ("output", "runs as", "memory", "free", "W2 algebra", "float64 on cpu"):
        assert word in text


def test_the_rough_time_scales_with_pixels_iterations_and_tiles():
    s = QUALITY.settings.replace(steps=10, first_steps=20, min_size=1 << 20)  # one scale, 10 iterations
    plan = make_plan((512, 512), LAYERS, s, "cpu", style_layers=STYLE, free_bytes=64 * GiB)
    assert rough_seconds(plan, 0.5, (256, 256)) == pytest.approx(10 * 0.5 * 4)  # 4× the pixels, 10 iterations
    pyramid = make_plan((512, 512), LAYERS, QUALITY.settings, "cpu", style_layers=STYLE, free_bytes=64 * GiB)
    # the pyramid (256 px, then 512 px with coarse_steps) costs its scales: the first adds to the last one
    q = QUALITY.settings
    assert rough_seconds(pyramid, 0.5, (256, 256)) == pytest.approx(0.5 * (q.first_steps + 4 * q.coarse_steps))
    tiled = make_plan((512, 512), LAYERS, s.replace(tile=128), "cpu", style_layers=STYLE, free_bytes=64 * GiB)
    # halos of 64 px around tiles of 128 px, and a gathering pass on refresh steps: at least twice the work
    assert rough_seconds(tiled, 0.5, (256, 256)) > 2 * rough_seconds(plan, 0.5, (256, 256))


@pytest.mark.parametrize("command", ["transfer", "texture", "reconstruct"])
def test_plan_prints_the_plan_writes_nothing_and_exits_0(files, capsys, command):
    out = files / "out.png"
    inputs = {"transfer": [files / "content.png", files / "style.png"], "texture": [files / "style.png"],
              "reconstruct": [files / "content.png"]}[command]
    code = main([command, *map(str, inputs), "-o", str(out), "--size", "48", "--weights", "random", "--plan",
                 "--save-every", "1"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists() and not list(files.glob("out_*.png"))  # no snapshot either
    assert re.search(r"output +\d+×\d+ px", text) and "runs as     the whole image at once" in text
    assert re.search(r"memory +about [\d.]+ [MG]iB at the peak", text)
    assert re.search(r"free +[\d.]+ [MG]iB on cpu", text)
    assert re.search(r"time +roughly \d+ (s|min)", text), text
    assert ("W2 algebra  float64 on cpu" in text) == (command != "reconstruct")


def test_plan_for_frames_plans_one_frame_times_the_count_and_writes_nothing(files, capsys):
    out = files / "styled"
    code = main(["frames", str(files / "frames"), str(files / "style.png"), "-o", str(out), "--size", "48",
                 "--weights", "random", "--plan"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "48×36 px, 3 images or frames one after another" in text and "in all" in text


def test_a_large_run_says_its_plan_and_rough_time_before_it_starts(files, capsys, monkeypatch):
    monkeypatch.setattr(planning, "LARGE_PIXELS", 1)  # every run is large
    out = files / "out.png"
    code = main(["transfer", str(files / "content.png"), str(files / "style.png"), "-o", str(out), "--size", "48",
                 "--weights", "random", "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and out.exists()
    assert re.search(r"nst: plan: 48×36 px on cpu, the whole image at once; about .* free .*; roughly \d+ s", err), err


def test_the_plan_is_what_the_run_does(files, monkeypatch):
    """The settings the command hands the run are the plan's: a tile planned is the tile run."""
    from nst_core import cli

    monkeypatch.setattr(planning, "device_free_bytes", lambda device: 3 * 2**30)  # 64 px whole fits in 3 GiB
    seen = {}
    real = cli.transfer
    monkeypatch.setattr(cli, "transfer", lambda *a, **k: seen.setdefault("k", k) and real(*a, **k))
    main(["transfer", str(files / "content.png"), str(files / "style.png"), "-o", str(files / "o.png"),
          "--size", "48", "--weights", "random", "--steps", "1", "--quiet"])
    assert seen["k"]["tile"] == "off" and not seen["k"]["checkpoint"]
