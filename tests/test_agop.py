"""Predictor gradients against central finite differences; AGOP against naive outer products."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rfmdist.agop import (
    agop_block_sum,
    average_gradient_outer_product,
    kernel_agop_sum,
    predictor_gradients,
)
from rfmdist.kernels import augment_centers, kernel_block, prepare_kernel


def finite_difference_jacobian(f, X, step=1e-6):
    n, d = X.shape
    c = f(X[:1]).shape[1]
    J = np.empty((n, c, d))
    for k in range(d):
        e = np.zeros(d)
        e[k] = step
        J[:, :, k] = (f(X + e) - f(X - e)) / (2 * step)
    return J


@pytest.fixture
def machine(rng):
    d = 6
    Z = rng.normal(size=(40, d))
    coef = rng.normal(size=(40, 3))
    A = rng.normal(size=(d, d))
    return Z, coef, A @ A.T / d


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("diag", [False, True])
def test_gradients_match_finite_differences(rng, machine, kernel, diag):
    Z, coef, M = machine
    M = np.diagonal(M).copy() if diag else M
    X = rng.normal(size=(15, Z.shape[1]))  # away from the centers: f is smooth there

    def f(P):
        return kernel_block(P, Z, M, kernel=kernel, bandwidth=2.0) @ coef

    got = predictor_gradients(X, Z, coef, M, kernel=kernel, bandwidth=2.0)
    want = finite_difference_jacobian(f, X)
    assert got.shape == (15, 3, Z.shape[1])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_laplace_gradient_drops_the_coincident_center(rng, machine):
    """At a center the Laplace kernel has a kink; the paper's gradient drops that center's term."""
    Z, coef, M = machine
    X = Z[:4]
    got = predictor_gradients(X, Z, coef, M, kernel="laplace", bandwidth=2.0)
    for i in range(4):
        others = np.delete(np.arange(len(Z)), i)
        want = predictor_gradients(X[i : i + 1], Z[others], coef[others], M, bandwidth=2.0)
        np.testing.assert_allclose(got[i], want[0], rtol=1e-12)


@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("diag, diag_m", [(False, False), (True, True), (True, False)])
def test_agop_equals_naive_mean_of_outer_products(rng, machine, kernel, diag, diag_m):
    Z, coef, M = machine
    M = np.diagonal(M).copy() if diag_m else M
    X = rng.normal(size=(25, Z.shape[1]))
    J = predictor_gradients(X, Z, coef, M, kernel=kernel, bandwidth=2.0)
    naive = sum(J[i].T @ J[i] for i in range(len(X)))
    got = agop_block_sum(X, Z, coef, M, kernel=kernel, bandwidth=2.0, diag=diag)
    np.testing.assert_allclose(got, np.diagonal(naive) if diag else naive, rtol=1e-10)
    # Block sums add up: two halves give the whole.
    halves = sum(
        agop_block_sum(part, Z, coef, M, kernel=kernel, bandwidth=2.0, diag=diag)
        for part in (X[:10], X[10:])
    )
    np.testing.assert_allclose(halves, got, rtol=1e-12)


def test_agop_of_finite_differences_matches_kernel_agop(rng, machine):
    Z, coef, M = machine
    X = rng.normal(size=(12, Z.shape[1]))

    def f(P):
        return kernel_block(P, Z, M, bandwidth=2.0) @ coef

    J = finite_difference_jacobian(f, X)
    naive = np.mean([J[i].T @ J[i] for i in range(len(X))], axis=0)
    got = agop_block_sum(X, Z, coef, M, bandwidth=2.0) / len(X)
    np.testing.assert_allclose(got, naive, rtol=1e-5)


def test_generic_agop_any_predictor(rng):
    W = rng.normal(size=(3, 5))
    X = rng.normal(size=(33, 5))

    def jac(P):
        return np.broadcast_to(np.cos(P @ W.T)[:, :, None] * W[None], (len(P), 3, 5))

    J = jac(X)
    naive = np.mean([J[i].T @ J[i] for i in range(len(X))], axis=0)
    np.testing.assert_allclose(average_gradient_outer_product(jac, X, batch_size=7), naive)
    np.testing.assert_allclose(
        average_gradient_outer_product(jac, X, batch_size=4, diag=True), np.diagonal(naive)
    )
    with pytest.raises(ValueError, match="at least one point"):
        average_gradient_outer_product(jac, X[:0])


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_float32_agop_at_coincident_centers_whatever_the_transform_rounding(backend):
    """The AGOP of an exact fit is taken at rows that are centers. On a GPU the centers' transform
    ``Z S`` (one GEMM) and the rows' (GEMMs of another shape) round differently, so in float32 a row
    and its own center sat ~1e-7 apart and got Laplace weights ``1 / ||x - z||`` of ~1e7: the GPU's
    AGOP differed from the CPU's in every entry (up to 26%). Modelled here by transforming the
    centers in float64 and rounding: coincidence is judged before the transform, so the AGOP still
    equals the float64 one to float32 accuracy (1e-5 of its largest entry; 0.12 before)."""
    gen = np.random.default_rng(0)
    d = 6
    X = gen.normal(size=(300, d))
    Z = X[gen.choice(300, 60, replace=False)]
    A = gen.normal(size=(d, d))
    M = A @ A.T / d + 0.1 * np.eye(d)
    coef = gen.normal(size=(60, 2))
    X32, Z32 = X.astype(np.float32), Z.astype(np.float32)
    prepared = prepare_kernel(Z32, M.astype(np.float32), backend=backend)
    rounded = (Z32.astype(np.float64) @ prepared.S.astype(np.float64)).astype(np.float32)
    assert (rounded != prepared.centers_t).any()  # the two transforms differ in the last bits
    norms = (rounded * rounded).sum(axis=1)
    apart = dataclasses.replace(
        prepared, centers_t=rounded, centers_sq=norms, centers_aug=augment_centers(rounded, norms)
    )
    want = agop_block_sum(X, Z, coef, M)
    for kernel in (prepared, apart):
        got = kernel_agop_sum(kernel, X32, coef.astype(np.float32), diag=False)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
