"""Where exact arithmetic runs, and the numeric switches a run may use, scoped to that run.

The W2 transport does its C×C algebra (covariances, matrix square roots, eigendecompositions) in
float64: real feature covariances have condition numbers of 1e9–1e11, and TF32 or bf16 rounding of
that algebra turns the style gradient into noise. Devices without float64 (MPS, DirectML) or with slow
float64 hand the algebra to the CPU; the choice for CUDA is made once per device by measurement.

The engine leaves every process-wide setting as the host set it (TF32, cuDNN autotuning, the default
dtype); the one it touches, the CPU thread count around a small eigensolver, is restored at once.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator

import torch

if TYPE_CHECKING:
    from .presets import Settings

FP64_DEVICES = ("cpu", "cuda", "xpu")  # device types with float64 kernels (CUDA includes ROCm)


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where ``device`` has it, else float32 (reductions there see no TF32: MPS and DirectML)."""
    return torch.float64 if torch.device(device).type in FP64_DEVICES else torch.float32


def algebra_device(device: "torch.device | str") -> torch.device:
    """Device for the float64 C×C algebra of features living on ``device``."""
    device = torch.device(device)
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.device("cuda", index) if _cuda_fp64_is_fast(index) else torch.device("cpu")
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _cuda_fp64_is_fast(index: int) -> bool:
    """Time one 512² float64 eigendecomposition on the GPU against the CPU (with the copies)."""
    dev = torch.device("cuda", index)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, dtype=torch.float64, generator=gen)
    m = a @ a.T

    def on_gpu() -> None:
        torch.linalg.eigh(m.to(dev))
        torch.cuda.synchronize(dev)

    def on_cpu() -> None:
        torch.linalg.eigh(m.to(dev).cpu())

    return _best_of(on_gpu) <= _best_of(on_cpu)


def _best_of(fn, rounds: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_has_native_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX-512 BF16), where a bf16 network is fast."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a probe that fails means "unknown": stay in fp32
            continue
    return False


def use_bf16(settings: "Settings", device: torch.device) -> bool:
    """The network in bf16: as ``settings.autocast_bf16`` says, or by default on CPUs with native bf16."""
    if settings.autocast_bf16 is not None:
        return bool(settings.autocast_bf16)
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, bf16: bool) -> "contextlib.AbstractContextManager[Any]":
    """bf16 autocast for the network when asked; no context at all otherwise (DirectML has none)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _read(getter) -> Any:
    try:
        return getter()
    except Exception as exc:  # e.g. torch refuses to read a legacy TF32 flag after the new API set it
        return f"unreadable: {type(exc).__name__}"


def global_state() -> Dict[str, Any]:
    """Every process-wide numeric setting a run could touch (for tests and debugging).

    The engine changes none of them: TF32 and cuDNN autotuning stay as the host set them.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    getters = {
        "cuda.matmul.allow_tf32": lambda: matmul.allow_tf32,
        "cuda.matmul.fp32_precision": lambda: matmul.fp32_precision,
        "cudnn.allow_tf32": lambda: cudnn.allow_tf32,
        "cudnn.conv.fp32_precision": lambda: cudnn.conv.fp32_precision,
        "fp32_precision": lambda: torch.backends.fp32_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "cudnn.benchmark": lambda: cudnn.benchmark,
        "cudnn.deterministic": lambda: cudnn.deterministic,
        "num_threads": torch.get_num_threads,
        "default_dtype": torch.get_default_dtype,
        "grad_enabled": torch.is_grad_enabled,
        "inference_mode": torch.is_inference_mode_enabled,
    }
    return {name: _read(get) for name, get in getters.items()}


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """LAPACK's threaded eigensolver can be 100× slower on a busy CPU; these matrices are small.

    The thread count is restored when the block ends, also on errors.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
