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


def test_jittered_retry_on_singular_matrix(rng):
    V = rng.normal(size=(60, 3))
    K = V @ V.T  # rank 3: not positive definite without a ridge
    Y = rng.normal(size=(60, 1))
    with pytest.warns(NumericalWarning, match="jitter"):
        got = solve_direct(K, Y, 0.0)
    assert got.jitter > 0
    assert np.all(np.isfinite(got.x))


@pytest.mark.filterwarnings("error")
def test_float32_entries_get_only_jitters_within_their_resolution_and_a_tenth_of_reg(rng):
    """A float32 kernel is factored in float64 (as the exact system does). Indefinite by 1e-5
    beyond the ridge, it is factored quietly with a jitter of 100 float32 ulps of its diagonal
    (4e-5 here, below reg / 10); indefinite by 1e-3 beyond it, it is refused (the fit then solves
    the round in float64), never silently over-regularised."""
    V = rng.normal(size=(60, 3))
    Y = rng.normal(size=(60, 1))
    reg, eps32 = 1e-3, float(np.finfo(np.float32).eps)
    for excess, fits in ((1e-5, True), (1e-3, False)):
        K = (V @ V.T - (reg + excess) * np.eye(60)).astype(np.float32).astype(np.float64)
        if not fits:
            with pytest.raises(np.linalg.LinAlgError, match="positive definite"):
                solve_direct(K, Y, reg, resolution=eps32)
            continue
        got = solve_direct(K, Y, reg, resolution=eps32)
        assert excess < got.jitter <= reg / 10
        want = np.linalg.solve(K + (reg + got.jitter) * np.eye(60), Y)
        np.testing.assert_allclose(got.x, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


def test_clear_error_when_jitter_is_not_enough():
    K = -np.eye(4)
    with pytest.raises(
        np.linalg.LinAlgError, match="Expected K \\+ reg\\*I to be positive definite"
    ):
        solve_direct(K, np.ones((4, 1)), 1e-3)


def test_mixed_solve_matches_numpy_to_float64_accuracy(rng):
    """A float32 factor refined by float64 CG: the float64 solution (1e-9), in a few iterations."""
    from rfmdist.solvers.direct import solve_mixed

    X = rng.normal(size=(800, 6))
    K = kernel_block(X, X, np.eye(6), bandwidth=3.0)
    Y = rng.normal(size=(800, 2))
    got = solve_mixed(K, Y, 1e-3)
    want = np.linalg.solve(K + 1e-3 * np.eye(800), Y)
    np.testing.assert_allclose(got.x, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    record = got.record()
    assert record["solver"] == "mixed" and record["iterations"] <= 10
    assert record["residual"] <= 1e-10 and "fallback" not in record
    np.testing.assert_array_equal(np.diagonal(K), 1.0)  # K left intact


def test_mixed_solve_falls_back_to_float64_cholesky_when_refinement_stalls(rng):
    from rfmdist.solvers.direct import solve_mixed

    X = rng.normal(size=(300, 4))
    K = kernel_block(X, X, np.eye(4), bandwidth=3.0)
    Y = rng.normal(size=(300, 1))
    got = solve_mixed(K, Y, 1e-3, tol=1e-30, max_iter=1)
    assert got.record()["fallback"] == "direct"
    np.testing.assert_allclose(got.x, solve_direct(K, Y, 1e-3).x, rtol=1e-12, atol=1e-12)


def test_in_place_cholesky_undoes_a_failed_try_before_the_jittered_one(rng):
    """overwrite=True: a failed factorisation is undone from the untouched upper triangle, so the
    jittered factor is that of the original matrix (its lower triangle; no n x n copy)."""
    from rfmdist.solvers.direct import cholesky_jittered

    V = rng.normal(size=(50, 3))
    A = V @ V.T  # rank 3: needs a jitter
    original = A.copy()
    factor, jitter = cholesky_jittered(A, 0.0, overwrite=True, warn=False)
    assert jitter > 0 and factor is A
    L = np.tril(factor)
    np.testing.assert_allclose(L @ L.T, original + jitter * np.eye(50), atol=1e-10)
    np.testing.assert_array_equal(np.triu(A, 1), np.triu(original, 1))
