"""bench/devset.py: its overrides and its contact sheet (the runs themselves need the benchmark images)."""

import pytest
from PIL import Image

from bench import common, devset


def test_overrides_are_typed():
    got = devset.parse_overrides(["style_weight=40", "lr=0.05", "style_layer_weights=2,2,1,1,1",
                                  "content_layer=relu3_1", "compile=true"])
    assert got == {"style_weight": 40, "lr": 0.05, "style_layer_weights": (2, 2, 1, 1, 1),
                   "content_layer": "relu3_1", "compile": True}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        devset.parse_overrides(["style_weight"])


def test_unknown_override_is_refused_before_any_run():
    with pytest.raises(SystemExit, match="unknown key"):
        devset._check_overrides({"styleweight": 3})


def test_contact_sheet_has_a_row_per_content_and_a_column_per_style(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "IMAGES", str(tmp_path))
    for i, name in enumerate(devset.CONTENTS + devset.STYLES):
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(tmp_path / f"{name}.jpg")
    results = {}
    for c in devset.CONTENTS:
        for s in devset.STYLES:
            Image.new("RGB", (40, 30), "blue").save(devset._output(str(tmp_path), c, s, 64))
            results[f"{c}×{s}"] = {"content": 0.5, "style": 0.1, "seconds": 1.0}
    sheet = Image.open(devset.contact_sheet(results, str(tmp_path), 64))
    assert sheet.height == (devset.CELL + 4) * (len(devset.CONTENTS) + 1)
    # the last row's last cell is an output (blue), the first column a content
    last_row_y = sheet.height - 4 - devset.CELL // 2
    assert sheet.getpixel((sheet.width - 30, last_row_y)) == (0, 0, 255)
    assert sheet.getpixel((5, last_row_y))[2] < 50
