"""Frame sources and sinks: a folder of images (name order) or a video file (PyAV), as 8-bit RGB.

Frames travel as ``H×W×3`` uint8 arrays between reading, the workers and writing: compact to send
to a Ray worker, and exactly what a PNG holds. PyAV is imported lazily: the rest of nst_core works
without it.
"""

from __future__ import annotations

import hashlib
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
INSTALL_HINT = 'video files need PyAV: pip install av (or, in a clone of this repository, pip install ".[video]")'


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
    """Image files in ``folder`` in name order (numbers by value: frame2 before frame10).

    Hidden files (a leading dot, such as a writer's unfinished ``.tmp_*``) are not frames.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"frames folder not found: {folder!r}")
    names = [n for n in os.listdir(folder) if not n.startswith(".")
             and n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]
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

    def digest(self) -> str:
        """A digest of the input's bytes (every image of a folder in order, or the video file): what
        identifies the input, whatever its name."""
        h = hashlib.sha1()
        for path in self.files if self.files is not None else [self.path]:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")  # a boundary between files
        return h.hexdigest()


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
            stream.thread_type = "AUTO"
            # decoded, not read from the header: a header's count can be missing or wrong (edited or cut files)
            count = sum(1 for _ in container.decode(stream))
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path!r} is not a video file PyAV can read: {exc}") from None
    if count == 0:
        raise ValueError(f"{path!r} holds no video frames that can be decoded")
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


class _AudioCarry:
    """The first audio stream of a source video, carried into an output container alongside the new video.

    Packets are copied as they are when the output container takes their codec, else decoded and
    re-encoded with the container's default audio codec. Timestamps keep their offset from the
    source's first video frame, so sound and picture stay in step.
    """

    def __init__(self, av, source: str, container) -> None:
        self.container, self.out = container, None
        self.source = av.open(source)
        if not self.source.streams.audio:
            return
        a = self.source.streams.audio[0]
        video = self.source.streams.video
        start = video[0].start_time if video and video[0].start_time is not None else 0
        self.offset = int(round(start * video[0].time_base / a.time_base)) if video else 0
        self.copy = a.codec_context.name in container.supported_codecs
        if self.copy:
            self.out = container.add_stream_from_template(a)
        else:
            name = container.default_audio_codec
            rates = av.codec.Codec(name, "w").audio_rates  # e.g. Opus: 48 kHz only
            rate = a.rate if not rates or a.rate in rates else max(rates)
            self.out = container.add_stream(name, rate=rate, layout=a.layout.name)
        self.packets = self.source.demux(a)
        self.time_base = a.time_base
        self.pending = None

    def until(self, seconds: Optional[float]) -> None:
        """Mux the audio up to ``seconds`` of the output (None: all that is left)."""
        if self.out is None:
            return
        while True:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                break
            if packet.size == 0 or packet.pts is None:
                continue
            if seconds is not None and (packet.pts - self.offset) * self.time_base > seconds:
                self.pending = packet
                return
            if self.copy:
                packet.pts -= self.offset
                packet.dts = packet.dts - self.offset if packet.dts is not None else None
                packet.stream = self.out
                self.container.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None  # the encoder numbers its own samples
                    self.container.mux(self.out.encode(frame))

    def close(self) -> None:
        """Mux what is left, flush an encoder, and close the source."""
        try:
            self.until(None)
            if self.out is not None and not self.copy:
                self.container.mux(self.out.encode(None))
        finally:
            self.source.close()


def write_video(path: str, frames: Iterable[np.ndarray], fps: "Fraction | float" = 25,
                audio_from: Optional[str] = None) -> int:
    """Encode uint8 frames (all one size) into ``path`` (codec from the extension); returns the frame count.

    ``audio_from``: a video file whose first audio stream (if any) goes into the output too (copied,
    or re-encoded where the container needs another codec). 4:2:0 video needs even sides: an odd last
    row or column is dropped.
    """
    av = _av()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    codec = _codec(path)
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), mode="w") as container:
        stream = audio = None
        try:
            for arr in frames:
                h, w = (arr.shape[0] // 2) * 2, (arr.shape[1] // 2) * 2
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "17", "preset": "medium"}
                    if audio_from is not None:  # every stream is added before the first packet
                        audio = _AudioCarry(av, audio_from, container)
                elif (h, w) != (stream.height, stream.width):
                    raise ValueError(f"frame {n} is {arr.shape[1]}×{arr.shape[0]} px but the video is "
                                     f"{stream.width}×{stream.height}; all frames must have one size")
                if audio is not None:
                    audio.until(float(n / rate))
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr[:h, :w]), format="rgb24")
                container.mux(stream.encode(frame))
                n += 1
            if stream is None:
                raise ValueError(f"no frames to write into {path!r}")
            container.mux(stream.encode())
            if audio is not None:
                audio.close()
                audio = None
        finally:
            if audio is not None:
                audio.source.close()
    return n
