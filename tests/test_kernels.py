"""Kernel blocks against a naive per-pair loop (float64, rtol 1e-10)."""

from __future__ import annotations

import numpy as np
import pytest

from rfmdist.kernels import kernel_block, metric_root


def naive_kernel(X, Z, M, kernel, L):
    Mfull = np.diag(M) if M.ndim == 1 else M
    K = np.empty((len(X), len(Z)))
    for i, x in enumerate(X):
        for j, z in enumerate(Z):
            u = x - z
            dist_sq = max(u @ Mfull @ u, 0.0)
            K[i, j] = (
                np.exp(-np.sqrt(dist_sq) / L)
                if kernel == "laplace"
                else np.exp(-dist_sq / (2 * L * L))
            )
    return K


def random_psd(rng, d, rank=None):
    A = rng.normal(size=(d, rank or d))
    return A @ A.T / d


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("form", ["full", "low_rank", "diag", "identity"])
def test_kernel_block_matches_naive_loop(rng, kernel, form):
    d = 7
    X = rng.normal(size=(23, d))
    Z = np.vstack([rng.normal(size=(11, d)), X[:3]])  # includes coincident points
    M = {
        "full": random_psd(rng, d),
        "low_rank": random_psd(rng, d, rank=2),
        "diag": rng.uniform(0.1, 2.0, size=d),
        "identity": np.eye(d),
    }[form]
    got = kernel_block(X, Z, M, kernel=kernel, bandwidth=1.7)
    want = naive_kernel(X, Z, M, kernel, 1.7)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    assert got.shape == (23, 14)
    np.testing.assert_array_equal(np.diagonal(got[:3, 11:]), 1.0)  # coincident points: exactly 1


def test_self_kernel_is_exactly_one_in_float32(rng):
    X = (rng.normal(size=(50, 30)) * 5).astype(np.float32)
    K = kernel_block(X, X, np.eye(30, dtype=np.float32))
    assert K.dtype == np.float32
    np.testing.assert_array_equal(np.diagonal(K), 1.0)


def test_metric_root_squares_back(rng):
    M = random_psd(rng, 6, rank=3)
    S = metric_root(M)
    np.testing.assert_allclose(S @ S, M, atol=1e-12)
    np.testing.assert_allclose(metric_root(np.array([4.0, 0.0, -1e-18])), [2.0, 0.0, 0.0])


def test_bad_kernel_arguments():
    X = np.zeros((2, 2))
    with pytest.raises(ValueError, match="Expected kernel in"):
        kernel_block(X, X, np.eye(2), kernel="cosine")
    with pytest.raises(ValueError, match="Expected bandwidth > 0"):
        kernel_block(X, X, np.eye(2), bandwidth=0.0)
