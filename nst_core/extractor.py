"""The hooked classifier: a frozen VGG ``features`` stack whose inner activations are captured by name."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from .layers import BLOCK_CHANNELS, layer_index, layer_names, min_input_edge
from .weights import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, LoadedWeights, resolve

POOLINGS = ("max", "avg")
PADDINGS = ("replicate", "zeros")


class ScaledAvgPool2d(nn.AvgPool2d):
    """Average pooling rescaled (×2) so activations keep roughly the magnitude max pooling gives."""

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__(kernel_size=2, stride=2)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x) * self.scale


def build_features(arch: str, pooling: str = "max", padding: str = "replicate") -> nn.Sequential:
    """An untrained VGG ``features`` stack (in-place ReLUs, as torchvision; hooks clone conv outputs)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not supported; choose one of {list(POOLINGS)}")
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not supported; choose one of {list(PADDINGS)}")
    mods: List[nn.Module] = []
    cin = 3
    for name in layer_names(arch):
        if name.startswith("conv"):
            cout = BLOCK_CHANNELS[int(name[4]) - 1]
            # replicate padding on the first conv reduces edge artefacts
            pm = padding if name == "conv1_1" else "zeros"
            mods.append(nn.Conv2d(cin, cout, 3, padding=1, padding_mode=pm))
            cin = cout
        elif name.startswith("relu"):
            mods.append(nn.ReLU(inplace=True))
        else:
            mods.append(nn.MaxPool2d(2, 2) if pooling == "max" else ScaledAvgPool2d())
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

    def forward(self, image: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Capture the activations of ``layers`` for ``image`` (RGB 0..1, ``[B,3,H,W]``)."""
        if not layers:
            return {}
        indices = {name: layer_index(self.arch, name) for name in layers}
        store: Dict[str, torch.Tensor] = {}
        handles = []
        for name, idx in indices.items():
            module = self.features[idx]
            handles.append(module.register_forward_hook(_capture(store, name, isinstance(module, nn.Conv2d))))
        try:
            x = self.preprocess(image)
            for module in self.features[: max(indices.values()) + 1]:
                x = module(x)
        finally:
            for h in handles:
                h.remove()
        return store


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
