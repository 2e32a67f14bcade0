"""The only module that touches ComfyUI (``comfy.*``, ``folder_paths``).

Everything degrades to plain CPU behaviour when ComfyUI is absent, so the nodes can be imported and
exercised by unit tests without a server.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import torch

from ..nst_core.memory import is_out_of_memory

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.utils as _cu
    import folder_paths as _fp
except ImportError:  # plain Python (unit tests, docs)
    _mm = _cu = _fp = None

VGG_FOLDER = "vgg"
WEIGHT_EXTENSIONS = {".pth", ".pt", ".bin", ".safetensors"}


def register_vgg_folder() -> None:
    """Register ``models/vgg`` (and ``extra_model_paths.yaml`` entries named ``vgg``) with ComfyUI."""
    if _fp is None:
        return
    path = os.path.join(_fp.models_dir, VGG_FOLDER)
    paths, exts = _fp.folder_names_and_paths.get(VGG_FOLDER, ([], set()))
    paths = list(paths) + ([path] if path not in paths else [])
    _fp.folder_names_and_paths[VGG_FOLDER] = (paths, set(exts) | WEIGHT_EXTENSIONS)


def vgg_files() -> List[str]:
    """Weight files found in ComfyUI's ``vgg`` model folders."""
    if _fp is None:
        return []
    try:
        return sorted(_fp.get_filename_list(VGG_FOLDER))
    except Exception:  # a missing folder must not break the node list
        return []


def vgg_path(name: str) -> str:
    """Full path of a file listed by :func:`vgg_files`, or a clear error."""
    path = _fp.get_full_path(VGG_FOLDER, name) if _fp is not None else None
    if not path:
        raise ValueError(f"VGG weights file {name!r} is not in ComfyUI's models/vgg folder; put it there and refresh")
    return path


def compute_device() -> torch.device:
    """The device ComfyUI runs models on (honours ``--cpu``)."""
    return _mm.get_torch_device() if _mm is not None else torch.device("cpu")


def offload_device() -> torch.device:
    """Where the network waits between runs."""
    return _mm.unet_offload_device() if _mm is not None else torch.device("cpu")


def output_device() -> torch.device:
    """Where IMAGE outputs go (``intermediate_device``)."""
    return _mm.intermediate_device() if _mm is not None else torch.device("cpu")


def make_room(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to offload its managed models (diffusion models, …) until ``num_bytes`` fit on ``device``."""
    if _mm is not None:
        _mm.free_memory(int(num_bytes), device)


def free_bytes(device: torch.device) -> Optional[int]:
    """Memory ComfyUI reports free on ``device`` (None without ComfyUI: no plan is made then)."""
    if _mm is None:
        return None
    return int(_mm.get_free_memory(device))


def empty_cache() -> None:
    """Give cached accelerator memory back, through ComfyUI (no-op without it, and on the CPU)."""
    if _mm is not None:
        _mm.soft_empty_cache()


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of any backend (``nst_core.memory.is_out_of_memory``: CUDA/ROCm, MPS,
    XPU, DirectML, the CPU allocator) or of ComfyUI's own type."""
    oom = getattr(_mm, "OOM_EXCEPTION", None) if _mm is not None else None
    if isinstance(oom, type) and oom is not Exception and isinstance(exc, oom):
        return True
    return is_out_of_memory(exc)


def oom_exception(message: str) -> BaseException:
    """ComfyUI's own out-of-memory exception type carrying ``message``, so its OOM recovery runs."""
    oom = getattr(_mm, "OOM_EXCEPTION", None) if _mm is not None else None
    if isinstance(oom, type) and issubclass(oom, BaseException) and oom is not Exception:
        return oom(message)
    return torch.cuda.OutOfMemoryError(message)


def check_interrupt() -> bool:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel; otherwise return False."""
    if _mm is not None:
        _mm.throw_exception_if_processing_interrupted()
    return False


log = logging.getLogger("nst")


def say(text: str) -> bool:
    """Put ``text`` in ComfyUI's log, and on the running node as a progress text where this ComfyUI has
    ``PromptServer.send_progress_text`` (2025 on); older servers (2024-03) show the log line alone.

    Returns whether the node got the text.
    """
    log.info("nst: %s", text)
    if _mm is None:
        return False
    try:
        from comfy_execution.utils import get_executing_context  # (absent in 2024-03)
        from server import PromptServer
    except ImportError:
        return False
    send = getattr(getattr(PromptServer, "instance", None), "send_progress_text", None)
    context = get_executing_context()
    if send is None or context is None:
        return False
    try:
        send(text, context.node_id)
    except Exception:  # a text on the node is a courtesy: the log has it, the run goes on
        log.debug("nst: the progress text could not be sent", exc_info=True)
        return False
    return True


class ProgressBar:
    """ComfyUI's progress bar with optional live JPEG previews (created inside the node call)."""

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.bar = _cu.ProgressBar(self.total) if _cu is not None else None

    def update(self, step: int, preview: Optional["object"] = None, max_size: int = 512) -> None:
        """Report ``step``; ``preview`` is a PIL image shown on the node while it runs."""
        if self.bar is None:
            return
        if preview is not None:
            self.bar.update_absolute(step, self.total, ("JPEG", preview, max_size))
        else:
            self.bar.update_absolute(step, self.total)
