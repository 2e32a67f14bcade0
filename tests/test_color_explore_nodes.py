"""NST Match Colors, NST Layer Explorer and the Optimize node's ``colors``, without a server."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from nst_core import color
from nst_core import explore as ex

BUNDLED = "original VGG19 (bundled)"


@pytest.fixture(scope="module")
def extractor(nodes):
    with torch.inference_mode():
        return nodes["NST_LoadVGGExtractor"].load(BUNDLED, "vgg19", "max", "replicate")[0]


def smooth_image(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,3] of smooth, correlated colours."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, 3, 5, 7, generator=gen), size=(h, w), mode="bilinear",
                                           align_corners=False)
    mix = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])
    return (torch.einsum("ij,bjhw->bihw", mix, base) * 0.6 + 0.2).movedim(1, -1).contiguous()


def test_the_new_nodes_are_registered(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["NST_MatchColors"] == "NST Match Colors"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["NST_LayerExplorer"] == "NST Layer Explorer"
    spec = pack.NODE_CLASS_MAPPINGS["NST_StyleTransferOptimize"].INPUT_TYPES()
    # after the older inputs (later widgets append after it), and optional: old UI workflows (widget
    # order) and API prompts (no colors) stay valid
    assert list(spec["optional"])[:4] == ["content_target", "style_target", "init_image", "colors"]
    assert "colors" not in spec["required"]
    assert spec["optional"]["colors"][0] == ["style", "luminance", "match"]
    assert spec["optional"]["colors"][1]["default"] == "style"


def test_match_colors_node_converts_layouts(nodes):
    image = smooth_image(2, 30, 44, seed=1)  # [B,H,W,C], H != W
    reference = smooth_image(1, 36, 36, seed=2).flip(-1)
    with torch.inference_mode():
        out = nodes["NST_MatchColors"].match(image, reference)[0]
    assert out.shape == (2, 30, 44, 3) and out.dtype == torch.float32 and out.is_contiguous()
    expected = color.match_colors(image.movedim(-1, 1), reference.movedim(-1, 1)).movedim(1, -1)
    assert (out - expected).abs().max() < 1e-6
    for i in range(2):  # each image of the batch now has the reference's colour statistics
        mean, cov = color.color_moments(out[i:i + 1].movedim(-1, 1))
        rmean, rcov = color.color_moments(reference.movedim(-1, 1))
        assert (mean - rmean).abs().max() < 0.01
        assert torch.linalg.norm(cov - rcov) / torch.linalg.norm(rcov) < 0.05


def _optimize(nodes, ext, **kw):
    args = dict(schedule="fast", steps=2, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=48,
                init="auto", init_seed=0)
    args.update(kw)
    return nodes["NST_StyleTransferOptimize"].run(ext, **args)[0]


def _targets(nodes, ext, content, style):
    ct = nodes["NST_ContentTarget"].build(ext, content, "relu4_2", 1.0)[0]
    st = nodes["NST_GramStyleTarget"].build(ext, style, layers="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
                                            custom_layers="", layer_weights="", statistic="moments",
                                            style_scale=1.0)[0]
    return ct, st


def test_optimize_colors_luminance_keeps_the_content_chroma(nodes, extractor):
    content = smooth_image(1, 36, 48, seed=3)
    style = torch.rand(1, 48, 48, 3)
    with torch.inference_mode():
        ct, st = _targets(nodes, extractor, content, style)
        out = _optimize(nodes, extractor, content_target=ct, style_target=st, colors="luminance", size=0)
        plain = _optimize(nodes, extractor, content_target=ct, style_target=st, colors="style", size=0)
    assert out.shape == plain.shape == (1, 36, 48, 3)
    chroma = lambda im: color.rgb_to_ycbcr(im.movedim(-1, 1))[:, 1:]  # noqa: E731
    assert float((chroma(out) - chroma(content)).abs().mean()) < 0.01
    assert torch.equal(ct.image, content.movedim(-1, 1))  # the linked target is not changed


def test_optimize_colors_match_runs_and_needs_a_content_target(nodes, extractor):
    with torch.inference_mode():
        ct, st = _targets(nodes, extractor, smooth_image(1, 36, 48, seed=4), torch.rand(1, 48, 48, 3))
        out = _optimize(nodes, extractor, content_target=ct, style_target=st, colors="match")
        assert out.shape == (1, 36, 48, 3)
        with pytest.raises(ValueError, match="no content target"):
            _optimize(nodes, extractor, style_target=st, colors="luminance")


def test_layer_explorer_node_gives_the_grid_and_reports_progress(nodes, extractor, pack, monkeypatch):
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    updates, previews = [], []

    class Bar:  # records what ComfyUI's progress bar would get
        def __init__(self, total):
            self.total = total

        def update(self, step, preview=None, max_size=512):
            updates.append((step, self.total, preview is not None))
            if preview is not None:
                previews.append(preview)

    monkeypatch.setattr(bridge, "ProgressBar", Bar)
    content = torch.rand(1, 30, 40, 3)
    with torch.inference_mode():
        grid = nodes["NST_LayerExplorer"].run(extractor, content, 32, 2, style=torch.rand(1, 40, 40, 3))[0]
    cells = [(0, i, f"content {n}", (24, 32)) for i, n in enumerate(ex.CONTENT_LAYERS)] + \
        [(1, k - 1, "style " + "+".join(ex.STYLE_LAYERS[:k]), (32, 32)) for k in range(1, 6)]
    (h, w), _ = ex.layout(cells, 32)
    assert grid.shape == (1, h, w, 3) and grid.is_contiguous()
    assert updates[-1][:2] == (20, 20)
    assert sum(p for *_, p in updates) == 10  # the grid so far, after each cell
    # the node keeps showing its last preview: the whole grid, every cell filled
    last = torch.from_numpy(np.array(previews[-1])).float() / 255
    assert updates[-1][2] and last.shape == grid.shape[1:]
    assert (last - grid[0]).abs().max() <= 1 / 255 + 1e-6
    one_row = nodes["NST_LayerExplorer"].run(extractor, content, 32, 1)[0]
    assert one_row.shape[1] < h


def test_layer_explorer_node_stops_on_cancel(nodes, extractor, pack, monkeypatch):
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise Interrupted()
        return False

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    with torch.inference_mode(), pytest.raises(Interrupted):
        nodes["NST_LayerExplorer"].run(extractor, torch.rand(1, 30, 40, 3), 32, 50)
    assert len(calls) == 3


def test_layer_explorer_node_asks_comfyui_for_the_memory_of_its_largest_cell(nodes, extractor, pack, monkeypatch):
    """As Optimize does: ComfyUI offloads its models until the explorer's largest cell fits."""
    bridge = sys.modules[pack.__name__ + ".nodes.comfy_bridge"]
    explore = sys.modules[pack.__name__ + ".nst_core.explore"]
    memory = sys.modules[pack.__name__ + ".nst_core.memory"]
    asked = []
    monkeypatch.setattr(bridge, "make_room", lambda n, device: asked.append((n, str(device))))
    content = torch.rand(1, 30, 40, 3)
    with torch.inference_mode():
        nodes["NST_LayerExplorer"].run(extractor, content, 32, 1, style=torch.rand(1, 40, 40, 3))
        nodes["NST_LayerExplorer"].run(extractor, content, 64, 1)
    with_style = explore.peak_bytes((30, 40), 32, 1, with_style=True)
    without = explore.peak_bytes((30, 40), 64, 1, with_style=False)
    assert asked == [(memory.required_bytes(with_style), "cpu"), (memory.required_bytes(without), "cpu")]
    weights = sum(p.numel() * p.element_size() for p in extractor.parameters())
    assert with_style > weights  # the network and the cells' activations
