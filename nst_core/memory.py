"""A memory estimate for one optimisation, before any work starts (used to pick sizes and tiles)."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from .layers import BLOCK_CHANNELS, layer_index, layer_names
from .presets import Settings


def layer_floats(arch: str, hw: Tuple[int, int], deepest: str) -> Dict[str, int]:
    """Floats of each module's output, from the input up to ``deepest``, for one image of size ``hw``."""
    h, w = hw
    sizes = {}
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        c = BLOCK_CHANNELS[int(name[4]) - 1]
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        sizes[name] = c * h * w
    return sizes


def activation_floats(arch: str, hw: Tuple[int, int], deepest: str) -> int:
    """Floats of every module output from the input up to ``deepest`` for one image of size ``hw``."""
    return sum(layer_floats(arch, hw, deepest).values())


def estimate_bytes(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, batch: int = 1,
                   arch: str = "vgg19", statistic: str = "moments",
                   style_layers: "Sequence[str] | None" = None) -> int:
    """Rough peak bytes of one optimisation at output size ``hw`` (fp32).

    Counts the network weights, the activations kept for the backward pass (each module output, or
    with ``settings.checkpoint`` the block outputs, the captured layers and one block recomputed at a
    time; plus their gradients while the backward runs), the image buffers of the optimiser (Adam: 2 +
    averaged iterate; L-BFGS: its bounded history), the style statistics and, for ``moments``, the
    transported features of each style layer (``style_layers``, default all of ``layers``).
    """
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    weights = sum(c * c_in * 9 for c_in, c in _conv_pairs(arch, deepest))
    sizes = layer_floats(arch, hw, deepest)
    if settings.checkpoint:
        kept = sum(v for n, v in sizes.items() if n.startswith("pool") or n in layers)
        block = max(sum(v for n, v in sizes.items() if n[4] == b) for b in {n[4] for n in sizes})
        acts = (kept + 2 * block) * batch
    else:
        acts = 2 * sum(sizes.values()) * batch
    pixels = 3 * hw[0] * hw[1] * batch
    if settings.optimizer == "adam":
        opt = 5 * pixels  # image, grad, exp_avg, exp_avg_sq, averaged iterate
    else:
        opt = (3 + 2 * lbfgs_history(pixels, settings.lbfgs_history, settings.lbfgs_memory_mb)) * pixels
    style = list(layers if style_layers is None else style_layers)
    stats = sum(4 * BLOCK_CHANNELS[int(n[4]) - 1] ** 2 for n in style)
    goals = sum(sizes[n] for n in style) * batch if statistic == "moments" else 0
    return 4 * (weights + acts + opt + stats + goals)


def lbfgs_history(numel: int, requested: int, memory_mb: int) -> int:
    """L-BFGS keeps 2 image-sized fp32 vectors per history entry: bound it by a memory budget."""
    fits = int(memory_mb * 2**20 // (2 * 4 * max(numel, 1)))
    return max(3, min(requested, fits))


def _conv_pairs(arch: str, deepest: str):
    c_in = 3
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        if name.startswith("conv"):
            c = BLOCK_CHANNELS[int(name[4]) - 1]
            yield c_in, c
            c_in = c
