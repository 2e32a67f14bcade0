"""bench/referee.py: the fixed referee's figures, the style inside a border, and a folder scored again."""

import pytest
import torch

import nst_core
from bench import common, referee


def test_the_style_inside_leaves_a_line_along_the_edges_out(images, data_image):
    """The unstyled content is at 1.0 by construction; a dark strip along its top edge moves the whole
    image's style figure but not the figure inside a border wider than the strip."""
    content = images.gradient(96, 128)
    style = nst_core.load_image(str(data_image("starry_night.jpg")))
    ref = referee.Referee(content, style)
    plain = ref.score(content, border=16)
    assert plain["style"] == pytest.approx(1.0) and plain["style inside"] == pytest.approx(1.0)
    assert plain["content"] == pytest.approx(0.0, abs=1e-9)
    strip = content.clone()
    strip[..., :6, :] *= 0.3  # 6 px at 128 px: 12 px at the referee's 256 px
    got = ref.score(strip, border=16)
    assert abs(got["style"] - 1.0) > 1e-3 and got["style inside"] == pytest.approx(1.0)
    assert "style inside" not in ref.score(strip)


def test_a_border_too_wide_is_refused(images, data_image):
    ref = referee.Referee(images.gradient(96, 128), nst_core.load_image(str(data_image("starry_night.jpg"))))
    with pytest.raises(ValueError, match="border must be 0..80 px"):
        ref.score(images.gradient(96, 128), border=81)


def test_a_folder_is_scored_again(tmp_path, monkeypatch, images, data_image, capsys):
    monkeypatch.setattr(common, "IMAGES", str(tmp_path))
    content = images.gradient(48, 64)
    nst_core.save_image(content, str(tmp_path / "photo.jpg"))
    nst_core.save_image(nst_core.load_image(str(data_image("starry_night.jpg"))), str(tmp_path / "paint.jpg"))
    out = tmp_path / "run"
    out.mkdir()
    nst_core.save_image(torch.flip(content, (-1,)), str(out / "photo__paint_64.png"))
    scores = referee.score_folder(str(out), border=8)
    assert list(scores) == ["photo×paint"] and scores["photo×paint"]["content"] > 0.01
    assert referee.main([str(out), "--border", "8"]) == 0
    assert "| photo×paint | " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no outputs"):
        referee.score_folder(str(tmp_path / "empty"))
