"""On a CUDA device: globals untouched, the W2 transport exact in fp32 (TF32 on), the node path with its moves.

Skipped only where no CUDA device exists (CI has none; run these where a GPU is lent).
"""

from __future__ import annotations

import sys

import pytest
import torch

import nst_core
from nst_core import ContentTarget, Settings, StyleTarget, optimize, precision
from nst_core import statistics as st
from nst_core.transport import transport_residual

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.fixture(scope="module")
def cuda_ext():
    return nst_core.load_extractor(device="cuda")


def test_a_cuda_run_leaves_every_flag_as_it_found_it(cuda_ext):
    content = ContentTarget.create(cuda_ext, torch.rand(1, 3, 96, 128), "relu4_2")
    style = StyleTarget.create(cuda_ext, torch.rand(1, 3, 96, 96), LAYERS)
    for allow in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = allow
        before = precision.global_state()
        optimize(cuda_ext, content, style, settings=Settings(steps=4, min_size=64, transport_every=2))
        assert precision.global_state() == before


def test_the_w2_residual_in_fp32_with_tf32_matches_float64_on_the_device(cuda_ext):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 256, 256, generator=gen).cuda()
    style = torch.rand(1, 3, 256, 256, generator=gen).cuda()
    targets = StyleTarget.create(cuda_ext, style, LAYERS).at_size(cuda_ext, 256)
    feats = cuda_ext(image, list(LAYERS))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for n in LAYERS:
            f = feats[n].flatten(2)
            _, r32 = transport_residual(f, targets[n])
            _, r64 = transport_residual(f.double(), targets[n])
            rel = float((r32.double() - r64).norm() / r64.norm())
            assert rel < 2e-3, (n, rel)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_the_algebra_device_is_chosen_by_measurement():
    dev = precision.algebra_device(torch.device("cuda"))
    assert dev.type in ("cuda", "cpu")
    mean, second = st.moments(torch.rand(1, 8, 16, 16, device="cuda"))
    assert mean.dtype == torch.float64 and mean.device.type == "cuda"


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
