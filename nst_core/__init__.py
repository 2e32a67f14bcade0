"""nst_core: neural style transfer by optimisation through a hooked, frozen VGG classifier.

Standalone PyTorch: it never imports ComfyUI and never touches the network.

    from nst_core import load_extractor, ContentTarget, StyleTarget, optimize, get_preset, load_image
"""

from .color import COLOR_MODES, match_colors
from .extractor import Extractor, load_extractor
from .image import load_image, save_image
from .layers import layer_names
from .optimizer import Cancelled, Progress, optimize, pyramid_sizes
from .presets import DEFAULT_PRESET, PRESETS, Preset, Settings, get_preset
from .targets import ContentTarget, StyleTarget
from .recipes import reconstruct, texture, transfer

__version__ = "0.1.0"

__all__ = [
    "COLOR_MODES", "Cancelled", "ContentTarget", "DEFAULT_PRESET", "Extractor", "PRESETS", "Preset",
    "Progress", "Settings", "StyleTarget", "get_preset", "layer_names", "load_extractor", "load_image",
    "match_colors", "optimize", "pyramid_sizes", "reconstruct", "save_image", "texture", "transfer",
]
