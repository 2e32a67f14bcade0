"""On a CUDA device: globals untouched, the W2 transport exact in fp32 (TF32 on), the node path with its moves.

Skipped only where no CUDA device exists (CI has none; run these where a GPU is lent).
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch

import nst_core
from nst_core import ContentTarget, Settings, StyleTarget, memory, optimize, precision
from nst_core import statistics as st
from nst_core.transport import transport_residual

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.fixture(scope="module")
def cuda_ext():
    return nst_core.load_extractor(device="cuda")


@pytest.fixture(autouse=True)
def globals_as_found():
    """Each test leaves every process-wide flag (TF32 above all) as it found it: the tests after it, and
    the rest of the suite, must not run with TF32 switched on by a test."""
    before = precision.global_state()
    yield
    assert precision.global_state() == before, "a test left a process-wide flag changed"


@contextlib.contextmanager
def tf32_matmul(allow: bool):
    """TF32 matmuls on or off for a block, restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_a_cuda_run_leaves_every_flag_as_it_found_it(cuda_ext):
    content = ContentTarget.create(cuda_ext, torch.rand(1, 3, 96, 128), "relu4_2")
    style = StyleTarget.create(cuda_ext, torch.rand(1, 3, 96, 96), LAYERS)
    for allow in (False, True):
        with tf32_matmul(allow):
            before = precision.global_state()
            optimize(cuda_ext, content, style, settings=Settings(steps=4, min_size=64, transport_every=2))
            assert precision.global_state() == before


def test_the_w2_residual_in_fp32_with_tf32_matches_float64_on_the_device(cuda_ext):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 256, 256, generator=gen).cuda()
    style = torch.rand(1, 3, 256, 256, generator=gen).cuda()
    targets = StyleTarget.create(cuda_ext, style, LAYERS).at_size(cuda_ext, 256)
    feats = cuda_ext(image, list(LAYERS))
    with tf32_matmul(True):
        for n in LAYERS:
            f = feats[n].flatten(2)
            _, r32 = transport_residual(f, targets[n])
            _, r64 = transport_residual(f.double(), targets[n])
            rel = float((r32.double() - r64).norm() / r64.norm())
            assert rel < 2e-3, (n, rel)


def test_the_algebra_device_is_chosen_by_measurement():
    choice = precision.algebra_choice(torch.device("cuda"))
    t = choice.timings
    assert set(t) == {"reductions", "eigh_device", "eigh_cpu"} and all(v > 0 for v in t.values())
    faster = "cuda" if t["reductions"] + t["eigh_device"] <= t["reductions"] + t["eigh_cpu"] else "cpu"
    assert choice.device.type == faster, choice.describe()
    assert precision.algebra_device(torch.device("cuda")) == choice.device  # the same choice, remembered
    mean, second = st.moments(torch.rand(1, 8, 16, 16, device="cuda"))
    assert mean.dtype == torch.float64 and mean.device.type == "cuda"
    assert precision.has_float64(torch.device("cuda"))


@pytest.mark.parametrize("mode, statistic", [("whole", "moments"), ("checkpoint", "moments"), ("whole", "gram"),
                                             ("tiled", "moments")])
def test_the_memory_estimate_is_within_0_75_to_1_5_of_the_allocators_peak(cuda_ext, mode, statistic):
    """``estimate_bytes``/``tiled_bytes`` against ``torch.cuda.max_memory_allocated`` (weights included)
    at 1024² px, two W2 refreshes (the second meets the first one's goals), fp32 and bf16."""
    p = nst_core.get_preset("quality")
    layers, style = list(p.style_layers) + [p.content_layer], list(p.style_layers)
    gen = torch.Generator().manual_seed(0)
    content = ContentTarget.create(cuda_ext, torch.rand(1, 3, 1024, 1024, generator=gen), p.content_layer)
    target = StyleTarget.create(cuda_ext, torch.rand(1, 3, 512, 512, generator=gen), p.style_layers,
                                p.style_layer_weights, statistic)
    for bf16 in (False, True):
        s = p.settings.replace(min_size=1 << 20, steps=2, first_steps=2, autocast_bf16=bf16,
                               checkpoint=mode == "checkpoint", tile=512 if mode == "tiled" else "off",
                               transport_every=7 if mode == "tiled" else 1)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        optimize(cuda_ext, content, target, "content", s, 1024)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
        model = (memory.tiled_bytes((1024, 1024), 512, layers, s, statistic=statistic, style_layers=style,
                                    device="cuda") if mode == "tiled" else
                 memory.estimate_bytes((1024, 1024), layers, s, statistic=statistic, style_layers=style,
                                       device="cuda"))
        ratio = model / measured
        print(f"\n{mode} {statistic} bf16={bf16}: estimate {model / 2**20:.0f} MiB, measured "
              f"{measured / 2**20:.0f} MiB, ratio {ratio:.2f}")
        assert 0.75 <= ratio <= 1.5, (mode, statistic, bf16, ratio)


def test_the_node_moves_the_network_and_parks_it_on_the_offload_device(pack, nodes, monkeypatch):
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    monkeypatch.setattr(bridge, "compute_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(bridge, "offload_device", lambda: torch.device("cpu"))
    with torch.inference_mode():
        ext = nodes["NST_LoadVGGExtractor"].load("original VGG19 (bundled)", "vgg19", "max", "replicate")[0]
        ct = nodes["NST_ContentTarget"].build(ext, torch.rand(1, 64, 96, 3), "relu4_2", 1.0)[0]
        stt = nodes["NST_GramStyleTarget"].build(ext, torch.rand(1, 64, 64, 3), "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
                                                 "", "", "moments", 1.0)[0]
        out = nodes["NST_StyleTransferOptimize"].run(ext, "fast", 2, 1.0, 1.0, 1.0, 96, "auto", 0,
                                                     content_target=ct, style_target=stt)[0]
    assert out.shape == (1, 64, 96, 3) and out.device.type == "cpu"
    assert ext.device.type == "cpu"  # parked again
