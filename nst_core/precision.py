"""Where exact arithmetic runs, and the numeric switches a run may use, scoped to that run.

The W2 transport does its C×C algebra (covariances, matrix square roots, eigendecompositions) in
float64: real feature covariances have condition numbers of 1e9–1e11, and TF32 or bf16 rounding of
that algebra turns the style gradient into noise. Devices without float64 (MPS, DirectML) or with slow
float64 hand the algebra to the CPU; whether a device has float64 is probed once (a one-element op),
and the choice for CUDA is made once per device by timing a refresh's algebra as it really runs.

The engine leaves every process-wide setting as the host set it (TF32, cuDNN autotuning, the default
dtype); the one it touches, the CPU thread count around a small eigensolver, is restored at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator

import torch

if TYPE_CHECKING:
    from .presets import Settings

log = logging.getLogger("nst_core")

KNOWN_WITHOUT_FP64 = ("mps", "privateuseone")  # MPS and DirectML: no float64 kernels, nothing to probe


def has_float64(device: "torch.device | str") -> bool:
    """Whether ``device`` runs float64 kernels: a one-element op, tried once per device and remembered.

    CUDA and ROCm have them; Intel Arc A-series XPUs do not ("Required aspect fp64 is not supported"),
    and neither do MPS and DirectML.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type in KNOWN_WITHOUT_FP64:
        return False
    key = str(device)
    if key not in _FLOAT64:
        _FLOAT64[key] = _probe_float64(device)
        if not _FLOAT64[key]:
            log.info("nst: %s has no float64: the W2 algebra runs on the CPU, the reductions in float32", key)
    return _FLOAT64[key]


_FLOAT64: Dict[str, bool] = {}  # str(device) -> has float64 (filled by has_float64)


def _probe_float64(device: torch.device) -> bool:
    try:
        return float((torch.ones(1, dtype=torch.float64, device=device) * 2).sum().cpu()) == 2.0
    except Exception:  # RuntimeError (XPU), TypeError (MPS), NotImplementedError: no float64 there
        return False


def loss_dtype(features: torch.dtype) -> torch.dtype:
    """What the losses compute in for features of dtype ``features``: fp32 or better (the network's
    bf16 or fp16 activations are read as they are and widened where a loss uses them)."""
    return torch.promote_types(features, torch.float32)


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where ``device`` has it, else float32 (reductions there see no TF32: MPS, DirectML, Arc)."""
    return torch.float64 if has_float64(device) else torch.float32


def algebra_device(device: "torch.device | str") -> torch.device:
    """Device for the float64 C×C algebra of features living on ``device``."""
    return algebra_choice(device).device


@dataclass(frozen=True)
class AlgebraChoice:
    """Where the float64 W2 algebra of features on a device runs, and why (timings in seconds)."""

    device: torch.device
    reason: str
    timings: Dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """Where and why, for the log and ``--plan``: e.g. ``float64 on cpu (mps has no float64)``."""
        return f"float64 on {self.device} ({self.reason})"


def algebra_choice(device: "torch.device | str") -> AlgebraChoice:
    """Where the algebra of features on ``device`` runs: there if it has fast float64, else on the CPU.

    CUDA decides once per device by timing one refresh's algebra both ways (:func:`time_algebra`); the
    choice is logged once.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return AlgebraChoice(device, "the features live there")
    if not has_float64(device):
        return AlgebraChoice(torch.device("cpu"), f"{device.type} has no float64")
    if device.type != "cuda":
        return AlgebraChoice(device, f"{device.type} has float64")
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_choice(index)


@functools.lru_cache(maxsize=None)
def _cuda_choice(index: int) -> AlgebraChoice:
    dev = torch.device("cuda", index)
    t = time_algebra(dev, lambda: torch.cuda.synchronize(dev))
    gpu, cpu = t["reductions"] + t["eigh_device"], t["reductions"] + t["eigh_cpu"]
    choice = AlgebraChoice(dev if gpu <= cpu else torch.device("cpu"),
                           f"measured per W2 refresh of relu1_1…relu5_1 at 1024 px: {gpu * 1e3:.0f} ms with the "
                           f"eigensolves on {dev}, {cpu * 1e3:.0f} ms on one CPU thread; both include "
                           f"{t['reductions'] * 1e3:.0f} ms of float64 covariance reductions on {dev}", t)
    log.info("nst: the W2 algebra of features on %s runs in %s", dev, choice.describe())
    return choice


# channels of relu1_1…relu5_1 and their positions at a 1024×1024 output: one W2 refresh's algebra
REFRESH_LAYERS = ((64, 1024 * 1024), (128, 512 * 512), (256, 256 * 256), (512, 128 * 128), (512, 64 * 64))


def time_algebra(device: torch.device, sync=lambda: None, rounds: int = 3) -> Dict[str, float]:
    """Seconds of one W2 refresh's algebra as the engine runs it, for features on ``device``.

    ``reductions``: the float64 covariance reductions that stay on ``device`` (C²·N multiply-adds per
    layer: about 37 GFLOP at 1024²), timed on a slice and scaled by the flop count; ``eigh_device``: the
    C×C eigensolves on ``device``; ``eigh_cpu``: the same on the CPU, single-threaded as
    :func:`.statistics.eigh` runs them, with the copies both ways. ``sync`` waits for ``device``.
    """
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(256, 1 << 14, dtype=torch.float64, generator=gen).to(device)
    flops = sum(c * c * n for c, n in REFRESH_LAYERS)

    def reduce() -> None:
        centred = sample - sample.mean(-1, keepdim=True)
        centred @ centred.T
        sync()

    mats = []
    for c, _ in REFRESH_LAYERS:
        a = torch.randn(c, c, dtype=torch.float64, generator=gen)
        mats.append(a @ a.T + c * torch.eye(c, dtype=torch.float64))
    on_device = [m.to(device) for m in mats]

    def eigh_device() -> None:
        for m in on_device:
            torch.linalg.eigh(m)
        sync()

    def eigh_cpu() -> None:
        for m in on_device:
            with one_thread(torch.device("cpu")):
                vals, vecs = torch.linalg.eigh(m.cpu())
            vecs.to(device)
        sync()

    return {"reductions": _best_of(reduce, rounds) * flops / (256 * 256 * (1 << 14)),
            "eigh_device": _best_of(eigh_device, rounds), "eigh_cpu": _best_of(eigh_cpu, rounds)}


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
    """The network in bf16: as ``settings.autocast_bf16`` says, or by default on CPUs with native bf16
    for Adam. L-BFGS stays in fp32 by default: its line search and curvature pairs need gradients
    finer than bf16's (a relu1_2 reconstruction stalled at an MSE of 0.075 in bf16, 0.001 in fp32)."""
    if settings.autocast_bf16 is not None:
        return bool(settings.autocast_bf16)
    return device.type == "cpu" and settings.optimizer == "adam" and cpu_has_native_bf16()


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
