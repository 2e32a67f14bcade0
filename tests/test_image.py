"""nst_core.image: file I/O and the ``[B,3,H,W]`` RGB 0..1 layout checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as hs
from PIL import Image

from nst_core import load_image, save_image
from nst_core.image import as_rgb_batch, fit_long_edge, load_mask, resize, resize_long_edge, to_pil


def quantised(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random ``[1,3,H,W]`` whose values are exact multiples of 1/255 (survive 8-bit storage)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=gen).float() / 255


def test_png_round_trip(tmp_path):
    img = quantised(12, 20)
    path = tmp_path / "sub" / "out.png"  # the folder is created
    save_image(img, str(path))
    back = load_image(str(path))
    assert back.shape == (1, 3, 12, 20) and back.dtype == torch.float32
    assert torch.allclose(back, img, atol=1e-6)
    save_image(img[0], str(tmp_path / "chw.png"))  # [3,H,W] is accepted too
    assert torch.allclose(load_image(str(tmp_path / "chw.png")), img, atol=1e-6)


def test_save_clamps_out_of_range_values(tmp_path):
    img = torch.tensor([-0.5, 0.5, 1.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    save_image(img, str(tmp_path / "c.png"))
    back = load_image(str(tmp_path / "c.png"))
    assert torch.allclose(back[0, :, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]), atol=1e-6)


def test_save_refuses_a_batch(tmp_path):
    with pytest.raises(ValueError, match="batch of 2"):
        save_image(torch.rand(2, 3, 4, 4), str(tmp_path / "b.png"))


def test_load_with_long_edge(tmp_path):
    save_image(quantised(30, 60), str(tmp_path / "w.png"))
    img = load_image(str(tmp_path / "w.png"), long_edge=20)
    assert img.shape == (1, 3, 10, 20)
    assert img.min() >= 0 and img.max() <= 1


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 0)      # fully transparent red -> white
    arr[0, 1] = (255, 0, 0, 255)    # opaque red stays red
    arr[1, 0] = (0, 0, 0, 128)      # half transparent black -> mid gray
    arr[1, 1] = (0, 0, 255, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = load_image(str(tmp_path / "a.png"))
    assert img.shape == (1, 3, 2, 2)
    assert torch.allclose(img[0, :, 0, 0], torch.ones(3))
    assert torch.allclose(img[0, :, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(img[0, :, 1, 0], torch.full((3,), 127 / 255), atol=1.5 / 255)
    assert torch.allclose(img[0, :, 1, 1], torch.tensor([0.0, 0.0, 1.0]))


def test_grayscale_expands_to_three_channels(tmp_path):
    arr = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    img = load_image(str(tmp_path / "g.png"))
    assert img.shape == (1, 3, 2, 2)
    assert torch.equal(img[0, 0], img[0, 1]) and torch.equal(img[0, 1], img[0, 2])
    assert torch.allclose(img[0, 0], torch.tensor(arr, dtype=torch.float32) / 255)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(str(tmp_path / "missing.png"))
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        load_image(str(bad))


def test_to_pil():
    pil = to_pil(quantised(3, 5))
    assert pil.mode == "RGB" and pil.size == (5, 3)


# --------------------------------------------------------------------------- as_rgb_batch


def test_as_rgb_batch_passes_rgb_through():
    x = torch.rand(2, 3, 4, 5)
    assert torch.equal(as_rgb_batch(x), x)
    assert as_rgb_batch(x[0]).shape == (1, 3, 4, 5)
    assert as_rgb_batch(x.double()).dtype == torch.float32


def test_as_rgb_batch_gray_and_alpha():
    gray = torch.rand(1, 1, 3, 3)
    out = as_rgb_batch(gray)
    assert out.shape == (1, 3, 3, 3) and torch.equal(out[:, 0], gray[:, 0]) and torch.equal(out[:, 2], gray[:, 0])
    rgba = torch.zeros(1, 4, 1, 2)
    rgba[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # transparent -> white
    rgba[0, :, 0, 1] = torch.tensor([0.2, 0.4, 0.6, 0.5])
    out = as_rgb_batch(rgba)
    assert torch.allclose(out[0, :, 0, 0], torch.ones(3))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.6, 0.7, 0.8]))


def test_as_rgb_batch_clamps():
    out = as_rgb_batch(torch.tensor([-1.0, 0.5, 2.0]).view(1, 3, 1, 1))
    assert out.flatten().tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_as_rgb_batch_rejects_non_finite(bad):
    x = torch.rand(1, 3, 4, 4)
    x[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        as_rgb_batch(x, "content image")


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (1, 3, 0, 4), (1, 3, 4, 0)])
def test_as_rgb_batch_rejects_empty(shape):
    with pytest.raises(ValueError, match="empty"):
        as_rgb_batch(torch.rand(shape))


@pytest.mark.parametrize("channels", [2, 5, 64])
def test_as_rgb_batch_rejects_channel_counts(channels):
    with pytest.raises(ValueError, match=f"{channels} channels"):
        as_rgb_batch(torch.rand(1, channels, 4, 4))


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 3, 4, 4)])
def test_as_rgb_batch_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        as_rgb_batch(torch.rand(shape))


@pytest.mark.parametrize("bad", [np.zeros((1, 3, 4, 4), dtype=np.float32), [[0.5]], None])
def test_as_rgb_batch_rejects_non_tensors(bad):
    with pytest.raises(TypeError, match="style image must be a torch.Tensor"):
        as_rgb_batch(bad, "style image")


# --------------------------------------------------------------------------- sizes


def test_fit_long_edge_examples():
    assert fit_long_edge((48, 64), 32) == (24, 32)
    assert fit_long_edge((64, 48), 32) == (32, 24)
    assert fit_long_edge((100, 100), 7) == (7, 7)
    assert fit_long_edge((1000, 10), 100) == (100, 1)
    assert fit_long_edge((10, 1000), 10) == (1, 10)  # never 0


@given(h=hs.integers(1, 4000), w=hs.integers(1, 4000), edge=hs.integers(8, 2048))
def test_fit_long_edge_keeps_the_aspect(h, w, edge):
    nh, nw = fit_long_edge((h, w), edge)
    assert max(nh, nw) == edge
    assert nh >= 1 and nw >= 1
    # each side is the rounded exact value (≥ 1): the aspect is kept to within rounding
    assert abs(nh - max(1.0, h * edge / max(h, w))) <= 0.5 + 1e-9
    assert abs(nw - max(1.0, w * edge / max(h, w))) <= 0.5 + 1e-9
    assert (nh >= nw) == (h >= w) or nh == nw


def test_resize_and_resize_long_edge():
    x = torch.rand(2, 3, 40, 60)
    assert resize(x, (40, 60)) is x
    y = resize_long_edge(x, 30)
    assert y.shape == (2, 3, 20, 30)
    assert y.min() >= 0 and y.max() <= 1
    assert math.isclose(float(y.mean()), float(x.mean()), abs_tol=0.02)


def test_16_bit_grayscale_png(tmp_path):
    arr = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = load_image(str(tmp_path / "g16.png"))
    assert img.shape == (1, 3, 8, 8)
    assert torch.allclose(img[0, 0], torch.from_numpy(arr.astype(np.float32) / 65535), atol=1 / 255)


def test_a_16_bit_mask_keeps_its_levels(tmp_path):
    """A PNG mask in mode I;16 (a 16-bit export) read as gray levels, not clipped to white."""
    arr = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "mask16.png")
    with Image.open(tmp_path / "mask16.png") as im:
        assert im.mode.startswith("I")  # what PIL makes of it (the case that read as all white)
    mask = load_mask(str(tmp_path / "mask16.png"))
    assert mask.shape == (1, 1, 8, 8)
    assert torch.allclose(mask[0, 0], torch.from_numpy(arr.astype(np.float32) / 65535), atol=1 / 255)
    assert float(mask.mean()) == pytest.approx(0.5, abs=0.01)


# shown image as quadrants [[top-left, top-right], [bottom-left, bottom-right]] for each EXIF orientation
ORIENTED = {1: "RG/RB", 6: "RR/BG", 8: "GB/RR", 3: "BR/GR"}  # 6: turn 90° clockwise, 8: counter-clockwise
RGB = {"R": [1.0, 0.0, 0.0], "G": [0.0, 1.0, 0.0], "B": [0.0, 0.0, 1.0]}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    """A camera JPEG stores the sensor's pixels plus a tag saying how to turn them; load_image turns them."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide × 20 tall: quadrants RG/RB
    arr[:, :20] = (255, 0, 0)
    arr[:10, 20:] = (0, 255, 0)
    arr[10:, 20:] = (0, 0, 255)
    pil = Image.fromarray(arr, "RGB")
    exif = pil.getexif()
    exif[0x0112] = orientation  # the Orientation tag
    path = tmp_path / f"o{orientation}.jpg"
    pil.save(path, quality=95, exif=exif.tobytes())
    img = load_image(str(path))
    turned = orientation in (6, 8)
    assert img.shape == ((1, 3, 40, 20) if turned else (1, 3, 20, 40))
    h, w = img.shape[-2:]
    top, bottom = ORIENTED[orientation].split("/")
    for (y, x), name in (((2, 2), top[0]), ((h - 6, w - 6), bottom[1])):  # corners, away from JPEG ringing
        patch = img[0, :, y:y + 4, x:x + 4].mean((1, 2))
        assert torch.allclose(patch, torch.tensor(RGB[name]), atol=0.1), (orientation, (y, x), patch)
    # the long-edge resize works on the upright image
    assert load_image(str(path), long_edge=10).shape[-2:] == ((10, 5) if turned else (5, 10))


def test_resizing_falls_back_to_the_cpu_where_the_device_has_no_antialiased_bicubic():
    from nst_core.image import resize_device

    assert resize_device(torch.device("cpu")).type == "cpu"
    assert resize_device(torch.device("cuda")).type == "cuda"
    assert resize_device(torch.device("mps")).type == "cpu"
    assert resize_device(torch.device("privateuseone")).type == "cpu"  # DirectML
