"""The ComfyUI node classes, exercised without a server (comfy_bridge falls back to CPU)."""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = "original VGG19 (bundled)"


@pytest.fixture(scope="module")
def extractor(nodes):
    with torch.inference_mode():
        return nodes["NST_LoadVGGExtractor"].load(BUNDLED, "vgg19", "max", "replicate")[0]


def _style(nodes, ext, image, **kw):
    args = dict(layers="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", custom_layers="", layer_weights="",
                statistic="moments", style_scale=1.0)
    args.update(kw)
    return nodes["NST_GramStyleTarget"].build(ext, image, **args)[0]


def _optimize(nodes, ext, **kw):
    args = dict(schedule="fast", steps=2, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=48,
                init="auto", init_seed=0)
    args.update(kw)
    return nodes["NST_StyleTransferOptimize"].run(ext, **args)[0]


def test_mappings_have_exact_display_names_and_prefixed_ids(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == {  # the IDs are workflow identity and never change
        "NST_LoadVGGExtractor": "NST Load VGG Extractor",
        "NST_ContentTarget": "NST Content Target",
        "NST_GramStyleTarget": "NST Style Target",
        "NST_StyleTransferOptimize": "NST Style Transfer Optimize",
        "NST_MatchColors": "NST Match Colors",
        "NST_LayerExplorer": "NST Layer Explorer",
        "NST_StylizeFrames": "NST Stylize Frames",
    }
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(name.startswith("NST ") for name in pack.NODE_DISPLAY_NAME_MAPPINGS.values())


def test_the_style_target_says_its_default_statistic_first(pack):
    """The default is mean and covariance (W2), not Gram: the node's name does not say Gram, and the first
    line of its description and of the statistic's tooltip say what the default is."""
    cls = pack.NODE_CLASS_MAPPINGS["NST_GramStyleTarget"]
    assert "Gram" not in pack.NODE_DISPLAY_NAME_MAPPINGS["NST_GramStyleTarget"]
    first = cls.DESCRIPTION.split(". ")[0]
    assert "by default their mean and covariance" in first and "Wasserstein" in first
    statistic = cls.INPUT_TYPES()["required"]["statistic"]
    assert statistic[1]["default"] == "moments" and statistic[1]["tooltip"].startswith("moments (default): mean and covariance")


def test_every_input_has_a_tooltip_and_nodes_share_a_category(pack):
    categories = set()
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert cls.DESCRIPTION and len(cls.DESCRIPTION) > 40
        categories.add(cls.CATEGORY)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, value in spec.get(section, {}).items():
                assert len(value) == 2 and value[1].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        for name, value in spec.get("required", {}).items():
            if isinstance(value[0], list):
                assert value[1]["default"] in value[0], f"{cls.__name__}.{name} default not in its choices"
    assert len(categories) == 1


def test_pack_never_imports_comfy_outside_the_bridge():
    banned = re.compile(r"^\s*(import|from)\s+(comfy\b|comfy\.|folder_paths|comfy_api|comfy_execution|"
                        r"node_helpers|nodes\b)", re.M)
    for folder in ("nodes", "nst_core"):
        for fname in os.listdir(os.path.join(ROOT, folder)):
            if not fname.endswith(".py") or fname == "comfy_bridge.py":
                continue
            text = open(os.path.join(ROOT, folder, fname)).read()
            assert not banned.search(text), f"{folder}/{fname} imports ComfyUI or the global nodes module"
    bridge = open(os.path.join(ROOT, "nodes", "comfy_bridge.py")).read()
    assert "except ImportError" in bridge and "comfy_api" not in bridge


def test_full_graph_under_inference_mode_gives_one_output_per_content_image(nodes, extractor):
    content = torch.rand(2, 40, 56, 3)
    style = torch.rand(1, 48, 48, 3)
    before = content.clone()
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, content, "relu4_2", 1.0)[0]
        st = _style(nodes, extractor, style)
        out = _optimize(nodes, extractor, content_target=ct, style_target=st)
    assert out.shape == (2, 34, 48, 3)  # long edge 48, aspect kept
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(content, before)
    feats = ct.at_size(extractor, ct.size)
    assert not feats.requires_grad and not feats.is_inference()


def test_texture_without_content_starts_from_noise_at_size(nodes, extractor):
    with torch.inference_mode():
        st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        out = _optimize(nodes, extractor, style_target=st, size=40)
    assert out.shape == (1, 40, 40, 3)


def test_changing_only_optimiser_settings_leaves_targets_untouched(nodes, extractor):
    with torch.inference_mode():
        st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 40, 40, 3), "relu3_1", 1.0)[0]
        images = [im.clone() for im in st.images]
        content = ct.image.clone()
        a = _optimize(nodes, extractor, content_target=ct, style_target=st, init_seed=1)
        b = _optimize(nodes, extractor, content_target=ct, style_target=st, init_seed=1, tv_weight=0.0)
    assert a.shape == b.shape
    assert torch.equal(content, ct.image)
    assert all(torch.equal(x, y) for x, y in zip(images, st.images))


def test_add_to_blends_two_styles(nodes, extractor):
    with torch.inference_mode():
        a = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        b = _style(nodes, extractor, torch.zeros(1, 48, 48, 3) + 0.5, add_to=a, blend_weight=1.0)
    assert len(b.images) == 2 and b.blend_weights == (1.0, 1.0)
    assert len(a.images) == 1  # the upstream target is not mutated


def test_optimize_without_targets_says_what_to_link(nodes, extractor):
    with pytest.raises(ValueError, match="content_target, a style_target, or both"):
        _optimize(nodes, extractor)


def test_style_layer_validation_reaches_the_user(pack, nodes, extractor):
    cls = pack.NODE_CLASS_MAPPINGS["NST_GramStyleTarget"]
    assert cls.VALIDATE_INPUTS(layer_weights="") is True
    assert cls.VALIDATE_INPUTS(layer_weights="4, 2;1,1,1") is True
    assert cls.VALIDATE_INPUTS(layer_weights=None) is True  # linked: known only when the node runs
    for text, words in [("4,2,x", "comma-separated numbers"), ("1,-1,1", "≥ 0; got -1.0"),
                        ("1e400,1,1", "finite number ≥ 0; got inf"), ("1,nan", "got nan")]:
        msg = cls.VALIDATE_INPUTS(layer_weights=text)
        assert isinstance(msg, str) and msg.startswith("layer_weights") and words in msg, (text, msg)
    # what depends on several inputs is checked when the node runs, before any network work
    style = torch.rand(1, 32, 32, 3)
    custom = "custom (use custom_layers)"
    for kw, words in [(dict(layers=custom, custom_layers="relu1_1,rleu3_1"), "custom_layers: unknown layer 'rleu3_1'"),
                      (dict(layers="relu1_1,relu2_1,relu3_1", layer_weights="1,2"), "one per layer"),
                      (dict(layers=custom, custom_layers=""), "custom_layers is empty")]:
        with torch.inference_mode(), pytest.raises(ValueError, match=re.escape(words)):
            _style(nodes, extractor, style, **kw)


def comfyui_validation_errors(cls, values: dict) -> list:
    """The errors ComfyUI files for a failed VALIDATE_INPUTS, as its execution.validate_inputs does (2024-03
    and 2025 alike): one "custom_validation_failed" per argument the method names, on that input.
    (tests/comfy checks the same against a real server.)"""
    import inspect

    names = [a for a in inspect.getfullargspec(cls.VALIDATE_INPUTS).args if a != "cls"]
    result = cls.VALIDATE_INPUTS(**{n: values.get(n) for n in names})
    return [] if result is True else [{"input_name": n, "details": f"{n} - {result}"} for n in names]


def test_one_bad_layer_weight_is_one_error_on_layer_weights(pack):
    cls = pack.NODE_CLASS_MAPPINGS["NST_GramStyleTarget"]
    values = dict(layers="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", custom_layers="", layer_weights="4,2,x,1,1",
                  statistic="moments", style_scale=1.0)
    errors = comfyui_validation_errors(cls, values)
    assert [e["input_name"] for e in errors] == ["layer_weights"], errors
    assert comfyui_validation_errors(cls, dict(values, layer_weights="4,2,1,1,1")) == []


def test_wrong_image_layout_is_a_clear_error(nodes, extractor):
    with pytest.raises(ValueError, match=r"IMAGE \[B,H,W,C\]"):
        nodes["NST_ContentTarget"].build(extractor, torch.rand(40, 40, 3), "relu4_2", 1.0)


def test_extractor_is_parked_on_the_offload_device_after_a_run(nodes, extractor, pack, monkeypatch):
    # on the CPU compute and offload devices are the same: a stand-in offload device makes the park observable
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    monkeypatch.setattr(bridge, "offload_device", lambda: torch.device("meta"))
    moves = []
    real_to = extractor.to

    def to(device, *args, **kwargs):  # records the move; a move to meta really stays on the CPU
        moves.append(torch.device(device).type)
        return real_to("cpu" if torch.device(device).type == "meta" else device, *args, **kwargs)

    monkeypatch.setitem(vars(extractor), "to", to)
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 40, 40, 3), "relu4_2", 1.0)[0]
        assert moves == []  # a target node only validates: the network stays where it is
        _optimize(nodes, extractor, content_target=ct, size=32)
    assert moves and moves[0] == "cpu" and moves[-1] == "meta", moves  # to the compute device, then parked
    assert not any(p.is_inference() for p in extractor.parameters())


# --------------------------------------------------------------------------- memory through ComfyUI


@pytest.fixture
def memory_bridge(pack, monkeypatch):
    """The bridge with a stand-in memory manager: records what is asked for, reports ``free`` bytes."""
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    node_module = sys.modules[pack.__name__ + ".nodes.optimize_node"]
    state = {"free": 1 << 40, "asked": [], "settings": []}
    monkeypatch.setattr(bridge, "make_room", lambda n, device: state["asked"].append(n))
    monkeypatch.setattr(bridge, "free_bytes", lambda device: state["free"])
    real = node_module.optimize
    monkeypatch.setattr(node_module, "optimize",
                        lambda *a, **k: state["settings"].append(a[4]) or real(*a, **k))
    return state


def _needs(pack, content_target, style_target, size, checkpoint):
    core = sys.modules[pack.__name__ + ".nst_core.memory"]
    presets = sys.modules[pack.__name__ + ".nst_core.presets"]
    s = presets.settings_for("fast", "moments").replace(checkpoint=checkpoint)
    hw = (round(size * content_target.size[0] / max(content_target.size)), size)
    layers = list(style_target.layers) + [content_target.layer]
    return core.required_bytes(core.estimate_bytes(hw, layers, s, 1, "vgg19", "moments", list(style_target.layers)))


def test_the_node_asks_comfyui_for_the_estimate_and_checkpoints_when_memory_is_short(nodes, extractor, pack,
                                                                                       memory_bridge):
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 48, 64, 3), "relu4_2", 1.0)[0]
        st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        _optimize(nodes, extractor, content_target=ct, style_target=st, size=64)
        plain, light = _needs(pack, ct, st, 64, False), _needs(pack, ct, st, 64, True)
        assert memory_bridge["asked"] == [plain]  # the estimate plus a margin, not 2× the weights
        assert memory_bridge["settings"][-1].checkpoint is False
        # enough only with activation checkpointing, in the 3/4 of the free memory a plan may use
        need = (plain + light) // 2
        memory_bridge["free"] = max(int(need / 0.75) + 1, need + 512 * 2**20)
        _optimize(nodes, extractor, content_target=ct, style_target=st, size=64)
        assert memory_bridge["settings"][-1].checkpoint is True


def test_the_node_refuses_before_any_work_when_even_checkpointing_cannot_fit(nodes, extractor, pack, memory_bridge):
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 48, 64, 3), "relu4_2", 1.0)[0]
        st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        memory_bridge["free"] = _needs(pack, ct, st, 64, True) // 2
        with pytest.raises(ValueError, match=r"needs about [\d.]+ GiB even with activation checkpointing, but only"):
            _optimize(nodes, extractor, content_target=ct, style_target=st, size=64)
    assert memory_bridge["settings"] == []  # refused before the optimiser started


def test_the_schedule_takes_the_weights_calibrated_for_the_targets_statistic(nodes, extractor, memory_bridge):
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 32, 32, 3), "relu4_2", 1.0)[0]
        st = _style(nodes, extractor, torch.rand(1, 32, 32, 3))  # moments
        _optimize(nodes, extractor, content_target=ct, style_target=st, schedule="seed", steps=1, size=32)
    s = memory_bridge["settings"][-1]
    assert s.optimizer == "lbfgs" and (s.content_weight, s.style_weight) == (0.25, 25.0)  # not 1000 on W2


def test_the_node_says_its_plan_and_rough_time_before_a_large_run(nodes, extractor, pack, memory_bridge,
                                                                    monkeypatch):
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    monkeypatch.setattr(sys.modules[pack.__name__ + ".nst_core.plan"], "LARGE_PIXELS", 64 * 48)
    said = []
    monkeypatch.setattr(bridge, "say", said.append)
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 48, 64, 3), "relu4_2", 1.0)[0]
        st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
        _optimize(nodes, extractor, content_target=ct, style_target=st, size=32, steps=1)  # small: no word
        assert said == []
        _optimize(nodes, extractor, content_target=ct, style_target=st, size=64, steps=1)
    assert len(said) == 1 and re.fullmatch(r"plan: 64×48 px on cpu, the whole image at once; about [\d.]+ [MG]iB at "
                                           r"the peak of [\d.]+ [GT]iB free \([\d.]+ [GT]iB usable\); roughly "
                                           r"\d+ (s|min)", said[0]), said


def test_say_puts_a_progress_text_on_the_node_where_comfyui_has_one(pack, monkeypatch):
    """2025+ ComfyUI: PromptServer.send_progress_text to the executing node; 2024-03: the log line alone."""
    import types

    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    assert bridge.say("no ComfyUI here") is False  # plain Python: the log only
    sent = []
    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {})
    server.PromptServer.instance = types.SimpleNamespace(send_progress_text=lambda text, node: sent.append((text, node)))
    execution = types.ModuleType("comfy_execution")
    execution.utils = types.ModuleType("comfy_execution.utils")
    execution.utils.get_executing_context = lambda: types.SimpleNamespace(node_id="7")
    monkeypatch.setattr(bridge, "_mm", types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "server", server)
    monkeypatch.setitem(sys.modules, "comfy_execution", execution)
    monkeypatch.setitem(sys.modules, "comfy_execution.utils", execution.utils)
    assert bridge.say("plan: 4096×4096 px") is True and sent == [("plan: 4096×4096 px", "7")]
    server.PromptServer.instance = types.SimpleNamespace()  # 2024-03: no send_progress_text
    assert bridge.say("plan") is False and len(sent) == 1
    monkeypatch.delitem(sys.modules, "comfy_execution.utils")
    monkeypatch.setitem(sys.modules, "comfy_execution", None)  # 2024-03 has no comfy_execution at all
    assert bridge.say("plan") is False


def test_the_seed_input_has_no_randomize_control():
    """A fresh node must not re-run on every Queue: no control_after_generate, and not named like a seed
    widget that frontends give a 'randomize' control by name (seed, noise_seed)."""
    from importlib import import_module

    spec = import_module("nst_pack_test_nodes.nodes.optimize_node").StyleTransferOptimizeNode.INPUT_TYPES()
    names = set(spec["required"]) | set(spec.get("optional", {}))
    assert not names & {"seed", "noise_seed"}
    assert all("control_after_generate" not in opts for _, opts in spec["required"].values() if isinstance(opts, dict))


def test_validate_inputs_names_one_argument_so_comfyui_keeps_its_own_checks(nodes):
    """ComfyUI skips its combo/range checks for the inputs VALIDATE_INPUTS names (all, with **kwargs):
    naming only layer_weights (a free text) leaves the layers combo and every range to ComfyUI."""
    import inspect

    sig = inspect.signature(nodes["NST_GramStyleTarget"].VALIDATE_INPUTS)
    assert not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    assert set(sig.parameters) == {"layer_weights"}


def test_add_to_refuses_different_layer_weights_and_style_scale(nodes, extractor):
    with torch.inference_mode():
        a = _style(nodes, extractor, torch.rand(1, 32, 32, 3))
        with pytest.raises(ValueError, match="layer weights"):
            _style(nodes, extractor, torch.rand(1, 32, 32, 3), layer_weights="1,1,1,1,1", add_to=a)
        with pytest.raises(ValueError, match="style scale"):
            _style(nodes, extractor, torch.rand(1, 32, 32, 3), style_scale=0.5, add_to=a)
        both = _style(nodes, extractor, torch.rand(1, 32, 32, 3), add_to=a, blend_weight=2.0)
    assert len(both.images) == 2 and both.blend_weights == (1.0, 2.0)


def test_masked_styles_chain_into_regions(nodes, extractor):
    left = torch.zeros(1, 32, 32)
    left[..., :16] = 1
    with torch.inference_mode():
        a = _style(nodes, extractor, torch.rand(1, 32, 32, 3), mask=left)
        b = _style(nodes, extractor, torch.rand(1, 32, 32, 3), mask=1 - left, add_to=a, blend_weight=0.5)
        ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 32, 32, 3), "relu4_2", 1.0)[0]
        out = _optimize(nodes, extractor, content_target=ct, style_target=b, size=32, steps=1)
    assert isinstance(b, tuple) and len(b) == 2 and b[1].weight == 0.5
    assert out.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("node", ["NST_GramStyleTarget", "NST_ContentTarget"])
def test_an_all_black_mask_from_an_image_without_alpha_says_why_and_how_to_fix(nodes, extractor, node):
    image = torch.rand(1, 48, 48, 3)
    name = "style mask" if node == "NST_GramStyleTarget" else "content mask"

    def build(mask):
        with torch.inference_mode():
            if node == "NST_GramStyleTarget":
                return _style(nodes, extractor, image, mask=mask)
            return nodes["NST_ContentTarget"].build(extractor, image, "relu4_2", 1.0, mask=mask)[0]

    # what ComfyUI's Load Image gives for a JPG (no alpha channel): a [1,64,64] mask of zeros
    with pytest.raises(ValueError) as exc:
        build(torch.zeros(1, 64, 64))
    msg = str(exc.value)
    for words in (f"the {name} is all black", "empty 64×64 mask that Load Image gives for an image without an alpha "
                  "channel (a JPG", "PNG whose region is transparent", "Solid Mask", "Convert Image to Mask"):
        assert words in msg, msg
    # an opaque PNG gives zeros at its own size: for a style, the same fixes, and why; for the content,
    # a black mask at the image's size is a valid "hold nothing harder" (a face detector that found none)
    if node == "NST_GramStyleTarget":
        with pytest.raises(ValueError, match="white only where its image is transparent, and this image has no "
                                             "transparent pixel"):
            build(torch.zeros(1, 40, 56))
    else:
        assert build(torch.zeros(1, 40, 56)).mask is not None
    assert build(torch.full((1, 64, 64), 0.5)).mask is not None  # a real mask of that size is taken


def _settings_seen(nodes, monkeypatch, key):
    """The values of ``Settings.key`` that the Optimize node's runs pass to ``optimize``."""
    module = sys.modules[type(nodes["NST_StyleTransferOptimize"]).__module__]
    seen = []
    real = module.optimize

    def spy(ext, content, regions, start, settings, *a, **k):
        seen.append(getattr(settings, key))
        return real(ext, content, regions, start, settings, *a, **k)

    monkeypatch.setattr(module, "optimize", spy)
    return seen


def _small_targets(nodes, extractor):
    st = _style(nodes, extractor, torch.rand(1, 48, 48, 3))
    ct = nodes["NST_ContentTarget"].build(extractor, torch.rand(1, 40, 40, 3), "relu3_1", 1.0)[0]
    return ct, st


def test_style_balance_multiplies_the_schedules_balance(nodes, extractor, monkeypatch):
    seen = _settings_seen(nodes, monkeypatch, "style_balance")
    with torch.inference_mode():
        ct, st = _small_targets(nodes, extractor)
        off = _optimize(nodes, extractor, content_target=ct, style_target=st, style_balance=0.0)
        on = _optimize(nodes, extractor, content_target=ct, style_target=st)
    assert seen == [0.0, 1.0]  # fast's balance is 1; 0 on the node turns it off
    assert not torch.equal(off, on)


def test_coarse_scale_0_is_the_schedules_and_a_value_below_a_quarter_is_refused(nodes, extractor, monkeypatch):
    seen = _settings_seen(nodes, monkeypatch, "coarse_scale")
    with torch.inference_mode():
        ct, st = _small_targets(nodes, extractor)
        _optimize(nodes, extractor, schedule="quality", content_target=ct, style_target=st)
        _optimize(nodes, extractor, schedule="quality", content_target=ct, style_target=st, coarse_scale=1.0)
        with pytest.raises(ValueError, match=r"coarse_scale must be in \[0.25, 1\]"):
            _optimize(nodes, extractor, content_target=ct, style_target=st, coarse_scale=0.1)
    assert seen == [0.5, 1.0]
