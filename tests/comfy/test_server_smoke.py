"""Smoke tests of the end-to-end harness: the server runs, our pack imported, a core graph round-trips."""

from __future__ import annotations

import io

import pytest

try:
    from .comfy_client import (Preview, PromptRejected, api_node, import_time_lines, log_lines,
                               parse_binary_frame, png_bytes)
except ImportError:  # pragma: no cover
    from comfy_client import (Preview, PromptRejected, api_node, import_time_lines,  # type: ignore[no-redef]
                              log_lines, parse_binary_frame, png_bytes)

pytestmark = pytest.mark.comfy


def test_server_answers_object_info_with_core_nodes(comfy):
    info = comfy.object_info()
    for node in ("LoadImage", "SaveImage", "ImageScale", "PreviewImage"):
        assert node in info, f"core node {node} missing from /object_info ({len(info)} nodes)"
    load_image = comfy.object_info("LoadImage")["LoadImage"]
    assert "image" in load_image["input"]["required"]
    assert load_image["output"] == ["IMAGE", "MASK"]


def test_server_log_has_no_import_failure(comfy):
    log = comfy.server_log()
    if not log:
        pytest.skip("the server log is unknown (external server without NST_COMFY_LOG)")
    pack = comfy.pack_dir_name or "vgg-style-transfer-nodes"
    failures = [
        line
        for line in log_lines(log)
        if ("IMPORT FAILED" in line or "Cannot import" in line or "Skip " in line and "NODE_CLASS_MAPPINGS" in line)
        and pack in line
    ]
    assert not failures, "our pack failed to import:\n" + "\n".join(failures) + "\n--- log ---\n" + comfy.server_log_tail(120)
    # The pack must appear in ComfyUI's import-times list as a success (after any level tag a newer server puts
    # first: "[INFO]    0.1 seconds: …/vgg-style-transfer-nodes").
    loaded = import_time_lines(log, pack)
    assert loaded, f"{pack} is not listed as imported in the server log:\n{comfy.server_log_tail(120)}"


def test_server_log_has_no_core_import_failure(comfy):
    """comfy_extras failing to import means the ComfyUI environment (its requirements) is broken."""
    log = comfy.server_log()
    if not log:
        pytest.skip("the server log is unknown (external server without NST_COMFY_LOG)")
    failures = [line for line in log_lines(log) if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not failures, "\n".join(failures)


def test_core_prompt_round_trip(comfy, upload_png, ws):
    name = upload_png(40, 24, seed=3)
    prompt = {
        "1": api_node("LoadImage", image=name),
        "2": api_node("ImageScale", image=["1", 0], upscale_method="nearest-exact", width=64, height=32, crop="disabled"),
        "3": api_node("SaveImage", images=["2", 0], filename_prefix="nst_smoke"),
    }
    result = comfy.run(prompt, timeout=60, ws=ws)
    assert result.ok, result.describe()

    refs = result.image_refs("3")
    assert len(refs) == 1, result.outputs
    assert refs[0]["type"] == "output" and refs[0]["filename"].startswith("nst_smoke")
    (img,) = result.images("3")
    assert img.size == (64, 32)
    assert img.mode == "RGB"
    if comfy.output_dir is not None:
        assert (comfy.output_dir / refs[0].get("subfolder", "") / refs[0]["filename"]).is_file()

    # The websocket saw the run start, the SaveImage output and the end.
    types = [e["type"] for e in ws.events_for(result.prompt_id)]
    assert "execution_start" in types and "executed" in types, types
    executed = ws.events_for(result.prompt_id, "executed")
    assert any(e["data"]["node"] == "3" for e in executed)


def test_input_file_written_directly_is_loadable(comfy):
    if comfy.input_dir is None:
        pytest.skip("external server: its input folder is not local")
    name = comfy.put_input_file(png_bytes(16, 16, seed=1), "nst_direct.png")
    result = comfy.run({"1": api_node("LoadImage", image=name), "2": api_node("PreviewImage", images=["1", 0])}, timeout=60, ws=False)
    assert result.ok, result.describe()
    (ref,) = result.image_refs("2")
    assert ref["type"] == "temp"
    from PIL import Image

    assert Image.open(io.BytesIO(comfy.view(ref["filename"], ref.get("subfolder", ""), "temp"))).size == (16, 16)


def test_invalid_prompt_is_rejected_with_node_errors(comfy):
    with pytest.raises(PromptRejected) as exc:
        comfy.queue_prompt({"1": api_node("LoadImage", image="does-not-exist.png"), "2": api_node("SaveImage", images=["1", 0], filename_prefix="x")})
    assert exc.value.status == 400
    assert "1" in exc.value.node_errors


def test_interrupt_when_idle_is_harmless(comfy):
    comfy.interrupt()
    # The executor clears the interrupt flag when a prompt starts, so a stale
    # /interrupt must not break the next prompt.
    name = comfy.upload_image(png_bytes(8, 8), "nst_after_interrupt.png")
    result = comfy.run({"1": api_node("LoadImage", image=name), "2": api_node("PreviewImage", images=["1", 0])}, timeout=60)
    assert result.ok, result.describe()


def test_preview_frame_decoding():
    """The client's reading of binary frames: >I event (1 = preview), >I image type (1 JPEG, 2 PNG), bytes."""
    import struct

    data = png_bytes(6, 4)
    event, preview = parse_binary_frame(struct.pack(">I", 1) + struct.pack(">I", 2) + data)
    assert event == 1 and isinstance(preview, Preview)
    assert preview.format == "PNG" and preview.data == data
    assert preview.image().size == (6, 4)
    assert parse_binary_frame(struct.pack(">I", 3) + b"xyz") == (3, b"xyz")


def test_log_lines_read_both_generations_of_server_log():
    """2024-03 writes bare lines; a 2026 server puts a coloured level tag before each."""
    old = "Import times for custom nodes:\n   0.2 seconds: /x/custom_nodes/vgg-style-transfer-nodes\n"
    new = ("\x1b[32m[INFO]\x1b[0m Import times for custom nodes:\n"
           "\x1b[32m[INFO]\x1b[0m    0.2 seconds: /x/custom_nodes/vgg-style-transfer-nodes\x1b[0m\n")
    for log in (old, new):
        assert log_lines(log)[1].endswith("0.2 seconds: /x/custom_nodes/vgg-style-transfer-nodes")
        assert import_time_lines(log, "vgg-style-transfer-nodes") == [log_lines(log)[1]]
    failed = "\x1b[32m[INFO]\x1b[0m    0.2 seconds (IMPORT FAILED): /x/custom_nodes/vgg-style-transfer-nodes\n"
    assert import_time_lines(failed, "vgg-style-transfer-nodes") == []
