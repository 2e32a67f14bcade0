"""nst_core.extractor: the frozen, hooked VGG ``features`` stack."""

from __future__ import annotations

import copy
import io
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import nst_core
from nst_core import extractor as extractor_module
from nst_core.extractor import EdgeConv2d, EdgePad, FrozenConv2d, ScaledAvgPool2d, build_features, packed_conv_available
from nst_core.layers import layer_index
from nst_core.weights import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, LoadedWeights, load_random


def all_hooks(ext: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in ext.modules())


def test_weights_are_frozen(rand_ext):
    params = list(rand_ext.parameters())
    assert len(params) == 32
    assert not any(p.requires_grad for p in params)


def test_stays_in_eval_mode():
    ext = nst_core.load_extractor(weights="random", arch="vgg16")
    assert not ext.training
    returned = ext.train()
    assert returned is ext
    assert not ext.training
    assert not any(m.training for m in ext.modules())
    ext.train(True)
    assert not any(m.training for m in ext.modules())


def test_returns_exactly_the_requested_layers(rand_ext, images):
    x = images.gradient(32, 32)
    layers = ["relu3_1", "conv1_1", "pool2", "relu1_2"]
    out = rand_ext(x, layers)
    assert set(out) == set(layers)
    assert out["conv1_1"].shape == (1, 64, 32, 32)
    assert out["relu1_2"].shape == (1, 64, 32, 32)
    assert out["pool2"].shape == (1, 128, 8, 8)
    assert out["relu3_1"].shape == (1, 256, 8, 8)
    assert rand_ext(x, []) == {}


def test_layer_order_and_duplicates_do_not_matter(rand_ext, images):
    x = images.gradient(32, 32)
    a = rand_ext(x, ["relu2_1", "relu1_1"])
    b = rand_ext(x, ["relu1_1", "relu2_1", "relu1_1"])
    assert set(b) == {"relu1_1", "relu2_1"}
    assert torch.equal(a["relu2_1"], b["relu2_1"]) and torch.equal(a["relu1_1"], b["relu1_1"])


def test_forward_stops_after_the_deepest_requested_layer(rand_ext, images):
    fired = []
    deeper = rand_ext.features[layer_index("vgg19", "relu2_1") + 1]  # conv2_2
    last = rand_ext.features[len(rand_ext.features) - 1]  # pool5
    handles = [deeper.register_forward_hook(lambda *a: fired.append("conv2_2")),
               last.register_forward_hook(lambda *a: fired.append("pool5"))]
    try:
        out = rand_ext(images.gradient(32, 32), ["relu1_1", "relu2_1"])
        assert set(out) == {"relu1_1", "relu2_1"}
        assert fired == []
        rand_ext(images.gradient(32, 32), ["conv2_2"])  # control: the hook does work
        assert fired == ["conv2_2"]
    finally:
        for h in handles:
            h.remove()


def test_conv_outputs_are_not_clobbered_by_relu(rand_ext, images):
    out = rand_ext(images.noise(24, 24), ["conv1_1", "relu1_1", "conv2_1", "relu2_1"])
    assert (out["conv1_1"] < 0).any()
    assert torch.equal(out["relu1_1"], out["conv1_1"].clamp(min=0))
    assert (out["conv2_1"] < 0).any()
    assert torch.equal(out["relu2_1"], out["conv2_1"].clamp(min=0))


def test_hooks_are_removed_after_each_call(rand_ext, images):
    before = all_hooks(rand_ext)
    rand_ext(images.gradient(16, 16), ["relu1_1", "relu3_1", "relu5_1"])
    assert all_hooks(rand_ext) == before == 0


def test_hooks_are_removed_even_when_the_forward_fails(rand_ext):
    with pytest.raises(RuntimeError):
        rand_ext(torch.rand(1, 3, 16, 16, dtype=torch.float64), ["relu1_1", "relu5_1"])  # float32 weights
    assert all_hooks(rand_ext) == 0


def test_min_edge_is_enough(rand_ext):
    edge = rand_ext.min_edge(["relu5_1"])
    assert edge == 16
    out = rand_ext(torch.rand(1, 3, edge, edge), ["relu5_1"])
    assert out["relu5_1"].shape == (1, 512, 1, 1)


def test_caffe_preprocessing_for_original_weights(real_ext):
    assert real_ext.preprocessing == "caffe"
    r, g, b = 0.2, 0.5, 0.9
    pixel = torch.tensor([r, g, b]).view(1, 3, 1, 1)
    got = real_ext.preprocess(pixel).flatten()
    want = torch.tensor([b * 255 - CAFFE_MEAN_BGR[0], g * 255 - CAFFE_MEAN_BGR[1], r * 255 - CAFFE_MEAN_BGR[2]])
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(want, torch.tensor([125.561, 10.721, -72.68]), atol=1e-3)  # the numbers, by hand


def test_imagenet_preprocessing_for_random_weights(rand_ext):
    assert rand_ext.preprocessing == "imagenet"
    pixel = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    got = rand_ext.preprocess(pixel).flatten()
    want = torch.tensor([(v - m) / s for v, m, s in zip([0.2, 0.5, 0.9], IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(got, want, atol=1e-5)


def test_matches_torchvision_features(tmp_path, images):
    """A torchvision file run through the extractor (zero padding) equals torchvision's own ``features``."""
    torch.manual_seed(0)
    tv = make_layers(cfgs["D"]).eval()
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in tv.state_dict().items()}, path)
    ext = nst_core.load_extractor(arch="vgg16", weights=str(path), padding="zeros")
    x = images.gradient(32, 32)
    got = ext(x, ["relu3_1", "pool5"])
    normalized = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want_relu3_1 = tv[: layer_index("vgg16", "relu3_1") + 1](normalized)
        want_pool5 = tv(normalized)
    assert torch.allclose(got["relu3_1"], want_relu3_1, atol=1e-5)
    assert torch.allclose(got["pool5"], want_pool5, atol=1e-5)


def test_every_conv_pads_with_the_edge(rand_ext, images):
    """Each convolution pads with its input's edge pixels (a zero-padded VGG paints a frame)."""
    zeros = nst_core.load_extractor(weights="random", padding="zeros")
    assert all(isinstance(m, EdgeConv2d) for m in rand_ext.features if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, EdgeConv2d) for m in zeros.features)
    x = images.gradient(24, 24)
    h = rand_ext.preprocess(x)
    with torch.no_grad():
        for m in rand_ext.features[: layer_index("vgg19", "relu2_1") + 1]:
            h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="replicate"), m.weight, m.bias) if isinstance(m, nn.Conv2d) else m(h)
    got = rand_ext(x, ["relu2_1"])["relu2_1"]
    assert torch.allclose(got, h, atol=1e-5)
    other = zeros(x, ["relu2_1"])["relu2_1"]
    assert not torch.allclose(got[..., 0, :], other[..., 0, :], atol=1e-3)
    assert rand_ext.signature != zeros.signature


def test_the_compiled_edge_pad_is_the_eager_one(monkeypatch):
    """Under torch.compile the edge pad is built from slices: same values, same gradient."""
    conv = EdgeConv2d(4, 5)
    x = torch.rand(1, 4, 7, 9, requires_grad=True)
    eager = conv(x)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    sliced = conv(x)
    (g_sliced,) = torch.autograd.grad(sliced.square().sum(), x)
    assert torch.allclose(eager, sliced, atol=1e-6) and torch.allclose(g_eager, g_sliced, atol=1e-5)


needs_packing = pytest.mark.skipif(not packed_conv_available(), reason="this torch has no oneDNN convolution")


def _conv_and_grad(conv: nn.Module, x: torch.Tensor, g: torch.Tensor, bf16: bool):
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    (grad,) = torch.autograd.grad(out, x, g.to(out.dtype))
    return out, grad


@needs_packing
@pytest.mark.parametrize("edge", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_the_packed_convolution_is_torchs(edge, bf16):
    """On the CPU in channels_last the weights are packed once (oneDNN's layout): the same values as torch's
    convolution (bit for bit), the input's gradient within the dtype's rounding, bf16 out under autocast."""
    torch.manual_seed(0)
    conv = EdgeConv2d(16, 8) if edge else FrozenConv2d(16, 8)
    conv.requires_grad_(False)
    x = torch.randn(2, 16, 11, 13).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
    out, grad = _conv_and_grad(conv, x, g, bf16)
    assert conv in extractor_module.PACKED
    pad = (lambda t: F.pad(t, (1, 1, 1, 1), mode="replicate")) if edge else (lambda t: F.pad(t, (1, 1, 1, 1)))
    dtype = torch.bfloat16 if bf16 else torch.float32
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(pad(ref_x.to(dtype)), conv.weight.to(dtype), conv.bias.to(dtype))
    (ref_grad,) = torch.autograd.grad(ref, ref_x, g.to(dtype))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, ref)
    tol = 2e-2 if bf16 else 1e-5
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < tol


@needs_packing
def test_the_packed_weights_are_made_once_and_follow_the_weights():
    """Kept between calls; remade after an in-place change (load_state_dict); kept out of copies and pickles;
    dropped when the module moves."""
    conv = FrozenConv2d(4, 6).requires_grad_(False)
    x = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    conv(x)
    kept = extractor_module.PACKED[conv]
    conv(x)
    assert extractor_module.PACKED[conv] is kept
    with torch.no_grad():
        conv.weight.mul_(2)
        conv.bias.zero_()
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5)
    assert extractor_module.PACKED[conv] is not kept
    copied = copy.deepcopy(conv)  # the packed copy stays outside: deep copies and pickles work
    assert torch.equal(copied(x), conv(x))
    torch.save(conv, io.BytesIO())
    conv.to(torch.float32)
    assert conv not in extractor_module.PACKED


def test_the_packed_convolution_check_does_not_depend_on_where_it_is_first_asked():
    """Asked first inside bf16 autocast (an optimisation step) or outside it (a target): the same answer,
    so a run takes the same path, and gives the same bits, whichever came first."""
    answers = []
    for inside in (False, True):
        packed_conv_available.cache_clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inside):
            answers.append(packed_conv_available())
    packed_conv_available.cache_clear()
    assert answers[0] == answers[1] == packed_conv_available()


@pytest.mark.parametrize("case", ["nchw", "float64", "trainable", "unavailable"])
def test_torchs_convolution_where_the_packed_one_does_not_apply(case, monkeypatch):
    """NCHW or float64 inputs, trainable weights, a torch without oneDNN: torch's convolution, the same values."""
    conv = FrozenConv2d(3, 4).requires_grad_(case == "trainable")
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64 if case == "float64" else torch.float32)
    if case != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    if case == "float64":
        conv = conv.double()
    if case == "unavailable":
        monkeypatch.setattr(extractor_module, "packed_conv_available", lambda: False)
    out = conv(x)
    assert conv not in extractor_module.PACKED
    assert torch.allclose(out, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-6)


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (6, 1), (2, 2), (7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_edge_pad_is_torchs_replication_pad(hw, channels_last):
    """EdgePad's values and gradient are F.pad(..., "replicate")'s; it keeps the memory format."""
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = EdgePad.apply(x)
    assert torch.equal(out, F.pad(x, (1, 1, 1, 1), mode="replicate"))
    wide = min(hw) > 1  # (a side of 1 is contiguous in both formats)
    if wide:
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.autograd.gradcheck(EdgePad.apply, (x,))
    g = torch.randn_like(out)
    (mine,) = torch.autograd.grad(out, x, g)
    (torchs,) = torch.autograd.grad(F.pad(x, (1, 1, 1, 1), mode="replicate"), x, g)
    assert torch.allclose(mine, torchs, atol=1e-12)
    if wide:
        assert mine.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_avg_pooling_is_twice_avg_pool2d(rand_ext, rand_ext_avg, images):
    assert isinstance(rand_ext_avg.features[4], ScaledAvgPool2d)
    assert isinstance(rand_ext.features[4], nn.MaxPool2d)
    x = images.noise(16, 16)
    out = rand_ext_avg(x, ["relu1_2", "pool1"])
    assert torch.allclose(out["pool1"], 2 * F.avg_pool2d(out["relu1_2"], 2), atol=1e-6)
    t = torch.randn(1, 4, 6, 6)
    assert torch.allclose(rand_ext_avg.features[4](t), 2 * F.avg_pool2d(t, 2))
    odd = torch.randn(1, 4, 5, 7)  # ceil mode: a window cut by the edge averages the pixels it holds
    out = rand_ext_avg.features[4](odd)
    assert out.shape[-2:] == (3, 4)
    assert torch.allclose(out[..., 2, 3], 2 * odd[..., 4, 6]) and torch.allclose(out[..., 2, 0], odd[..., 4, :2].sum(-1))
    assert "avg" in rand_ext_avg.signature and rand_ext.signature != rand_ext_avg.signature


@pytest.mark.parametrize("kwargs, word", [({"pooling": "min"}, "pooling"), ({"padding": "reflect"}, "padding")])
def test_invalid_pooling_or_padding(kwargs, word):
    with pytest.raises(ValueError, match=word):
        build_features("vgg19", **kwargs)
    with pytest.raises(ValueError, match=word):
        nst_core.load_extractor(weights="random", arch="vgg16", **kwargs)


def test_signature_identifies_weights_and_arch():
    a = nst_core.load_extractor(weights="random", arch="vgg16", seed=1)
    assert a.signature == "vgg16|random:1|max|replicate"
    assert a.device == torch.device("cpu")


def test_accepts_loaded_weights_object():
    lw = load_random("vgg16", 2)
    ext = nst_core.Extractor("vgg16", LoadedWeights(lw.state_dict, "caffe", "custom"))
    assert ext.preprocessing == "caffe" and ext.weights_name == "custom"
    assert torch.equal(ext.features[0].weight, lw.state_dict["0.weight"])


def test_load_extractor_inside_inference_mode_gives_normal_parameters():
    with torch.inference_mode():
        ext = nst_core.load_extractor(weights="random", arch="vgg16")
    assert not any(p.is_inference() for p in ext.parameters())
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    ext(x, ["relu2_1"])["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


LAYERS = ["conv1_1", "relu1_1", "relu2_1", "conv3_1", "relu3_1", "relu4_2", "relu5_1"]


def features_and_input_grad(ext, image, **kwargs):
    x = image.clone().requires_grad_(True)
    feats = ext(x, LAYERS, **kwargs)
    sum((v**2).mean() for v in feats.values()).backward()
    return {k: v.detach() for k, v in feats.items()}, x.grad


def test_activation_checkpointing_gives_the_same_features_and_gradient(rand_ext, images):
    image = images.noise(64, 64)
    plain, g_plain = features_and_input_grad(rand_ext, image)
    ckpt, g_ckpt = features_and_input_grad(rand_ext, image, checkpoint=True)
    assert all(torch.equal(plain[k], ckpt[k]) for k in LAYERS)
    assert torch.allclose(g_plain, g_ckpt, rtol=1e-5, atol=1e-7) and g_plain.abs().sum() > 0
    assert all_hooks(rand_ext) == 0
    assert all(not p._forward_hooks for p in rand_ext.__dict__.get("_pieces", {}).values())


def test_activation_checkpointing_frees_the_inner_activations(rand_ext, images):
    """Fewer tensors are saved for the backward pass (counted with saved-tensor hooks)."""
    def saved_floats(**kwargs):
        total = []

        def pack(t):
            total.append(t.numel())
            return t

        x = images.noise(64, 64).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            feats = rand_ext(x, ["relu1_1", "relu3_1", "relu5_1"], **kwargs)
        return sum(total), feats

    plain, _ = saved_floats()
    ckpt, _ = saved_floats(checkpoint=True)
    assert ckpt < 0.5 * plain


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_pieces_match_eager(rand_ext, images):
    image = images.noise(32, 32)
    layers = ["relu1_1", "relu2_1"]
    x = image.clone().requires_grad_(True)
    eager = rand_ext(x, layers)
    (g_eager,) = torch.autograd.grad(sum(v.sum() for v in eager.values()), x)
    x = image.clone().requires_grad_(True)
    compiled = rand_ext(x, layers, compile=True)
    (g_comp,) = torch.autograd.grad(sum(v.sum() for v in compiled.values()), x)
    for k in layers:
        assert torch.allclose(compiled[k], eager[k], rtol=1e-4, atol=1e-4)
    assert torch.allclose(g_comp, g_eager, rtol=1e-3, atol=1e-3 * g_eager.abs().max())


@pytest.mark.parametrize("ext_name", ["rand_ext", "rand_ext_avg"])
def test_every_edge_reaches_the_deepest_layer(ext_name, request):
    """Pooling in ceil mode: on a 91×75 image (not a multiple of 16) relu5_1 covers every pixel, and the
    gradient of its sum on each side's outermost 2 px is at least 0.7× the image's mean (0.98–2.8).

    (Floor mode dropped the last 11 rows and columns from relu5_1's cells: only the convolutions' reach
    carried them, at 0.39–0.43× the mean on the bottom and right edges: a strip along them in the output.)
    """
    ext = request.getfixturevalue(ext_name)
    x = torch.rand(1, 3, 91, 75, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    f = ext(x, ["relu5_1"])["relu5_1"]
    assert f.shape[-2:] == (6, 5)  # ⌈91/16⌉ × ⌈75/16⌉
    (g,) = torch.autograd.grad(f.sum(), x)
    a = g.abs().mean(1)[0]
    a = a / a.mean()
    sides = {"top": a[:2].mean(), "bottom": a[-2:].mean(), "left": a[:, :2].mean(), "right": a[:, -2:].mean()}
    assert min(sides.values()) > 0.7, {k: round(float(v), 2) for k, v in sides.items()}


@pytest.mark.parametrize("ext_name, hw", [("rand_ext", (64, 80)), ("rand_ext_avg", (64, 80)), ("rand_ext", (61, 75))])
def test_receptive_max_is_the_receptive_field_of_each_position(ext_name, hw, request):
    """A pixel's reach on each layer's grid holds every position that depends on it, and little more."""
    ext = request.getfixturevalue(ext_name)
    layers = ["relu1_1", "conv2_2", "relu3_1", "relu4_1", "relu5_1"]
    pixel = (30, 41)
    x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[..., pixel[0], pixel[1]] += 0.5
    with torch.no_grad():
        fx, fy = ext(x, layers), ext(y, layers)
    marked = torch.zeros(1, 1, *hw)
    marked[..., pixel[0], pixel[1]] = 1
    reach = ext.receptive_max(marked, layers)
    assert sorted(reach) == sorted(layers)
    for n in layers:
        depends = (fx[n] - fy[n]).abs().amax(1)[0] > 0
        inside = reach[n][0, 0] > 0
        assert reach[n].shape[-2:] == fx[n].shape[-2:], n
        assert not bool((depends & ~inside).any()), n
        assert int(depends.sum()) >= 0.5 * int(inside.sum()), n
    assert int((reach["relu5_1"][0, 0] > 0).sum()) > 9  # relu5_1 sees 156 px: far beyond its own 16 px cell
