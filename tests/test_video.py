"""Video and folder I/O (nst_core.video) and ``nst frames`` with video files on either side."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from nst_core.cli import main
from nst_core.video import (at_size, from_u8, is_video_path, list_images, open_frames, read_video, to_u8,
                            write_video)

from conftest import require_extra, stripes_image

av = require_extra("av", "video", "video files (PyAV)")


def moving_frames(n: int = 5, h: int = 32, w: int = 48):
    """A bright square moving right over a gradient: smooth enough to survive lossy coding."""
    ys, xs = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        img = np.stack([xs * 4, ys * 6, np.full_like(xs, 90)], -1).astype(np.uint8)
        img[8:20, 6 + 4 * t:18 + 4 * t] = (240, 240, 40)
        out.append(img)
    return out


def test_u8_round_trip_and_resize():
    f = moving_frames(1)[0]
    assert np.array_equal(to_u8(from_u8(f)), f)
    assert at_size(f, 24).shape == (16, 24, 3)
    assert at_size(f, None) is f
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        from_u8(f.astype(np.float32))


def test_folder_is_read_in_name_order_with_numbers_by_value(tmp_path):
    for name, value in (("f10.png", 10), ("f2.png", 2), ("f1.png", 1), ("notes.txt", 0)):
        if name.endswith(".png"):
            Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(tmp_path / name)
        else:
            (tmp_path / name).write_text("x")
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["f1.png", "f2.png", "f10.png"]
    src = open_frames(str(tmp_path))
    assert src.count == 3 and src.fps == 25
    assert [int(f[0, 0, 0]) for f in src.frames()] == [1, 2, 10]


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm", ".avi"])
def test_write_then_read_a_video(tmp_path, ext):
    frames = moving_frames(5)
    path = str(tmp_path / f"clip{ext}")
    assert write_video(path, frames, fps=12) == 5
    src = open_frames(path)
    assert src.count == 5
    back = list(read_video(path))
    assert len(back) == 5 and back[0].shape == (32, 48, 3)
    assert float(np.abs(back[2].astype(float) - frames[2]).mean()) < 12  # lossy, but the same picture
    assert src.fps == Fraction(12)


def test_odd_sizes_lose_their_last_row_and_column(tmp_path):
    path = str(tmp_path / "odd.mp4")
    write_video(path, [np.zeros((33, 47, 3), np.uint8)] * 2)
    assert next(read_video(path)).shape == (32, 46, 3)


def test_bad_video_inputs(tmp_path):
    assert is_video_path("a.MP4") and not is_video_path("a.png")
    with pytest.raises(FileNotFoundError):
        open_frames(str(tmp_path / "missing.mp4"))
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(ValueError, match="not a video file"):
        open_frames(str(fake))
    with pytest.raises(ValueError, match="no frames"):
        write_video(str(tmp_path / "empty.mp4"), [])
    with pytest.raises(ValueError, match="one size"):
        write_video(str(tmp_path / "mixed.mp4"), [np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)])


ARGS = ["--size", "48", "--steps", "2", "--weights", "random", "--quiet", "--preset", "fast",
        "--content-layer", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--device", "cpu"]


def test_cli_frames_from_a_video_to_a_video_and_to_a_folder(tmp_path):
    require_extra("cv2", "video", "frames (OpenCV's optical flow)")
    src = str(tmp_path / "in.mp4")
    write_video(src, moving_frames(4), fps=10)
    style = tmp_path / "style.png"
    Image.fromarray(to_u8(stripes_image(48, 48))).save(style)

    out = tmp_path / "out.mkv"
    assert main(["frames", src, str(style), "-o", str(out), *ARGS]) == 0
    back = list(read_video(str(out)))
    assert len(back) == 4 and back[0].shape == (32, 48, 3)
    assert open_frames(str(out)).fps == 10
    assert not os.path.exists(str(out) + ".frames")  # the work folder is gone once the video is written

    folder = tmp_path / "pngs"
    assert main(["frames", src, str(style), "-o", str(folder), *ARGS]) == 0
    assert sorted(os.listdir(folder)) == [f"frame_{i:05d}.png" for i in range(4)] + ["nst_frames.json"]
    first = np.asarray(Image.open(folder / "frame_00000.png"))
    assert float(np.abs(first.astype(float) - back[0]).mean()) < 12  # the same frames went into the video


def test_hidden_files_are_not_frames(tmp_path):
    for name in ("f1.png", ".tmp_99_ab_f2.png", ".hidden.png"):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / name)
    assert [os.path.basename(p) for p in list_images(str(tmp_path))] == ["f1.png"]


def test_a_video_is_counted_by_decoding_not_by_its_header(tmp_path):
    path = str(tmp_path / "cut.mp4")
    with av.open(path, "w", options={"movflags": "faststart"}) as c:  # the header (frame count) comes first
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for f in moving_frames(10):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    with av.open(path) as c:
        assert c.streams.video[0].frames == 10
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 2 // 3])  # a file cut short: its header still says 10
    decodable = len(list(read_video(path)))
    assert 0 < decodable < 10
    assert open_frames(path).count == decodable


def _with_sound(path: str, n: int = 10, fps: int = 10, rate: int = 22050) -> None:
    """A video with an A4 sine as its sound (AAC), one second for 10 frames."""
    with av.open(path, "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 48, 32, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        per = rate // fps
        for t, f in enumerate(moving_frames(n)):
            c.mux(v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            wave = 0.3 * np.sin(2 * np.pi * 440 * (np.arange(per) + t * per) / rate)
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, t * per
            c.mux(a.encode(frame))
        c.mux(v.encode())
        c.mux(a.encode())


def _sound_seconds(path: str) -> float:
    with av.open(path) as c:
        if not c.streams.audio:
            return 0.0
        return sum(f.samples / f.sample_rate for f in c.decode(audio=0))


@pytest.mark.parametrize("ext", [".mp4", ".webm"])  # AAC copied into MP4; re-encoded (Opus) for WebM
def test_the_sound_of_the_input_goes_into_the_output_video(tmp_path, ext):
    src = str(tmp_path / "in.mp4")
    _with_sound(src)
    out = str(tmp_path / f"out{ext}")
    assert write_video(out, read_video(src), 10, audio_from=src) == 10
    assert _sound_seconds(out) == pytest.approx(_sound_seconds(src), abs=0.08)
    assert len(list(read_video(out))) == 10
    silent = str(tmp_path / f"silent{ext}")
    write_video(silent, read_video(src), 10)
    assert _sound_seconds(silent) == 0.0


def test_cli_frames_keeps_the_sound(tmp_path):
    pytest.importorskip("cv2")
    src = str(tmp_path / "in.mp4")
    _with_sound(src, n=3)
    style = tmp_path / "style.png"
    Image.fromarray(to_u8(stripes_image(48, 48))).save(style)
    out = str(tmp_path / "out.mp4")
    assert main(["frames", src, str(style), "-o", out, *ARGS]) == 0
    assert _sound_seconds(out) == pytest.approx(_sound_seconds(src), abs=0.08)
