"""Optical flow, warping and the consistency mask (nst_core.flow)."""

from __future__ import annotations

import math

import pytest
import torch

from nst_core.flow import consistency_mask, estimate_flow, flow_and_mask, leaves_frame, warp

from conftest import require_extra

require_extra("cv2", "video", "optical flow tests")


def texture(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A smooth random texture [1,3,H,W]: blurred noise plus sines, rich enough for flow everywhere."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, h // 4, w // 4, generator=g)
    base = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    waves = 0.15 * torch.sin(2 * math.pi * (xs / 17 + ys / 23))
    return (base + waves).clamp(0, 1)


def shifted(image: torch.Tensor, dx: int, dy: int, hw=(64, 96), at=(16, 16)) -> torch.Tensor:
    """The window of ``image`` at ``at`` + (dy, dx): the scene moved by (-dx, -dy) in the frame."""
    y, x = at[0] + dy, at[1] + dx
    return image[..., y:y + hw[0], x:x + hw[1]].contiguous()


def test_flow_recovers_a_known_shift():
    big = texture()
    a, b = shifted(big, 0, 0), shifted(big, 5, -3)  # a(y, x) = b(y + 3, x - 5)
    flow = estimate_flow(a, b)
    assert flow.shape == (2, 64, 96) and flow.dtype == torch.float32
    inner = flow[:, 8:-8, 8:-8]
    assert abs(float(inner[0].median()) - (-5)) < 0.25
    assert abs(float(inner[1].median()) - 3) < 0.25
    assert float((inner[0] + 5).abs().mean()) < 0.5 and float((inner[1] - 3).abs().mean()) < 0.5


def test_flow_is_deterministic_and_zero_between_equal_frames():
    a = shifted(texture(), 0, 0)
    assert torch.equal(estimate_flow(a, shifted(texture(), 2, 1)), estimate_flow(a, shifted(texture(), 2, 1)))
    assert float(estimate_flow(a, a).abs().max()) < 0.05


def test_warp_of_a_shifted_image_matches():
    big = texture()
    a, b = shifted(big, 0, 0), shifted(big, 4, 2)
    warped = warp(b, estimate_flow(a, b))
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert float((warped - a)[inner].abs().mean()) < 0.01
    assert float((b - a)[inner].abs().mean()) > 0.05  # the shift itself is far from that


def test_warp_by_an_exact_integer_flow_is_a_shift():
    img = texture(32, 40)
    flow = torch.zeros(2, 32, 40)
    flow[0] = 3.0  # sample 3 px to the right
    out = warp(img, flow)
    assert torch.allclose(out[..., :, :-3], img[..., :, 3:], atol=1e-5)
    assert torch.allclose(out[..., :, -3:], img[..., :, -1:].expand(-1, -1, -1, 3), atol=1e-5)  # edges repeat


def test_consistency_mask_frees_disocclusions_only():
    # a square moves right by 6 px over a static background: the strip it uncovers is disoccluded
    h, w = 64, 96
    bg = texture(h, w, seed=1)
    square = texture(24, 24, seed=2).flip(-1) * 0.5 + 0.5
    prev, cur = bg.clone(), bg.clone()
    prev[..., 20:44, 30:54] = square
    cur[..., 20:44, 36:60] = square
    backward, mask = flow_and_mask(prev, cur)
    assert mask.shape == (1, h, w)
    assert float(mask[0, 4:16, 4:-4].mean()) > 0.9  # static background: trusted
    assert float(mask[0, 24:40, 40:56].mean()) > 0.6  # inside the moving square: trusted
    assert float(mask[0, 22:42, 30:36].mean()) < 0.5  # the strip uncovered at the square's old left edge


def test_consistency_mask_of_opposite_uniform_flows_frees_only_the_entering_columns():
    fwd = torch.zeros(2, 16, 16)
    fwd[0] = 2.0  # the scene moves 2 px right: frame t's two left columns were outside frame t-1
    mask = consistency_mask(fwd, -fwd)
    assert float(mask[:, :, 2:].min()) == 1.0
    assert float(mask[:, :, :2].max()) == 0.0
    up = torch.zeros(2, 16, 16)
    up[1] = -3.0  # 3 px up: the bottom three rows are new
    mask = consistency_mask(up, -up)
    assert float(mask[:, :-3].min()) == 1.0 and float(mask[:, -3:].max()) == 0.0


def test_a_pan_with_real_flow_trusts_none_of_the_newly_revealed_columns():
    big = texture()
    prev, cur = shifted(big, 0, 0), shifted(big, 6, 0)  # the camera pans right: 6 columns enter at the right
    backward, mask = flow_and_mask(prev, cur)
    assert float(mask[0, 8:-8, -6:].max()) == 0.0  # nothing there was in the previous frame
    assert float(mask[0, 8:-8, 8:-12].mean()) > 0.95  # the rest is trusted
    assert bool(leaves_frame(backward)[0, 8:-8, -6:].all())


def test_warp_by_a_zero_flow_is_exact_and_out_of_frame_samples_take_the_edge():
    img = texture(24, 32)
    assert torch.equal(warp(img, torch.zeros(2, 24, 32)), img)
    flow = torch.zeros(2, 24, 32)
    flow[1] = -1.5  # half-way between rows, 1.5 rows up
    out = warp(img, flow)
    assert torch.allclose(out[..., 2:, :], 0.5 * (img[..., :-2, :] + img[..., 1:-1, :]), atol=1e-6)
    assert torch.equal(out[..., 0, :], img[..., 0, :])  # above the frame: the edge row


@pytest.mark.parametrize("bad, message", [
    (lambda: estimate_flow(torch.rand(3, 8, 8), torch.rand(3, 8, 9)), "same size"),
    (lambda: estimate_flow(torch.rand(2, 8, 8), torch.rand(2, 8, 8)), "[3,H,W]"),
    (lambda: estimate_flow("a.png", torch.rand(3, 8, 8)), "torch.Tensor"),
    (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(2, 8, 9)), "same size"),
    (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(3, 8, 8)), "[2,H,W]"),
    (lambda: consistency_mask(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9)), "[2,H,W]"),
])
def test_bad_inputs_name_what_is_wrong(bad, message):
    with pytest.raises((ValueError, TypeError), match=None) as info:
        bad()
    assert message in str(info.value)
