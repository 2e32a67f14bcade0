"""The pack on a real ComfyUI server: node list, every example workflow, previews, interrupt, bad values."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import pytest

try:
    from .comfy_client import PromptRejected, api_node, jpeg_bytes, png_bytes
except ImportError:  # pragma: no cover
    from comfy_client import PromptRejected, api_node, jpeg_bytes, png_bytes  # type: ignore[no-redef]

pytestmark = pytest.mark.comfy

API_DIR = Path(__file__).parent / "api_workflows"
WORKFLOWS = sorted(p.stem for p in API_DIR.glob("*.json"))
NAMES = {
    "NST_LoadVGGExtractor": "NST Load VGG Extractor",
    "NST_ContentTarget": "NST Content Target",
    "NST_GramStyleTarget": "NST Style Target",
    "NST_StyleTransferOptimize": "NST Style Transfer Optimize",
    "NST_MatchColors": "NST Match Colors",
    "NST_LayerExplorer": "NST Layer Explorer",
    "NST_StylizeFrames": "NST Stylize Frames",
}
BUNDLED = "original VGG19 (bundled)"


@pytest.fixture(scope="module")
def inputs(comfy):
    """content.jpg, style.jpg and style2.jpg, small, in the server's input folder."""
    for i, name in enumerate(("content.jpg", "style.jpg", "style2.jpg")):
        comfy.upload_image(png_bytes(64, 48, seed=10 + i), name)
    return True


def shrink(prompt: dict, size: int = 48, steps: int = 3) -> dict:
    """A copy of an API workflow made small enough for CI: tiny outputs, few steps."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        ins = node["inputs"]
        if node["class_type"] in ("NST_StyleTransferOptimize", "NST_StylizeFrames"):
            ins["steps"] = steps
            ins["size"] = size if ins["size"] else 0
            if ins.get("tile"):
                ins["tile"] = 32  # still in tiles at the small size
        if node["class_type"] == "ImageScale":
            ins["width"], ins["height"] = 64, 48
        if node["class_type"] == "NST_LayerExplorer":
            ins["cell_size"], ins["steps"] = 32, 2
    return p


def test_object_info_lists_the_nodes_with_their_inputs(comfy):
    info = comfy.object_info()
    for node_id, display in NAMES.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["display_name"] == display
        assert info[node_id]["category"] == "style_transfer"
        assert info[node_id]["description"]
    req = lambda n: info[n]["input"]["required"]  # noqa: E731
    opt = lambda n: info[n]["input"].get("optional", {})  # noqa: E731
    assert BUNDLED in req("NST_LoadVGGExtractor")["weights"][0]
    assert req("NST_LoadVGGExtractor")["architecture"][0] == ["vgg19", "vgg16"]
    assert set(req("NST_ContentTarget")) == {"extractor", "image", "layer", "weight"}
    assert set(opt("NST_ContentTarget")) == {"mask", "mask_strength"}
    assert "relu4_2" in req("NST_ContentTarget")["layer"][0]
    assert {"extractor", "image", "layers", "layer_weights", "statistic", "style_scale"} <= set(req("NST_GramStyleTarget"))
    assert set(opt("NST_GramStyleTarget")) == {"add_to", "blend_weight", "mask"}
    assert {"schedule", "steps", "content_weight", "style_weight", "tv_weight", "size", "init_seed"} <= set(
        req("NST_StyleTransferOptimize"))
    assert set(opt("NST_StyleTransferOptimize")) == {"content_target", "style_target", "init_image", "colors", "tile",
                                                     "style_balance", "coarse_scale"}
    assert opt("NST_StyleTransferOptimize")["coarse_scale"][1]["default"] == 0.0  # the schedule's
    assert opt("NST_StyleTransferOptimize")["colors"][0] == ["style", "luminance", "match"]
    assert set(req("NST_MatchColors")) == {"image", "reference"}
    assert set(req("NST_LayerExplorer")) == {"extractor", "content", "cell_size", "steps"}
    assert set(opt("NST_LayerExplorer")) == {"style"}
    assert info["NST_StyleTransferOptimize"]["output"] == ["IMAGE"]
    assert info["NST_GramStyleTarget"]["output"] == ["NST_STYLE_TARGET"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_runs(comfy, inputs, name):
    prompt = shrink(json.loads((API_DIR / f"{name}.json").read_text()))
    result = comfy.run(prompt, timeout=300)
    assert result.ok, result.describe()
    saves = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert saves
    for nid in saves:
        images = result.images(nid)
        assert len(images) == (4 if name == "frames_temporal" else 1)  # four frames, one image each
        w, h = images[0].size
        if name == "chained_with_core_nodes":
            assert (w, h) == (128, 96)  # 64x48 crop, stylised at its own size, blended, upscaled ×2
        elif name == "texture_synthesis":
            assert (w, h) == (48, 48)
        elif name == "layer_explorer":  # 2 rows × 5 cells of 32 px (content 32×24), each under a label strip
            from nst_core.explore import GAP

            assert w == 5 * 32 + 6 * GAP and h > 24 + 32 + 3 * GAP, (w, h)
        else:
            assert (w, h) == (48, 36)  # 64x48 content at long edge 48


def _long_run(steps: int = 2000) -> dict:
    return {
        "1": api_node("NST_LoadVGGExtractor", weights=BUNDLED, architecture="vgg19", pooling="max",
                      edge_padding="replicate"),
        "2": api_node("LoadImage", image="style.jpg"),
        "3": api_node("NST_GramStyleTarget", extractor=["1", 0], image=["2", 0],
                      layers="relu1_1,relu2_1,relu3_1", custom_layers="", layer_weights="",
                      statistic="gram", style_scale=1.0),
        "4": api_node("NST_StyleTransferOptimize", extractor=["1", 0], style_target=["3", 0], schedule="fast",
                      steps=steps, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=64, init="auto",
                      init_seed=7),
        "5": api_node("PreviewImage", images=["4", 0]),
    }


def test_previews_stream_and_interrupt_stops_within_seconds(comfy, inputs, ws):
    stopped = {}

    def interrupt_after_previews(prompt_id: str) -> None:
        def worker():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(ws.previews) < 2:
                time.sleep(0.05)
            stopped["at"] = time.monotonic()
            comfy.interrupt()
        threading.Thread(target=worker, daemon=True).start()

    result = comfy.run(_long_run(), timeout=180, ws=ws, on_queued=interrupt_after_previews)
    done = time.monotonic()
    assert result.interrupted, result.describe()
    assert len(result.previews) >= 2 and all(p.format == "JPEG" for p in result.previews)
    assert done - stopped["at"] < 5.0, f"took {done - stopped['at']:.1f}s to stop after /interrupt"
    progress = [e for e in ws.events_for(result.prompt_id, "progress")]
    assert progress and progress[-1]["data"]["max"] > progress[-1]["data"]["value"]
    # the server keeps serving, and the next prompt runs
    again = comfy.run(_long_run(steps=2), timeout=120)
    assert again.ok, again.describe()


@pytest.mark.parametrize("node, field, value, message", [
    ("4", "steps", -5, "steps"),
    ("4", "size", 100000, "size"),
    ("4", "schedule", "ultra", "schedule"),
    ("3", "statistic", "median", "statistic"),
    ("3", "layers", "custom (use custom_layers)", "custom_layers is empty"),
    ("3", "layer_weights", "1,2", "one per layer"),
    ("1", "weights", "missing.pth", "weights"),
])
def test_bad_values_are_refused_with_a_readable_error(comfy, inputs, node, field, value, message):
    """Refused at /prompt (HTTP 400 + node_errors), or, for a node the 2024 server only reaches through an
    optional input (it validates required links only), stopped at execution with the same message."""
    prompt = _long_run(steps=2)
    prompt[node]["inputs"][field] = value
    try:
        result = comfy.run(prompt, timeout=120)
    except PromptRejected as exc:
        text = json.dumps(exc.node_errors)
    else:
        assert not result.ok, f"{field}={value!r} was accepted and ran"
        text = json.dumps(result.error)
    assert message in text, text
    assert comfy.run(_long_run(steps=2), timeout=120).ok  # the server still serves


def test_runtime_errors_are_readable_and_the_server_survives(comfy, inputs):
    prompt = _long_run(steps=2)
    prompt["3"]["inputs"].update(layers="custom (use custom_layers)", custom_layers="relu1_1,relu5_1")
    prompt["2"]["inputs"]["image"] = comfy.upload_image(png_bytes(12, 12), "tiny.png")
    result = comfy.run(prompt, timeout=120)
    assert not result.ok
    assert "too small" in json.dumps(result.error), result.describe()
    no_target = _long_run(steps=2)
    del no_target["4"]["inputs"]["style_target"]
    result = comfy.run(no_target, timeout=120)
    assert "content_target, a style_target, or both" in json.dumps(result.error), result.describe()
    assert comfy.run(_long_run(steps=2), timeout=120).ok


def test_changing_only_optimiser_settings_reuses_cached_targets(comfy, inputs, ws):
    first = comfy.run(_long_run(steps=2), timeout=120, ws=ws)
    assert first.ok, first.describe()
    second_prompt = _long_run(steps=3)  # only the Optimize node's settings change
    second = comfy.run(second_prompt, timeout=120, ws=ws)
    assert second.ok, second.describe()
    cached = [n for e in ws.events_for(second.prompt_id, "execution_cached") for n in e["data"]["nodes"]]
    executed = [e["data"]["node"] for e in ws.events_for(second.prompt_id, "executing") if e["data"]["node"]]
    assert {"1", "2", "3"} <= set(cached), (cached, executed)
    assert "3" not in executed and "4" in executed


def test_one_bad_layer_weight_is_one_validation_error_on_layer_weights(comfy, inputs):
    """The style target feeds a REQUIRED input here (Stylize Frames' style_target), so every server
    generation validates it at /prompt: one error, on layer_weights, not on layers or custom_layers."""
    prompt = {
        "1": api_node("NST_LoadVGGExtractor", weights=BUNDLED, architecture="vgg19", pooling="max",
                      edge_padding="replicate"),
        "2": api_node("LoadImage", image="style.jpg"),
        "3": api_node("NST_GramStyleTarget", extractor=["1", 0], image=["2", 0],
                      layers="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", custom_layers="",
                      layer_weights="4,2,x,1,1", statistic="moments", style_scale=1.0),
        "4": api_node("NST_StylizeFrames", extractor=["1", 0], frames=["2", 0], style_target=["3", 0],
                      content_layer="relu4_2", content_weight=1.0, schedule="fast", steps=1, size=32,
                      temporal_weight=50.0, init_seed=0),
        "5": api_node("PreviewImage", images=["4", 0]),
    }
    with pytest.raises(PromptRejected) as exc:
        comfy.queue_prompt(prompt)
    errors = exc.value.node_errors["3"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["layer_weights"], errors
    assert "comma-separated numbers" in errors[0]["details"], errors


def test_a_jpg_mask_says_it_has_no_alpha(comfy, inputs):
    """Load Image gives a JPG (no alpha channel) an empty 64×64 MASK: the style target says so, and how to fix it."""
    comfy.upload_image(jpeg_bytes(64, 48, seed=5), "mask_source.jpg")
    prompt = _long_run(steps=2)
    prompt["6"] = api_node("LoadImage", image="mask_source.jpg")
    prompt["3"]["inputs"]["mask"] = ["6", 1]
    result = comfy.run(prompt, timeout=120)
    assert not result.ok, result.describe()
    text = json.dumps(result.error)
    for words in ("style mask is all black", "without an alpha channel", "PNG", "Solid Mask"):
        assert words in text, text
