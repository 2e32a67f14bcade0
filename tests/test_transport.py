"""nst_core.transport: the W2 style loss through transported feature targets."""

from __future__ import annotations

import pytest
import torch

from nst_core import statistics as st
from nst_core import transport
from nst_core.statistics import LayerStyle
from nst_core.transport import W2Style, scaled_difference, transport_residual


def reference_w2(x: torch.Tensor, target: LayerStyle) -> torch.Tensor:
    """The Gaussian W2 loss written directly in float64, differentiated by autograd through ``eigvalsh``."""
    f = x.double().flatten(2)
    mean = f.mean(-1)
    centred = f - mean.unsqueeze(-1)
    cov = st.regularised(centred @ centred.transpose(-1, -2) / f.shape[-1])
    m = target.cov_sqrt @ cov @ target.cov_sqrt
    trace_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2))).sqrt().sum(-1)
    c = cov.shape[-1]
    w2 = (mean - target.stat[0]).pow(2).mean(-1) + (cov.diagonal(dim1=-2, dim2=-1).sum(-1) + target.cov_trace
                                                     - 2 * trace_sqrt) / c
    return w2.mean() / target.norm


@pytest.fixture
def pair():
    gen = torch.Generator().manual_seed(0)
    y = torch.relu(torch.randn((1, 8, 12, 12), generator=gen, dtype=torch.float64) + 0.3)
    x = torch.relu(torch.randn((3, 8, 12, 12), generator=gen, dtype=torch.float64)) * 2
    return x, LayerStyle.prepare("moments", st.moments(y))


def test_a_refresh_gives_the_exact_value_and_gradient(pair):
    x, target = pair
    x = x.requires_grad_(True)
    want = reference_w2(x, target)
    (g_want,) = torch.autograd.grad(want, x)
    got = W2Style(target)(x, refresh=True)
    (g_got,) = torch.autograd.grad(got, x)
    assert torch.allclose(got, want, rtol=1e-10)
    # equal up to the tiny eps the covariance gets (its own gradient is left out)
    assert (g_got - g_want).abs().max() < 1e-3 * g_want.abs().max()


def test_the_transported_features_have_the_target_moments(pair):
    x, target = pair
    f = x.reshape(3, 8, -1)
    _, residual = transport_residual(f, target)
    mean, second = st.moments((f - residual).reshape_as(x))
    assert torch.allclose(mean, target.stat[0].expand_as(mean), atol=1e-8)
    # covariance of Y = T·Σ·T = Σₛ, up to the small eps both covariances get on the diagonal
    want = st.covariance(*target.stat, eps=0.0)
    got = st.covariance(mean, second, eps=0.0)
    assert (got - want).abs().max() < 1e-3 * want.abs().max()


def test_between_refreshes_the_gradient_is_the_bound_s(pair):
    """Between refreshes: the gradient of |F − Y|²·(1/numel)/norm, Y fixed at the last refresh."""
    x, target = pair
    loss = W2Style(target)
    loss(x, refresh=True)
    goal = loss.goal.clone()
    moved = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    out = loss(moved, refresh=False)
    assert out.item() == 0.0  # only the gradient is computed between refreshes
    (g,) = torch.autograd.grad(out, moved)
    want = 2 * (moved.detach().reshape(goal.shape) - goal) / goal.numel() / target.norm
    assert torch.allclose(g, want.reshape_as(g))
    # and it points the same way as the exact gradient
    (exact,) = torch.autograd.grad(reference_w2(moved, target), moved)
    cos = (g * exact).sum() / (g.norm() * exact.norm())
    assert cos > 0.95


def test_the_bound_lies_above_w2_and_descending_it_lowers_w2(pair):
    x, target = pair
    loss = W2Style(target)
    start = loss(x, refresh=True).item()
    goal = loss.goal
    z = x.clone().requires_grad_(True)
    for _ in range(20):
        bound = (z.reshape(goal.shape) - goal).pow(2).mean() / target.norm
        assert bound.item() >= reference_w2(z.detach(), target).item() * (1 - 1e-3)  # (eps on Σ)
        (g,) = torch.autograd.grad(bound, z)
        with torch.no_grad():
            z -= 0.2 * g / g.abs().max()
    assert reference_w2(z.detach(), target).item() < 0.5 * start


def test_refresh_happens_on_the_first_call_and_on_a_new_shape(pair):
    x, target = pair
    loss = W2Style(target)
    assert loss(x, refresh=False).item() > 0  # first call: exact value
    assert loss(x[:1], refresh=False).item() > 0  # batch changed: exact again
    assert loss(x[:1], refresh=False).item() == 0.0


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_scaled_difference_in_blocks_is_the_whole_tensors(monkeypatch, dtype, channels_last):
    """Block by block (here 3 rows at a time, the last block short), each value is the one whole-tensor
    passes give: F − Y in fp32, times the scale and the weights, rounded once to F's dtype and layout."""
    monkeypatch.setattr(transport, "BLOCK_ELEMENTS", 2 * 5 * 11 * 3)
    gen = torch.Generator().manual_seed(1)
    f = torch.randn((2, 5, 10, 11), generator=gen).to(dtype)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    goal = torch.randn((2, 5, 10, 11), generator=gen)
    weights = torch.rand((1, 1, 10, 11), generator=gen)
    scale = torch.tensor(0.37)
    for w in (None, weights):
        want = (f.float() - goal) * scale * (1 if w is None else w)
        got = scaled_difference(f, goal, scale, w)
        assert got.dtype == dtype and torch.equal(got, want.to(dtype))
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    window = (Ellipsis, slice(2, 9), slice(1, 7))  # a tile's view: strided, not dense
    want = ((f[window].float() - goal[window]) * scale).to(dtype)
    assert torch.equal(scaled_difference(f[window], goal[window], scale), want)


def test_bf16_features_pull_with_an_fp32_goal_and_a_gradient_in_their_dtype(pair):
    """bf16 features (the network under autocast) are read as they are: the refresh forms Y in fp32,
    and the gradient, in bf16, is the fp32 features' rounded once."""
    x, target = pair
    low = x.float().bfloat16().requires_grad_(True)
    exact = low.detach().float().requires_grad_(True)
    term_low, term_exact = W2Style(target), W2Style(target)
    (g_low,) = torch.autograd.grad(term_low(low, refresh=True), low)
    (g_exact,) = torch.autograd.grad(term_exact(exact, refresh=True), exact)
    assert term_low.goal.dtype == torch.float32 and torch.equal(term_low.goal, term_exact.goal)
    assert g_low.dtype == torch.bfloat16 and torch.equal(g_low, g_exact.bfloat16())


def test_a_gram_target_is_refused():
    target = LayerStyle.prepare("gram", st.gram(torch.rand(1, 4, 5, 5)))
    with pytest.raises(ValueError, match="moments"):
        W2Style(target)
