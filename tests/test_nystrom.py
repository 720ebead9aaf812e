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
