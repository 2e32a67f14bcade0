"""The hooked classifier: a frozen VGG ``features`` stack whose inner activations are captured by name."""

from __future__ import annotations

import functools
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.autograd.function import once_differentiable

from .image import memory_format_of
from .layers import BLOCK_CHANNELS, layer_index, layer_names, min_input_edge
from .weights import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, LoadedWeights, resolve

POOLINGS = ("max", "avg")
PADDINGS = ("replicate", "zeros")


class ScaledAvgPool2d(nn.AvgPool2d):
    """Average pooling rescaled (×2) so activations keep roughly the magnitude max pooling gives.

    In ceil mode, as the max pooling: a window cut by the edge averages the pixels it holds.
    """

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__(kernel_size=2, stride=2, ceil_mode=True)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x) * self.scale


class EdgePad(torch.autograd.Function):
    """Pads ``[B,C,H,W]`` by one pixel that repeats the edge (``F.pad(x, (1,) * 4, mode="replicate")``).

    Its own backward (the interior of the gradient plus the border summed onto the edge) keeps the
    memory format. On a CPU in bf16 and channels_last, torch's replication pad and its backward made a
    VGG pass 1.5–1.6× as slow as zero padding; this one, 1.15–1.2× (``python -m bench.padding``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fmt = memory_format_of(x)
        out = torch.empty((*x.shape[:-2], x.shape[-2] + 2, x.shape[-1] + 2), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        out[..., 1:-1, 1:-1] = x
        out[..., :1, 1:-1] = x[..., :1, :]
        out[..., -1:, 1:-1] = x[..., -1:, :]
        out[..., :, :1] = out[..., :, 1:2]
        out[..., :, -1:] = out[..., :, -2:-1]
        ctx.fmt = fmt
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        gx = g[..., 1:-1, 1:-1].clone(memory_format=ctx.fmt)
        gx[..., :1, :] += g[..., :1, 1:-1]
        gx[..., -1:, :] += g[..., -1:, 1:-1]
        gx[..., :, :1] += g[..., 1:-1, :1]
        gx[..., :, -1:] += g[..., 1:-1, -1:]
        for r in (0, -1):  # a corner of the pad repeats a corner pixel
            for c in (0, -1):
                gx[..., r, c] += g[..., r, c]
        return gx


def _mkldnn_conv(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], pad: int) -> torch.Tensor:
    """A stride-1 convolution of ``x`` with weights packed by :func:`_pack` (oneDNN), zero padding ``pad``."""
    return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [pad, pad], [1, 1], [1, 1], 1, "none", [None], "")


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout (valid for any input size)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, [0, 0], [1, 1], [1, 1], 1, None)


class _PackedConv(torch.autograd.Function):
    """A 3×3 stride-1 convolution on packed weights; the input's gradient is the convolution of the
    output's gradient with the flipped, transposed kernel (packed too), zero-padded by ``2 − pad``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: torch.Tensor, packed_t: torch.Tensor, bias: torch.Tensor,
                pad: int) -> torch.Tensor:  # noqa: D102
        ctx.packed_t, ctx.pad = packed_t, pad
        with torch.autocast("cpu", enabled=False):
            return _mkldnn_conv(x, packed, bias, pad)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):  # noqa: D102
        with torch.autocast("cpu", enabled=False):
            g = g.contiguous(memory_format=torch.channels_last)
            return _mkldnn_conv(g, ctx.packed_t, None, 2 - ctx.pad), None, None, None, None


#: each FrozenConv2d's packed weights (key, forward, for the input's gradient, bias), kept outside the
#: module: a deep copy or a pickle of the network never meets oneDNN's opaque tensors
PACKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=None)
def packed_conv_available() -> bool:
    """Whether this torch's oneDNN runs :class:`_PackedConv` and gives torch's own convolution (checked
    once on a small case, in bf16 and fp32, outside any autocast: the answer must not depend on where
    the first call comes from)."""
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.autocast("cpu", enabled=False), torch.no_grad():
            return all(_probe(dtype, gen) for dtype in (torch.bfloat16, torch.float32))
    except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN, or an op this torch lacks
        return False


def _probe(dtype: torch.dtype, gen: torch.Generator) -> bool:
    x = torch.rand(1, 5, 7, 6, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 5, 3, 3, generator=gen).to(dtype), torch.randn(4, generator=gen).to(dtype)
    ours = _mkldnn_conv(x, _pack(w), b, 1)
    return ours.dtype == dtype and torch.allclose(ours.float(), F.conv2d(x, w, b, padding=1).float(),
                                                  rtol=1e-2, atol=1e-2)


class FrozenConv2d(nn.Conv2d):
    """A 3×3 convolution of the frozen network, zero-padded; :class:`EdgeConv2d` pads with the edge.

    On a CPU, for channels_last inputs in bf16 or fp32, it runs on weights packed once in oneDNN's
    layout (:class:`_PackedConv`, the same values): torch's convolution reorders the weights at every
    call (under autocast it casts them first), about a seventh of a bf16 step at 256 px. The packed copy
    is remade when the weights change and dropped when the module moves. Elsewhere (GPU, MPS, float64,
    NCHW, ``torch.compile``, trainable weights) it is torch's convolution.
    """

    edge = False  # EdgeConv2d: the input is padded with its edge pixels

    def __init__(self, cin: int, cout: int, padding_mode: str = "zeros") -> None:
        super().__init__(cin, cout, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if (x.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float32) or self.weight.requires_grad
                or torch.compiler.is_compiling() or not x.is_contiguous(memory_format=torch.channels_last)
                or not packed_conv_available()):
            return super().forward(x)
        x = x.to(dtype)
        if self.edge:
            x = EdgePad.apply(x)
        packed, packed_t, bias = self._packed(dtype)
        return _PackedConv.apply(x, packed, packed_t, bias, 0 if self.edge else 1)

    def _packed(self, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, b = self.weight, self.bias
        key = (dtype, w.data_ptr(), w._version, b.data_ptr(), b._version)
        kept = PACKED.get(self)
        if kept is None or kept[0] != key:
            with torch.no_grad():
                wd = w.to(dtype)
                kept = (key, _pack(wd), _pack(wd.transpose(0, 1).flip(2, 3).contiguous()), b.to(dtype))
            PACKED[self] = kept
        return kept[1:]

    def _apply(self, fn, *args, **kwargs):  # .to(), .cpu(), .cuda(): the packed copy would be stale
        PACKED.pop(self, None)
        return super()._apply(fn, *args, **kwargs)


class EdgeConv2d(FrozenConv2d):
    """A 3×3 convolution padded by repeating the edge pixels instead of zeros (:class:`EdgePad`).

    Zero padding makes every layer's border activations unlike the interior's; the optimiser answers
    with a dark or bright frame several pixels wide (deep layers' borders are 8–16 px of the image).
    Under ``torch.compile`` the pad is built from slices (inductor cannot lower a custom backward).
    """

    edge = True

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, "replicate")

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        if torch.compiler.is_compiling():
            x = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
            x = torch.cat([x[..., :, :1], x, x[..., :, -1:]], dim=-1)
        else:
            x = EdgePad.apply(x)
        return F.conv2d(x, weight, bias)


def build_features(arch: str, pooling: str = "max", padding: str = "replicate") -> nn.Sequential:
    """An untrained VGG ``features`` stack (in-place ReLUs, as torchvision; hooks clone conv outputs).

    ``padding``: ``replicate`` pads every convolution with its input's edge (:class:`EdgeConv2d`, no frame
    along the output's borders); ``zeros`` is VGG's own zero padding.

    Every pooling is in ceil mode: a side that is not a multiple of 2 keeps its last row or column (a
    half window) instead of dropping it, so every pixel lies in a cell of every layer, which has
    ⌈H/s⌉×⌈W/s⌉ positions at stride s. (Floor mode, VGG's own, left up to 15 px along the bottom and
    right edges outside every relu5_1 cell, reached only through the convolutions at under half the
    gradient: a light or dark strip there in the output.)
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not supported; choose one of {list(POOLINGS)}")
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not supported; choose one of {list(PADDINGS)}")
    mods: List[nn.Module] = []
    cin = 3
    for name in layer_names(arch):
        if name.startswith("conv"):
            cout = BLOCK_CHANNELS[int(name[4]) - 1]
            mods.append(EdgeConv2d(cin, cout) if padding == "replicate" else FrozenConv2d(cin, cout))
            cin = cout
        elif name.startswith("relu"):
            mods.append(nn.ReLU(inplace=True))
        else:
            mods.append(nn.MaxPool2d(2, 2, ceil_mode=True) if pooling == "max" else ScaledAvgPool2d())
    return nn.Sequential(*mods)


class Extractor(nn.Module):
    """A frozen VGG whose named layers are captured with forward hooks.

    Callers pass RGB images ``[B,3,H,W]`` in 0..1; the extractor applies the preprocessing its
    weights expect. ``extractor(image, ["relu1_1", "relu4_2"])`` returns ``{name: activation}``
    and runs the network only up to the deepest requested layer.
    """

    def __init__(
        self,
        arch: str = "vgg19",
        weights: "str | LoadedWeights" = "original",
        pooling: str = "max",
        padding: str = "replicate",
        seed: int = 0,
    ) -> None:
        super().__init__()
        loaded = weights if isinstance(weights, LoadedWeights) else resolve(weights, arch, seed)
        self.arch = arch
        self.pooling = pooling
        self.padding = padding
        self.weights_name = loaded.name
        self.weights_fingerprint = loaded.fingerprint
        self.preprocessing = loaded.preprocessing
        self.names = layer_names(arch)
        self.features = build_features(arch, pooling, padding)
        self.features.load_state_dict(loaded.state_dict)
        if loaded.preprocessing == "caffe":
            mean, scale = torch.tensor(CAFFE_MEAN_BGR[::-1]), torch.full((3,), 255.0)
        else:
            mean, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        # RGB order; BGR flip happens in preprocess for caffe weights
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def signature(self) -> str:
        """Identifies the network and preprocessing; targets record it to catch mixing extractors."""
        base = f"{self.arch}|{self.weights_name}|{self.pooling}|{self.padding}"
        return f"{base}|{self.weights_fingerprint}" if self.weights_fingerprint else base

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.mean.device

    def train(self, mode: bool = True) -> "Extractor":
        """Always stays in eval mode (the network is frozen)."""
        return super().train(False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 → what the weights expect (BGR 0..255 minus mean, or ImageNet-normalised RGB)."""
        if self.preprocessing == "caffe":
            return (image * self.scale - self.mean).flip(1)
        return (image - self.mean) * self.scale

    def min_edge(self, layers: Sequence[str]) -> int:
        """Smallest image edge the given layers can take."""
        return min_input_edge(self.arch, layers)

    def receptive_max(self, pixels: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        """For each of ``layers``, the maximum of a pixel map ``[B,1,H,W]`` over each position's receptive
        field, on that layer's grid: the map carried through the network's own windows and strides
        (padding, which holds no pixel, is left out)."""
        out: Dict[str, torch.Tensor] = {}
        x = pixels
        for name, module in zip(self.names[: max(layer_index(self.arch, n) for n in layers) + 1], self.features):
            if isinstance(module, nn.Conv2d):
                x = F.max_pool2d(x, module.kernel_size, module.stride, module.padding)
            elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
                x = F.max_pool2d(x, module.kernel_size, module.stride, ceil_mode=module.ceil_mode)
            if name in layers:
                out[name] = x
        return out

    def forward(self, image: torch.Tensor, layers: Sequence[str], checkpoint: bool = False,
                compile: bool = False) -> Dict[str, torch.Tensor]:
        """Capture the activations of ``layers`` for ``image`` (RGB 0..1, ``[B,3,H,W]``).

        The network runs in pieces that end at the captured layers; a forward hook on each such piece
        snapshots its output. ``checkpoint`` also cuts at every pooling layer and recomputes each piece
        in the backward pass instead of keeping its inner activations (less memory, one more forward).
        ``compile`` runs each piece through ``torch.compile`` (compiled once per piece and input shape).
        """
        if not layers:
            return {}
        indices = {layer_index(self.arch, name): name for name in layers}
        store: Dict[str, torch.Tensor] = {}
        x = self.preprocess(image)
        for start, end in self._cuts(sorted(indices), checkpoint, compile):
            piece = self._piece(start, end, compile, checkpoint)
            handle = None
            if end in indices:
                handle = piece.register_forward_hook(
                    _capture(store, indices[end], isinstance(self.features[end], nn.Conv2d)))
            try:
                if checkpoint and torch.is_grad_enabled():
                    x = torch.utils.checkpoint.checkpoint(piece, x, use_reentrant=False)
                else:
                    x = piece(x)
            finally:
                if handle is not None:
                    handle.remove()
        return store

    def _cuts(self, captured: List[int], checkpoint: bool, compile: bool) -> List[Tuple[int, int]]:
        """(start, end) module ranges, inclusive, up to the deepest captured layer."""
        ends = set(captured)
        if checkpoint:
            ends |= {i for i, n in enumerate(self.names[: captured[-1]]) if n.startswith("pool")}
        bounds, start = [], 0
        for end in sorted(ends):
            bounds.append((start, end))
            start = end + 1
        return bounds

    def _piece(self, start: int, end: int, compile: bool, checkpoint: bool) -> nn.Module:
        """Modules ``start..end``; cached when compiled or checkpointed (built once per range)."""
        if not (compile or checkpoint):
            return self.features[start : end + 1]
        cache = self.__dict__.setdefault("_pieces", {})  # a plain dict: kept out of state_dict
        key = (start, end, compile, checkpoint)
        if key not in cache:
            mods = list(self.features[start : end + 1])
            if checkpoint and isinstance(mods[0], nn.ReLU):
                mods[0] = nn.ReLU()  # a recomputed piece must not overwrite its saved input
            piece: nn.Module = nn.Sequential(*mods)
            cache[key] = torch.compile(piece, dynamic=False) if compile else piece
        return cache[key]


def _capture(store: Dict[str, torch.Tensor], name: str, clone: bool):
    # a conv output is cloned: the in-place ReLU that follows would overwrite it
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        store[name] = output.clone() if clone else output

    return hook


def load_extractor(
    arch: str = "vgg19",
    weights: str = "original",
    pooling: str = "max",
    padding: str = "replicate",
    device: "str | torch.device | None" = None,
    seed: int = 0,
) -> Extractor:
    """Build a frozen extractor and move it to ``device`` (default CPU), outside inference mode."""
    with torch.inference_mode(False):
        ext = Extractor(arch, weights, pooling, padding, seed)
        return ext.to(device) if device is not None else ext
