"""The direct solver against numpy.linalg.solve; the jittered retry and its error."""

from __future__ import annotations

import numpy as np
import pytest

from rfmdist.exceptions import NumericalWarning
from rfmdist.kernels import kernel_block
from rfmdist.solvers.direct import solve_direct


def test_direct_solve_matches_numpy(rng):
    X = rng.normal(size=(300, 5))
    K = kernel_block(X, X, np.eye(5), bandwidth=3.0)
    Y = rng.normal(size=(300, 2))
    got = solve_direct(K, Y, 1e-3)
    want = np.linalg.solve(K + 1e-3 * np.eye(300), Y)
    np.testing.assert_allclose(got.x, want, rtol=1e-8, atol=1e-10)
    assert got.jitter == 0.0
    np.testing.assert_array_equal(np.diagonal(K), 1.0)  # K left intact


def test_jittered_retry_on_singular_float32_matrix(rng):
    V = rng.normal(size=(60, 3)).astype(np.float32)
    K = V @ V.T  # rank 3: not positive definite without a ridge
    Y = rng.normal(size=(60, 1)).astype(np.float32)
    with pytest.warns(NumericalWarning, match="jitter"):
        got = solve_direct(K, Y, 0.0)
    assert got.jitter > 0
    assert np.all(np.isfinite(got.x))


def test_clear_error_when_jitter_is_not_enough():
    K = -np.eye(4)
    with pytest.raises(
        np.linalg.LinAlgError, match="Expected K \\+ reg\\*I to be positive definite"
    ):
        solve_direct(K, np.ones((4, 1)), 1e-3)
