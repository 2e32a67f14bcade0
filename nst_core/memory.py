"""A memory estimate for one optimisation, before any work starts (used to pick sizes and tiles)."""

from __future__ import annotations

from typing import Sequence, Tuple

from .layers import BLOCK_CHANNELS, layer_index, layer_names
from .presets import Settings


def activation_floats(arch: str, hw: Tuple[int, int], deepest: str) -> int:
    """Floats of every module output from the input up to ``deepest`` for one image of size ``hw``."""
    h, w = hw
    total = 0
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        c = BLOCK_CHANNELS[int(name[4]) - 1]
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        total += c * h * w
    return total


def estimate_bytes(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, batch: int = 1,
                   arch: str = "vgg19") -> int:
    """Rough peak bytes of one optimisation at output size ``hw`` (fp32).

    Counts the network weights, the activations kept for the backward pass (each module output, plus
    its gradient while the backward runs), the image buffers of the optimiser (Adam: 2 + averaged
    iterate; L-BFGS: its bounded history) and the style statistics.
    """
    from .optimize import lbfgs_history  # late import: optimize imports presets too

    deepest = max(layers, key=lambda n: layer_index(arch, n))
    weights = sum(c * c_in * 9 for c_in, c in _conv_pairs(arch, deepest))
    acts = 2 * activation_floats(arch, hw, deepest) * batch
    pixels = 3 * hw[0] * hw[1] * batch
    if settings.optimizer == "adam":
        opt = 5 * pixels  # image, grad, exp_avg, exp_avg_sq, averaged iterate
    else:
        opt = (3 + 2 * lbfgs_history(pixels, settings.lbfgs_history, settings.lbfgs_memory_mb)) * pixels
    stats = sum(4 * BLOCK_CHANNELS[int(n[4]) - 1] ** 2 for n in layers)
    return 4 * (weights + acts + opt + stats)


def _conv_pairs(arch: str, deepest: str):
    c_in = 3
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        if name.startswith("conv"):
            c = BLOCK_CHANNELS[int(name[4]) - 1]
            yield c_in, c
            c_in = c
