"""Bad inputs: each is refused with an error that says what was wrong and what is accepted, before the
network runs, and the ComfyUI nodes pass the same message on.

One test per case of the reliability issue. "Before any heavy work" is checked by replacing the
extractor's ``forward`` with a tripwire that fails the test if the network is run at all.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pickle
import sys
from typing import Iterator, List

import pytest
import torch

import nst_core
from nst_core import ContentTarget, Settings, StyleTarget, optimize, reconstruct, texture, transfer
from nst_core import weights as W
from nst_core.layers import parse_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["relu1_1", "relu2_1", "relu3_1"]
ONE_SCALE = 10_000  # min_size above every test image: one pyramid scale


def quick(**kw) -> Settings:
    base = dict(optimizer="adam", steps=2, min_size=ONE_SCALE, lr=0.05, ema_decay=0.5)
    base.update(kw)
    return Settings(**base)


# --------------------------------------------------------------------------- helpers


class ForwardTripwire(AssertionError):
    """Raised when the network runs although the bad input should have been refused first."""


@contextlib.contextmanager
def no_forward(*extractors) -> Iterator[List[tuple]]:
    """Within the block, running any of ``extractors`` fails the test (and does no heavy work)."""
    calls: List[tuple] = []

    def make(ext):
        def tripwire(image, layers):
            calls.append((ext.signature, tuple(image.shape), tuple(layers)))
            raise ForwardTripwire(f"the extractor ran on {tuple(image.shape)} before the bad input was refused")
        return tripwire

    for ext in extractors:
        ext.forward = make(ext)  # an instance attribute shadows the method; nn.Module.__call__ uses it
    try:
        yield calls
    finally:
        for ext in extractors:
            del ext.forward


def raises(exc_type, *needles: str):
    """``pytest.raises`` that also checks the message contains every one of ``needles`` (literally)."""
    return _Raises(exc_type, needles)


class _Raises:
    def __init__(self, exc_type, needles):
        self.exc_type, self.needles = exc_type, needles
        self.value = None

    def __enter__(self):
        self._cm = pytest.raises(self.exc_type)
        self._info = self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        handled = self._cm.__exit__(*exc)  # fails on "did not raise"; False: another type, let it through
        if not handled:
            return False
        self.value = self._info.value
        msg = str(self.value)
        for needle in self.needles:
            assert needle in msg, f"{needle!r} is not in the message: {msg!r}"
        return handled


def comfy_image(nchw: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]`` → ComfyUI IMAGE ``[B,H,W,C]``."""
    return nchw.movedim(1, -1).contiguous()


# --------------------------------------------------------------------------- the node pack


@pytest.fixture(scope="module")
def pcore(pack):
    """The pack's own copy of nst_core (the nodes check isinstance against its classes)."""
    return importlib.import_module(pack.__name__ + ".nst_core")


@pytest.fixture(scope="module")
def pext(pcore):
    """A random-weights extractor from the pack's nst_core (what Load VGG Extractor returns)."""
    return pcore.load_extractor(weights="random", seed=0)


@pytest.fixture(scope="module")
def pext_avg(pcore):
    return pcore.load_extractor(weights="random", seed=0, pooling="avg")


def node_content(nodes, ext, image, layer="relu2_1", weight=1.0):
    with torch.inference_mode():
        return nodes["NST_ContentTarget"].build(ext, image, layer, weight)[0]


def node_style(nodes, ext, image, **kw):
    args = dict(layers="relu1_1,relu2_1,relu3_1", custom_layers="", layer_weights="", statistic="gram",
                style_scale=1.0)
    args.update(kw)
    with torch.inference_mode():
        return nodes["NST_GramStyleTarget"].build(ext, image, **args)[0]


def node_optimize(nodes, ext, **kw):
    args = dict(schedule="fast", steps=2, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=32,
                init="auto", init_seed=0)
    args.update(kw)
    with torch.inference_mode():
        return nodes["NST_StyleTransferOptimize"].run(ext, **args)[0]


@pytest.fixture(scope="module")
def targets(rand_ext, images):
    return (ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1"),
            StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="gram"))


# --------------------------------------------------------------------------- 1. image too small


def test_image_smaller_than_the_deepest_layer(rand_ext, images, nodes, pext):
    with no_forward(rand_ext):
        with raises(ValueError, "8×8 px", "too small for layer relu5_1", "at least 16 px on each side",
                    "larger image or a shallower layer"):
            ContentTarget.create(rand_ext, images.gradient(8, 8), "relu5_1")
        with raises(ValueError, "a style image is 6×6 px", "too small for layer relu4_1", "at least 8 px"):
            StyleTarget.create(rand_ext, images.checkerboard(6, 6), ["relu1_1", "relu4_1"])
    content = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu4_2")
    with no_forward(rand_ext):
        with raises(ValueError, "the output would be 4×4 px", "too small for the layers used",
                    "at least 8 px on each side", "use a larger size or shallower layers"):
            optimize(rand_ext, content, None, settings=quick(), size=4)
    # the node passes the same message on
    with no_forward(pext):
        with raises(ValueError, "too small for layer relu5_1", "at least 16 px"):
            node_content(nodes, pext, comfy_image(images.gradient(8, 8)), layer="relu5_1")


# --------------------------------------------------------------------------- 2. zero-size image


@pytest.mark.parametrize("shape", [(1, 3, 0, 32), (1, 3, 32, 0), (0, 3, 32, 32)])
def test_zero_size_image(rand_ext, nodes, pext, shape):
    empty = torch.zeros(shape)
    with no_forward(rand_ext):
        with raises(ValueError, "content image is empty", str(list(shape)), "at least one image of at least 1×1"):
            ContentTarget.create(rand_ext, empty)
        with raises(ValueError, "style image is empty", "at least one image of at least 1×1"):
            StyleTarget.create(rand_ext, empty, LAYERS)
        with raises(ValueError, "no style image given", "give at least one"):
            StyleTarget.create(rand_ext, [], LAYERS)
        with raises(ValueError, "content image is empty"):
            transfer(rand_ext, empty, torch.rand(1, 3, 32, 32), style_layers=LAYERS, steps=1)
    with no_forward(pext):
        with raises(ValueError, "content image is empty", "at least 1×1"):
            node_content(nodes, pext, comfy_image(empty))


@pytest.mark.parametrize("size", [0, -1])
@pytest.mark.parametrize("call", ["texture", "optimize"])
def test_zero_or_negative_output_size_is_refused(rand_ext, images, call, size):
    style = StyleTarget.create(rand_ext, images.checkerboard(32, 32), ["relu1_1"])
    with no_forward(rand_ext):
        with raises(ValueError, "size", "at least 1"):
            if call == "texture":
                texture(rand_ext, images.checkerboard(32, 32), size=size, style_layers=["relu1_1"], steps=1)
            else:
                optimize(rand_ext, None, style, init="noise", settings=quick(), size=size)


# --------------------------------------------------------------------------- 3. gray / RGBA


def test_grayscale_and_rgba_are_handled(rand_ext, images, nodes, pext):
    rgb = images.gradient(32, 32)
    gray = rgb.mean(1, keepdim=True)
    # gray is expanded to three equal channels
    a = ContentTarget.create(rand_ext, gray, "relu2_1")
    b = ContentTarget.create(rand_ext, gray.expand(1, 3, 32, 32), "relu2_1")
    assert torch.equal(a.at_size(rand_ext, a.size), b.at_size(rand_ext, b.size)) and a.image.shape[1] == 3
    # RGBA: the alpha is used (composited over white)
    opaque = torch.cat([rgb, torch.ones(1, 1, 32, 32)], 1)
    clear = torch.cat([rgb, torch.zeros(1, 1, 32, 32)], 1)
    assert torch.allclose(ContentTarget.create(rand_ext, opaque, "relu2_1").image, rgb)
    assert torch.equal(ContentTarget.create(rand_ext, clear, "relu2_1").image, torch.ones(1, 3, 32, 32))
    out = transfer(rand_ext, opaque, torch.cat([rgb, torch.full((1, 1, 32, 32), 0.5)], 1), content_layer="relu2_1",
                   style_layers=LAYERS, steps=1, min_size=ONE_SCALE)
    assert out.shape == (1, 3, 32, 32)
    # other channel counts: say what is accepted
    with no_forward(rand_ext):
        for c in (2, 5):
            with raises(ValueError, f"content image has {c} channels", "accepted are 1 (gray), 3 (RGB) or 4 (RGBA)"):
                ContentTarget.create(rand_ext, torch.rand(1, c, 32, 32))
    # the nodes take ComfyUI's gray and RGBA IMAGEs too, and refuse the rest the same way
    assert node_content(nodes, pext, comfy_image(gray)).image.shape == (1, 3, 32, 32)
    assert node_style(nodes, pext, comfy_image(opaque)).images[0].shape == (1, 3, 32, 32)
    with no_forward(pext):
        with raises(ValueError, "has 2 channels", "accepted are 1 (gray), 3 (RGB) or 4 (RGBA)"):
            node_content(nodes, pext, torch.rand(1, 32, 32, 2))


# --------------------------------------------------------------------------- 4. NaN / Inf


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_pixels(rand_ext, images, targets, nodes, pext, bad):
    img = images.gradient(32, 32)
    img[0, 1, 5, 7] = bad
    content, style = targets
    with no_forward(rand_ext):
        with raises(ValueError, "content image contains NaN or Inf pixels", "give finite values in 0..1"):
            ContentTarget.create(rand_ext, img)
        with raises(ValueError, "style image contains NaN or Inf pixels", "finite values in 0..1"):
            StyleTarget.create(rand_ext, [images.checkerboard(32, 32), img], LAYERS)
        with raises(ValueError, "init image contains NaN or Inf pixels", "finite values in 0..1"):
            optimize(rand_ext, content, style, init=img, settings=quick())
    with no_forward(pext):
        with raises(ValueError, "style image contains NaN or Inf pixels"):
            node_style(nodes, pext, comfy_image(img))


# --------------------------------------------------------------------------- 5. init batch


def test_init_batch_that_does_not_match_the_content_batch(rand_ext, images, targets, nodes, pext):
    _, style = targets
    content2 = ContentTarget.create(rand_ext, images.gradient(32, 32, batch=2), "relu2_1")
    with no_forward(rand_ext):
        with raises(ValueError, "the init batch has 3 images but the content batch has 2", "give 1 or 2"):
            optimize(rand_ext, content2, style, init=torch.rand(3, 3, 32, 32), settings=quick())
    # 1 or a matching batch is accepted
    assert optimize(rand_ext, content2, style, init=torch.rand(1, 3, 32, 32), settings=quick(steps=1)).shape[0] == 2
    # the node passes the same message on
    ct = node_content(nodes, pext, comfy_image(images.gradient(32, 32, batch=2)))
    with no_forward(pext):
        with raises(ValueError, "the init batch has 3 images but the content batch has 2", "give 1 or 2"):
            node_optimize(nodes, pext, content_target=ct, init_image=torch.rand(3, 32, 32, 3))


# --------------------------------------------------------------------------- 6. unknown layers


@pytest.mark.parametrize("typo, nearest", [("rleu4_2", "relu4_2"), ("relu41", "relu4_1"), ("relu_3_1", "relu3_1"),
                                           ("Relu2_1", "relu2_1"), ("pool_5", "pool5"), ("relu4-2", "relu4_2")])
def test_unknown_or_misspelt_layer_names_suggest_the_nearest(rand_ext, images, nodes, pext, pack, typo, nearest):
    hint = f"Did you mean {nearest!r}?"
    pattern = "Layers are named like conv1_1, relu4_2, pool5"
    with no_forward(rand_ext):
        with raises(ValueError, f"unknown layer {typo!r} for vgg19", hint, pattern):
            ContentTarget.create(rand_ext, images.gradient(32, 32), typo)
        with raises(ValueError, f"unknown layer {typo!r}", hint):
            StyleTarget.create(rand_ext, images.checkerboard(32, 32), ["relu1_1", typo])
        with raises(ValueError, hint):
            parse_layers(f"relu1_1, {typo}")
    with raises(ValueError, f"unknown layer {typo!r}", hint, pattern):
        rand_ext.forward(images.gradient(16, 16), [typo])
    # no near match: the naming pattern alone
    with raises(ValueError, "unknown layer 'block4'", pattern):
        parse_layers(["block4"])
    # in the nodes: the custom layer list is checked when the node runs, before any network work
    with no_forward(pext):
        with raises(ValueError, f"custom_layers: unknown layer {typo!r}", hint):
            node_style(nodes, pext, comfy_image(images.checkerboard(32, 32)), layers="custom (use custom_layers)",
                       custom_layers=f"relu1_1,{typo}")
        with raises(ValueError, hint):
            node_content(nodes, pext, comfy_image(images.gradient(32, 32)), layer=typo)


def test_upper_case_layer_names_get_a_suggestion():
    with raises(ValueError, "unknown layer 'RELU4_2'", "Did you mean 'relu4_2'?"):
        parse_layers("relu1_1,RELU4_2")


# --------------------------------------------------------------------------- 7. empty style layers


@pytest.mark.parametrize("empty", [[], (), "", " , ;"])
def test_empty_style_layer_list(rand_ext, images, empty):
    with no_forward(rand_ext):
        with raises(ValueError, "the layer list is empty", "give at least one layer", "relu1_1,relu2_1,relu3_1"):
            StyleTarget.create(rand_ext, images.checkerboard(32, 32), empty)


def test_empty_style_layer_list_in_the_node(pack, nodes, pext, images):
    custom = "custom (use custom_layers)"
    with no_forward(pext):
        for empty in ("", "  "):
            with raises(ValueError, "custom_layers is empty", "give e.g.", "relu1_1,relu3_1,relu5_1"):
                node_style(nodes, pext, comfy_image(images.checkerboard(32, 32)), layers=custom, custom_layers=empty)
        with raises(ValueError, "custom_layers: the layer list is empty"):
            node_style(nodes, pext, comfy_image(images.checkerboard(32, 32)), layers=custom, custom_layers=" , ,")


@pytest.mark.parametrize("empty", [[], ""])
@pytest.mark.parametrize("call", ["transfer", "texture"])
def test_convenience_functions_refuse_an_empty_style_layer_list(rand_ext, images, call, empty):
    with no_forward(rand_ext):
        with raises(ValueError, "the layer list is empty", "give at least one layer"):
            if call == "transfer":
                transfer(rand_ext, images.gradient(32, 32), images.checkerboard(32, 32), style_layers=empty,
                         content_layer="relu2_1", steps=1, min_size=ONE_SCALE)
            else:
                texture(rand_ext, images.checkerboard(32, 32), size=32, style_layers=empty, steps=1,
                        min_size=ONE_SCALE)


# --------------------------------------------------------------------------- 8. negative weights


def test_negative_weights(rand_ext, images, targets, nodes, pext, pack):
    content, style = targets
    c_img, s_img = images.gradient(32, 32), images.checkerboard(32, 32)
    with no_forward(rand_ext):
        with raises(ValueError, "content weight must be a finite number ≥ 0; got -1.0"):
            ContentTarget.create(rand_ext, c_img, "relu2_1", weight=-1)
        with raises(ValueError, "layer weight must be a finite number ≥ 0; got -0.5"):
            StyleTarget.create(rand_ext, s_img, LAYERS, layer_weights=[1, -0.5, 1])
        with raises(ValueError, "style blend weight must be a finite number ≥ 0; got -2.0"):
            StyleTarget.create(rand_ext, [s_img, s_img], LAYERS, blend_weights=[1, -2])
        with raises(ValueError, "style weight must be a finite number ≥ 0; got -3.0"):
            StyleTarget.create(rand_ext, s_img, LAYERS, weight=-3)
        with raises(ValueError, "blend weight must be a finite number ≥ 0; got -1.0"):
            style.blend(style, -1)
        for name in ("content_weight", "style_weight", "tv_weight", "lr"):
            with raises(ValueError, f"{name} must be a finite number ≥ 0; got -0.25"):
                optimize(rand_ext, content, style, settings=quick(**{name: -0.25}))
    # nodes: the layer_weights text is checked at validation time and again when run; the multipliers when run
    cls = pack.NODE_CLASS_MAPPINGS["NST_GramStyleTarget"]
    msg = cls.VALIDATE_INPUTS(layer_weights="1,-1,1")
    assert isinstance(msg, str) and "layer_weights: each layer weight must be a finite number ≥ 0; got -1.0" in msg
    with no_forward(pext), raises(ValueError, msg):
        node_style(nodes, pext, comfy_image(s_img), layers="relu1_1,relu2_1,relu3_1", layer_weights="1,-1,1")
    ct = node_content(nodes, pext, comfy_image(c_img))
    with no_forward(pext):
        with raises(ValueError, "content weight must be a finite number ≥ 0; got -1.0"):
            node_content(nodes, pext, comfy_image(c_img), weight=-1.0)
        with raises(ValueError, "style_weight must be a finite number ≥ 0"):
            node_optimize(nodes, pext, content_target=ct, style_weight=-1.0)


# --------------------------------------------------------------------------- 9. zero steps


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps must be at least 1; got 0"),
    ({"steps": -3}, "steps must be at least 1; got -3"),
    ({"first_steps": 0}, "first_steps must be at least 1; got 0"),
    ({"optimizer": "lbfgs", "steps": 0}, "steps must be at least 1; got 0"),
])
def test_zero_steps(rand_ext, targets, changes, message):
    content, style = targets
    with no_forward(rand_ext):
        with raises(ValueError, message):
            optimize(rand_ext, content, style, settings=quick(**changes))


def test_zero_steps_in_the_node(nodes, pext, images):
    ct = node_content(nodes, pext, comfy_image(images.gradient(32, 32)))
    with no_forward(pext):
        with raises(ValueError, "steps must be at least 1; got -1"):
            node_optimize(nodes, pext, content_target=ct, steps=-1)
    # in the node 0 means "the schedule's": it runs
    assert node_optimize(nodes, pext, content_target=ct, steps=0, schedule="fast", size=16).shape == (1, 16, 16, 3)


# --------------------------------------------------------------------------- 10. size above max_size


def test_size_above_max_size(rand_ext, images, targets, nodes, pext):
    content, style = targets
    with no_forward(rand_ext):
        with raises(ValueError, "the output would be 128×128 px", "above the maximum long edge of 64 px",
                    "use a smaller size (or raise max_size"):
            optimize(rand_ext, content, style, settings=quick(max_size=64), size=128)
        with raises(ValueError, "above the maximum long edge of 16 px"):  # the content's own size is checked too
            optimize(rand_ext, content, style, settings=quick(max_size=16))
        with raises(ValueError, "the output would be 96×96 px", "above the maximum long edge of 64 px"):
            optimize(rand_ext, None, style, init="noise", settings=quick(max_size=64), size=96)
    # the node: Settings' default maximum (4096) applies to a direct call past the server's own check
    ct = node_content(nodes, pext, comfy_image(images.gradient(32, 32)))
    with no_forward(pext):
        with raises(ValueError, "the output would be 5000×5000 px", "above the maximum long edge of 4096 px"):
            node_optimize(nodes, pext, content_target=ct, size=5000)


@pytest.mark.parametrize("call, kwargs, message", [
    ("transfer", {"size": 128, "max_size": 64}, "above the maximum long edge of 64 px"),
    ("texture", {"size": 128, "max_size": 64}, "above the maximum long edge of 64 px"),
    ("reconstruct", {"size": 128, "max_size": 64}, "above the maximum long edge of 64 px"),
    ("transfer", {"steps": 0}, "steps must be at least 1"),
    ("transfer", {"content_weight": -1.0}, "content_weight must be a finite number ≥ 0"),
])
def test_convenience_functions_validate_settings_before_any_forward(rand_ext, images, call, kwargs, message):
    c_img, s_img = images.gradient(32, 32), images.checkerboard(32, 32)
    with no_forward(rand_ext):
        with raises(ValueError, message):
            if call == "transfer":
                transfer(rand_ext, c_img, s_img, content_layer="relu2_1", style_layers=LAYERS, **kwargs)
            elif call == "texture":
                texture(rand_ext, s_img, style_layers=LAYERS, **kwargs)
            else:
                reconstruct(rand_ext, c_img, layer="relu2_1", **kwargs)


# --------------------------------------------------------------------------- 11. extractor mismatch


def test_targets_built_with_another_extractor(rand_ext, rand_ext_avg, targets, images, nodes, pext, pext_avg):
    content, style = targets
    assert content.extractor_signature == style.extractor_signature == rand_ext.signature
    other_weights = nst_core.load_extractor(weights="random", seed=1)
    for other in (rand_ext_avg, other_weights):
        other_style = StyleTarget.create(other, images.checkerboard(32, 32), LAYERS, statistic="gram")
        with no_forward(rand_ext, other):
            with raises(ValueError, f"the content target was made with extractor {rand_ext.signature!r}",
                        f"but is used with {other.signature!r}", "build the targets with the same extractor"):
                optimize(other, content, None, settings=quick())
            with raises(ValueError, "the style target was made with extractor", "same extractor"):
                optimize(other, None, style, init="noise", settings=quick(), size=32)
            with raises(ValueError, "cannot blend style targets with different extractor signature"):
                style.blend(other_style)
    # the node passes the same message on
    ct = node_content(nodes, pext, comfy_image(images.gradient(32, 32)))
    with no_forward(pext, pext_avg):
        with raises(ValueError, "the content target was made with extractor", "same extractor you optimise with"):
            node_optimize(nodes, pext_avg, content_target=ct)


def _fake_vgg19_file(path, seed: int) -> None:
    sd = W.load_random("vgg19", seed).state_dict
    torch.save({f"features.{k}": v for k, v in sd.items()}, path)


def test_targets_from_a_different_weights_file_with_the_same_name(tmp_path, images):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _fake_vgg19_file(tmp_path / "a" / "vgg19.pth", seed=1)
    _fake_vgg19_file(tmp_path / "b" / "vgg19.pth", seed=2)
    ext_a = nst_core.load_extractor(weights=str(tmp_path / "a" / "vgg19.pth"))
    ext_b = nst_core.load_extractor(weights=str(tmp_path / "b" / "vgg19.pth"))
    content = ContentTarget.create(ext_a, images.gradient(16, 16), "relu1_1")
    with no_forward(ext_b):
        with raises(ValueError, "build the targets with the same extractor"):
            optimize(ext_b, content, None, settings=quick())


# --------------------------------------------------------------------------- 12. weights files


def test_weights_file_missing(tmp_path, nodes):
    path = tmp_path / "nope.pth"
    with raises(FileNotFoundError, "weights file not found", str(path)):
        nst_core.load_extractor(weights=str(path))
    with raises(FileNotFoundError, "weights file not found"):
        nst_core.load_extractor(weights=str(tmp_path))  # a folder is not a file
    with raises(ValueError, "weights must be 'original', 'random' or a path to a .pth/.safetensors file"):
        nst_core.load_extractor(weights="")
    # the node: a name that is not in models/vgg
    with raises(ValueError, "VGG weights file 'missing.pth' is not in ComfyUI's models/vgg folder",
                "put it there and refresh"):
        nodes["NST_LoadVGGExtractor"].load("missing.pth", "vgg19", "max", "replicate")


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_weights_file_truncated(tmp_path, ext):
    from safetensors.torch import save_file

    sd = {f"features.{k}": v.contiguous() for k, v in W.load_random("vgg19").state_dict.items()}
    full = tmp_path / f"full{ext}"
    torch.save(sd, full) if ext == ".pth" else save_file(sd, str(full))
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    if ext == ".pth":
        with raises(ValueError, "weights file 'cut.pth' could not be loaded safely", "truncated", "corrupt",
                    "Use a plain state dict", "or a .safetensors file"):
            nst_core.load_extractor(weights=str(cut))
    else:
        with raises(ValueError, "weights file 'cut.safetensors' is not a valid .safetensors file"):
            nst_core.load_extractor(weights=str(cut))
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    with raises(ValueError, f"weights file 'empty{ext}' is empty"):
        nst_core.load_extractor(weights=str(empty))


@pytest.mark.parametrize("case", ["missing", "empty", "truncated.safetensors"])
def test_weights_file_errors_say_what_is_accepted(tmp_path, case):
    from safetensors.torch import save_file

    if case == "missing":
        path = tmp_path / "nope.pth"
    elif case == "empty":
        path = tmp_path / "empty.pth"
        path.write_bytes(b"")
    else:
        full = tmp_path / "full.safetensors"
        save_file({k: v.contiguous() for k, v in W.load_random("vgg16").state_dict.items()}, str(full))
        path = tmp_path / "cut.safetensors"
        path.write_bytes(full.read_bytes()[:200])
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        nst_core.load_extractor(weights=str(path))
    msg = str(err.value)
    assert path.name in msg
    assert "'original'" in msg and "'random'" in msg and ".safetensors" in msg and ".pth" in msg, msg


@pytest.mark.parametrize("arch, what", [("vgg19", "vgg16"), ("vgg16", "vgg19"), ("vgg19", "resnet")])
def test_weights_file_of_the_wrong_architecture(tmp_path, arch, what):
    path = tmp_path / f"{what}.pth"
    if what == "resnet":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
                    "fc.weight": torch.zeros(10, 512)}, path)
    else:
        torch.save({f"features.{k}": v for k, v in W.load_random(what).state_dict.items()}, path)
    blocks = {"vgg19": "[2, 2, 4, 4, 4]", "vgg16": "[2, 2, 3, 3, 3]"}[arch]
    with raises(ValueError, f"weights file '{what}.pth' does not match the {arch.upper()} architecture",
                f"blocks {blocks}", "Give a torchvision-layout VGG state dict of the architecture you selected"):
        nst_core.load_extractor(arch=arch, weights=str(path))


class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy", "plain-pickle"])
def test_weights_pickle_that_would_execute_code(tmp_path, fmt, pack, nodes, monkeypatch):
    marker = tmp_path / "code_ran"
    sd = {f"features.{k}": v for k, v in W.load_random("vgg19").state_dict.items()}
    sd["features.0.weight"] = _RunsCode(str(marker))
    path = tmp_path / "evil.pth"
    if fmt == "torch-zip":
        torch.save(sd, path)
    elif fmt == "torch-legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(sd, f, protocol=2)
    # control: the payload is live
    assert not marker.exists()
    with raises(ValueError, "weights file 'evil.pth' could not be loaded safely", "other than tensors",
                "or a .safetensors file"):
        nst_core.load_extractor(weights=str(path))
    assert not marker.exists(), "unpickling the weights file ran code"
    # through the node (the file as if it were in models/vgg)
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    monkeypatch.setattr(bridge, "vgg_path", lambda name: str(path))
    with raises(ValueError, "could not be loaded safely"):
        nodes["NST_LoadVGGExtractor"].load("evil.pth", "vgg19", "max", "replicate")
    assert not marker.exists()


def test_refusing_a_code_pickle_does_not_advise_turning_the_protection_off(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _RunsCode(str(tmp_path / "code_ran"))}, path)
    with pytest.raises(ValueError) as err:
        nst_core.load_extractor(weights=str(path))
    assert "weights_only" not in str(err.value) and "could not be loaded safely" in str(err.value)
    assert not (tmp_path / "code_ran").exists()


def test_the_code_payload_is_live_under_plain_pickle(tmp_path):
    """Control for the test above: the same payload does run when unpickled unsafely."""
    marker = tmp_path / "code_ran"
    pickle.loads(pickle.dumps(_RunsCode(str(marker))))
    assert marker.is_dir()


# --------------------------------------------------------------------------- wrong kinds of objects


@pytest.mark.parametrize("swap", ["style_as_content", "content_as_style"])
def test_a_target_of_the_wrong_kind(rand_ext, targets, swap):
    content, style = targets
    with no_forward(rand_ext):
        with raises(TypeError, "ContentTarget" if swap == "style_as_content" else "StyleTarget"):
            if swap == "style_as_content":
                optimize(rand_ext, style, None, settings=quick())
            else:
                optimize(rand_ext, None, content, init="noise", settings=quick(), size=32)


def test_non_tensor_images_are_a_type_error(rand_ext):
    import numpy as np

    with no_forward(rand_ext):
        with raises(TypeError, "content image must be a torch.Tensor [B,3,H,W] in 0..1, got ndarray"):
            ContentTarget.create(rand_ext, np.zeros((1, 3, 32, 32), dtype=np.float32))
        with raises(TypeError, "style image must be a torch.Tensor"):
            StyleTarget.create(rand_ext, [[0.5]], LAYERS)
