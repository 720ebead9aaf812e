"""Preconditioners for kernel systems: symmetric positive definite operators ``R -> P^{-1} R``.

- :class:`NystromPreconditioner` (for the exact system ``(K + reg I) a = y``): the randomized Nyström
  preconditioner of Frangella, Tropp and Udell (2023). A rank-``r`` sketch ``K ~ U diag(lam) U^T`` from
  ``K Omega`` gives ``P^{-1} = U diag((lam_r + reg) / (lam + reg)) U^T + (I - U U^T)``: the top ``r``
  eigen-directions of ``K`` are flattened to the level of the rest, as in EigenPro, but the operator stays
  symmetric positive definite whatever the spectrum, which is what keeps it valid on the ill-conditioned
  kernels of later RFM rounds (a flattening built from Nyström-extended eigenvectors that were not
  orthonormal did not converge there: see DESIGN.md section 2).
- :class:`CentersPreconditioner` (for the Nyström-centers system ``(K_nm^T K_nm + reg K_mm) b = K_nm^T y``):
  Falkon's preconditioner. With centers drawn uniformly, ``K_nm^T K_nm ~ (n/m) K_mm^2``; with
  ``T^T T = K_mm`` and ``R^T R = (n/m) T T^T + reg I`` the system matrix is ``~ (RT)^T (RT)`` and
  ``P^{-1} = T^{-1} R^{-1} R^{-T} T^{-T}``. Exact when the centers are all the points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from rfmdist.backend import get_namespace, lower_gram, solve_triangular
from rfmdist.solvers.direct import cholesky_jittered

logger = logging.getLogger(__name__)


class NystromPreconditioner:
    """Randomized Nyström preconditioner for ``K + shift I``.

    Parameters
    ----------
    U : array, shape (n, r)
        Orthonormal approximate top eigenvectors of ``K``.
    eigenvalues : array, shape (r,)
        Their approximate eigenvalues, descending.
    shift : float
        The system's ridge.
    """

    def __init__(self, U: Any, eigenvalues: Any, shift: float) -> None:
        self.U = U
        self.eigenvalues = eigenvalues
        self.shift = float(shift)
        floor = eigenvalues[-1] + self.shift
        self._scale_minus_one = floor / (eigenvalues + self.shift) - 1.0

    @classmethod
    def from_matvec(
        cls,
        matvec: Callable[[Any], Any],
        n: int,
        *,
        rank: int,
        shift: float,
        rng: np.random.Generator,
        like: Any,
    ) -> NystromPreconditioner:
        """Sketch ``K`` with one product ``K Omega`` and build the preconditioner.

        Uses the numerically stable shifted Nyström approximation (Tropp et al. 2017).

        Parameters
        ----------
        matvec : callable
            ``matvec(V)`` returns ``K V`` for ``V`` of shape (n, r) (without the shift).
        n : int
        rank : int
            Sketch size ``r`` (capped at ``n``).
        shift : float
        rng : numpy.random.Generator
        like : array
            An array in the namespace and float dtype the sketch should use.
        """
        xp = get_namespace(like)
        rank = max(1, min(rank, n))
        # An orthonormal test matrix by Cholesky QR (a Gaussian n x r matrix with r << n is well
        # conditioned): two GEMM-sized products instead of a Householder QR.
        omega = xp.asarray(rng.standard_normal((n, rank)), dtype=like.dtype)
        omega = _orthonormal_columns(omega)
        sketch = matvec(omega)
        nu = _stability_shift(sketch)
        sketch = sketch + nu * omega
        core = (omega.T @ sketch + sketch.T @ omega) / 2
        return cls._from_sketch(sketch, core, nu, shift)

    @classmethod
    def from_columns(cls, columns: Any, rows: Any, *, shift: float) -> NystromPreconditioner:
        """The Nyström preconditioner from ``r`` columns of ``K``: the sketch whose test matrix
        selects the columns ``rows`` (the columns are the kernel of all rows against those rows,
        ``n r`` entries, instead of a product with ``n^2 r`` flops).

        Parameters
        ----------
        columns : array, shape (n, r)
            ``K[:, rows]``.
        rows : array of int, shape (r,)
            Distinct row indices.
        shift : float
        """
        xp = get_namespace(columns)
        r = columns.shape[1]
        rows = xp.asarray(rows)
        nu = _stability_shift(columns)
        sketch = columns.copy()
        sketch[rows, xp.arange(r)] += nu
        core = sketch[rows]
        return cls._from_sketch(sketch, (core + core.T) / 2, nu, shift)

    @classmethod
    def _from_sketch(cls, sketch: Any, core: Any, nu: float, shift: float) -> NystromPreconditioner:
        """From the shifted sketch ``Y = (K + nu I) Omega`` and its core ``Omega^T Y`` (Tropp et
        al. 2017's stable Nyström approximation ``Y core^{-1} Y^T``, less the shift ``nu``)."""
        xp = get_namespace(sketch)
        factor, _ = cholesky_jittered(core, 0.0, what="the Nystrom sketch core")
        basis = solve_triangular(factor, sketch.T, lower=True).T  # sketch @ factor^{-T}
        # The left singular vectors of the basis from the eigendecomposition of its r x r Gram
        # matrix (an SVD of the n x r basis costs ~10x more); directions whose squared singular
        # value is below 1e-10 of the largest are dropped: they lie at the floor of the spectrum,
        # where the preconditioner is the identity anyway, and their vectors would not be
        # accurately orthogonal.
        gram = basis.T @ basis
        squared, vectors = xp.linalg.eigh((gram + gram.T) / 2)
        order = xp.argsort(squared)[::-1]
        squared, vectors = squared[order], vectors[:, order]
        keep = squared > 1e-10 * squared[0]
        squared, vectors = squared[keep], vectors[:, keep]
        U = basis @ (vectors / xp.sqrt(squared))
        eigenvalues = xp.clip(squared - nu, 0, None)
        logger.debug(
            "Nystrom preconditioner: rank %d, eigenvalues %.3g .. %.3g, shift %.3g",
            U.shape[1],
            float(eigenvalues[0]),
            float(eigenvalues[-1]),
            shift,
        )
        return cls(U, eigenvalues, shift)

    def __call__(self, R: Any) -> Any:
        """Apply ``P^{-1}`` to ``R`` of shape (n, c)."""
        return R + self.U @ (self._scale_minus_one[:, None] * (self.U.T @ R))

    def record(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "preconditioner": "nystrom",
            "rank": int(self.U.shape[1]),
            "top_eigenvalue": float(self.eigenvalues[0]),
            "floor_eigenvalue": float(self.eigenvalues[-1]),
        }


def _stability_shift(sketch: Any) -> float:
    """The shift ``nu = eps ||Y|| sqrt(n)`` that keeps a Nyström sketch's core positive definite."""
    xp = get_namespace(sketch)
    eps = float(np.finfo(sketch.dtype).eps)
    return eps * float(xp.linalg.norm(sketch)) * np.sqrt(sketch.shape[0])


def _orthonormal_columns(A: Any) -> Any:
    """Orthonormal columns spanning a well-conditioned ``A`` (n x r), by Cholesky QR."""
    factor, _ = cholesky_jittered(A.T @ A, 0.0, what="the sketch's test matrix", warn=False)
    return solve_triangular(factor, A.T, lower=True).T


class CentersPreconditioner:
    """Falkon's preconditioner for the Nyström-centers system.

    Parameters
    ----------
    K_mm : array, shape (m, m)
        Kernel among the centers.
    n : int
        Number of data rows the system sums over.
    reg : float
        The ridge of the system ``K_nm^T K_nm + reg K_mm``.
    resolution : float, optional
        Relative accuracy of ``K_mm``'s entries (the epsilon of the kernel's dtype).
    """

    def __init__(self, K_mm: Any, n: int, reg: float, *, resolution: float | None = None) -> None:
        m = K_mm.shape[0]
        eps = float(np.finfo(K_mm.dtype).eps) if resolution is None else resolution
        # T^T T = K_mm (T upper). Near-coincident centers make K_mm numerically indefinite by far
        # more than eps: their distances come from the GEMM identity |x|^2 + |z|^2 - 2 x.z with an
        # absolute error of a few eps |x|^2, and the Laplace kernel's square root turns that into
        # entry errors of order sqrt(eps) (measured: eigenvalues down to -2e-6 in float64 for
        # clusters of near-duplicates). The jitter may therefore grow from sqrt(eps) levels; it only
        # steers CG (its speed, never the solution), so it is not warned about.
        lower_t, self.jitter_mm = cholesky_jittered(
            K_mm, eps * m, what="K_mm", resolution=float(np.sqrt(eps)), warn=False
        )
        self._t_upper = lower_t.T
        inner = lower_gram(lower_t)  # T T^T
        inner *= n / m
        lower_r, self.jitter_inner = cholesky_jittered(
            inner, reg, what="(n/m) T T^T + reg I", warn=False
        )
        self._r_upper = lower_r.T

    def __call__(self, R: Any) -> Any:
        """Apply ``P^{-1} = T^{-1} R^{-1} R^{-T} T^{-T}`` to ``R`` of shape (m, c)."""
        v = solve_triangular(self._t_upper, R, lower=False, trans=True)
        v = solve_triangular(self._r_upper, v, lower=False, trans=True)
        v = solve_triangular(self._r_upper, v, lower=False)
        return solve_triangular(self._t_upper, v, lower=False)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "preconditioner": "falkon",
            "jitter_kmm": float(self.jitter_mm),
            "jitter_inner": float(self.jitter_inner),
        }
