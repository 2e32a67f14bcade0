"""Checks of an ``nst`` command line that need no network, run before anything is loaded or written.

A missing or unreadable input, an output PIL (or the video writer) cannot make, a ``--size`` above
``--max-size`` or an unavailable device is refused in a fraction of a second, not after the VGG is
loaded or the whole optimisation has run, and a refused run leaves no folder or file behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import mimetypes
import os
from typing import List, Tuple

from PIL import Image

from .cli_args import pick_device
from .cli_frames import handles
from .explore import check_grid
from .distributed import INSTALL_HINT as RAY_INSTALL_HINT
from .flow import INSTALL_HINT as FLOW_INSTALL_HINT
from .image import probe_image, require_file
from .layers import parse_layers
from .presets import INITS, Settings
from .video import INSTALL_HINT as VIDEO_INSTALL_HINT
from .video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video_path, list_images

DEFAULT_MAX_SIZE = Settings().max_size


def check_command(args: argparse.Namespace) -> None:
    """Refuse a bad ``nst`` command line (a ValueError or OSError saying what to fix) before any work."""
    folder_job = handles(args)  # frames, or transfer on a folder or with --ray
    if getattr(args, "ray", None) and not installed("ray"):
        raise ValueError(RAY_INSTALL_HINT)
    for what, path in _input_images(args):
        probe_image(path, what)
    if args.command == "frames":
        _check_frames_input(args.input)
        if args.temporal_weight > 0 and not installed("cv2"):  # the flow is needed from the second frame on
            raise ValueError(FLOW_INSTALL_HINT)
    elif folder_job and os.path.isdir(args.content):
        _check_image_folder(args.content, "content folder")
    if args.weights not in ("original", "random") and not args.weights.startswith("random:"):
        require_file(args.weights, "--weights file")
    for option in ("content_layer", "layer"):  # one layer name (explore: lists of them)
        if getattr(args, option, None):
            parse_layers([getattr(args, option)], args.arch)
    if args.command == "explore":
        for layers in (args.layers, args.style_layers):
            parse_layers(layers, args.arch)
    _check_size(args)
    if folder_job:
        _check_folder_output(args.output, video=args.command == "frames")
    else:
        _check_image_output(args.output)
    if not getattr(args, "ray", None):  # with --ray the workers' devices count
        pick_device(args.device)


def _input_images(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(what, path) of every single image file the command line names."""
    out: List[Tuple[str, str]] = []
    if args.command in ("transfer", "reconstruct", "explore") and not os.path.isdir(args.content):
        out.append(("content image", args.content))
    out += [("style image", s) for s in getattr(args, "styles", None) or []]
    if getattr(args, "style", None):  # explore
        out.append(("style image", args.style))
    out += [("style mask", m) for m in getattr(args, "style_mask", None) or []]
    if getattr(args, "content_mask", None):
        out.append(("content mask", args.content_mask))
    init = getattr(args, "init", None)
    if args.command in ("transfer", "reconstruct", "texture") and init not in INITS and init is not None:
        if not os.path.isfile(init):
            raise ValueError(f"--init {init!r} is neither one of {list(INITS)} nor an existing image file")
        out.append(("--init image", init))
    return out


def _check_image_folder(folder: str, what: str) -> None:
    """A folder that holds images, each of them readable (headers only: no pixels are decoded)."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"{what} {folder!r} cannot be read: permission denied")
    files = list_images(folder)
    if not files:
        raise ValueError(f"{what} {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    for path in files:
        probe_image(path, "image")


def _check_frames_input(path: str) -> None:
    """``nst frames``' input: a folder of images or a video file PyAV can be asked to read."""
    if os.path.isdir(path):
        return _check_image_folder(path, "frames folder")
    if not is_video_path(path):
        what = "not found" if not os.path.exists(path) else "neither a folder nor a video file"
        raise ValueError(f"frames input {path!r}: {what}; give a folder of images or a video file "
                         f"({', '.join(VIDEO_EXTENSIONS)})")
    require_file(path, "frames input")
    if os.path.getsize(path) == 0:
        raise ValueError(f"frames input {path!r} is an empty file (0 bytes)")
    if not installed("av"):
        raise ValueError(VIDEO_INSTALL_HINT)


def installed(module: str) -> bool:
    """Whether an optional package (``av``, ``cv2``, ``ray``) can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def _check_size(args: argparse.Namespace) -> None:
    if args.command == "explore":
        return check_grid(args.size, args.steps)
    if args.size > args.max_size:
        raise ValueError(f"--size {args.size} is above the limit of {args.max_size} px (--max-size); memory and "
                         "time grow with the square of the size: use a smaller --size, or raise --max-size if you "
                         "have the memory")


def _check_image_output(path: str) -> None:
    """``-o`` of a single image: a file name with an extension PIL can write, in a folder that can be made."""
    if os.path.isdir(path):
        raise ValueError(f"-o {path!r} is a folder; give an image file name, e.g. {os.path.join(path, 'out.png')!r}")
    ext = os.path.splitext(path)[1].lower()
    common = ", ".join(IMAGE_EXTENSIONS)
    if not ext:
        raise ValueError(f"-o {path!r} has no file extension; give an image file name such as {path + '.png'!r} "
                         f"({common}, …)")
    if not pil_can_write(ext):
        raise ValueError(f"-o {path!r}: PIL cannot write an RGB image as {ext}; use an image extension ({common}, …)")
    _check_creatable(os.path.dirname(os.path.abspath(path)), path)


def pil_can_write(ext: str) -> bool:
    """Whether PIL writes an RGB image to a file with extension ``ext`` (tried on a tiny image in memory)."""
    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is None or fmt not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (8, 8)).save(io.BytesIO(), format=fmt)
    except Exception:  # a stub plugin without a writer, or a format without RGB (1-bit, float)
        return False
    return True


def _check_folder_output(path: str, video: bool) -> None:
    """``-o`` of a folder job: a folder (new or existing), or, for ``frames``, a video file."""
    if video and is_video_path(path):
        if not installed("av"):
            raise ValueError(VIDEO_INSTALL_HINT)
        if os.path.isdir(path):
            raise ValueError(f"-o {path!r} is a folder; give a new video file name or a folder without an extension")
        return _check_creatable(os.path.dirname(os.path.abspath(path)), path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"-o {path!r} is a file; the output of frames or a folder of images is a folder"
                         + (" or a video file" if video else ""))
    ext = os.path.splitext(os.path.normpath(path))[1].lower()
    if not os.path.isdir(path) and ext not in IMAGE_EXTENSIONS and mimetypes.guess_type("x" + ext)[0]:
        kinds = f"a folder or a video file ({', '.join(VIDEO_EXTENSIONS)})" if video else "a folder"
        raise ValueError(f"-o {path!r} names a {ext} file; the output is {kinds}: give a folder name without "
                         "an extension")
    _check_creatable(os.path.abspath(path), path)


def _check_creatable(folder: str, output: str) -> None:
    """``folder`` exists or can be made: its nearest existing ancestor is a folder this process may write to."""
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"-o {output!r}: cannot make the folder {folder!r} because {probe!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"-o {output!r}: cannot write into {probe!r} (permission denied); choose another folder")
