"""Style statistics of feature maps: normalised Gram, Gram, and mean/covariance (moments).

Each statistic is a tuple of tensors with a leading batch dimension, so several style images can be
blended by a weighted average of their statistics (valid for all three: they are linear in the
per-image averages they are built from).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch

STATISTICS = ("gram_normalized", "gram", "moments")

Stat = Tuple[torch.Tensor, ...]


def _flat(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    return features.reshape(b, c, h * w)


class _Gram(torch.autograd.Function):
    """F·Fᵀ with a single-matmul backward, (dG + dGᵀ)·F: autograd's default takes two and an add."""

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(f)
        return f @ f.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (f,) = ctx.saved_tensors
        return (grad + grad.transpose(-1, -2)) @ f


def outer(f: torch.Tensor) -> torch.Tensor:
    """``f @ fᵀ`` over the last two dims, ``[B,C,N]`` → ``[B,C,C]``."""
    return _Gram.apply(f)


def gram_normalized(features: torch.Tensor) -> Stat:
    """Gram of per-channel L2-normalised features (channel cosine similarities), ``[B,C,C]``."""
    f = _flat(features)
    f = f / f.norm(dim=2, keepdim=True).clamp_min(1e-8)
    return (outer(f),)


def gram(features: torch.Tensor) -> Stat:
    """Gram matrix divided by C·H·W, ``[B,C,C]``."""
    f = _flat(features)
    b, c, n = f.shape
    return (outer(f) / (c * n),)


def moments(features: torch.Tensor) -> Stat:
    """Mean ``[B,C]`` and raw second moment ``[B,C,C]`` (F·Fᵀ / H·W); covariance is derived from them."""
    f = _flat(features)
    n = f.shape[2]
    return f.mean(dim=2), outer(f) / n


def compute(statistic: str, features: torch.Tensor) -> Stat:
    """Dispatch to the named statistic."""
    if statistic == "gram_normalized":
        return gram_normalized(features)
    if statistic == "gram":
        return gram(features)
    if statistic == "moments":
        return moments(features)
    raise ValueError(f"statistic {statistic!r} is not supported; choose one of {list(STATISTICS)}")


def blend(stats: "list[Stat]", weights: "list[float]") -> Stat:
    """Weighted average of several single-image statistics (weights are normalised to sum 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("style blend weights must add up to more than 0")
    parts = len(stats[0])
    return tuple(sum(s[i] * (w / total) for s, w in zip(stats, weights)) for i in range(parts))


def covariance(mean: torch.Tensor, second: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Σ = S − μμᵀ + eps·I (eps relative to the mean variance, keeps Σ positive definite)."""
    cov = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    c = cov.shape[-1]
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(c, device=cov.device, dtype=cov.dtype)
    return cov + (eps * scale)[..., None, None] * eye


@contextlib.contextmanager
def _one_thread(t: torch.Tensor) -> Iterator[None]:
    """LAPACK's threaded eigensolver can be 100× slower on a busy CPU; these matrices are small."""
    if t.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def eigh(matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, single-threaded on the CPU."""
    with _one_thread(matrix):
        return torch.linalg.eigh(matrix)


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (no gradient needed)."""
    vals, vecs = eigh(matrix)
    return (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.transpose(-1, -2)
