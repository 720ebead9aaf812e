"""Nyström centers: m = n reproduces the exact solve; m < n matches a dense NumPy Nyström solve."""

from __future__ import annotations

import numpy as np
from conftest import product_task

from rfmdist import RFMRegressor
from rfmdist.kernels import kernel_block

N, D, REG, L = 1200, 8, 1e-3, 10.0


def fit(**params):
    X, y = product_task(N, D, seed=5)
    base = {"iters": 0, "standardize": False, "dtype": "float64", "random_state": 0, "reg": REG}
    return X, y, RFMRegressor(**base, **params).fit(X, y)


def test_all_rows_as_centers_reproduce_the_exact_solve():
    X, _ = product_task(N, D, seed=5)
    # centers given explicitly as all rows (the Nyström system with m = n), solved by PCG
    _, _, nystrom = fit(centers=X, solver="pcg", tol=1e-12, max_iter=500)
    _, _, exact = fit(centers=None, solver="direct")
    X_new = np.random.default_rng(9).normal(size=(200, D))
    np.testing.assert_allclose(nystrom.predict(X_new), exact.predict(X_new), rtol=1e-6, atol=1e-8)
    assert nystrom.history_[0]["solve"]["converged"]


def test_nystrom_matches_dense_numpy_solve():
    for solver in ("pcg", "direct"):
        X, y, model = fit(centers=300, solver=solver, tol=1e-12, max_iter=1000)
        Z = model.centers_
        assert Z.shape == (300, D)
        K_nm = kernel_block(X, Z, np.eye(D), bandwidth=L)
        K_mm = kernel_block(Z, Z, np.eye(D), bandwidth=L)
        beta = np.linalg.solve(K_nm.T @ K_nm + REG * K_mm, K_nm.T @ y)
        X_new = np.random.default_rng(9).normal(size=(200, D))
        want = kernel_block(X_new, Z, np.eye(D), bandwidth=L) @ beta
        np.testing.assert_allclose(model.predict(X_new), want, rtol=1e-6, atol=1e-7)


def near_duplicate_clusters(gen, groups, per, spread, d=5):
    """``groups`` clusters of ``per`` points far from the origin (norm ~70) within ``spread``."""
    base = gen.normal(size=(groups, d)) * 30
    return np.repeat(base, per, axis=0) + gen.normal(size=(groups * per, d)) * spread


def test_near_duplicate_rows_give_accurate_psd_kernels():
    """Near-coincident points far from the origin: the GEMM distance identity alone gave entry
    errors ~1e-7 and a K_mm with eigenvalues down to -2e-6 (the statlog-shuttle Nystrom failure);
    near pairs are recomputed from differences, so entries match the naive formula and K is PSD."""
    gen = np.random.default_rng(0)
    Z = near_duplicate_clusters(gen, 20, 30, 3e-6)
    K = kernel_block(Z, Z, np.eye(5), bandwidth=L)
    naive = np.exp(-np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)) / L)
    np.testing.assert_allclose(K, naive, rtol=1e-10, atol=0)
    assert np.linalg.eigvalsh((K + K.T) / 2)[0] > -1e-12


def test_near_duplicate_centers_nystrom_matches_dense_solve():
    gen = np.random.default_rng(1)
    Z = near_duplicate_clusters(gen, 20, 30, 3e-6)
    X = near_duplicate_clusters(gen, 20, 100, 1.0)
    y = np.sin(X[:, 0] / 10) + 0.01 * gen.normal(size=len(X))
    reg = 1e-2
    K_nm = kernel_block(X, Z, np.eye(5), bandwidth=L)
    K_mm = kernel_block(Z, Z, np.eye(5), bandwidth=L)
    beta = np.linalg.lstsq(K_nm.T @ K_nm + reg * K_mm, K_nm.T @ y, rcond=None)[0]
    X_new = X[::7] + 0.5
    want = kernel_block(X_new, Z, np.eye(5), bandwidth=L) @ beta
    params = {"iters": 0, "standardize": False, "dtype": "float64", "reg": reg, "centers": Z}
    for solver in ("pcg", "direct"):
        model = RFMRegressor(solver=solver, tol=1e-10, max_iter=500, **params).fit(X, y)
        assert solver == "direct" or model.history_[0]["solve"]["converged"]
        np.testing.assert_allclose(model.predict(X_new), want, rtol=1e-5, atol=1e-6)
