"""Direct solves of a regularised kernel system by Cholesky, with a jittered retry: in float64
(:func:`solve_direct`), or in float32 refined to float64 accuracy (:func:`solve_mixed`)."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.backend import cholesky_lower, get_namespace, solve_triangular
from rfmdist.exceptions import NumericalWarning

logger = logging.getLogger(__name__)

MAX_JITTER_TRIES = 6
# A matrix whose entries are only float32-accurate (a float32 kernel, cast to float64 for the
# factorisation) gets at most this many jitters: 100 and 1,000 float32 ulps of its mean diagonal,
# within the kernel's own rounding, and none above this share of the ridge (see
# coarse_jitter_limit). Beyond them the jitter would change the solution (a float32 kernel
# indefinite by more than that): the round loop solves it with a float64 kernel instead.
COARSE_JITTER_TRIES = 2
COARSE_JITTER_SHARE_OF_REG = 0.1
# solve_mixed: relative residual reached by the float64 refinement, and its iteration cap.
MIXED_TOL = 1e-10
MIXED_MAX_ITER = 50


@dataclass(frozen=True)
class DirectResult:
    """Solution of ``(K + reg I) x = B`` and how it was obtained.

    Attributes
    ----------
    x : array, shape (n, c)
    jitter : float
        Extra diagonal added beyond ``reg`` to make the factorisation succeed (0 if none).
    seconds : float
    solver : {'direct', 'mixed'}
        Float64 Cholesky, or float32 Cholesky with float64 refinement (:func:`solve_mixed`).
    extra : dict
        More of the record (the refinement's iterations and residual).
    """

    x: Any
    jitter: float
    seconds: float
    solver: str = "direct"
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for a fit's history."""
        return {"solver": self.solver, "jitter": self.jitter, "seconds": self.seconds} | self.extra


def cholesky_jittered(
    A: Any,
    shift: float,
    *,
    what: str = "K + reg*I",
    resolution: float | None = None,
    warn: bool = True,
    overwrite: bool = False,
    max_jitter: float = np.inf,
) -> tuple[Any, float]:
    """Lower Cholesky factor of ``A + (shift + jitter) I`` with the smallest jitter that works.

    The jitter starts at 0, then ``100 eps mean(diag A)`` growing 10x per try (``eps`` the
    resolution of ``A``'s entries), with a :class:`~rfmdist.exceptions.NumericalWarning` when used;
    after :func:`jitter_tries` tries the error says how to fix it.

    Parameters
    ----------
    A : array, shape (n, n)
        Symmetric positive semi-definite; left intact unless ``overwrite``.
    shift : float
        Diagonal shift that is part of the problem (the ridge), not a safeguard.
    what : str
        Name of the matrix in messages.
    resolution : float, optional
        Relative accuracy of ``A``'s entries (default: the epsilon of its dtype). A float32 kernel
        cast to float64 for the factorisation is only float32-accurate: pass float32's epsilon
        (which also limits the tries to :data:`COARSE_JITTER_TRIES`).
    warn : bool, default True
        Warn when a jitter was needed. Preconditioners pass False: their jitter changes how fast CG
        converges, never the solution.
    overwrite : bool, default False
        Factor ``A`` in place (NumPy; no ``n x n`` copy): ``A`` becomes the factor in its lower
        triangle (its strict upper triangle stays ``A``'s). A failed try is undone from that upper
        triangle before the next.
    max_jitter : float, default inf
        No jitter above this is tried (:func:`coarse_jitter_limit`).

    Returns
    -------
    factor : array, shape (n, n)
        Lower triangular ``L`` with ``L L^T = A + (shift + jitter) I`` (read only its lower triangle).
    jitter : float
    """
    xp = get_namespace(A)
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"Expected a square matrix for {what}, found shape {A.shape}.")
    diagonal = xp.diagonal(A).copy()
    diag_mean = float(xp.abs(diagonal).mean()) if n else 0.0
    eps = float(np.finfo(A.dtype).eps) if resolution is None else resolution
    base = 100 * eps * max(diag_mean, 1e-30)
    index = xp.arange(n)
    in_place = overwrite and xp is np and A.flags.c_contiguous
    coarse = eps > np.finfo(np.float64).eps
    tried = 0.0
    for attempt in range(jitter_tries(eps) + 1):
        jitter = 0.0 if attempt == 0 else base * 10.0 ** (attempt - 1)
        if jitter > max_jitter:
            break
        shifted = A if in_place else A.copy()
        shifted[index, index] = diagonal + (shift + jitter)
        try:
            factor = cholesky_lower(shifted, overwrite=True)
        except np.linalg.LinAlgError:
            logger.debug("Cholesky of %s failed with jitter %.3g (try %d)", what, jitter, attempt)
            if in_place:
                _restore_lower_triangle(A, diagonal)
            tried = jitter
            continue
        if jitter and (coarse or not warn):
            # Within the entries' own rounding (coarse), or a preconditioner's (not warn): the
            # solution is the one asked for, to the entries' accuracy.
            logger.debug("%s factored with an extra diagonal jitter of %.3g", what, jitter)
        elif jitter:
            warnings.warn(
                f"{what} was not numerically positive definite in {A.dtype}; factored it with an "
                f"extra diagonal jitter of {jitter:.3g}. Use a larger reg to avoid it (duplicate "
                "rows among the centers also cause it).",
                NumericalWarning,
                stacklevel=3,
            )
        return factor, jitter
    raise np.linalg.LinAlgError(
        f"Expected {what} to be positive definite, but Cholesky failed in {A.dtype} even with a "
        f"diagonal jitter of {tried:.3g}. Check the input for duplicated or degenerate rows, or use "
        "dtype='float64' or a larger reg."
    )


def coarse_jitter_limit(resolution: float, reg: float) -> float:
    """The largest jitter a direct solve of a kernel system with entries of relative accuracy
    ``resolution`` may add to a regulariser of size ``reg`` (``reg I``, or ``reg K_mm`` whose
    diagonal is 1): none limit at float64's resolution, :data:`COARSE_JITTER_SHARE_OF_REG` of ``reg``
    coarser, so that a float32 fit solves the ridge problem it was asked to (or is solved again in
    float64).

    Examples
    --------
    >>> coarse_jitter_limit(float(np.finfo(np.float32).eps), 1e-3)
    0.0001
    """
    if resolution <= np.finfo(np.float64).eps:
        return float("inf")
    return COARSE_JITTER_SHARE_OF_REG * reg


def jitter_tries(resolution: float) -> int:
    """How many jitters :func:`cholesky_jittered` tries for entries of relative accuracy
    ``resolution``: :data:`MAX_JITTER_TRIES` at float64's, :data:`COARSE_JITTER_TRIES` coarser.

    Examples
    --------
    >>> jitter_tries(float(np.finfo(np.float64).eps)), jitter_tries(float(np.finfo(np.float32).eps))
    (6, 2)
    """
    return MAX_JITTER_TRIES if resolution <= np.finfo(np.float64).eps else COARSE_JITTER_TRIES


def _restore_lower_triangle(A: np.ndarray, diagonal: np.ndarray, block: int = 1024) -> None:
    """Rebuild the lower triangle and diagonal of a symmetric ``A`` from its strict upper triangle
    (which an in-place factorisation leaves intact), block by block (no ``n x n`` temporary)."""
    n = A.shape[0]
    for start in range(0, n, block):
        stop = min(n, start + block)
        A[start:stop, :start] = A[:start, start:stop].T
        square = A[start:stop, start:stop]
        square[...] = np.triu(square, 1) + np.triu(square, 1).T
    A[np.arange(n), np.arange(n)] = diagonal


def solve_direct(
    K: Any, B: Any, reg: float, *, overwrite: bool = False, resolution: float | None = None
) -> DirectResult:
    """Solve ``(K + reg I) x = B`` by Cholesky factorisation (jittered if needed).

    Parameters
    ----------
    K : array, shape (n, n)
        Symmetric positive semi-definite matrix; left intact unless ``overwrite``.
    B : array, shape (n, c)
    reg : float
        Ridge ``lambda >= 0`` added to the diagonal.
    overwrite : bool, default False
        Factor ``K`` in place (no ``n x n`` copy; NumPy).
    resolution : float, optional
        Relative accuracy of ``K``'s entries (see :func:`cholesky_jittered`).

    Returns
    -------
    DirectResult
    """
    start = time.perf_counter()
    if B.shape[0] != K.shape[0]:
        raise ValueError(f"Expected B with as many rows as K, found K {K.shape} and B {B.shape}.")
    eps = float(np.finfo(K.dtype).eps) if resolution is None else resolution
    factor, jitter = cholesky_jittered(
        K,
        reg,
        overwrite=overwrite,
        resolution=eps,
        max_jitter=coarse_jitter_limit(eps, reg),
    )
    B = B.astype(K.dtype, copy=False)
    x = solve_triangular(factor, solve_triangular(factor, B, lower=True), lower=True, trans=True)
    return DirectResult(x=x, jitter=jitter, seconds=time.perf_counter() - start)


def solve_mixed(
    K: Any,
    B: Any,
    reg: float,
    *,
    tol: float = MIXED_TOL,
    max_iter: int = MIXED_MAX_ITER,
    scratch: Any = None,
    resolution: float | None = None,
) -> DirectResult:
    """Solve ``(K + reg I) x = B`` to float64 accuracy with a float32 Cholesky factor.

    The float32 factor of ``K + reg I`` (half the flops and memory traffic of a float64 one, far
    less on GPUs) preconditions conjugate gradient on the float64 system; the preconditioned matrix
    is the identity up to the factor's float32 error, so a few iterations (each one product with
    ``K``) reach ``tol``. Measured on feature-learned kernels of real data: 1-2 iterations to a
    relative residual of 1e-4. If the float32 matrix is not positive definite, a jitter goes into
    the preconditioner only (the system solved is unchanged; convergence is slower); if CG does not
    reach ``tol`` in ``max_iter`` iterations, the float64 Cholesky of :func:`solve_direct` is used.

    Parameters
    ----------
    K : array, shape (n, n), float64
        Symmetric positive semi-definite; left intact.
    B : array, shape (n, c)
    reg : float
    tol : float
        Relative residual ``||B - (K + reg I) x|| / ||B||`` of every column.
    max_iter : int
    scratch : array, shape (n, n), float32, optional
        ``K`` in float32, which may be overwritten by its factor (saves a copy when the kernel was
        computed in float32).
    resolution : float, optional
        Relative accuracy of ``K``'s entries, for the float64 Cholesky that follows a refinement
        that did not converge (see :func:`cholesky_jittered`).

    Returns
    -------
    DirectResult
        ``jitter`` is 0 (no jitter enters the system); the record holds the iterations, the
        preconditioner's jitter and the final residual.
    """
    from rfmdist.solvers.cg import conjugate_gradient

    start = time.perf_counter()
    xp = get_namespace(K)
    factor, factor_jitter = cholesky_jittered(
        K.astype(xp.float32) if scratch is None else scratch,
        reg,
        what="float32 K + reg*I",
        warn=False,
        overwrite=True,
    )

    def precondition(R: Any) -> Any:
        R32 = R.astype(xp.float32)
        inner = solve_triangular(factor, R32, lower=True)
        return solve_triangular(factor, inner, lower=True, trans=True).astype(R.dtype)

    B = B.astype(K.dtype, copy=False)
    result = conjugate_gradient(
        lambda V: K @ V + reg * V, B, preconditioner=precondition, tol=tol, max_iter=max_iter
    )
    extra = {
        "factor_dtype": "float32",
        "factor_jitter": factor_jitter,
        "iterations": result.iterations,
        "residual": max(result.residuals[-1]),
    }
    if not result.converged:
        logger.info(
            "float32-preconditioned CG reached %.3g after %d iterations (target %.3g); solving "
            "by float64 Cholesky instead",
            max(result.residuals[-1]),
            result.iterations,
            tol,
        )
        fallback = solve_direct(K, B, reg, resolution=resolution)
        return DirectResult(
            fallback.x,
            fallback.jitter,
            time.perf_counter() - start,
            solver="mixed",
            extra=extra | {"fallback": "direct"},
        )
    return DirectResult(result.x, 0.0, time.perf_counter() - start, solver="mixed", extra=extra)
