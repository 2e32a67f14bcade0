"""Paper names of the VGG ``features`` modules (``conv1_1``, ``relu1_1``, …, ``pool5``)."""

from __future__ import annotations

import difflib
from typing import Dict, List, Sequence

#: Convolutions per block for each supported architecture.
BLOCKS: Dict[str, Sequence[int]] = {
    "vgg19": (2, 2, 4, 4, 4),
    "vgg16": (2, 2, 3, 3, 3),
}

#: Output channels per block (the same for VGG16 and VGG19).
BLOCK_CHANNELS = (64, 128, 256, 512, 512)


def _check_arch(arch: str) -> None:
    if arch not in BLOCKS:
        raise ValueError(f"architecture {arch!r} is not supported; choose one of {sorted(BLOCKS)}")


def layer_names(arch: str = "vgg19") -> List[str]:
    """All module names of ``arch``'s ``features`` stack, in order (index = module position)."""
    _check_arch(arch)
    names: List[str] = []
    for block, convs in enumerate(BLOCKS[arch], start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def layer_index(arch: str, name: str) -> int:
    """Position of layer ``name`` in ``arch``'s ``features``; a clear error suggests the nearest name."""
    names = layer_names(arch)
    if not isinstance(name, str) or name not in names:
        near = difflib.get_close_matches(str(name).lower(), names, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"unknown layer {name!r} for {arch}.{hint} Layers are named like conv1_1, relu4_2, pool5."
        )
    return names.index(name)


def layer_channels(name: str) -> int:
    """Channel count of a layer's output (from its block number)."""
    return BLOCK_CHANNELS[int(name[4]) - 1]


def pools_before(arch: str, name: str) -> int:
    """How many pooling layers an input passes through before reaching ``name`` (inclusive)."""
    idx = layer_index(arch, name)
    return sum(1 for n in layer_names(arch)[: idx + 1] if n.startswith("pool"))


def min_input_edge(arch: str, layers: Sequence[str]) -> int:
    """The largest stride among ``layers`` (16 for relu5_1): the smallest image edge that fills one cell of
    each, required of images and used as the tiles' alignment."""
    if not layers:
        return 1
    return 2 ** max(pools_before(arch, n) for n in layers)


def parse_layers(spec: "str | Sequence[str]", arch: str = "vgg19") -> List[str]:
    """Turn ``"relu1_1,relu2_1"`` or a list into a validated list of layer names."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.replace(";", ",").split(",")]
        items = [s for s in items if s]
    else:
        items = [str(s).strip() for s in spec]
    if not items:
        raise ValueError("the layer list is empty; give at least one layer, e.g. 'relu1_1,relu2_1,relu3_1'")
    for n in items:
        layer_index(arch, n)
    return items
