"""Emulate CUDA's TF32 on the CPU: round the fp32 inputs of every matmul-family op to a 10-bit mantissa.

TF32 keeps fp32's exponent and 10 of its 23 mantissa bits. Inside ``with TF32():`` every fp32 input of
mm, bmm, addmm, baddbmm, matmul-like and convolution ops (forward and backward) is rounded to nearest
at that precision before the op runs, as tensor cores do; float64 ops are left alone, as on a GPU. The
network takes torch's own convolution there, as on a GPU (not the CPU's packed oneDNN one, whose
weights are opaque to the rounding).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_core import extractor

aten = torch.ops.aten
MATMUL_OPS = {
    aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default, aten.addbmm.default,
    aten.convolution.default, aten.convolution_backward.default, aten._convolution.default,
    aten.mkldnn_convolution.default,
}


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """Round an fp32 tensor to TF32 (round to nearest, ties away) and return it as fp32."""
    bits = t.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF
    return rounded.view(torch.float32).reshape(t.shape)


def _round(x):
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.is_floating_point():
        return round_tf32(x)
    return x


class TF32(TorchDispatchMode):
    """A dispatch mode: fp32 inputs of matmul-family ops are rounded to TF32; counts what it rounded."""

    def __init__(self) -> None:
        super().__init__()
        self.rounded = 0
        self._packed = None

    def __enter__(self):  # noqa: D105
        self._packed = extractor.packed_conv_available
        extractor.packed_conv_available = lambda: False
        return super().__enter__()

    def __exit__(self, *exc):  # noqa: D105
        extractor.packed_conv_available = self._packed
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in MATMUL_OPS:
            self.rounded += 1
            args = tuple(_round(a) for a in args)
            kwargs = {k: _round(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)
