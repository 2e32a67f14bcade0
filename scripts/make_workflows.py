"""Write the example workflows: UI format in example_workflows/, API-format twins in tests/comfy/api_workflows/.

One graph description produces both files, so the twins never drift apart. Run from the repo root:
``python scripts/make_workflows.py`` (``--check`` exits 1 if the files on disk differ, or if
example_workflows/ holds a workflow or thumbnail this script does not make).

ComfyUI's template browser shows a custom node pack's ``example_workflows/*.json`` with the file name
as the title and a same-named ``.jpg`` as the thumbnail, in the order the server lists them (sorted
by name in newer servers): the UI files are named by their human titles (``TEMPLATE_TITLES``), chosen
so that the basic workflow sorts first. The API twins keep the short names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_DIR = os.path.join(ROOT, "example_workflows")
API_DIR = os.path.join(ROOT, "tests", "comfy", "api_workflows")
BUNDLED = "original VGG19 (bundled)"

# class -> (linked inputs [(name, type)], widget names, outputs [(name, type)])
SPECS: Dict[str, Tuple[List[Tuple[str, str]], List[str], List[Tuple[str, str]]]] = {
    "LoadImage": ([], ["image", "upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "ImageScale": ([("image", "IMAGE")], ["upscale_method", "width", "height", "crop"], [("IMAGE", "IMAGE")]),
    "ImageScaleBy": ([("image", "IMAGE")], ["upscale_method", "scale_by"], [("IMAGE", "IMAGE")]),
    "ImageBlend": ([("image1", "IMAGE"), ("image2", "IMAGE")], ["blend_factor", "blend_mode"], [("IMAGE", "IMAGE")]),
    "ImageCrop": ([("image", "IMAGE")], ["width", "height", "x", "y"], [("IMAGE", "IMAGE")]),
    "ImageBatch": ([("image1", "IMAGE"), ("image2", "IMAGE")], [], [("IMAGE", "IMAGE")]),
    "SolidMask": ([], ["value", "width", "height"], [("MASK", "MASK")]),
    "MaskComposite": ([("destination", "MASK"), ("source", "MASK")], ["x", "y", "operation"], [("MASK", "MASK")]),
    "InvertMask": ([("mask", "MASK")], [], [("MASK", "MASK")]),
    "NST_LoadVGGExtractor": ([], ["weights", "architecture", "pooling", "edge_padding"],
                             [("extractor", "NST_EXTRACTOR")]),
    "NST_ContentTarget": ([("extractor", "NST_EXTRACTOR"), ("image", "IMAGE"), ("mask", "MASK")],
                          ["layer", "weight", "mask_strength"], [("content_target", "NST_CONTENT_TARGET")]),
    "NST_GramStyleTarget": ([("extractor", "NST_EXTRACTOR"), ("image", "IMAGE"), ("add_to", "NST_STYLE_TARGET"),
                             ("mask", "MASK")],
                            ["layers", "custom_layers", "layer_weights", "statistic", "style_scale", "blend_weight"],
                            [("style_target", "NST_STYLE_TARGET")]),
    "NST_StyleTransferOptimize": (
        [("extractor", "NST_EXTRACTOR"), ("content_target", "NST_CONTENT_TARGET"),
         ("style_target", "NST_STYLE_TARGET"), ("init_image", "IMAGE")],
        ["schedule", "steps", "content_weight", "style_weight", "tv_weight", "size", "init", "init_seed", "colors",
         "tile", "style_balance", "coarse_scale"],
        [("image", "IMAGE")]),
    "NST_MatchColors": ([("image", "IMAGE"), ("reference", "IMAGE")], [], [("image", "IMAGE")]),
    "NST_LayerExplorer": ([("extractor", "NST_EXTRACTOR"), ("content", "IMAGE"), ("style", "IMAGE")],
                          ["cell_size", "steps"], [("grid", "IMAGE")]),
    "NST_StylizeFrames": (
        [("extractor", "NST_EXTRACTOR"), ("frames", "IMAGE"), ("style_target", "NST_STYLE_TARGET")],
        ["content_layer", "content_weight", "schedule", "steps", "size", "temporal_weight", "init_seed"],
        [("frames", "IMAGE")]),
}
TITLES = {  # the nodes' display names (nodes/__init__.py)
    "NST_LoadVGGExtractor": "NST Load VGG Extractor", "NST_ContentTarget": "NST Content Target",
    "NST_GramStyleTarget": "NST Style Target", "NST_StyleTransferOptimize": "NST Style Transfer Optimize",
    "NST_StylizeFrames": "NST Stylize Frames",
    "NST_MatchColors": "NST Match Colors", "NST_LayerExplorer": "NST Layer Explorer",
}
ALL_LAYERS = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"
TEMPORAL_WEIGHT = 200.0  # nst_core.frames.DEFAULT_TEMPORAL_WEIGHT (this script imports nothing of the pack)

# Layout (litegraph units). A node's `pos` is the top-left of its body; the title bar sits above it.
NODE_WIDTH = 300
TITLE_HEIGHT = 30
MARGIN = 40
GAP_X, GAP_Y = 60, 40
# nodes that show an image below their widgets once run: they grow by about their width
SHOWS_RESULT = {"NST_StyleTransferOptimize", "NST_StylizeFrames", "NST_LayerExplorer", "PreviewImage", "SaveImage"}


def style(**kw):
    w = dict(layers=ALL_LAYERS, custom_layers="", layer_weights="", statistic="moments", style_scale=1.0,
             blend_weight=1.0)
    w.update(kw)
    return w


def optimize(**kw):
    w = dict(schedule="quality", steps=0, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=512,
             init="auto", init_seed=0, colors="style", tile=0, style_balance=1.0, coarse_scale=0.0)
    w.update(kw)
    return w


EXTRACTOR = ("NST_LoadVGGExtractor", dict(weights=BUNDLED, architecture="vgg19", pooling="max",
                                          edge_padding="replicate"), {})

# name -> (description, {id: (class, widgets, links {input: (src id, slot)})})
GRAPHS = {
    "basic_transfer": ("Content + style image -> Optimize -> Save and Preview.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        5: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        6: ("NST_StyleTransferOptimize", optimize(),
            {"extractor": (1, 0), "content_target": (4, 0), "style_target": (5, 0)}),
        7: ("SaveImage", dict(filename_prefix="nst/transfer"), {"images": (6, 0)}),
        8: ("PreviewImage", {}, {"images": (6, 0)}),
    }),
    "content_reconstruction": ("Rebuild a photo from one layer, starting from faint noise on gray: relu2_2 stays "
                               "close, relu5_1 is much noisier (the compression experiment).", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("NST_ContentTarget", dict(layer="relu2_2", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        4: ("NST_ContentTarget", dict(layer="relu5_1", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        5: ("NST_StyleTransferOptimize", optimize(schedule="seed", steps=300, tv_weight=0.0, size=256, init="gray"),
            {"extractor": (1, 0), "content_target": (3, 0)}),
        6: ("NST_StyleTransferOptimize", optimize(schedule="seed", steps=300, tv_weight=0.0, size=256, init="gray"),
            {"extractor": (1, 0), "content_target": (4, 0)}),
        7: ("SaveImage", dict(filename_prefix="nst/reconstruct_relu2_2"), {"images": (5, 0)}),
        8: ("SaveImage", dict(filename_prefix="nst/reconstruct_relu5_1"), {"images": (6, 0)}),
    }),
    "texture_synthesis": ("A texture from the style image alone, starting from noise.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        3: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (2, 0)}),
        4: ("NST_StyleTransferOptimize", optimize(size=384), {"extractor": (1, 0), "style_target": (3, 0)}),
        5: ("SaveImage", dict(filename_prefix="nst/texture"), {"images": (4, 0)}),
    }),
    "two_styles_blended": ("Two style images blended through add_to, applied to one content image.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("LoadImage", dict(image="style2.jpg", upload="image"), {}),
        5: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        6: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        7: ("NST_GramStyleTarget", style(blend_weight=1.0),
            {"extractor": (1, 0), "image": (4, 0), "add_to": (6, 0)}),
        8: ("NST_StyleTransferOptimize", optimize(),
            {"extractor": (1, 0), "content_target": (5, 0), "style_target": (7, 0)}),
        9: ("SaveImage", dict(filename_prefix="nst/two_styles"), {"images": (8, 0)}),
    }),
    "two_styles_by_mask": ("One style for the sky (the top of the picture) and another for the ground, from "
                           "core mask nodes; where masks overlap their weights blend.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("LoadImage", dict(image="style2.jpg", upload="image"), {}),
        5: ("SolidMask", dict(value=0.0, width=512, height=384), {}),
        6: ("SolidMask", dict(value=1.0, width=512, height=160), {}),
        7: ("MaskComposite", dict(x=0, y=0, operation="add"), {"destination": (5, 0), "source": (6, 0)}),
        8: ("InvertMask", {}, {"mask": (7, 0)}),
        9: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0, mask_strength=4.0),
            {"extractor": (1, 0), "image": (2, 0)}),
        10: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0), "mask": (7, 0)}),
        11: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (4, 0), "add_to": (10, 0), "mask": (8, 0)}),
        12: ("NST_StyleTransferOptimize", optimize(),
             {"extractor": (1, 0), "content_target": (9, 0), "style_target": (11, 0)}),
        13: ("SaveImage", dict(filename_prefix="nst/two_styles_by_mask"), {"images": (12, 0)}),
    }),
    "chained_with_core_nodes": ("Resize before, then upscale and blend with the photo after, using core nodes.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("ImageScale", dict(upscale_method="bicubic", width=512, height=384, crop="center"), {"image": (2, 0)}),
        5: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0), {"extractor": (1, 0), "image": (4, 0)}),
        6: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        7: ("NST_StyleTransferOptimize", optimize(size=0),
            {"extractor": (1, 0), "content_target": (5, 0), "style_target": (6, 0)}),
        8: ("ImageBlend", dict(blend_factor=0.25, blend_mode="normal"), {"image1": (7, 0), "image2": (4, 0)}),
        9: ("ImageScaleBy", dict(upscale_method="bicubic", scale_by=2.0), {"image": (8, 0)}),
        10: ("SaveImage", dict(filename_prefix="nst/chained"), {"images": (9, 0)}),
    }),
    "frames_temporal": ("Four frames of a slow pan over the photo (crops batched with core nodes; a video "
                        "loader's IMAGE batch goes in the same place), stylised frame by frame: each as a still "
                        "would be, pulled step by step toward the previous frame's path along the motion, so "
                        "they neither flicker nor drift. Needs OpenCV (opencv-python) in ComfyUI's Python.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("ImageScale", dict(upscale_method="bicubic", width=544, height=408, crop="center"), {"image": (2, 0)}),
        **{5 + k: ("ImageCrop", dict(width=512, height=384, x=8 * k, y=6 * k), {"image": (4, 0)}) for k in range(4)},
        9: ("ImageBatch", {}, {"image1": (5, 0), "image2": (6, 0)}),
        10: ("ImageBatch", {}, {"image1": (9, 0), "image2": (7, 0)}),
        11: ("ImageBatch", {}, {"image1": (10, 0), "image2": (8, 0)}),
        12: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        13: ("NST_StylizeFrames", dict(content_layer="relu4_2", content_weight=1.0, schedule="quality", steps=0,
                                       size=256, temporal_weight=TEMPORAL_WEIGHT, init_seed=0),
             {"extractor": (1, 0), "frames": (11, 0), "style_target": (12, 0)}),
        14: ("SaveImage", dict(filename_prefix="nst/frames"), {"images": (13, 0)}),
    }),
    "color_preserving_transfer": ("Two ways to keep the photo's colours: luminance-only transfer (colors = "
                                  "luminance on Optimize), and the style image recoloured with NST Match Colors "
                                  "before its target (what colors = match does).", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        5: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        6: ("NST_StyleTransferOptimize", optimize(colors="luminance"),
            {"extractor": (1, 0), "content_target": (4, 0), "style_target": (5, 0)}),
        7: ("SaveImage", dict(filename_prefix="nst/colors_luminance"), {"images": (6, 0)}),
        8: ("NST_MatchColors", {}, {"image": (3, 0), "reference": (2, 0)}),
        9: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (8, 0)}),
        10: ("NST_StyleTransferOptimize", optimize(),
             {"extractor": (1, 0), "content_target": (4, 0), "style_target": (9, 0)}),
        11: ("SaveImage", dict(filename_prefix="nst/colors_matched"), {"images": (10, 0)}),
    }),
    "layer_explorer": ("What each VGG layer keeps: the photo rebuilt from noise from relu1_2 … relu5_2, and "
                       "textures of the style from relu1_1, relu1_1+relu2_1, … up to relu5_1, in one grid.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("NST_LayerExplorer", dict(cell_size=128, steps=100),
            {"extractor": (1, 0), "content": (2, 0), "style": (3, 0)}),
        5: ("SaveImage", dict(filename_prefix="nst/layer_explorer"), {"images": (4, 0)}),
    }),
    "large_image_in_tiles": ("A large image in tiles: 2048 px evaluated in tiles of 512 px (each read with a "
                             "halo; the grid moves every step, so no seam settles). Memory follows the tile, "
                             "not the image; tile = 0 picks tiles by itself when the whole image would not fit.", {
        1: EXTRACTOR,
        2: ("LoadImage", dict(image="content.jpg", upload="image"), {}),
        3: ("LoadImage", dict(image="style.jpg", upload="image"), {}),
        4: ("NST_ContentTarget", dict(layer="relu4_2", weight=1.0), {"extractor": (1, 0), "image": (2, 0)}),
        5: ("NST_GramStyleTarget", style(), {"extractor": (1, 0), "image": (3, 0)}),
        6: ("NST_StyleTransferOptimize", optimize(size=2048, tile=512),
            {"extractor": (1, 0), "content_target": (4, 0), "style_target": (5, 0)}),
        7: ("SaveImage", dict(filename_prefix="nst/tiles"), {"images": (6, 0)}),
    }),
}


# graph name -> the UI file's name: the title the template browser shows (sorted, basic first)
TEMPLATE_TITLES = {
    "basic_transfer": "Basic style transfer",
    "chained_with_core_nodes": "Chained with core nodes",
    "color_preserving_transfer": "Colour-preserving transfer",
    "content_reconstruction": "Content reconstruction from one layer",
    "frames_temporal": "Video frames with temporal loss",
    "large_image_in_tiles": "Large image in tiles",
    "layer_explorer": "Layer explorer",
    "texture_synthesis": "Texture synthesis",
    "two_styles_blended": "Two styles blended",
    "two_styles_by_mask": "Two styles by mask",
}


def ui_path(name: str, ext: str = ".json") -> str:
    """Path of a graph's UI workflow (``.json``) or thumbnail (``.jpg``) in example_workflows/."""
    return os.path.join(UI_DIR, TEMPLATE_TITLES[name] + ext)


def api_path(name: str) -> str:
    """Path of a graph's API twin in tests/comfy/api_workflows/."""
    return os.path.join(API_DIR, name + ".json")


def api_format(graph) -> dict:
    """The ``/prompt`` body's ``prompt`` for a graph."""
    out = {}
    for nid, (cls, widgets, links) in graph.items():
        inputs = {k: v for k, v in widgets.items() if k != "upload"}
        inputs.update({name: [str(src), slot] for name, (src, slot) in links.items()})
        out[str(nid)] = {"class_type": cls, "inputs": inputs, "_meta": {"title": TITLES.get(cls, cls)}}
    return out


# INT widgets the frontend gives a "control after generate" widget by their name alone (an input may also
# ask for one with control_after_generate: none of the pack's do; Optimize's is init_seed for that reason)
CONTROLLED = ("seed", "noise_seed")


def widget_values(cls: str, widgets: dict) -> list:
    """A node's ``widgets_values`` in widget order; a controlled seed is followed by its control, "fixed"."""
    values = []
    for name in (w for w in SPECS[cls][1] if w in widgets):
        values.append(widgets[name])
        if name in CONTROLLED:  # "fixed": queueing again does not re-run the node with a new seed
            values.append("fixed")
    return values


def node_size(cls: str, n_values: int) -> List[int]:
    """[width, height] of a node as first shown (before any result image)."""
    if cls == "LoadImage":
        return [NODE_WIDTH, 340]  # widgets plus the loaded picture
    return [NODE_WIDTH, 100 + 26 * n_values]


def footprint(cls: str, size: List[int]) -> Tuple[int, int]:
    """(top, bottom) of the area a node may cover, relative to its ``pos`` y: title bar and result image."""
    width, height = size
    return -TITLE_HEIGHT, height + (width if cls in SHOWS_RESULT else 0)


def levels(graph) -> Dict[int, int]:
    """Column of each node: 0 for nodes without linked inputs, else one more than its deepest source."""
    depth: Dict[int, int] = {}

    def level(nid: int) -> int:
        if nid not in depth:
            depth[nid] = 1 + max((level(src) for src, _ in graph[nid][2].values()), default=-1)
        return depth[nid]

    for nid in graph:
        level(nid)
    return depth


def layout(graph, sizes: Dict[int, List[int]]) -> Dict[int, List[int]]:
    """``pos`` of every node: columns by depth, left to right; in a column, nodes stacked top to bottom,
    each level with its lowest source when there is room, with room for its title and its result image."""
    depth = levels(graph)
    columns: Dict[int, List[int]] = {}
    for nid in sorted(graph):
        columns.setdefault(depth[nid], []).append(nid)
    positions: Dict[int, List[int]] = {}
    x = MARGIN
    for col in sorted(columns):
        def anchor(nid: int) -> int:  # sources sit in columns to the left: already placed
            return max((positions[src][1] for src, _ in graph[nid][2].values()), default=0)

        below = MARGIN  # the highest y the next node's footprint may start at
        for nid in sorted(columns[col], key=lambda n: (anchor(n), n)):
            top, bottom = footprint(graph[nid][0], sizes[nid])
            y = max(below - top, anchor(nid))
            positions[nid] = [x, y]
            below = y + bottom + GAP_Y
        x += max(sizes[n][0] for n in columns[col]) + GAP_X
    return positions


def ui_format(graph) -> dict:
    """A litegraph (schema 0.4) workflow the ComfyUI frontend loads and shows."""
    links, nodes = [], []
    consumers: Dict[Tuple[int, int], List[int]] = {}
    for nid, (cls, _, ins) in graph.items():
        linked, _, _ = SPECS[cls]
        for name, (src, slot) in ins.items():
            slot_type = dict(linked)[name]
            link_id = len(links) + 1
            target_slot = [n for n, _ in linked].index(name)
            links.append([link_id, src, slot, nid, target_slot, slot_type])
            consumers.setdefault((src, slot), []).append(link_id)
    values = {nid: widget_values(cls, widgets) for nid, (cls, widgets, _) in graph.items()}
    sizes = {nid: node_size(graph[nid][0], len(values[nid])) for nid in graph}
    positions = layout(graph, sizes)
    for order, nid in enumerate(sorted(graph, key=lambda n: (levels(graph)[n], n))):
        cls, widgets, ins = graph[nid]
        linked, wnames, outs = SPECS[cls]
        node = {
            "id": nid, "type": cls, "pos": positions[nid],
            "size": sizes[nid], "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": next((l[0] for l in links if l[3] == nid and l[4] == i), None)}
                       for i, (n, t) in enumerate(linked)],
            "outputs": [{"name": n, "type": t, "links": consumers.get((nid, i), []), "slot_index": i}
                        for i, (n, t) in enumerate(outs)],
            "properties": {"Node name for S&R": cls},
            "widgets_values": values[nid],
        }
        if cls in TITLES:
            node["title"] = TITLES[cls]
        nodes.append(node)
    return {"last_node_id": max(graph), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv=None) -> int:
    """Write (or with ``--check``, compare) every workflow file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if a file differs from what would be written")
    args = ap.parse_args(argv)
    stale = []
    for name, (_, graph) in GRAPHS.items():
        for path, data in ((ui_path(name), ui_format(graph)), (api_path(name), api_format(graph))):
            text = json.dumps(data, indent=2) + "\n"
            old = open(path).read() if os.path.exists(path) else None
            if old != text:
                stale.append(os.path.relpath(path, ROOT))
                if not args.check:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as f:
                        f.write(text)
    made = {os.path.basename(ui_path(n, ext)) for n in GRAPHS for ext in (".json", ".jpg")}
    strays = sorted(f for f in os.listdir(UI_DIR) if f not in made)
    missing = sorted(os.path.basename(ui_path(n, ".jpg")) for n in GRAPHS if not os.path.exists(ui_path(n, ".jpg")))
    problems = [(what, files) for what, files in (
        ("stale workflow files", stale if args.check else []),
        ("files no graph makes (rename or remove them)", strays),
        ("missing thumbnails", missing)) if files]
    for what, files in problems:
        print(f"{what}: {', '.join(files)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
