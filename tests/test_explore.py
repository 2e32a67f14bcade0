"""The layer explorer (nst_core.explore): grid geometry, labels, callbacks, the depth trend, the CLI."""

from __future__ import annotations

import pytest
import torch

from nst_core import explore as ex
from nst_core.cli import main
from nst_core.image import fit_long_edge, load_image, resize, save_image
from nst_core.optimizer import Cancelled

SMALL = dict(cell=32, steps=2)


def plan(content_hw, cell: int, style: bool = True):
    """The (row, col, label, (h, w)) of each cell the explorer makes with the default layers."""
    out = [(0, i, f"content {n}", fit_long_edge(content_hw, cell)) for i, n in enumerate(ex.CONTENT_LAYERS)]
    if style:
        out += [(1, k - 1, "style " + "+".join(ex.STYLE_LAYERS[:k]), (cell, cell)) for k in range(1, 6)]
    return out


def crop(grid: torch.Tensor, box) -> torch.Tensor:
    y, x, h, w = box
    return grid[0, :, y:y + h, x:x + w]


def test_grid_has_two_rows_of_five_labelled_cells(rand_ext, images):
    seen, grids = [], []
    grid = ex.explore(rand_ext, images.gradient(24, 32), images.checkerboard(48, 48), progress=seen.append,
                      preview=grids.append, **SMALL)
    cells = plan((24, 32), 32)
    (h, w), boxes = ex.layout(cells, 32)
    assert grid.shape == (1, 3, h, w)
    strips = [ex.strip_height([c[2] for c in cells if c[0] == r], 32) for r in range(2)]
    assert w == 5 * 32 + 6 * ex.GAP and h == strips[0] + 24 + strips[1] + 32 + 3 * ex.GAP  # cells + label strips
    assert grid.min() >= 0 and grid.max() <= 1
    for (row, col, label, _), (strip, image) in zip(cells, boxes):
        assert crop(grid, strip).std() > 0.05, label  # text was drawn on the strip
        assert crop(grid, image).std() > 0.01, label  # an image, not background
    # progress over all cells, monotone, ending at the total; a preview of the grid after each cell
    assert [p.step for p in seen] == sorted(p.step for p in seen)
    assert seen[-1].step == seen[-1].total == 10 * 2 and seen[-1].cells == 10
    assert {p.label for p in seen} == {c[2] for c in cells}
    assert len(grids) == 10 and all(g.shape == grid.shape for g in grids)
    assert crop(grids[0], boxes[1][1]).std() == 0  # a cell not made yet is blank
    assert torch.equal(grids[-1], grid)  # the last preview, which a node keeps showing, is the whole grid


def test_without_a_style_there_is_one_row(rand_ext, images):
    grid = ex.explore(rand_ext, images.gradient(24, 32), layers="relu1_1,relu3_1", **SMALL)
    (h, w), _ = ex.layout([(0, 0, "content relu1_1", (24, 32)), (0, 1, "content relu3_1", (24, 32))], 32)
    assert grid.shape == (1, 3, h, w) and w == 2 * 32 + 3 * ex.GAP


def test_cancel_stops_the_explorer(rand_ext, images):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        ex.explore(rand_ext, images.gradient(24, 32), cancel=cancel, **SMALL)


@pytest.mark.parametrize("kw, message", [
    (dict(cell=8), "cell .* from 16 to 1024; got 8"),
    (dict(steps=0), r"steps .* ≥ 1; got 0"),
    (dict(layers="relu9_9"), "unknown layer 'relu9_9'"),
])
def test_bad_arguments_name_the_input(rand_ext, images, kw, message):
    with pytest.raises(ValueError, match=message):
        ex.explore(rand_ext, images.gradient(24, 32), **{**SMALL, **kw})


def test_labels_wrap_to_the_cell_width():
    lines = ex.wrap_label("style relu1_1+relu2_1+relu3_1+relu4_1+relu5_1", 60)
    assert len(lines) > 2 and "".join(lines).replace(" ", "") == "stylerelu1_1+relu2_1+relu3_1+relu4_1+relu5_1"
    font = ex._font()
    assert all(font.getlength(line) <= 60 for line in lines)


def test_cli_explore_writes_the_grid(images, tmp_path):
    save_image(images.gradient(24, 32), str(tmp_path / "c.png"))
    save_image(images.checkerboard(48, 48), str(tmp_path / "s.png"))
    out = tmp_path / "grid.png"
    code = main(["explore", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"), "--size", "32",
                 "--steps", "2", "--weights", "random", "--device", "cpu", "--quiet", "-o", str(out)])
    assert code == 0
    grid = load_image(str(out))
    assert grid.shape[-2:] == ex.layout(plan((24, 32), 32), 32)[0]


def test_cli_explore_bad_size_is_one_line(images, tmp_path, capsys):
    save_image(images.gradient(24, 32), str(tmp_path / "c.png"))
    code = main(["explore", str(tmp_path / "c.png"), "--size", "8", "--weights", "random", "--device", "cpu",
                 "-o", str(tmp_path / "g.png")])
    assert code == 2 and "cell" in capsys.readouterr().err


@pytest.mark.slow
def test_reconstruction_error_grows_with_depth(real_ext, data_image):
    """Real weights, 96 px cells, 60 L-BFGS steps: the content row's error against the photo."""
    content = load_image(str(data_image("shipwreck.jpg")))
    cell, steps = 96, 60
    grid = ex.explore(real_ext, content, cell=cell, steps=steps)
    cells = plan(tuple(content.shape[-2:]), cell, style=False)
    size, boxes = ex.layout(cells, cell)
    assert grid.shape[-2:] == size
    target = resize(content, cells[0][3])[0]
    errors = [float((crop(grid, image) - target).pow(2).mean()) for _, image in boxes]
    print("reconstruction MSE per layer:", dict(zip(ex.CONTENT_LAYERS, [round(e, 4) for e in errors])))
    assert errors[0] < 0.5 * errors[-1], errors
    assert sum(b > a for a, b in zip(errors, errors[1:])) >= 3, errors  # monotone, or nearly
