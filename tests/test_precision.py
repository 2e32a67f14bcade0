"""nst_core.precision and the exactness of the W2 transport under reduced precision.

CUDA GPUs run fp32 matmuls and convolutions in TF32 (10-bit mantissa). ``tf32_emulation.TF32`` rounds the
fp32 inputs of every matmul-family op to TF32 on the CPU, so the GPU's arithmetic is tested here.
"""

from __future__ import annotations

import copy

import pytest
import torch

import nst_core
from nst_core import ContentTarget, StyleTarget, get_preset, load_image, optimize
from nst_core import precision
from nst_core import statistics as st
from nst_core.optimizer import Cancelled
from nst_core.transport import W2Style
from tf32_emulation import TF32, round_tf32

LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def test_tf32_rounding_keeps_10_mantissa_bits():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11 + 2**-12, 1.0 + 2**-12, -3.0 - 2**-9])
    assert round_tf32(x).tolist() == [1.0 + 2**-10, 1.0 + 2**-10, 1.0, -3.0 - 2**-9]
    with TF32() as mode:
        torch.ones(2, 2) @ torch.ones(2, 2)
        torch.ones(2, 2, dtype=torch.float64) @ torch.ones(2, 2, dtype=torch.float64)
    assert mode.rounded == 2  # (float64 inputs pass unrounded)


def test_the_algebra_runs_in_float64_on_a_device_that_has_it():
    assert precision.precise_dtype(torch.device("cpu")) == torch.float64
    assert precision.precise_dtype(torch.device("mps")) == torch.float32
    assert precision.algebra_device("cpu").type == "cpu"
    assert precision.algebra_device(torch.device("mps")).type == "cpu"  # MPS has no float64
    assert precision.algebra_device(torch.device("privateuseone")).type == "cpu"  # DirectML neither


def test_a_device_without_float64_is_probed_once_and_falls_back_to_the_cpu_algebra(monkeypatch):
    """Intel Arc A-series XPUs have no float64: a stand-in probe says so; the MPS path is taken."""
    calls = []

    def probe(device):
        calls.append(str(device))
        return device.type != "xpu"

    monkeypatch.setattr(precision, "_probe_float64", probe)
    monkeypatch.setattr(precision, "_FLOAT64", {})
    xpu = torch.device("xpu")
    for _ in range(3):
        assert precision.precise_dtype(xpu) == torch.float32  # reductions on the device in fp32
        assert precision.algebra_device(xpu).type == "cpu"  # the C×C algebra in float64 on the CPU
    assert calls == ["xpu"]  # probed once, remembered
    assert "xpu has no float64" in precision.algebra_choice(xpu).describe()
    fast = torch.device("xpu", 1)  # another device with float64 keeps it
    monkeypatch.setattr(precision, "_probe_float64", lambda device: True)
    assert precision.precise_dtype(fast) == torch.float64 and precision.algebra_device(fast) == fast


def test_the_float64_probe_is_a_one_element_op_that_fails_where_float64_does():
    assert precision._probe_float64(torch.device("cpu")) is True
    assert precision._probe_float64(torch.device("meta")) is False  # no values to read back: a failure


def test_the_algebra_is_timed_as_it_runs_single_threaded_eigh_on_the_cpu(monkeypatch, several_threads):
    """The CUDA probe's timing, run with the CPU standing in for the GPU: the CPU eigensolves run on one
    thread (as statistics.eigh runs them), the device's with the host's threads, and the float64
    reductions are timed too."""
    seen = []
    real = torch.linalg.eigh

    def eigh(m, *a, **k):
        seen.append(torch.get_num_threads())
        return real(m, *a, **k)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    t = precision.time_algebra(torch.device("cpu"), rounds=1)
    assert set(t) == {"reductions", "eigh_device", "eigh_cpu"} and all(v > 0 for v in t.values())
    layers = len(precision.REFRESH_LAYERS)
    assert seen.count(1) == 2 * layers and seen.count(several_threads) == 2 * layers  # warm-up + 1 round each
    assert torch.get_num_threads() == several_threads


@pytest.mark.parametrize("gpu_ms, cpu_ms, where", [(5, 40, "cuda"), (60, 40, "cpu")])
def test_the_cuda_choice_follows_the_timings_reductions_included_and_is_logged_once(monkeypatch, caplog, gpu_ms,
                                                                                     cpu_ms, where):
    times = {"reductions": 0.030, "eigh_device": gpu_ms / 1e3, "eigh_cpu": cpu_ms / 1e3}
    monkeypatch.setattr(precision, "time_algebra", lambda device, sync=None, rounds=3: times)
    with caplog.at_level("INFO", logger="nst_core"):
        choice = precision._cuda_choice.__wrapped__(0)
    assert choice.device.type == where
    assert "30 ms of float64 covariance reductions" in choice.reason and choice.timings == times
    assert [r.getMessage() for r in caplog.records if "W2 algebra" in r.getMessage()] == [
        f"nst: the W2 algebra of features on cuda:0 runs in {choice.describe()}"]


def test_no_autocast_context_is_entered_when_bf16_is_off():
    assert type(precision.autocast(torch.device("cpu"), False)).__name__ == "nullcontext"


# --------------------------------------------------------------------------- no process-wide side effects


def test_a_run_and_a_cancelled_run_leave_every_global_as_they_found_it(rand_ext, images, several_threads):
    content = ContentTarget.create(rand_ext, images.gradient(32, 32), "relu2_1")
    style = StyleTarget.create(rand_ext, images.checkerboard(32, 32), ["relu1_1", "relu2_1"])
    before = precision.global_state()
    optimize(rand_ext, content, style, settings=nst_core.Settings(steps=3, min_size=24, transport_every=2))
    assert precision.global_state() == before and before["num_threads"] == several_threads
    with pytest.raises(Cancelled):
        optimize(rand_ext, content, style, settings=nst_core.Settings(steps=5, min_size=24),
                 cancel=lambda: True)
    assert precision.global_state() == before


def test_the_global_state_reads_every_tf32_api():
    state = precision.global_state()
    for key in ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "cudnn.benchmark", "num_threads", "default_dtype",
                "cuda.matmul.fp32_precision", "cudnn.conv.fp32_precision"):
        assert key in state


# --------------------------------------------------------------------------- exact W2 under TF32


@pytest.fixture(scope="module")
def photo_pair(data_image):
    return load_image(str(data_image("shipwreck.jpg"))), load_image(str(data_image("starry_night.jpg")))


@pytest.mark.slow
def test_a_tf32_transfer_matches_the_fp32_one(real_ext, photo_pair):
    """30 quality steps at 192 px: TF32 arithmetic lands within 28 dB of fp32 (noise of 1e-4 on the input
    moves the fp32 run itself to about 29 dB); the fp32 W2 algebra of before gave about 17 dB."""
    content, style = (nst_core.image.resize_long_edge(im, 192) for im in photo_pair)
    p = get_preset("quality")
    s = p.settings.replace(steps=30, first_steps=30, min_size=1 << 20, autocast_bf16=False)

    def run() -> torch.Tensor:
        c = ContentTarget.create(real_ext, content, p.content_layer)
        t = StyleTarget.create(real_ext, style, p.style_layers, p.style_layer_weights, p.statistic)
        return optimize(real_ext, c, t, "content", s)

    plain = run()
    with TF32() as mode:
        emulated = run()
    assert mode.rounded > 500
    assert psnr(emulated, plain) > 28


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 512])
def test_each_layers_pixel_gradient_matches_a_float64_reference(real_ext, photo_pair, size):
    """Under TF32 (network and transport alike) each layer's W2 gradient w.r.t. the pixels stays within
    cosine 0.999 of the same gradient computed in float64 end to end (network included)."""
    content, style = (nst_core.image.resize_long_edge(im, size) for im in photo_pair)
    ext64 = copy.deepcopy(real_ext).double()
    with torch.no_grad():
        fs = ext64(style.double(), LAYERS)
    x64 = content.double().requires_grad_(True)
    f64 = ext64(x64, LAYERS)
    want = {}
    for n in LAYERS:
        s = fs[n].flatten(2)
        ms = s.mean(-1)
        cs = (s - ms.unsqueeze(-1)) @ (s - ms.unsqueeze(-1)).transpose(-1, -2) / s.shape[-1]
        (want[n],) = torch.autograd.grad(exact_w2(f64[n], ms, cs), x64, retain_graph=True)
    targets = StyleTarget.create(real_ext, style, LAYERS).at_size(real_ext, size)
    with TF32():
        x = content.clone().requires_grad_(True)
        feats = real_ext(x, LAYERS)
        for n in LAYERS:
            (got,) = torch.autograd.grad(W2Style(targets[n])(feats[n], refresh=True), x, retain_graph=True)
            cos = float((got.double() * want[n]).sum() / (got.double().norm() * want[n].norm()))
            assert cos > 0.999, (n, cos)


def exact_w2(features: torch.Tensor, mean_s: torch.Tensor, cov_s: torch.Tensor) -> torch.Tensor:
    """The Gaussian W2² (over C) of float64 features against (μₛ, Σₛ), through autograd and ``eigvalsh``."""
    f = features.flatten(2)
    mean = f.mean(-1)
    centred = f - mean.unsqueeze(-1)
    cov = st.regularised(centred @ centred.transpose(-1, -2) / f.shape[-1])
    cov_s = st.regularised(cov_s)
    a = st.sqrtm_psd(cov_s)
    m = a @ cov @ a
    trace_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2))).clamp_min(0).sqrt().sum(-1)
    c = cov.shape[-1]
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1) + cov_s.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mean - mean_s).pow(2).mean(-1) + (trace - 2 * trace_sqrt) / c).mean()


def test_the_transport_is_exact_in_fp32_on_realistic_channel_counts():
    """256 channels, 1024 positions, ill-conditioned, a large mean: fp32 features under TF32 still give
    the float64 residual to within 1e-3 of its size (the residual is formed directly, not as F − Y)."""
    gen = torch.Generator().manual_seed(0)
    c, n = 256, 1024
    basis = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))[0]
    spread = torch.logspace(0, -4, c, dtype=torch.float64)  # condition number 1e8 of the covariance
    f64 = (5.0 + basis @ (spread.unsqueeze(-1) * torch.randn(c, n, generator=gen, dtype=torch.float64))).unsqueeze(0)
    target_f = (5.2 + basis @ (1.1 * spread.unsqueeze(-1) * torch.randn(c, n, generator=gen, dtype=torch.float64)))
    target = st.LayerStyle.prepare("moments", st.moments(target_f.reshape(1, c, 32, 32)))
    from nst_core.transport import transport_residual

    w_ref, r_ref = transport_residual(f64, target)
    with TF32():
        w32, r32 = transport_residual(f64.float(), target)
    assert r32.dtype == torch.float32
    assert float((r32.double() - r_ref).norm() / r_ref.norm()) < 1e-3
    assert float(abs(w32 - w_ref).max() / w_ref.abs().max()) < 1e-3


def test_bf16_by_default_for_adam_only_on_a_cpu_with_native_bf16(monkeypatch):
    import nst_core.precision as precision
    from nst_core import Settings

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.use_bf16(Settings(optimizer="adam"), cpu)
    assert not precision.use_bf16(Settings(optimizer="lbfgs"), cpu)  # its line search needs fp32 gradients
    assert precision.use_bf16(Settings(optimizer="lbfgs", autocast_bf16=True), cpu)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert not precision.use_bf16(Settings(optimizer="adam"), cpu)


def test_the_losses_compute_in_fp32_or_better():
    """bf16 and fp16 features are widened to fp32; fp32 and float64 ones stay as they are."""
    assert precision.loss_dtype(torch.bfloat16) == torch.float32
    assert precision.loss_dtype(torch.float16) == torch.float32
    assert precision.loss_dtype(torch.float32) == torch.float32
    assert precision.loss_dtype(torch.float64) == torch.float64
