"""Resumable jobs over files: a frame sequence in chunks, a folder of stills one by one.

What the ``nst`` command runs in-process and what a Ray task runs (``distributed.py``) are the same
functions here: :func:`frames_task` makes one chunk of frames, :func:`still_task` one still. Work
travels as plain values (an :class:`EngineSpec` and uint8 frames), so a task can run anywhere; the
engine is built once per process and reused by the next task with the same spec.

Resuming: every finished frame is a PNG in the output folder (written atomically). A rerun plans
only the chunks with missing frames; a chunk that stopped part-way carries on from its last written
frame, read back from disk. Stylised frames are carried on at 8-bit precision
(:func:`nst_core.frames.quantize`), so a resumed run writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .extractor import Extractor, load_extractor
from .frames import DEFAULT_TEMPORAL_WEIGHT, FramesProgress, stylize_frames
from .image import load_image
from .layers import parse_layers
from .optimizer import CancelFn, optimize, validate_settings
from .presets import DEFAULT_PRESET, Settings, get_preset
from .targets import ContentTarget, StyleTarget
from .recipes import transfer
from .video import from_u8, to_u8

FRAME_NAME = "frame_{:05d}.png"
MANIFEST = "nst_frames.json"


# --------------------------------------------------------------------------- the engine of a job


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to rebuild the engine: plain, picklable values."""

    styles: Tuple[np.ndarray, ...]  # style images, H×W×3 uint8
    preset: str = DEFAULT_PRESET
    settings: Tuple[Tuple[str, Any], ...] = ()  # overrides of the preset's settings (None = keep)
    content_layer: Optional[str] = None
    content_weight: float = 1.0  # the content target's own weight (× the settings' content_weight)
    style_layers: Optional[Tuple[str, ...]] = None
    style_layer_weights: Optional[Tuple[float, ...]] = None
    statistic: Optional[str] = None
    style_blend: Optional[Tuple[float, ...]] = None
    style_scale: float = 1.0
    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT
    size: Optional[int] = None  # long edge of the outputs (inputs are resized to it when read)
    init: str = "content"
    colors: str = "style"  # stills only: nst_core.color's modes (frames keep the style's colours)
    arch: str = "vgg19"
    weights: str = "original"  # 'original', 'random' or a weights file every worker can read
    pooling: str = "max"
    padding: str = "replicate"
    device: str = "auto"

    def run_settings(self) -> Settings:
        """The preset's settings with this spec's overrides."""
        s = get_preset(self.preset).settings.replace(**dict(self.settings))
        validate_settings(s)
        return s

    def key(self) -> str:
        """A digest of everything that changes the output (the device excepted)."""
        h = hashlib.sha1()
        for f in fields(self):
            if f.name == "device":
                continue
            value = getattr(self, f.name)
            if f.name == "styles":
                for im in value:
                    h.update(repr(im.shape).encode())
                    h.update(np.ascontiguousarray(im).tobytes())
            else:
                h.update(f"{f.name}={value!r};".encode())
        return h.hexdigest()[:16]

    def describe(self) -> Dict[str, Any]:
        """The spec as JSON-friendly values (style images by shape), for the output folder's manifest."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [list(im.shape) for im in value] if f.name == "styles" else (
                dict(value) if f.name == "settings" else value)
        out.pop("device")
        return out


@dataclass
class Engine:
    """An extractor, the style target built once, and the settings, for one spec."""

    spec: EngineSpec
    extractor: Extractor
    style: StyleTarget
    settings: Settings
    content_layer: str


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA, else MPS, else CPU; anything else as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def build_engine(spec: EngineSpec, extractor: Optional[Extractor] = None) -> Engine:
    """Load the extractor (unless given) and build the style target of ``spec``."""
    if not isinstance(spec, EngineSpec):
        raise TypeError(f"spec must be an EngineSpec; got {type(spec).__name__}")
    if not spec.styles:
        raise ValueError("the job has no style image; give at least one")
    preset = get_preset(spec.preset)
    settings = spec.run_settings()
    ext = extractor or load_extractor(spec.arch, spec.weights, spec.pooling, spec.padding,
                                      device=resolve_device(spec.device))
    if spec.style_layers is None:
        layers, weights = list(preset.style_layers), spec.style_layer_weights or preset.style_layer_weights
    else:
        layers, weights = parse_layers(list(spec.style_layers), ext.arch), spec.style_layer_weights
    style = StyleTarget.create(ext, [from_u8(s) for s in spec.styles], layers, weights,
                               spec.statistic or preset.statistic, spec.style_blend, spec.style_scale)
    return Engine(spec, ext, style, settings, spec.content_layer or preset.content_layer)


_ENGINES: Dict[str, Engine] = {}  # one per process: Ray reuses a worker for the next task


def cached_engine(spec: EngineSpec) -> Engine:
    """The engine of ``spec``, built on the first call in this process (the last one is kept)."""
    key = spec.key() + spec.device
    if key not in _ENGINES:
        _ENGINES.clear()
        _ENGINES[key] = build_engine(spec)
    return _ENGINES[key]


# --------------------------------------------------------------------------- chunks of frames


@dataclass(frozen=True)
class ChunkTask:
    """Frames ``first … stop-1`` of one chunk.

    Either ``lead_in`` frames before ``first`` are run first and their outputs dropped, so the chunk
    enters temporally settled, or (``carry``) the chunk carries on from the written output of frame
    ``first-1``.
    """

    first: int
    stop: int
    lead_in: int = 0
    carry: bool = False

    @property
    def input_start(self) -> int:
        """The first input frame the task needs."""
        return self.first - 1 if self.carry else self.first - self.lead_in


def plan_chunks(count: int, chunk_size: Optional[int], lead_in: int,
                written: Callable[[int], bool] = lambda i: False) -> List[ChunkTask]:
    """Tasks for the frames not yet ``written``: chunks of ``chunk_size`` (None: one chunk)."""
    if count < 0:
        raise ValueError(f"count (the number of frames) must be ≥ 0; got {count}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1 frame; got {chunk_size}")
    if lead_in < 0:
        raise ValueError(f"lead-in must be ≥ 0 frames; got {lead_in}")
    size = chunk_size or max(count, 1)
    tasks = []
    for start in range(0, count, size):
        stop = min(start + size, count)
        first = next((i for i in range(start, stop) if not written(i)), None)
        if first is None:
            continue
        if first == start:
            tasks.append(ChunkTask(first, stop, min(lead_in, start)))
        else:
            tasks.append(ChunkTask(first, stop, 0, carry=True))
    return tasks


def windows(frames: Iterable[np.ndarray], ranges: Sequence[Tuple[int, int]]) -> Iterator[Iterator[np.ndarray]]:
    """For each ``[start, stop)`` range, in order, an iterator over its frames, from one pass over ``frames``.

    Consume each window before asking for the next. Ranges may overlap (lead-ins); only frames a
    later range still needs are kept, so a single chunk streams through a long video.
    """
    it = iter(frames)
    buf: Dict[int, np.ndarray] = {}
    read = 0
    later = [min(r[0] for r in ranges[k:]) for k in range(len(ranges))] + [1 << 62]

    def window(k: int, a: int, b: int) -> Iterator[np.ndarray]:
        nonlocal read
        for i in range(a, b):
            while read <= i:
                try:
                    frame = next(it)
                except StopIteration:
                    raise ValueError(f"the input ended after {read} frames, but frame {b - 1} was expected") from None
                if read >= later[k]:
                    buf[read] = frame
                read += 1
            frame = buf[i]
            for j in [j for j in buf if j <= i and j < later[k + 1]]:
                del buf[j]
            yield frame

    for k, (a, b) in enumerate(ranges):
        yield window(k, a, b)


def frames_task(spec: "EngineSpec | Engine", task: ChunkTask, frames: Iterable[np.ndarray],
                previous: Optional[np.ndarray] = None, progress: Optional[Callable[[FramesProgress], None]] = None,
                cancel: Optional[CancelFn] = None,
                on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
                reuse: Optional[Callable[[int], Optional[np.ndarray]]] = None) -> List[np.ndarray]:
    """Make one chunk: ``frames`` are the inputs from ``task.input_start`` to ``task.stop`` (uint8, at
    the output size); ``previous`` is the output of frame ``first-1`` when ``task.carry``.

    Returns the outputs of frames ``first … stop-1`` (uint8); ``on_frame(index, output)`` sees each as
    soon as it is made (then it is not kept in the returned list). ``reuse(index)`` may hand back an
    output already written, which is then not remade.
    """
    engine = spec if isinstance(spec, Engine) else cached_engine(spec)
    expected = task.stop - task.input_start
    it = iter(frames)
    carried = None
    if task.carry:
        if previous is None:
            raise ValueError(f"chunk {task.first}–{task.stop - 1} carries on from frame {task.first - 1}: "
                             "give its output as previous")
        first_input = next(it, None)
        if first_input is None:
            raise ValueError(f"chunk {task.first}–{task.stop - 1} needs {expected} input frames; got 0")
        carried = (from_u8(first_input), from_u8(previous))
    skip = 0 if task.carry else task.lead_in

    def resume(j: int) -> Optional[torch.Tensor]:
        if reuse is None or j < skip:
            return None
        found = reuse(task.first + j - skip)
        return from_u8(found) if found is not None else None

    s = engine.spec
    count = task.stop - task.first + skip
    gen = stylize_frames(engine.extractor, (from_u8(f) for f in it), engine.style, engine.content_layer,
                         s.content_weight, s.temporal_weight, engine.settings, None, s.init, progress, None,
                         cancel, count, carried, resume)
    outs: List[np.ndarray] = []
    made = 0
    for j, out in enumerate(gen):
        made += 1
        if j < skip:
            continue
        u8 = to_u8(out)
        if on_frame is not None:
            on_frame(task.first + j - skip, u8)
        else:
            outs.append(u8)
    if made != count:
        raise ValueError(f"chunk {task.first}–{task.stop - 1} needs {expected} input frames; "
                         f"got {made + (1 if task.carry else 0)}")
    return outs


# --------------------------------------------------------------------------- the output folder


class FrameFolder:
    """The output folder of a frames job: ``frame_00000.png`` … plus a manifest of the recipe."""

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def frame_path(self, index: int) -> str:
        """Path of frame ``index``'s PNG."""
        return os.path.join(self.path, FRAME_NAME.format(index))

    def has(self, index: int) -> bool:
        """Whether frame ``index`` is written."""
        return os.path.isfile(self.frame_path(index))

    def read(self, index: int) -> Optional[np.ndarray]:
        """Frame ``index`` as uint8, or None if it is not written."""
        if not self.has(index):
            return None
        with Image.open(self.frame_path(index)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()

    def write(self, index: int, frame: np.ndarray) -> None:
        """Write frame ``index`` atomically (a crash never leaves a partial PNG behind)."""
        write_png_atomic(frame, self.frame_path(index))

    def check_manifest(self, recipe: Dict[str, Any], overwrite: bool = False) -> None:
        """Refuse to mix frames of another recipe; with ``overwrite`` remove them. Then record ``recipe``."""
        os.makedirs(self.path, exist_ok=True)
        recipe = json.loads(json.dumps(recipe, sort_keys=True))  # as it reads back (tuples become lists)
        path = os.path.join(self.path, MANIFEST)
        old = None
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
        if old is not None and old != recipe:
            if not overwrite:
                differ = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
                raise ValueError(f"output folder {self.path!r} holds frames of another run (differs in: "
                                 f"{', '.join(differ)}); use another folder, or --overwrite to start again")
        if overwrite:
            for name in os.listdir(self.path):
                if name.startswith("frame_") and name.endswith(".png"):
                    os.remove(os.path.join(self.path, name))
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(recipe, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def write_png_atomic(frame: np.ndarray, path: str) -> None:
    """Save a uint8 frame as PNG through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(frame, "RGB").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_frames_local(spec: "EngineSpec | Engine", frames: Iterable[np.ndarray], count: int, out: FrameFolder,
                     chunk_size: Optional[int] = None, lead_in: int = 0,
                     progress: Optional[Callable[[int, int, FramesProgress], None]] = None,
                     cancel: Optional[CancelFn] = None) -> int:
    """Make every missing frame in this process, chunk after chunk; returns how many were written.

    ``frames`` are the ``count`` inputs (uint8, at the output size), read once. ``progress(done,
    total, info)`` counts iterations over the frames this run goes through (lead-ins included).
    """
    tasks = plan_chunks(count, chunk_size, lead_in, out.has)
    if not tasks:
        return 0
    engine = spec if isinstance(spec, Engine) else build_engine(spec)
    work = sum(t.stop - t.first + t.lead_in for t in tasks)  # frames each task goes through
    made = 0
    frames_before = 0

    def on_frame(i: int, u8: np.ndarray) -> None:
        nonlocal made
        if not out.has(i):
            out.write(i, u8)
            made += 1

    for task, window in zip(tasks, windows(frames, [(t.input_start, t.stop) for t in tasks])):
        def on_progress(p: FramesProgress, before=frames_before) -> None:
            if progress is not None:
                progress(before * p.frame_total + p.step, work * p.frame_total, p)

        previous = out.read(task.first - 1) if task.carry else None
        frames_task(engine, task, window, previous, on_progress, cancel, on_frame, out.read)
        frames_before += task.stop - task.first + task.lead_in
    return made


# --------------------------------------------------------------------------- stills


def still_task(spec: "EngineSpec | Engine", image: np.ndarray, progress=None, cancel: Optional[CancelFn] = None
               ) -> np.ndarray:
    """Stylise one still (uint8, already at the output size) with the spec's engine; uint8 out."""
    engine = spec if isinstance(spec, Engine) else cached_engine(spec)
    s = engine.spec
    if s.colors != "style":  # the style target depends on the content's colours: transfer() builds it
        out = transfer(engine.extractor, from_u8(image), [from_u8(im) for im in s.styles], s.preset, None,
                       engine.content_layer, engine.style.layers, engine.style.layer_weights, engine.style.statistic,
                       s.style_blend, s.style_scale, s.init, progress, None, cancel, s.colors, **dict(s.settings))
        return to_u8(out)
    content = ContentTarget.create(engine.extractor, from_u8(image), engine.content_layer, s.content_weight)
    out = optimize(engine.extractor, content, engine.style, s.init, engine.settings, None, progress, None, cancel)
    return to_u8(out)


def still_output(out_dir: str, path: str) -> str:
    """Where the stylised version of the still ``path`` goes: ``OUT_DIR/<name>.png``."""
    return os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")


def load_still(path: str, size: Optional[int]) -> np.ndarray:
    """A still as uint8 at long edge ``size``."""
    return to_u8(load_image(path, size))
