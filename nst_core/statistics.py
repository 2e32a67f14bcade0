"""Style statistics of feature maps: normalised Gram, Gram, and mean/covariance (moments).

Each statistic is a tuple of tensors with a leading batch dimension, so several style images can be
blended by a weighted average of their statistics (valid for all three: they are linear in the
per-image averages they are built from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .precision import algebra_device, loss_dtype, one_thread, precise_dtype

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
    return (gram_statistic("gram_normalized", outer(f), f.new_full((f.shape[0],), f.shape[-1])),)


def gram(features: torch.Tensor) -> Stat:
    """Gram matrix divided by C·H·W, ``[B,C,C]``."""
    f = _flat(features)
    return (gram_statistic("gram", outer(f), f.new_full((f.shape[0],), f.shape[-1])),)


def moments(features: torch.Tensor, weights: Optional[torch.Tensor] = None) -> Stat:
    """Mean ``[B,C]`` and raw second moment ``[B,C,C]`` of ``[B,C,H,W]`` features, without a graph.

    Accumulated from centred features in float64 (see :func:`centred_moments`), so the covariance
    derived from them keeps its small eigenvalues. ``weights`` (``[B or 1,1,H,W]``, ≥ 0) weigh the
    positions: a masked statistic.
    """
    f = _flat(features)
    w = None if weights is None else weights.reshape(weights.shape[0], 1, -1)
    mean, cov, _ = centred_moments(f, w)
    return mean, cov + mean.unsqueeze(-1) * mean.unsqueeze(-2)


def centred_moments(f: torch.Tensor, weights: Optional[torch.Tensor] = None,
                    chunk_elements: int = 1 << 24) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean ``[B,C]``, covariance ``[B,C,C]``, mass ``[B]``) of flat features ``[B,C,N]``, no graph.

    See :class:`Moments`; ``weights`` ``[B or 1,1,N]`` (≥ 0) make it a weighted mean and covariance.
    """
    return Moments().add(f, weights, chunk_elements).result()


class Moments:
    """Weighted mean and covariance of positions, gathered piece by piece (the pieces of a tiled image,
    the chunks of one piece) and merged with Chan's pairwise update: the one merge of the package.

    Runs on the features' device in :func:`precision.precise_dtype` (float64 where it exists), from
    centred values: ``F·Fᵀ/N − μμᵀ`` would cancel most digits of the small eigenvalues. No chunk of
    more than ``chunk_elements`` values is ever converted at once.
    """

    def __init__(self) -> None:
        self.mass: Optional[torch.Tensor] = None  # [B,1]
        self.mean: Optional[torch.Tensor] = None  # [B,C]
        self.m2: Optional[torch.Tensor] = None  # [B,C,C]: Σ a·(f − μ)(f − μ)ᵀ

    def add(self, f: torch.Tensor, weights: Optional[torch.Tensor] = None,
            chunk_elements: int = 1 << 24) -> "Moments":
        """Fold in flat features ``[B,C,N]`` with optional weights ``[B or 1,1,N]``; returns self."""
        dtype = precise_dtype(f.device)
        b, c, n = f.shape
        step = max(1, chunk_elements // max(1, b * c))
        with torch.no_grad():
            for start in range(0, n, step):
                x = f[..., start : start + step].to(dtype)
                if weights is None:
                    w = None
                    k = torch.full((b, 1), float(x.shape[-1]), dtype=dtype, device=f.device)
                    mu = x.mean(-1)
                else:
                    w = weights[..., start : start + step].to(dtype).expand(b, 1, -1)
                    k = w.sum(-1)
                    mu = (x * w).sum(-1) / k.clamp_min(1e-30)
                xc = x - mu.unsqueeze(-1)
                self._merge(k, mu, (xc if w is None else xc * w) @ xc.transpose(-1, -2))
        return self

    def _merge(self, mass: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mass is None:
            self.mass, self.mean, self.m2 = mass, mean, m2
            return
        total = self.mass + mass
        delta = mean - self.mean
        share = mass / total.clamp_min(1e-30)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + (delta.unsqueeze(-1) * delta.unsqueeze(-2)) * (self.mass * share).unsqueeze(-1)
        self.mass = total

    def result(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean ``[B,C]``, covariance ``[B,C,C]``, mass ``[B]``)."""
        return self.mean, self.m2 / self.mass.clamp_min(1e-30).unsqueeze(-1), self.mass.squeeze(-1)


class SecondMoment:
    """Σ a·f·fᵀ ``[B,C,C]`` and Σ a ``[B]`` (precise dtype) over pieces: what a Gram is made of.

    The product runs in the features' dtype (a Gram needs no centring), its sum in the precise one.
    """

    def __init__(self) -> None:
        self.sum: Optional[torch.Tensor] = None
        self.mass: Optional[torch.Tensor] = None

    def add(self, f: torch.Tensor, weights: Optional[torch.Tensor] = None) -> "SecondMoment":
        """Fold in flat features ``[B,C,N]`` with optional weights ``[B or 1,1,N]``; returns self."""
        with torch.no_grad():
            f = f.to(loss_dtype(f.dtype))
            s = ((f if weights is None else f * weights) @ f.transpose(-1, -2)).to(precise_dtype(f.device))
            m = (torch.full((f.shape[0],), float(f.shape[-1]), device=f.device) if weights is None
                 else weights.expand(f.shape[0], 1, -1).sum((-1, -2))).to(s.dtype)
        self.sum = s if self.sum is None else self.sum + s
        self.mass = m if self.mass is None else self.mass + m
        return self


def gram_statistic(statistic: str, second: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """A Gram statistic from S = Σ a·f·fᵀ ``[B,C,C]`` and Σ a ``[B]`` (differentiable in S).

    ``gram``: S / (C·Σ a); ``gram_normalized``: S / (‖f_i‖·‖f_j‖) with ‖f_i‖ = √S_ii, the cosine
    similarities of the channels (weights enter through √a·f).
    """
    c = second.shape[-1]
    if statistic == "gram":
        return second / (c * mass.clamp_min(1e-12)[:, None, None])
    if statistic == "gram_normalized":
        norms = second.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().clamp_min(1e-8)
        return second / (norms[:, :, None] * norms[:, None, :])
    raise ValueError(f"statistic {statistic!r} is not a Gram statistic; choose 'gram' or 'gram_normalized'")


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
    return regularised(second - mean.unsqueeze(-1) * mean.unsqueeze(-2), eps)


def regularised(cov: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Σ + eps·I, eps relative to the mean variance: keeps Σ positive definite."""
    c = cov.shape[-1]
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(c, device=cov.device, dtype=cov.dtype)
    return cov + (eps * scale)[..., None, None] * eye


def eigh(matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, single-threaded on the CPU."""
    with one_thread(matrix.device):
        return torch.linalg.eigh(matrix)


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (no gradient needed)."""
    vals, vecs = eigh(matrix)
    return (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.transpose(-1, -2)


@dataclass(frozen=True)
class LayerStyle:
    """One layer's style target, prepared for a fast loss (no graph, never mutated)."""

    statistic: str
    stat: Stat  # each tensor has batch dimension 1; moments: float64 on the algebra device
    norm: float  # target magnitude the loss is divided by
    cov_sqrt: Optional[torch.Tensor] = None  # moments only: Σₛ^½ (float64)
    cov_trace: Optional[torch.Tensor] = None  # moments only: tr(Σₛ) (float64)

    @classmethod
    def prepare(cls, statistic: str, stat: Stat) -> "LayerStyle":
        """Precompute what the loss needs from a (blended) target statistic.

        For ``moments`` everything is float64 on the algebra device of the statistic's device.
        """
        if statistic == "moments":
            dev = algebra_device(stat[0].device)
            mean, second = (t.to(dev, torch.float64) for t in stat)
            cov = covariance(mean, second)
            norm = float(second.diagonal(dim1=-2, dim2=-1).mean())
            return cls(statistic, (mean, second), max(norm, 1e-12), sqrtm_psd(cov),
                       cov.diagonal(dim1=-2, dim2=-1).sum(-1))
        return cls(statistic, stat, max(float(stat[0].pow(2).mean()), 1e-12))

    def to(self, device: "torch.device | str") -> "LayerStyle":
        """A copy for features on ``device`` (moments: on that device's algebra device, float64)."""
        dev = algebra_device(device) if self.statistic == "moments" else torch.device(device)
        move = lambda t: None if t is None else t.to(dev)  # noqa: E731
        return LayerStyle(self.statistic, tuple(move(t) for t in self.stat), self.norm,
                          move(self.cov_sqrt), move(self.cov_trace))
