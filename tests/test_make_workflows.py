"""Example workflows: UI files and API twins are in sync and well formed."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_workflows as mw  # noqa: E402


def test_files_on_disk_match_the_generator():
    assert mw.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_ui_workflow_is_consistent(name):
    ui = json.load(open(os.path.join(ROOT, "example_workflows", name + ".json")))
    assert ui["version"] == 0.4 and ui["last_link_id"] == len(ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[dst]["inputs"][dst_slot]["type"] == typ == nodes[src]["outputs"][src_slot]["type"]
    assert os.path.exists(os.path.join(ROOT, "example_workflows", name + ".jpg")), "thumbnail missing"


@pytest.mark.parametrize("name", sorted(mw.GRAPHS))
def test_api_twin_widgets_match_node_inputs(name):
    api = json.load(open(os.path.join(ROOT, "tests", "comfy", "api_workflows", name + ".json")))
    for node in api.values():
        linked, widgets, _ = mw.SPECS[node["class_type"]]
        for key in node["inputs"]:
            assert key in widgets or key in dict(linked), f"{node['class_type']} has no input {key}"
