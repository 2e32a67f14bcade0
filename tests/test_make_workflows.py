"""Example workflows: UI files and API twins are in sync and well formed."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_workflows as mw  # noqa: E402


def test_files_on_disk_match_the_generator():
    assert mw.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_ui_workflow_is_consistent(name):
    ui = json.load(open(mw.ui_path(name)))
    assert ui["version"] == 0.4 and ui["last_link_id"] == len(ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[dst]["inputs"][dst_slot]["type"] == typ == nodes[src]["outputs"][src_slot]["type"]
    assert os.path.exists(mw.ui_path(name, ".jpg")), "thumbnail missing"


# --------------------------------------------------------------------------- the template browser


def test_the_template_browser_lists_basic_first_under_human_titles():
    """ComfyUI lists example_workflows/*.json by file name (sorted in newer servers; the frontend's
    alphabetical sort goes by the same name) and shows the name as the title."""
    listed = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "example_workflows")) if f.endswith(".json"))
    assert listed == sorted(mw.TEMPLATE_TITLES[n] for n in mw.GRAPHS)
    assert listed[0] == mw.TEMPLATE_TITLES["basic_transfer"] == "Basic style transfer"
    for title in listed:  # words a person reads, not an identifier
        assert title[0].isupper() and " " in title and "_" not in title, title
    assert set(mw.TEMPLATE_TITLES) == set(mw.GRAPHS)


def test_check_names_files_that_no_graph_makes(tmp_path, monkeypatch, capsys):
    ui = tmp_path / "example_workflows"
    ui.mkdir()
    for name in mw.GRAPHS:
        for ext in (".json", ".jpg"):
            with open(os.path.join(mw.UI_DIR, mw.TEMPLATE_TITLES[name] + ext), "rb") as f:
                (ui / (mw.TEMPLATE_TITLES[name] + ext)).write_bytes(f.read())
    monkeypatch.setattr(mw, "UI_DIR", str(ui))
    assert mw.main(["--check"]) == 0
    (ui / "basic_transfer.json").write_text("{}")  # a file under its old name
    os.remove(ui / "Layer explorer.jpg")
    assert mw.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "basic_transfer.json" in err and "missing thumbnails: Layer explorer.jpg" in err


def seam_score(path: str) -> float:
    """How much the most line-like column or row of a picture stands out: the curvature across it,
    typical (median) over its length, against the median column's or row's. A straight line through
    the picture (a dashed grid drawn over it) scores high; a painting scores about 2-3."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    scores = []
    for img in (a, a.T):  # columns, then rows
        curvature = np.median(np.abs(2 * img[:, 1:-1] - img[:, :-2] - img[:, 2:]), axis=0)
        scores.append(curvature.max() / (np.median(curvature) + 1e-9))
    return max(scores)


def test_the_tiles_thumbnail_has_no_line_that_looks_like_a_seam():
    """Tiled runs promise no seams; a grid drawn over the thumbnail said the opposite (it scored 7.5)."""
    assert seam_score(mw.ui_path("large_image_in_tiles", ".jpg")) < 4.0
    assert seam_score(mw.ui_path("basic_transfer", ".jpg")) < 4.0  # the score's scale: a plain result


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_api_twin_widgets_match_node_inputs(name):
    api = json.load(open(mw.api_path(name)))
    for node in api.values():
        linked, widgets, _ = mw.SPECS[node["class_type"]]
        for key in node["inputs"]:
            assert key in widgets or key in dict(linked), f"{node['class_type']} has no input {key}"


# --------------------------------------------------------------------------- layout: every result shows

TITLE = 30  # litegraph draws a node's title bar above its `pos`
SHOWS_IMAGE = {"NST_StyleTransferOptimize", "PreviewImage", "SaveImage"}  # an image appears below the widgets


def grown_box(node):
    """(x0, y0, x1, y1) a node covers once it shows its image: it grows by about its width."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE, x + w, y + h + (w if node["type"] in SHOWS_IMAGE else 0)


def overlapping(nodes):
    boxes = {n["id"]: grown_box(n) for n in nodes}
    ids = sorted(boxes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if boxes[a][0] < boxes[b][2] and boxes[b][0] < boxes[a][2]
            and boxes[a][1] < boxes[b][3] and boxes[b][1] < boxes[a][3]]


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_no_node_hides_another_once_the_results_show(name):
    ui = json.load(open(mw.ui_path(name)))
    assert overlapping(ui["nodes"]) == []
    assert all(n["pos"][0] >= 0 and n["pos"][1] - TITLE >= 0 for n in ui["nodes"])


def test_layout_keeps_many_results_in_one_column_apart():
    """A graph of the kind later workflows add: several Optimize nodes side by side, each saved and previewed."""
    graph = {1: mw.EXTRACTOR, 2: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
             3: ("NST_GramStyleTarget", mw.style(), {"extractor": (1, 0), "image": (2, 0)})}
    for i in range(4):
        opt = 10 + 3 * i
        graph[opt] = ("NST_StyleTransferOptimize", mw.optimize(size=256 + i),
                      {"extractor": (1, 0), "style_target": (3, 0)})
        graph[opt + 1] = ("SaveImage", dict(filename_prefix=f"nst/{i}"), {"images": (opt, 0)})
        graph[opt + 2] = ("PreviewImage", {}, {"images": (opt, 0)})
    nodes = mw.ui_format(graph)["nodes"]
    assert overlapping(nodes) == []
    xs = {n["type"]: n["pos"][0] for n in nodes}
    assert xs["NST_StyleTransferOptimize"] < xs["SaveImage"] == xs["PreviewImage"]  # results to the right


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_ui_widget_values_are_the_api_inputs_and_seeds_stay_fixed(name):
    """widgets_values hold the API twin's values in widget order; a seed's control widget is "fixed", so that
    queueing again does not re-run the node with a new seed (Optimize's init_seed has no control at all)."""
    ui = json.load(open(mw.ui_path(name)))
    api = json.load(open(mw.api_path(name)))
    for node in ui["nodes"]:
        inputs = api[str(node["id"])]["inputs"]
        expected = []
        for widget in mw.SPECS[node["type"]][1]:
            if widget == "upload":  # LoadImage's upload button
                expected.append("image")
            elif widget in inputs:
                expected += [inputs[widget]] + (["fixed"] if widget in ("seed", "noise_seed") else [])
        assert node["widgets_values"] == expected, (name, node["id"], node["type"])
        assert "randomize" not in node["widgets_values"] and "increment" not in node["widgets_values"]


def test_specs_match_the_pack_nodes(pack):
    """The generator's socket and widget lists are the nodes' own, in order (UI widgets_values go by position)."""
    widget_types = ("INT", "FLOAT", "STRING", "BOOLEAN")
    for cls, (linked, widgets, outputs) in mw.SPECS.items():
        if cls not in pack.NODE_CLASS_MAPPINGS:
            continue  # a core node
        node = pack.NODE_CLASS_MAPPINGS[cls]
        inputs = [(name, spec) for part in ("required", "optional") for name, spec in node.INPUT_TYPES().get(part, {}).items()]
        is_widget = {name: isinstance(spec[0], list) or spec[0] in widget_types for name, spec in inputs}
        assert [n for n, _ in inputs if is_widget[n]] == widgets, cls
        assert [(n, spec[0]) for n, spec in inputs if not is_widget[n]] == linked, cls
        assert [t for _, t in outputs] == list(node.RETURN_TYPES), cls
        for name, spec in inputs:  # a control widget would add a value the generator does not write
            assert not spec[1].get("control_after_generate") or name in mw.CONTROLLED, (cls, name)
