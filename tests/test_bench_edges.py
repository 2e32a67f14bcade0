"""bench/edges.py: the line along each edge, and the same measure inside the picture."""

import pytest
import torch

import nst_core
from bench import common, edges


def test_a_strip_along_one_edge_is_measured_there_only(images):
    content = images.gradient(60, 80)
    out = (content + 0.02 * images.noise(60, 80, seed=3)).clamp(0, 1)
    out[..., :2, :] -= 0.1  # a dark strip along the top, 2 px high
    got = edges.edge_lines(out, content)
    assert got["top"] == pytest.approx(-25.5, abs=1.5)
    assert max(abs(got[k]) for k in ("bottom", "left", "right")) < 1.5
    assert max(abs(v) for v in edges.interior_lines(out, content)) < 1.5


def test_the_table_row_of_a_folder(tmp_path, monkeypatch, images):
    monkeypatch.setattr(common, "IMAGES", str(tmp_path))
    content = images.gradient(48, 72)
    nst_core.save_image(content, str(tmp_path / "photo.jpg"))
    out = content.clone()
    out[..., :, -2:] += 0.2
    nst_core.save_image(out.clamp(0, 1), str(tmp_path / "photo__paint_72.png"))
    row = edges.summarise(str(tmp_path))
    assert row["outputs"] == 1 and row["edge max"] > 40 and row["interior p90"] < 3
    with pytest.raises(SystemExit, match="no outputs"):
        edges.summarise(str(tmp_path / "empty"))
