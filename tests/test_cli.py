"""The `nst` command: parsing, the three modes on tiny inputs, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nst_core.cli import build_parser, main


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    content = tmp_path / "content.png"
    style = tmp_path / "style.png"
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(style)
    return content, style


def _run(*args):
    return main([str(a) for a in args])


def test_parser_defaults():
    a = build_parser().parse_args(["transfer", "c.jpg", "s.jpg", "-o", "o.png"])
    assert a.size == 512 and a.preset == "quality" and a.device == "auto" and a.weights == "original"
    assert a.styles == ["s.jpg"] and a.init == "content"
    r = build_parser().parse_args(["reconstruct", "c.jpg", "-o", "o.png"])
    assert r.layer == "relu4_2" and r.init == "noise"


def test_transfer_reconstruct_texture_write_images(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "t.png"
    assert _run("transfer", content, style, style, "--style-blend", "1", "2", "-o", out, "--size", 48,
                "--steps", 2, "--weights", "random", "--quiet", "--preset", "fast") == 0
    assert Image.open(out).size == (48, 36)
    rec = tmp_path / "r.png"
    assert _run("reconstruct", content, "--layer", "relu2_2", "-o", rec, "--size", 40, "--steps", 3,
                "--weights", "random", "--quiet") == 0
    assert Image.open(rec).size == (40, 30)
    tex = tmp_path / "x.png"
    assert _run("texture", style, "-o", tex, "--size", 32, "--steps", 2, "--weights", "random", "--quiet",
                "--save-every", 1) == 0
    assert Image.open(tex).size == (32, 32)
    assert (tmp_path / "x_00001.png").exists()


def test_checkpoint_flag_reaches_the_extractor(images, tmp_path, monkeypatch):
    from nst_core.extractor import Extractor

    seen = []
    real = Extractor.forward

    def spy(self, image, layers, checkpoint=False, compile=False):
        seen.append((checkpoint, compile))
        return real(self, image, layers, checkpoint, compile)

    monkeypatch.setattr(Extractor, "forward", spy)
    content, style = images
    assert _run("transfer", content, style, "-o", tmp_path / "c.png", "--size", 48, "--steps", 2,
                "--weights", "random", "--quiet", "--preset", "fast", "--checkpoint") == 0
    assert (True, False) in seen
    flags = build_parser().parse_args(["texture", "s.jpg", "-o", "o.png", "--compile", "--bf16"])
    assert flags.compile is True and flags.bf16 is True


@pytest.mark.parametrize("args, message", [
    (["transfer", "missing.jpg", "{style}", "-o", "{out}"], "image not found"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--content-layer", "relu4_3x"], "Did you mean"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--style-layers", ","], "layer list is empty"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--style-blend", "1", "2"], "one per image"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--weights", "nope.pth"], "not found"),
    (["reconstruct", "{content}", "-o", "{out}", "--size", "8", "--layer", "relu5_1"], "too small"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--init", "sparkles"], "--init"),
])
def test_bad_input_exits_2_with_one_line(images, tmp_path, capsys, args, message):
    content, style = images
    argv = [a.format(content=content, style=style, out=tmp_path / "o.png") for a in args]
    argv += ["--weights", "random"] if "--weights" not in argv else []
    assert main(argv + ["--quiet", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nst: error:") and message in err[0]
    assert not (tmp_path / "o.png").exists()


def test_negative_weight_is_rejected_by_the_parser(images, tmp_path):
    content, style = images
    with pytest.raises(SystemExit) as exc:
        main(["transfer", str(content), str(style), "-o", str(tmp_path / "o.png"), "--style-weight", "-1"])
    assert exc.value.code == 2


def test_python_dash_m_runs_the_same_command():
    res = subprocess.run([sys.executable, "-m", "nst_core", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "transfer" in res.stdout and "reconstruct" in res.stdout
