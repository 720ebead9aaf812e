"""Preconditioned conjugate gradient for symmetric positive definite systems with many right-hand sides.

The solver knows nothing about kernels: it takes a mat-vec callable, a preconditioner and a callback.
Each column of the right-hand side converges on its own (converged columns stop moving), the exact
residual ``B - A x`` is recomputed every ``restart_every`` iterations to clear the drift of the
recurrence, and the relative residual of every column is recorded per iteration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rfmdist.backend import get_namespace, to_numpy

logger = logging.getLogger(__name__)

MatVec = Callable[[Any], Any]
Callback = Callable[[int, Any, list[float]], bool | None]


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes
    ----------
    x : array, shape (n, c)
    iterations : int
        Iterations run (each costs one mat-vec, plus one per exact-residual recomputation).
    converged : bool
        True if every column reached the tolerance.
    residuals : list of list of float
        Relative residual ``||b - A x|| / ||b||`` of every column, before the first and after every
        iteration.
    seconds : float
    """

    x: Any
    iterations: int
    converged: bool
    residuals: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for a fit's history."""
        return {
            "solver": "pcg",
            "iterations": self.iterations,
            "converged": self.converged,
            "residuals": self.residuals,
            "seconds": self.seconds,
        }


def conjugate_gradient(
    matvec: MatVec,
    B: Any,
    *,
    preconditioner: Callable[[Any], Any] | None = None,
    x0: Any = None,
    tol: float = 1e-6,
    max_iter: int = 200,
    restart_every: int = 20,
    callback: Callback | None = None,
) -> CGResult:
    """Solve ``A X = B`` for SPD ``A`` given as ``matvec`` by preconditioned conjugate gradient.

    Parameters
    ----------
    matvec : callable
        ``matvec(V)`` returns ``A V`` for ``V`` of shape (n, c).
    B : array, shape (n, c)
        Right-hand sides (NumPy or CuPy; the iterate lives in the same namespace and dtype).
    preconditioner : callable, optional
        ``preconditioner(R)`` returns ``P^{-1} R`` for a symmetric positive definite ``P``.
    x0 : array, shape (n, c), optional
        Starting point (zero by default).
    tol : float
        Stop a column when ``||b - A x|| / ||b|| <= tol``.
    max_iter : int
    restart_every : int
        Recompute the exact residual every this many iterations (0 never).
    callback : callable, optional
        ``callback(iteration, x, relative_residuals)`` after each iteration; returning True stops.

    Returns
    -------
    CGResult
    """
    xp = get_namespace(B)
    start = time.perf_counter()
    b_norm = xp.linalg.norm(B, axis=0)
    b_norm = xp.where(b_norm > 0, b_norm, 1)
    if x0 is None:
        x = xp.zeros_like(B)
        r = B.copy()
    else:
        x = xp.asarray(x0, dtype=B.dtype).copy()
        r = B - matvec(x)
    apply_precond = preconditioner or (lambda v: v)
    z = apply_precond(r)
    p = z.copy()
    rz = (r * z).sum(axis=0)
    rel = xp.linalg.norm(r, axis=0) / b_norm
    active = rel > tol
    residuals = [to_numpy(rel).tolist()]
    iteration = 0
    while bool(active.any()) and iteration < max_iter:
        iteration += 1
        Ap = matvec(p)
        pAp = (p * Ap).sum(axis=0)
        safe = active & (pAp > 0)
        alpha = xp.where(safe, rz / xp.where(safe, pAp, 1), 0)
        x += alpha * p
        if restart_every and iteration % restart_every == 0:
            r = B - matvec(x)
        else:
            r -= alpha * Ap
        rel = xp.linalg.norm(r, axis=0) / b_norm
        residuals.append(to_numpy(rel).tolist())
        active = active & (rel > tol) & safe
        z = apply_precond(r)
        rz_new = (r * z).sum(axis=0)
        beta = xp.where(active, rz_new / xp.where(rz != 0, rz, 1), 0)
        p = z + beta * p
        rz = rz_new
        logger.debug("CG iteration %d: max relative residual %.3g", iteration, float(rel.max()))
        if callback is not None and callback(iteration, x, residuals[-1]):
            break
    converged = not bool(active.any()) and bool((rel <= tol).all())
    return CGResult(
        x=x,
        iterations=iteration,
        converged=converged,
        residuals=residuals,
        seconds=time.perf_counter() - start,
    )
