"""ComfyUI nodes over nst_core: thin classes that validate, convert, call the engine and convert back."""

from . import comfy_bridge
from .color_node import MatchColorsNode
from .explore_node import LayerExplorerNode
from .extractor_node import LoadVGGExtractor
from .frames_node import StylizeFramesNode
from .optimize_node import StyleTransferOptimizeNode
from .target_nodes import ContentTargetNode, GramStyleTargetNode

comfy_bridge.register_vgg_folder()

NODE_CLASS_MAPPINGS = {
    "NST_LoadVGGExtractor": LoadVGGExtractor,
    "NST_ContentTarget": ContentTargetNode,
    "NST_GramStyleTarget": GramStyleTargetNode,
    "NST_StyleTransferOptimize": StyleTransferOptimizeNode,
    "NST_MatchColors": MatchColorsNode,
    "NST_LayerExplorer": LayerExplorerNode,
    "NST_StylizeFrames": StylizeFramesNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "NST_LoadVGGExtractor": "NST Load VGG Extractor",
    "NST_ContentTarget": "NST Content Target",
    "NST_GramStyleTarget": "NST Style Target",
    "NST_StyleTransferOptimize": "NST Style Transfer Optimize",
    "NST_MatchColors": "NST Match Colors",
    "NST_LayerExplorer": "NST Layer Explorer",
    "NST_StylizeFrames": "NST Stylize Frames",
}
