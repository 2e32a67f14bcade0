"""Frame sources and sinks: a folder of images (name order) or a video file (PyAV), as 8-bit RGB.

Frames travel as ``H×W×3`` uint8 arrays between reading, the workers and writing: compact to send
to a Ray worker, and exactly what a PNG holds. PyAV is imported lazily: the rest of nst_core works
without it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, List, Optional

import numpy as np
import torch

from .image import load_image, resize_long_edge

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# encoders tried in order for each container (the first one this FFmpeg build has wins)
_CODECS = {".webm": ("libvpx-vp9", "libvpx"), ".avi": ("mpeg4", "mjpeg")}
_DEFAULT_CODECS = ("libx264", "h264", "mpeg4")
INSTALL_HINT = 'video files need PyAV: pip install "vgg-style-transfer-nodes[video]" (or av)'


def _av():
    try:
        import av
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return av


def is_video_path(path: str) -> bool:
    """Whether ``path`` names a video file by its extension (.mp4, .mkv, .mov, .avi, .webm, .m4v)."""
    return os.path.splitext(str(path))[1].lower() in VIDEO_EXTENSIONS


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: str) -> List[str]:
    """Image files in ``folder`` in name order (numbers by value: frame2 before frame10)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"frames folder not found: {folder!r}")
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def to_u8(image: torch.Tensor) -> np.ndarray:
    """``[1,3,H,W]``/``[3,H,W]`` 0..1 → ``H×W×3`` uint8 (rounded as a PNG stores it)."""
    if image.dim() == 4:
        image = image[0]
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def from_u8(array: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``[1,3,H,W]`` float 0..1."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        what = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"a frame must be an H×W×3 uint8 array; got {what}")
    if not array.flags.writeable:  # e.g. from Ray's object store: torch wants its own copy
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).float().div(255)


def at_size(array: np.ndarray, size: Optional[int]) -> np.ndarray:
    """A uint8 frame resized to long edge ``size`` (unchanged when ``size`` is None or already fits)."""
    if not size or max(array.shape[:2]) == size:
        return array
    return to_u8(resize_long_edge(from_u8(array), size))


@dataclass(frozen=True)
class FrameSource:
    """A folder of images or a video file, read as uint8 frames in order."""

    path: str
    files: Optional[List[str]]  # the images of a folder; None for a video
    count: int  # number of frames
    fps: Fraction

    def frames(self, size: Optional[int] = None) -> Iterator[np.ndarray]:
        """The frames in order, each resized to long edge ``size`` if given."""
        if self.files is not None:
            for f in self.files:
                yield to_u8(load_image(f, size))
        else:
            for arr in read_video(self.path):
                yield at_size(arr, size)


def open_frames(path: str, fps: Optional[float] = None) -> FrameSource:
    """A :class:`FrameSource` for a folder of images or a video file; ``fps`` for a folder (default 25)."""
    path = str(path)
    if os.path.isdir(path):
        files = list_images(path)
        if not files:
            raise ValueError(f"frames folder {path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return FrameSource(path, files, len(files), Fraction(fps or 25).limit_denominator(1001))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frames input not found: {path!r} (give a folder of images or a video file)")
    if not is_video_path(path):
        raise ValueError(f"frames input {path!r} is neither a folder nor a video file ({', '.join(VIDEO_EXTENSIONS)})")
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            count = int(stream.frames) or sum(1 for _ in container.decode(stream))  # some containers don't say
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path!r} is not a video file PyAV can read: {exc}") from None
    return FrameSource(path, None, count, Fraction(fps).limit_denominator(1001) if fps else Fraction(rate))


def read_video(path: str) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` as ``H×W×3`` uint8 RGB frames, in order."""
    av = _av()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _codec(path: str) -> str:
    av = _av()
    for name in _CODECS.get(os.path.splitext(path)[1].lower(), _DEFAULT_CODECS):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # not in this FFmpeg build
            continue
    raise ValueError(f"no video encoder for {path!r} in this PyAV build; write PNG frames into a folder instead")


def write_video(path: str, frames: Iterable[np.ndarray], fps: "Fraction | float" = 25) -> int:
    """Encode uint8 frames (all one size) into ``path`` (codec from the extension); returns the frame count.

    4:2:0 video needs even sides: an odd last row or column is dropped.
    """
    av = _av()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    codec = _codec(path)
    n = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for arr in frames:
            h, w = (arr.shape[0] // 2) * 2, (arr.shape[1] // 2) * 2
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "17", "preset": "medium"}
            elif (h, w) != (stream.height, stream.width):
                raise ValueError(f"frame {n} is {arr.shape[1]}×{arr.shape[0]} px but the video is "
                                 f"{stream.width}×{stream.height}; all frames must have one size")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[:h, :w]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ValueError(f"no frames to write into {path!r}")
        for packet in stream.encode():
            container.mux(packet)
    return n
