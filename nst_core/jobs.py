"""Resumable jobs over files: a frame sequence in chunks, a folder of stills one by one.

What the ``nst`` command runs in-process and what a Ray task runs (``distributed.py``) are the same
functions here: :func:`frames_task` makes one chunk of frames, :func:`still_task` one still. Work
travels as plain values (an :class:`EngineSpec` and uint8 frames), so a task can run anywhere; the
engine is built once per process and reused by the next task with the same spec.

Chunks: a frame carries on from the path of the frame before (:mod:`nst_core.frames`), so a chunk
made apart from the one before it enters through a lead-in of a few frames, run from scratch and
dropped: the path forgets where it started (to about 0.6 a frame, BENCHMARKS.md), and the chunk
meets the frames the previous chunk wrote without a jump. Chunks in parallel (Ray) and one after
another (``--chunk-size``) are planned alike and give the same frames.

Resuming: every finished frame is a PNG in the output folder (written atomically, with the usual
permissions). A rerun plans only the chunks with missing frames. A run that stops keeps the path of
its last written frame (a hidden ``.path_*.npz``), and the rerun carries on from it exactly; without
it (a killed process) the chunk walks its first frames again, or enters through a lead-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .extractor import Extractor, load_extractor
from .frames import DEFAULT_TEMPORAL_WEIGHT, FrameState, FramesProgress, stylize_frames
from .image import load_image
from .layers import parse_layers
from .optimizer import CancelFn, optimize, style_regions, validate_settings
from .presets import DEFAULT_PRESET, Settings, get_preset, settings_for
from .targets import ContentTarget, StyleTarget
from .recipes import style_targets, transfer
from .video import from_u8, to_u8

FRAME_NAME = "frame_{:05d}.png"
PATH_NAME = ".path_{:05d}.npz"  # the path a frame left, saved when a run stops (hidden: not a frame)
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
    style_masks: Optional[Tuple[np.ndarray, ...]] = None  # one H×W uint8 region mask per style image
    content_mask: Optional[np.ndarray] = None  # H×W uint8: hold the content harder where white
    content_mask_strength: float = 4.0
    tile: "int | str" = 0  # Settings.tile: 0/'auto' (planned by optimize on the worker, image by image), 'off', px
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
        """The preset's settings, with the loss weights of this spec's statistic (as for a single
        image: :func:`nst_core.presets.settings_for`) and this spec's tile, then its overrides."""
        s = settings_for(self.preset, self.statistic).replace(tile=self.tile).replace(**dict(self.settings))
        validate_settings(s)
        return s

    def key(self) -> str:
        """A digest of everything that changes the output (the device excepted)."""
        h = hashlib.sha1()
        for f in fields(self):
            if f.name == "device":
                continue
            value = getattr(self, f.name)
            if f.name in _IMAGE_FIELDS:
                h.update(f"{f.name}:".encode())
                for im in _arrays(value):
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
            out[f.name] = [list(im.shape) for im in _arrays(value)] if f.name in _IMAGE_FIELDS else (
                dict(value) if f.name == "settings" else value)
        out.pop("device")
        return out


_IMAGE_FIELDS = ("styles", "style_masks", "content_mask")  # arrays: hashed by content, described by shape


def _arrays(value: "np.ndarray | Sequence[np.ndarray] | None") -> List[np.ndarray]:
    return [] if value is None else [value] if isinstance(value, np.ndarray) else list(value)


@dataclass
class Engine:
    """An extractor, the style target(s) built once, and the settings, for one spec."""

    spec: EngineSpec
    extractor: Extractor
    style: Tuple[StyleTarget, ...]  # one target, or one per masked region
    settings: Settings
    content_layer: str
    content_mask: Optional[torch.Tensor] = None  # [1,1,H,W] in 0..1

    def content(self, image: torch.Tensor) -> ContentTarget:
        """The content target of one image or frame (with the spec's content mask, if any)."""
        return ContentTarget.create(self.extractor, image, self.content_layer, self.spec.content_weight,
                                    self.content_mask, self.spec.content_mask_strength)


def _mask(array: np.ndarray) -> torch.Tensor:
    """An H×W uint8 mask as ``[1,1,H,W]`` float in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(array)).float().div(255).view(1, 1, *array.shape[-2:])


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
    masks = [_mask(m) for m in spec.style_masks] if spec.style_masks is not None else None
    style = style_targets(ext, [from_u8(s) for s in spec.styles], layers, weights, spec.statistic or preset.statistic,
                          spec.style_blend, spec.style_scale, masks)
    content_mask = _mask(spec.content_mask) if spec.content_mask is not None else None
    return Engine(spec, ext, style_regions(style), settings, spec.content_layer or preset.content_layer,
                  content_mask)


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
    enters on a path that has forgotten where it started, or (``carry``) the chunk carries on from
    the state frame ``first-1`` left (its path, saved when a run stopped).
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
                written: Callable[[int], bool] = lambda i: False,
                carried: Callable[[int], bool] = lambda i: False) -> List[ChunkTask]:
    """Tasks for the frames not yet ``written``: chunks of ``chunk_size`` (None: one chunk).

    A chunk's first frame is always entered through ``lead_in`` frames (fewer at the clip's start), so
    chunks made in parallel and chunks made one after another give the same frames. A chunk that
    stopped part-way carries on exactly from its last written frame where that frame's path was
    ``carried`` (kept); else, within ``lead_in`` frames of its start, it runs again from its start (the
    same frames again, outputs dropped); else it enters through a lead-in of its own.
    """
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
        entry = min(lead_in, start)  # the chunk's own lead-in
        if first == start:
            tasks.append(ChunkTask(first, stop, entry))
        elif carried(first - 1):
            tasks.append(ChunkTask(first, stop, 0, carry=True))
        elif first - start <= lead_in:  # walk the chunk's first path again: the same frames, for a lead-in's cost
            tasks.append(ChunkTask(first, stop, first - start + entry))
        else:
            tasks.append(ChunkTask(first, stop, lead_in))
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
                previous: Optional[List[np.ndarray]] = None,
                progress: Optional[Callable[[FramesProgress], None]] = None, cancel: Optional[CancelFn] = None,
                on_frame: Optional[Callable[[int, np.ndarray, FrameState], None]] = None) -> List[np.ndarray]:
    """Make one chunk: ``frames`` are the inputs from ``task.input_start`` to ``task.stop`` (uint8, at
    the output size); ``previous`` is the path frame ``first-1`` left (float16 arrays) when ``task.carry``.

    Returns the outputs of frames ``first … stop-1`` (uint8); ``on_frame(index, output, state)`` sees
    each as soon as it is made (then it is not kept in the returned list). ``progress`` reports the
    frame being made by its index in the whole clip.
    """
    engine = spec if isinstance(spec, Engine) else cached_engine(spec)
    expected = task.stop - task.input_start
    it = iter(frames)
    carried = None
    if task.carry:
        if previous is None:
            raise ValueError(f"chunk {task.first}–{task.stop - 1} carries on from frame {task.first - 1}: "
                             "give the path that frame left as previous")
        first_input = next(it, None)
        if first_input is None:
            raise ValueError(f"chunk {task.first}–{task.stop - 1} needs {expected} input frames; got 0")
        frame = from_u8(first_input)
        carried = FrameState(frame, frame, [torch.from_numpy(np.ascontiguousarray(p)) for p in previous])
    skip = 0 if task.carry else task.lead_in
    base = task.first - skip  # the clip's index of the task's frame 0

    def on_progress(p: FramesProgress) -> None:
        if progress is not None:
            progress(dataclasses.replace(p, frame=base + p.frame))

    s = engine.spec
    count = task.stop - task.first + skip
    states: List[FrameState] = []
    gen = stylize_frames(engine.extractor, (from_u8(f) for f in it), engine.style,
                         engine.content_layer, s.content_weight, s.temporal_weight, engine.settings, None, s.init,
                         on_progress, None, cancel, count, carried, None, engine.content_mask,
                         s.content_mask_strength, states.append)
    outs: List[np.ndarray] = []
    made = 0
    for j, out in enumerate(gen):
        state = states.pop()
        made += 1
        if j < skip:
            continue
        u8 = to_u8(out)
        if on_frame is not None:
            on_frame(base + j, u8, state)
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

    def save_path(self, index: int, path: Sequence[torch.Tensor]) -> None:
        """Keep the path frame ``index`` left, so a rerun carries on from it exactly (float16 arrays)."""
        arrays = [p.detach().cpu().numpy() for p in path]
        write_atomic(os.path.join(self.path, PATH_NAME.format(index)), lambda f: np.savez(f, *arrays))

    def has_path(self, index: int) -> bool:
        """Whether the path of frame ``index`` was kept."""
        return os.path.isfile(os.path.join(self.path, PATH_NAME.format(index)))

    def read_path(self, index: int) -> List[np.ndarray]:
        """The path kept for frame ``index`` (see :meth:`save_path`)."""
        with np.load(os.path.join(self.path, PATH_NAME.format(index)), allow_pickle=False) as z:
            return [z[f"arr_{k}"] for k in range(len(z.files))]

    def clear_paths(self) -> None:
        """Remove every kept path (once the frames are all written they serve no rerun)."""
        for name in os.listdir(self.path) if os.path.isdir(self.path) else []:
            if name.startswith(".path_") and name.endswith(".npz"):
                os.remove(os.path.join(self.path, name))

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
        remove_stale_temporaries(self.path)
        if overwrite:
            self.clear_paths()
            for name in os.listdir(self.path):
                if name.startswith("frame_") and name.endswith(".png"):
                    os.remove(os.path.join(self.path, name))
        write_atomic(path, lambda f: f.write(json.dumps(recipe, indent=1, sort_keys=True).encode()))


TMP_PREFIX = ".tmp_"  # unfinished files: hidden (never read as frames) and removed by the next run


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """Write a file through a hidden temporary beside it, flushed to disk, then renamed into place.

    A crash leaves either the old file or the new one, never a partial file under ``path``. The file
    gets the usual permissions (0666 less the umask), as a plain ``open`` would give it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_png_atomic(frame: np.ndarray, path: str) -> None:
    """Save a uint8 frame as PNG atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: Image.fromarray(frame, "RGB").save(f, format="PNG"))


def remove_stale_temporaries(folder: str) -> int:
    """Remove the unfinished files (``.tmp_*``) a killed run left in ``folder``; returns how many."""
    if not os.path.isdir(folder):
        return 0
    stale = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    for name in stale:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return len(stale)


def run_frames_local(spec: "EngineSpec | Engine", frames: Iterable[np.ndarray], count: int, out: FrameFolder,
                     chunk_size: Optional[int] = None, lead_in: int = 0,
                     progress: Optional[Callable[[int, int, FramesProgress], None]] = None,
                     cancel: Optional[CancelFn] = None) -> int:
    """Make every missing frame in this process, chunk after chunk; returns how many were written.

    ``frames`` are the ``count`` inputs (uint8, at the output size), read once. ``progress(done,
    total, info)`` counts iterations over the whole clip plus this run's lead-ins: a rerun starts where
    the written frames leave off, and ``info.frame`` is the clip's index of the frame being made. When
    the run stops (Ctrl-C, an error), the path of the last frame written is kept in the folder, so the
    next run carries on from it exactly; a finished run keeps none.
    """
    tasks = plan_chunks(count, chunk_size, lead_in, out.has, out.has_path)
    if not tasks:
        out.clear_paths()
        return 0
    engine = spec if isinstance(spec, Engine) else build_engine(spec)
    lead_ins = sum(t.lead_in for t in tasks)
    done_frames = sum(out.has(i) for i in range(count))  # already written: the bar starts there
    made = 0
    last: Optional[Tuple[int, FrameState]] = None

    def on_frame(i: int, u8: np.ndarray, state: FrameState) -> None:
        nonlocal made, last
        if not out.has(i):
            out.write(i, u8)
            made += 1
        last = (i, state)

    try:
        for task, window in zip(tasks, windows(frames, [(t.input_start, t.stop) for t in tasks])):
            def on_progress(p: FramesProgress, before=done_frames) -> None:
                if progress is not None:
                    progress(before * p.frame_total + p.step, (count + lead_ins) * p.frame_total, p)

            previous = out.read_path(task.first - 1) if task.carry else None
            frames_task(engine, task, window, previous, on_progress, cancel, on_frame)
            done_frames += task.stop - task.first + task.lead_in
            last = None  # the next chunk enters through its lead-in
    except BaseException:
        if last is not None and last[1].path and out.has(last[0]):
            out.save_path(last[0], last[1].path)
        raise
    out.clear_paths()
    return made


# --------------------------------------------------------------------------- stills


def still_task(spec: "EngineSpec | Engine", image: np.ndarray, progress=None, cancel: Optional[CancelFn] = None
               ) -> np.ndarray:
    """Stylise one still (uint8, already at the output size) with the spec's engine; uint8 out."""
    engine = spec if isinstance(spec, Engine) else cached_engine(spec)
    s = engine.spec
    if s.colors != "style":  # the style target depends on the content's colours: transfer() builds it
        style = engine.style[0]
        masks = [_mask(m) for m in s.style_masks] if s.style_masks is not None else None
        out = transfer(engine.extractor, from_u8(image), [from_u8(im) for im in s.styles], s.preset, None,
                       engine.content_layer, style.layers, style.layer_weights, style.statistic,
                       s.style_blend, s.style_scale, s.init, progress, None, cancel, s.colors, masks,
                       engine.content_mask, s.content_mask_strength, **{**dict(s.settings), "tile": s.tile})
        return to_u8(out)
    content = engine.content(from_u8(image))
    out = optimize(engine.extractor, content, engine.style, s.init, engine.settings, None, progress, None, cancel)
    return to_u8(out)


def still_output(out_dir: str, path: str) -> str:
    """Where the stylised version of the still ``path`` goes: ``OUT_DIR/<name>.png``."""
    return os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")


def load_still(path: str, size: Optional[int]) -> np.ndarray:
    """A still as uint8 at long edge ``size``."""
    return to_u8(load_image(path, size))
