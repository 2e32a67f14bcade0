"""A fuzz of the pack's nodes through the real server's ``POST /prompt``: wrong types, out-of-range numbers,
missing or broken links, huge sizes. Each bad prompt is refused at validation (HTTP 400 with node errors)
or stops with a clean execution error that names the problem; the server never dies, and after an
execution error a good prompt still runs.

The 2024-03 server validates only the nodes reachable through REQUIRED inputs: the target nodes, reached
through Style Transfer Optimize's optional inputs, are not validated at ``/prompt`` time, so their bad
values surface as execution errors. Newer servers (2025 on) validate optional inputs too, and refuse a
wrongly linked one before the run ("Return type mismatch … received_type(NST_CONTENT_TARGET)"). Either
outcome is accepted where the server version decides, each with the words a user needs to see: an entry
of ``words`` that is a tuple is satisfied by any one of its alternatives.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Callable, Dict

import pytest

try:
    from .comfy_client import PromptRejected, api_node, png_bytes
except ImportError:  # pragma: no cover
    from comfy_client import PromptRejected, api_node, png_bytes  # type: ignore[no-redef]

pytestmark = pytest.mark.comfy

BUNDLED = "original VGG19 (bundled)"
_seeds = itertools.count(1000)


@pytest.fixture(scope="module")
def fuzz_inputs(comfy):
    comfy.upload_image(png_bytes(64, 48, seed=21), "fuzz_content.png")
    comfy.upload_image(png_bytes(48, 48, seed=22), "fuzz_style.png")
    return True


def good_prompt(seed: int = 0) -> Dict[str, dict]:
    """Extractor → content + style targets → optimise (32 px, 2 steps) → preview."""
    return {
        "1": api_node("NST_LoadVGGExtractor", weights=BUNDLED, architecture="vgg19", pooling="max",
                      edge_padding="replicate"),
        "2": api_node("LoadImage", image="fuzz_content.png"),
        "3": api_node("LoadImage", image="fuzz_style.png"),
        "4": api_node("NST_ContentTarget", extractor=["1", 0], image=["2", 0], layer="relu2_1", weight=1.0),
        "5": api_node("NST_GramStyleTarget", extractor=["1", 0], image=["3", 0], layers="relu1_1,relu2_1,relu3_1",
                      custom_layers="", layer_weights="", statistic="gram", style_scale=1.0),
        "6": api_node("NST_StyleTransferOptimize", extractor=["1", 0], content_target=["4", 0],
                      style_target=["5", 0], schedule="fast", steps=2, content_weight=1.0, style_weight=1.0,
                      tv_weight=1.0, size=32, init="auto", init_seed=seed),
        "7": api_node("PreviewImage", images=["6", 0]),
    }


def setter(node: str, **values) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        p[node]["inputs"].update(values)
    return mutate


def deleter(node: str, *names: str) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        for name in names:
            del p[node]["inputs"][name]
    return mutate


def drop_node(node: str) -> Callable[[dict], None]:
    def mutate(p: dict) -> None:
        del p[node]
    return mutate


# (id, mutation, expected outcome: "rejected" | "error" | "either", words the user must see)
CASES = [
    # wrong types
    ("steps-is-text", setter("6", steps="many"), "rejected", ["Failed to convert", "INT", "steps"]),
    ("schedule-is-a-number", setter("6", schedule=3), "rejected", ["Value not in list", "schedule"]),
    ("steps-is-a-list", setter("6", steps=[1, 2, 3]), "rejected", ["Bad linked input", "steps"]),
    ("extractor-is-a-literal", setter("6", extractor="vgg19"), "error",
     ["extractor must come from an NST Load VGG Extractor node", "str"]),
    ("style-target-fed-a-content-target", setter("6", style_target=["4", 0]), "either",
     ["style", ("ContentTarget", "NST_CONTENT_TARGET")]),
    # out-of-range numbers
    ("steps-negative", setter("6", steps=-5), "rejected", ["smaller than min", "steps"]),
    ("seed-negative", setter("6", init_seed=-1), "rejected", ["smaller than min", "init_seed"]),
    ("tv-weight-nan", setter("6", tv_weight=float("nan")), "either", ["tv_weight", "nan"]),
    ("style-scale-50-on-an-optional-branch", setter("5", style_scale=50.0), "either", ["style", "scale", "8"]),
    # missing links
    ("extractor-link-missing", deleter("6", "extractor"), "rejected", ["Required input is missing", "extractor"]),
    ("link-to-a-node-that-does-not-exist", drop_node("1"), "rejected", ["'1'"]),
    ("image-link-missing-on-an-optional-branch", deleter("4", "image"), "either", ["image"]),
    ("no-target-linked", deleter("6", "content_target", "style_target"), "error",
     ["content_target, a style_target, or both"]),
    # huge sizes
    ("size-100000", setter("6", size=100000), "rejected", ["bigger than max", "size"]),
    ("size-2**40", setter("6", size=2**40), "rejected", ["bigger than max", "size"]),
    ("steps-10**12", setter("6", steps=10**12), "rejected", ["bigger than max", "steps"]),
    ("seed-2**64", setter("6", init_seed=2**64), "rejected", ["bigger than max", "init_seed"]),
    ("layer-weight-overflows-to-inf", setter("5", layer_weights="1e400,1,1"), "either",
     ["layer weight", "finite", "inf"]),
]


def _server_alive(comfy, comfy_server) -> None:
    if comfy_server.process is not None:
        assert comfy_server.process.poll() is None, "the ComfyUI server process died"
    assert comfy.is_up(timeout=10), "the server no longer answers GET /object_info"


@pytest.mark.parametrize("case_id, mutate, expected, words", CASES, ids=[c[0] for c in CASES])
def test_bad_prompt_gets_a_readable_error_and_the_server_survives(comfy, comfy_server, fuzz_inputs, case_id,
                                                                  mutate, expected, words):
    prompt = copy.deepcopy(good_prompt(seed=next(_seeds)))
    mutate(prompt)
    try:
        result = comfy.run(prompt, timeout=120)
    except PromptRejected as exc:
        outcome = "rejected"
        assert exc.status == 400, exc
        text = json.dumps({"error": exc.error, "node_errors": exc.node_errors})
    else:
        outcome = "error"
        assert not result.ok, f"{case_id}: the bad prompt ran to success\n{result.describe()}"
        err = result.error
        assert err, f"{case_id}: no execution_error reported\n{result.describe()}"
        assert err.get("exception_message"), result.describe()
        text = json.dumps({k: err.get(k) for k in ("node_type", "exception_type", "exception_message")})
    if expected != "either":
        assert outcome == expected, f"{case_id}: expected {expected}, got {outcome}: {text}"
    for word in words:
        options = word if isinstance(word, tuple) else (word,)
        assert any(w in text for w in options), f"{case_id}: {word!r} is not in what the user sees: {text}"
    _server_alive(comfy, comfy_server)
    if outcome == "error":  # our node code ran and failed: the next good prompt must still run
        again = comfy.run(good_prompt(seed=next(_seeds)), timeout=120)
        assert again.ok, again.describe()
        assert [im.size for im in again.images("7")] == [(32, 24)]


def test_a_good_prompt_runs_after_the_fuzz(comfy, comfy_server, fuzz_inputs):
    _server_alive(comfy, comfy_server)
    result = comfy.run(good_prompt(seed=next(_seeds)), timeout=120)
    assert result.ok, result.describe()
    assert comfy.is_idle()
