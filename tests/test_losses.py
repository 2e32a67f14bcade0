"""nst_core.losses: relative content loss, style loss per statistic, total variation."""

from __future__ import annotations

import pytest
import torch

from nst_core import statistics as st
from nst_core.losses import content_loss, style_loss, tv_loss
from nst_core.statistics import LayerStyle


@pytest.fixture(scope="module")
def relu_feats(rand_ext, images):
    """relu2_1 features (128 channels, 16×16) of two different 32×32 images, from the random VGG."""
    with torch.no_grad():
        a = rand_ext(images.gradient(32, 32), ["relu2_1"])["relu2_1"]
        b = rand_ext(images.checkerboard(32, 32, tile=4), ["relu2_1"])["relu2_1"]
    return a, b


def test_content_loss_zero_for_identical_features():
    t = torch.randn(1, 8, 5, 5)
    assert content_loss(t.clone(), t).item() == 0.0


def test_content_loss_is_relative_mse():
    t = torch.randn(1, 8, 5, 5)
    f = t + 0.1 * torch.randn(1, 8, 5, 5)
    want = ((f - t) ** 2).mean() / (t**2).mean()
    assert torch.allclose(content_loss(f, t), want)


def test_content_loss_is_scale_invariant():
    t = torch.randn(1, 8, 5, 5)
    f = torch.randn(1, 8, 5, 5)
    assert torch.allclose(content_loss(10 * f, 10 * t), content_loss(f, t), rtol=1e-5)
    assert content_loss(f, t) > 0


def test_content_loss_broadcasts_a_batch_one_target():
    t = torch.randn(1, 4, 3, 3)
    f = torch.stack([t[0], t[0]])
    assert content_loss(f, t).item() == 0.0


@pytest.mark.parametrize("statistic", st.STATISTICS)
def test_style_loss_zero_for_the_targets_own_features(relu_feats, statistic):
    a, b = relu_feats
    target = LayerStyle.prepare(statistic, st.compute(statistic, a))
    same = style_loss(a, target)
    other = style_loss(b, target)
    assert abs(same.item()) < 1e-3
    assert other.item() > 1e-2
    assert other.item() > 100 * abs(same.item())


@pytest.mark.parametrize("statistic", st.STATISTICS)
def test_style_loss_is_differentiable_and_finite(relu_feats, statistic):
    a, b = relu_feats
    target = LayerStyle.prepare(statistic, st.compute(statistic, a))
    x = b.clone().requires_grad_(True)
    style_loss(x, target).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("statistic", ["gram", "moments"])
def test_style_loss_is_scale_invariant(relu_feats, statistic):
    """Divided by the target's magnitude: scaling features and target together changes nothing."""
    a, b = relu_feats
    t1 = LayerStyle.prepare(statistic, st.compute(statistic, a))
    t10 = LayerStyle.prepare(statistic, st.compute(statistic, 10 * a))
    assert torch.allclose(style_loss(10 * b, t10), style_loss(b, t1), rtol=1e-3)


def test_gram_style_loss_by_hand(relu_feats):
    a, b = relu_feats
    ga, gb = st.gram(a)[0], st.gram(b)[0]
    target = LayerStyle.prepare("gram", (ga,))
    want = ((gb - ga) ** 2).mean() / (ga**2).mean()
    assert torch.allclose(style_loss(b, target), want, rtol=1e-5)


@pytest.mark.parametrize("statistic", ["gram", "gram_normalized"])
def test_a_gram_term_reads_bf16_features_in_fp32(relu_feats, statistic):
    """bf16 features (the network under autocast) give the value of their fp32 copy, and its gradient
    rounded once to bf16: the products of the statistic and of the pull are not taken in bf16."""
    a, b = relu_feats
    target = LayerStyle.prepare(statistic, st.compute(statistic, a))
    low = b.bfloat16().requires_grad_(True)
    exact = low.detach().float().requires_grad_(True)
    v_low, v_exact = style_loss(low, target), style_loss(exact, target)
    (g_low,) = torch.autograd.grad(v_low, low)
    (g_exact,) = torch.autograd.grad(v_exact, exact)
    assert torch.equal(v_low.float(), v_exact)
    assert g_low.dtype == torch.bfloat16 and torch.equal(g_low, g_exact.bfloat16())


def test_moments_loss_is_the_w2_distance_of_gaussians():
    """For 1 channel the W2 distance is (μ₁−μ₂)² + (σ₁−σ₂)² (up to the tiny eps on the variance)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 1, 16, 16), generator=gen, dtype=torch.float64) * 2 + 1
    y = torch.randn((1, 1, 16, 16), generator=gen, dtype=torch.float64) * 0.5 - 1
    target = LayerStyle.prepare("moments", st.moments(y))
    mx, sx = x.mean(), x.std(correction=0)
    my, sy = y.mean(), y.std(correction=0)
    w2 = (mx - my) ** 2 + (sx - sy) ** 2
    want = w2 / (y**2).mean()
    assert torch.allclose(style_loss(x, target), want, rtol=1e-3)


def test_layer_style_to_returns_a_copy(relu_feats):
    target = LayerStyle.prepare("moments", st.moments(relu_feats[0]))
    moved = target.to("cpu")
    assert moved is not target
    assert torch.equal(moved.cov_sqrt, target.cov_sqrt) and moved.norm == target.norm
    g = LayerStyle.prepare("gram", st.gram(relu_feats[0])).to("cpu")
    assert g.cov_sqrt is None


def test_tv_loss():
    const = torch.full((1, 3, 16, 16), 0.3)
    assert tv_loss(const).item() == 0.0
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert tv_loss(noise) > 10 * tv_loss(ramp) > 0


def test_tv_loss_by_hand():
    x = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # replicate padding: horizontal diffs (1,0 | 0,0), vertical diffs (0,-1 | 0,0) -> (1 + 1) / 4
    assert tv_loss(x).item() == pytest.approx(0.5)
