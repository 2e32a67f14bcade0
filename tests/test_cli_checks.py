"""nst_core.cli_checks: a bad command line is refused before the VGG is loaded, with one line, and leaves
nothing behind.

Each case used to fail late: after torch and the VGG were loaded (a missing or damaged input), after the
whole optimisation (an output PIL cannot write, which also left an empty folder), or in the allocator
(``--size 100000``: 90 GB, out of memory, exit 3). A tripwire on the weights loader proves "before the
network"; a listing of the working folder proves "nothing left behind".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

import nst_core.cli_checks as checks
import nst_core.extractor as extractor_module
from nst_core.cli import build_parser, main
from nst_core.cli_checks import check_command, pil_can_write


class NetworkLoaded(AssertionError):
    """The VGG was loaded although the command line should have been refused first."""


@pytest.fixture()
def tripwire(monkeypatch):
    """Loading any VGG weights (every path to a network goes through ``extractor.resolve``) fails the test."""

    def loaded(*args, **kwargs):
        raise NetworkLoaded(f"the VGG weights were loaded ({args}) before the command line was refused")

    monkeypatch.setattr(extractor_module, "resolve", loaded)


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """A working folder with a content photo, a style image and a truncated JPEG; the cwd for relative -o."""
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(tmp_path / "content.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "style.jpg", quality=90)
    data = (tmp_path / "style.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "frames").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _listing(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(argv: List[str], work: Path, capsys) -> str:
    """Run ``nst argv``: exit 2, one line, nothing written; returns the line."""
    before = _listing(work)
    code = main(argv + ["--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("nst: error: "), captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    assert _listing(work) == before, "a refused run left something behind"
    return lines[0]


STILL = ["transfer", "content.png", "style.jpg", "--weights", "random"]


@pytest.mark.parametrize("argv, words", [
    # inputs: existence, readability, size — named in the message
    (["transfer", "missing.png", "style.jpg", "-o", "out.png"], ["content image not found", "missing.png"]),
    (["transfer", "content.png", "style.jpg", "nope.jpg", "-o", "out.png"], ["style image not found", "nope.jpg"]),
    (["transfer", "content.png", "frames", "-o", "out.png"], ["style image is a folder", "frames"]),
    (["transfer", "content.png", "empty.jpg", "-o", "out.png"], ["'empty.jpg' is an empty file (0 bytes)"]),
    (["transfer", "content.png", "notes.txt", "-o", "out.png"], ["'notes.txt' is not an image file PIL can read"]),
    (["transfer", "truncated.jpg", "style.jpg", "-o", "out.png"], ["'truncated.jpg'", "truncated"]),
    (["texture", "truncated.jpg", "-o", "out.png"], ["'truncated.jpg' cannot be read", "truncated"]),
    (STILL + ["-o", "out.png", "--style-mask", "sky.png"], ["style mask not found", "sky.png"]),
    (STILL + ["-o", "out.png", "--content-mask", "face.png"], ["content mask not found", "face.png"]),
    (STILL + ["-o", "out.png", "--init", "start.png"], ["--init 'start.png' is neither one of"]),
    (STILL + ["-o", "out.png", "--weights", "vgg.pth"], ["--weights file not found", "vgg.pth"]),
    (["reconstruct", "content.png", "-o", "out.png", "--layer", "relu9_1"], ["unknown layer 'relu9_1'"]),
    (STILL + ["-o", "out.png", "--content-layer", "relu4_3x"], ["Did you mean"]),
    (["explore", "missing.png", "-o", "grid.png"], ["content image not found"]),
    (["explore", "content.png", "-o", "grid.png", "--style-layers", "relu1_1,relu6_1"], ["unknown layer 'relu6_1'"]),
    (["explore", "content.png", "--style", "truncated.jpg", "-o", "grid.png"], ["'truncated.jpg'", "truncated"]),
    # the output: an extension PIL writes, a folder that can be made
    (STILL + ["-o", "result"], ["-o 'result' has no file extension", "result.png"]),
    (STILL + ["-o", "result.txt"], ["PIL cannot write an RGB image as .txt", ".png"]),
    (STILL + ["-o", "new/deeper/result.txt"], ["PIL cannot write"]),
    (STILL + ["-o", "frames"], ["-o 'frames' is a folder", "out.png"]),
    (STILL + ["-o", "notes.txt/out.png"], ["cannot make the folder", "is a file"]),
    (["texture", "style.jpg", "-o", "result.xbm"], ["PIL cannot write an RGB image as .xbm"]),
    (["explore", "content.png", "-o", "grid"], ["-o 'grid' has no file extension"]),
    # the size: --max-size, not an allocation of 90 GB
    (STILL + ["-o", "out.png", "--size", "100000"], ["--size 100000 is above the limit of 4096 px", "--max-size"]),
    (["texture", "style.jpg", "-o", "out.png", "--size", "5000"], ["--max-size"]),
    (STILL + ["-o", "out.png", "--size", "600", "--max-size", "512"], ["above the limit of 512 px"]),
    (["explore", "content.png", "-o", "grid.png", "--size", "5000"], ["from 16 to 1024", "5000"]),
    # frames and folders
    (["frames", "clip.mp4", "style.jpg", "-o", "out"], ["frames input not found", "clip.mp4"]),
    (["frames", "content.png", "style.jpg", "-o", "out"], ["neither a folder nor a video file"]),
    (["frames", "frames", "style.jpg", "-o", "out"], ["frames folder 'frames' holds no images"]),
    (["transfer", "frames", "style.jpg", "-o", "out"], ["content folder 'frames' holds no images"]),
])
def test_a_bad_command_line_is_refused_before_the_network(work, tripwire, capsys, argv, words):
    line = _refused(argv, work, capsys)
    for w in words:
        assert w in line, line


@pytest.fixture()
def a_frame(work):
    Image.open(work / "content.png").save(work / "frames" / "f000.png")
    return work


@pytest.mark.parametrize("argv, words", [
    (["frames", "frames", "style.jpg", "-o", "styled.txt"], ["names a .txt file", "a folder or a video file"]),
    (["frames", "frames", "style.jpg", "-o", "notes.txt"], ["-o 'notes.txt' is a file"]),
    (["frames", "frames", "style.jpg", "-o", "out", "--size", "8000"], ["--max-size"]),
    (["transfer", "frames", "style.jpg", "-o", "styled.pdf"], ["names a .pdf file", "give a folder name"]),
])
def test_frames_and_folder_outputs_are_checked_first(a_frame, tripwire, capsys, argv, words):
    line = _refused(argv, a_frame, capsys)
    for w in words:
        assert w in line, line


def test_a_video_output_without_pyav_is_refused_before_any_frame(a_frame, tripwire, capsys, monkeypatch):
    """Today the missing PyAV shows only when the video is written, after every frame is made."""
    monkeypatch.setattr(checks, "installed", lambda module: module != "av")
    line = _refused(["frames", "frames", "style.jpg", "-o", "styled.mp4"], a_frame, capsys)
    assert "PyAV" in line and "pip install" in line


def test_frames_without_opencv_are_refused_before_the_first_frame(a_frame, tripwire, capsys, monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda module: module != "cv2")
    line = _refused(["frames", "frames", "style.jpg", "-o", "out"], a_frame, capsys)
    assert "OpenCV" in line
    assert check_command(build_parser().parse_args(  # independent frames need no optical flow
        ["frames", "frames", "style.jpg", "-o", "out", "--temporal-weight", "0", "--device", "cpu"])) is None


@pytest.mark.parametrize("argv", [["frames", "frames", "style.jpg", "-o", "out", "--ray", "auto"],
                                  ["transfer", "frames", "style.jpg", "-o", "out", "--ray", "local"]])
def test_ray_without_ray_is_refused_before_a_manifest_is_written(a_frame, tripwire, capsys, monkeypatch, argv):
    """Issue 16: --ray without Ray used to leave a manifest in a new output folder."""
    monkeypatch.setattr(checks, "installed", lambda module: module != "ray")
    line = _refused(argv, a_frame, capsys)
    assert "pip install ray" in line and 'pip install ".[ray]"' in line


def test_an_unavailable_device_is_refused_before_a_frames_manifest_is_written(a_frame, tripwire, capsys,
                                                                               monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = _refused(["frames", "frames", "style.jpg", "-o", "out", "--device", "cuda"], a_frame, capsys)
    assert "CUDA is not available" in line


def test_a_good_command_line_passes_and_writes_nothing(a_frame):
    work = a_frame
    before = _listing(work)
    for argv in (STILL + ["-o", "new/folder/out.jpg", "--init", "content.png", "--size", "4096", "--device", "cpu"],
                 ["texture", "style.jpg", "-o", "t.webp", "--size", "8000", "--max-size", "8000", "--device", "cpu"],
                 ["explore", "content.png", "--style", "style.jpg", "-o", "g.png", "--device", "cpu"],
                 ["transfer", "frames", "style.jpg", "-o", "styled", "--device", "cpu"]):
        assert check_command(build_parser().parse_args(argv)) is None, argv
    assert _listing(work) == before


def test_a_raised_max_size_reaches_the_engine(work, monkeypatch):
    """--max-size 5000 --size 4500 passes the CLI and the engine's own limit (Settings.max_size)."""
    import nst_core.cli as cli

    seen = {}

    def fake_texture(extractor, styles, preset, size, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "texture", fake_texture)
    monkeypatch.setattr(cli, "load_extractor", lambda *a, **k: None)
    assert main(["texture", "style.jpg", "-o", "t.png", "--size", "4500", "--max-size", "5000", "--device", "cpu",
                 "--quiet", "--tile", "off"]) == 2
    assert seen["max_size"] == 5000


def test_the_truncated_image_is_named_when_it_is_read(work):
    """The header of a truncated JPEG is fine; decoding fails, and the message names the file."""
    from nst_core.image import load_image, load_mask, probe_image

    assert probe_image(str(work / "truncated.jpg")) == (40, 40)
    for load in (load_image, load_mask):
        with pytest.raises(ValueError, match=r"truncated\.jpg.*truncated or damaged"):
            load(str(work / "truncated.jpg"))


@pytest.mark.parametrize("ext, ok", [(".png", True), (".JPG", True), (".webp", True), (".tif", True),
                                     (".txt", False), ("", False), (".h5", False), (".xbm", False)])
def test_pil_can_write(ext, ok):
    assert pil_can_write(ext) is ok


def test_a_refused_run_is_fast_compared_with_a_run(work, capsys):
    """In-process (torch already imported) a refusal takes milliseconds; the shortest real run takes far longer."""
    import time

    t0 = time.perf_counter()
    assert main(STILL + ["-o", "result.txt", "--quiet"]) == 2
    refused = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert main(STILL + ["-o", "out.png", "--quiet", "--size", "32", "--steps", "1", "--device", "cpu",
                         "--preset", "fast"]) == 0
    ran = time.perf_counter() - t0
    assert refused < ran / 5, (refused, ran)
    assert os.path.isfile(work / "out.png")
