"""nst_core.statistics: Gram, normalised Gram, moments, blending, covariance and the PSD square root."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nst_core import statistics as st


@pytest.fixture
def feats() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn((2, 5, 4, 6), generator=gen)


def spd(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn((n, n), generator=gen, dtype=dtype)
    return a @ a.T + 0.5 * torch.eye(n, dtype=dtype)


def test_gram_by_hand(feats):
    (g,) = st.gram(feats)
    b, c, h, w = feats.shape
    f = feats.numpy().astype(np.float64)
    for k in range(b):
        for i in range(c):
            for j in range(c):
                want = sum(f[k, i, y, x] * f[k, j, y, x] for y in range(h) for x in range(w)) / (c * h * w)
                assert abs(g[k, i, j].item() - want) < 1e-5
    assert g.shape == (2, 5, 5)
    assert torch.allclose(g, g.transpose(1, 2))


def test_gram_normalized_is_channel_cosine(feats):
    (g,) = st.gram_normalized(feats)
    assert torch.allclose(g.diagonal(dim1=1, dim2=2), torch.ones(2, 5), atol=1e-6)
    f = feats.reshape(2, 5, -1)
    cos = torch.nn.functional.cosine_similarity(f[0, 1], f[0, 3], dim=0)
    assert torch.isclose(g[0, 1, 3], cos, atol=1e-6)
    # invariant to the scale of the features
    assert torch.allclose(st.gram_normalized(feats * 7.0)[0], g, atol=1e-6)


def test_gram_normalized_of_a_dead_channel_is_finite():
    f = torch.randn(1, 3, 4, 4)
    f[:, 1] = 0
    (g,) = st.gram_normalized(f)
    assert torch.isfinite(g).all()
    assert g[0, 1, 1] == 0


def test_moments_by_hand(feats):
    mean, second = st.moments(feats)
    assert mean.shape == (2, 5) and second.shape == (2, 5, 5)
    f = feats.numpy().astype(np.float64).reshape(2, 5, -1)
    n = f.shape[2]
    for k in range(2):
        np.testing.assert_allclose(mean[k].numpy(), f[k].sum(axis=1) / n, atol=1e-5)
        np.testing.assert_allclose(second[k].numpy(), f[k] @ f[k].T / n, atol=1e-5)


def test_covariance_from_moments(feats):
    mean, second = st.moments(feats)
    cov = st.covariance(mean, second, eps=0.0)
    f = feats.reshape(2, 5, -1).double()
    want = torch.stack([torch.cov(f[k], correction=0) for k in range(2)])
    assert cov.dtype == torch.float64 and torch.allclose(cov, want, atol=1e-6)
    with_eps = st.covariance(mean, second)  # default eps keeps it positive definite
    assert (torch.linalg.eigvalsh(with_eps) > 0).all()


def test_compute_dispatch(feats):
    for name in st.STATISTICS:
        got = st.compute(name, feats)
        want = getattr(st, name)(feats)
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="histogram"):
        st.compute("histogram", feats)


@pytest.mark.parametrize("name", st.STATISTICS)
def test_blend_is_the_weighted_average(feats, name):
    a = st.compute(name, feats[:1])
    b = st.compute(name, feats[1:])
    out = st.blend([a, b], [1.0, 3.0])
    assert len(out) == len(a)
    for x, y, z in zip(a, b, out):
        assert torch.allclose(z, 0.25 * x + 0.75 * y, atol=1e-6)
    # weights only matter relative to each other
    again = st.blend([a, b], [2.0, 6.0])
    assert all(torch.allclose(p, q) for p, q in zip(out, again))


def test_blend_of_moments_equals_moments_of_the_pooled_features():
    """Mean and second moment are per-pixel averages: blending equal-size images = pooling their pixels."""
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    blended = st.blend([st.moments(a), st.moments(b)], [1, 1])
    pooled = st.moments(torch.cat([a, b], dim=3))
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(blended, pooled))


def test_blend_rejects_zero_total(feats):
    with pytest.raises(ValueError, match="more than 0"):
        st.blend([st.gram(feats)], [0.0])


def test_sqrtm_psd():
    m = spd(6)
    r = st.sqrtm_psd(m)
    assert torch.allclose(r @ r, m, atol=1e-8)
    assert torch.allclose(r, r.T)


def test_eigh_matches_torch_and_restores_the_thread_count(several_threads):
    m = spd(6, seed=1)
    vals, vecs = st.eigh(m)
    assert torch.get_num_threads() == several_threads  # (the suite's 1 thread would hide a lost restore)
    assert torch.allclose(vals, torch.linalg.eigvalsh(m))
    assert torch.allclose((vecs * vals) @ vecs.T, m, atol=1e-10)


def test_outer_matches_autograd_of_the_plain_product():
    from nst_core.statistics import outer

    f = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(outer, (f,))
    g = torch.randn(2, 5, 5, dtype=torch.float64)
    (a,) = torch.autograd.grad((outer(f) * g).sum(), f)
    (b,) = torch.autograd.grad(((f @ f.transpose(1, 2)) * g).sum(), f)
    assert torch.allclose(a, b)


def test_centred_moments_merge_chunks_exactly():
    """Chan's pairwise merge over chunks of positions gives the one-pass result."""
    f = torch.randn(2, 6, 1000, dtype=torch.float64) * 3 + 5
    whole = st.centred_moments(f, chunk_elements=1 << 20)
    chunked = st.centred_moments(f, chunk_elements=2 * 6 * 37)  # 37 positions a chunk, uneven last chunk
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_weighted_centred_moments_equal_the_moments_of_the_weighted_positions():
    f = torch.randn(1, 4, 300, dtype=torch.float64)
    w = torch.zeros(1, 1, 300, dtype=torch.float64)
    w[..., 100:200] = 1.0
    mean, cov, mass = st.centred_moments(f, w, chunk_elements=4 * 64)
    inside = f[..., 100:200]
    assert float(mass) == 100
    assert torch.allclose(mean, inside.mean(-1)) and torch.allclose(cov[0], torch.cov(inside[0], correction=0))


def test_the_covariance_keeps_its_small_eigenvalues_when_the_mean_is_large():
    """fp32 features with a large mean and tiny spread: F·Fᵀ/N − μμᵀ in fp32 would cancel every digit."""
    gen = torch.Generator().manual_seed(0)
    f = (1000.0 + 1e-2 * torch.randn(1, 3, 4096, generator=gen)).float()
    _, cov, _ = st.centred_moments(f)
    want = torch.cov(f[0].double(), correction=0)
    naive = (f @ f.transpose(-1, -2) / f.shape[-1] - f.mean(-1).unsqueeze(-1) * f.mean(-1).unsqueeze(-2))[0]
    assert torch.allclose(cov[0], want, rtol=1e-6, atol=1e-12)
    assert (naive.double() - want).abs().max() > 100 * (cov[0] - want).abs().max()
