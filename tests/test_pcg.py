"""Preconditioned CG against a dense solve, on the plain kernel and on a feature-learned one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import product_task

from rfmdist import RFMRegressor
from rfmdist.kernels import prepare_kernel
from rfmdist.solvers.cg import conjugate_gradient
from rfmdist.solvers.preconditioners import NystromPreconditioner

N, D, REG = 3000, 20, 1e-3


@pytest.fixture(scope="module")
def systems():
    """(name, K, y, dense solution) for M = I and for M after two RFM rounds (ill-conditioned)."""
    X, y = product_task(N, D, seed=0)
    learned = RFMRegressor(iters=2, random_state=0, standardize=False).fit(X, y).M_history_[2]
    out = []
    for name, M in (("plain", np.eye(D)), ("after-2-rounds", learned)):
        K = prepare_kernel(X, M, bandwidth=10.0).block(X)
        out.append((name, K, y[:, None], np.linalg.solve(K + REG * np.eye(N), y[:, None])))
    return out


def test_pcg_reaches_direct_solution_with_fewer_iterations(systems):
    for name, K, Y, direct in systems:
        precond = NystromPreconditioner.from_matvec(
            lambda V, K=K: K @ V, N, rank=300, shift=REG, rng=np.random.default_rng(0), like=Y
        )
        pcg = conjugate_gradient(
            lambda V, K=K: K @ V + REG * V, Y, preconditioner=precond, tol=1e-10, max_iter=2000
        )
        plain = conjugate_gradient(lambda V, K=K: K @ V + REG * V, Y, tol=1e-10, max_iter=3000)
        error = np.linalg.norm(pcg.x - direct) / np.linalg.norm(direct)
        print(f"{name}: PCG {pcg.iterations} iterations, plain CG {plain.iterations}")
        assert pcg.converged and error <= 1e-6, (name, error)
        assert pcg.iterations <= 0.5 * plain.iterations, (name, pcg.iterations, plain.iterations)
        assert len(pcg.residuals) == pcg.iterations + 1
        assert pcg.residuals[-1][0] <= 1e-10


def test_per_column_convergence_restart_and_callback(rng):
    A = rng.normal(size=(80, 80))
    A = A @ A.T + 80 * np.eye(80)
    B = np.column_stack([rng.normal(size=80), np.zeros(80), 1e-3 * rng.normal(size=80)])
    result = conjugate_gradient(lambda V: A @ V, B, tol=1e-12, restart_every=5, max_iter=500)
    np.testing.assert_allclose(result.x, np.linalg.solve(A, B), rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(result.x[:, 1], 0.0)  # a zero right-hand side stays zero
    seen = []
    stopped = conjugate_gradient(
        lambda V: A @ V, B, tol=1e-12, callback=lambda it, x, res: seen.append(it) or it == 3
    )
    assert stopped.iterations == 3 and seen == [1, 2, 3] and not stopped.converged


def test_nystrom_preconditioner_is_symmetric_positive_definite(systems):
    _, K, Y, _ = systems[1]
    P = NystromPreconditioner.from_matvec(
        lambda V: K @ V, N, rank=200, shift=REG, rng=np.random.default_rng(1), like=Y
    )
    probe = np.random.default_rng(2).normal(size=(N, 40))
    Pm = probe.T @ P(probe)
    np.testing.assert_allclose(Pm, Pm.T, rtol=1e-8, atol=1e-10)
    assert np.linalg.eigvalsh(Pm).min() > 0


def test_column_preconditioner_converges_like_the_gaussian_sketch(systems):
    """The Nystrom preconditioner from 300 sampled columns of K is SPD and cuts CG iterations as the
    Gaussian sketch does (within 1.5x of its count), on the plain and the feature-learned kernel."""
    for name, K, Y, direct in systems:
        rows = np.sort(np.random.default_rng(0).choice(N, size=300, replace=False))
        columns = NystromPreconditioner.from_columns(K[:, rows], rows, shift=REG)
        gaussian = NystromPreconditioner.from_matvec(
            lambda V, K=K: K @ V, N, rank=300, shift=REG, rng=np.random.default_rng(0), like=Y
        )
        probe = np.random.default_rng(2).normal(size=(N, 40))
        Pm = probe.T @ columns(probe)
        assert np.linalg.eigvalsh((Pm + Pm.T) / 2).min() > 0
        counts = {}
        for label, precond in (("columns", columns), ("gaussian", gaussian)):
            result = conjugate_gradient(
                lambda V, K=K: K @ V + REG * V, Y, preconditioner=precond, tol=1e-8, max_iter=2000
            )
            assert result.converged
            error = np.linalg.norm(result.x - direct) / np.linalg.norm(direct)
            assert error <= 1e-5, (name, label, error)
            counts[label] = result.iterations
        print(name, counts)
        assert counts["columns"] <= 1.5 * counts["gaussian"], (name, counts)
