"""Direct solve of a regularised kernel system by Cholesky, with a jittered retry."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfmdist.backend import cholesky_lower, get_namespace, solve_triangular
from rfmdist.exceptions import NumericalWarning

logger = logging.getLogger(__name__)

MAX_JITTER_TRIES = 6


@dataclass(frozen=True)
class DirectResult:
    """Solution of ``(K + reg I) x = B`` and how it was obtained.

    Attributes
    ----------
    x : array, shape (n, c)
    jitter : float
        Extra diagonal added beyond ``reg`` to make the factorisation succeed (0 if none).
    seconds : float
    """

    x: Any
    jitter: float
    seconds: float

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for a fit's history."""
        return {"solver": "direct", "jitter": self.jitter, "seconds": self.seconds}


def cholesky_jittered(
    A: Any,
    shift: float,
    *,
    what: str = "K + reg*I",
    resolution: float | None = None,
    warn: bool = True,
) -> tuple[Any, float]:
    """Lower Cholesky factor of ``A + (shift + jitter) I`` with the smallest jitter that works.

    The jitter starts at 0, then ``100 eps(dtype) mean(diag A)`` growing 10x per try, with a
    :class:`~rfmdist.exceptions.NumericalWarning` when used; after ``MAX_JITTER_TRIES`` the error says how
    to fix it.

    Parameters
    ----------
    A : array, shape (n, n)
        Symmetric positive semi-definite; left intact.
    shift : float
        Diagonal shift that is part of the problem (the ridge), not a safeguard.
    what : str
        Name of the matrix in messages.
    resolution : float, optional
        Relative accuracy of ``A``'s entries (default: the epsilon of its dtype). A float32 kernel
        cast to float64 for the factorisation is only float32-accurate: pass float32's epsilon.
    warn : bool, default True
        Warn when a jitter was needed. Preconditioners pass False: their jitter changes how fast CG
        converges, never the solution.

    Returns
    -------
    factor : array, shape (n, n)
        Lower triangular ``L`` with ``L L^T = A + (shift + jitter) I``.
    jitter : float
    """
    xp = get_namespace(A)
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"Expected a square matrix for {what}, found shape {A.shape}.")
    diag_mean = float(xp.abs(xp.diagonal(A)).mean()) if n else 0.0
    eps = float(np.finfo(A.dtype).eps) if resolution is None else resolution
    base = 100 * eps * max(diag_mean, 1e-30)
    index = xp.arange(n)
    jitter = 0.0
    for attempt in range(MAX_JITTER_TRIES + 1):
        shifted = A.copy()
        shifted[index, index] += shift + jitter
        try:
            factor = cholesky_lower(shifted)
        except np.linalg.LinAlgError:
            logger.debug("Cholesky of %s failed with jitter %.3g (try %d)", what, jitter, attempt)
            jitter = base * 10.0**attempt
            continue
        if jitter and not warn:
            logger.debug("%s factored with an extra diagonal jitter of %.3g", what, jitter)
        elif jitter:
            warnings.warn(
                f"{what} was not numerically positive definite in {A.dtype}; factored it with an "
                f"extra diagonal jitter of {jitter:.3g}. Use dtype='float64' or a larger reg to "
                "avoid it.",
                NumericalWarning,
                stacklevel=3,
            )
        return factor, jitter
    raise np.linalg.LinAlgError(
        f"Expected {what} to be positive definite, but Cholesky failed in {A.dtype} even with a "
        f"diagonal jitter of {jitter:.3g}. Check the input for duplicated or degenerate rows, or use "
        "dtype='float64' or a larger reg."
    )


def solve_direct(K: Any, B: Any, reg: float) -> DirectResult:
    """Solve ``(K + reg I) x = B`` by Cholesky factorisation (jittered if needed).

    Parameters
    ----------
    K : array, shape (n, n)
        Symmetric positive semi-definite matrix; left intact.
    B : array, shape (n, c)
    reg : float
        Ridge ``lambda >= 0`` added to the diagonal.

    Returns
    -------
    DirectResult
    """
    start = time.perf_counter()
    if B.shape[0] != K.shape[0]:
        raise ValueError(f"Expected B with as many rows as K, found K {K.shape} and B {B.shape}.")
    factor, jitter = cholesky_jittered(K, reg)
    B = B.astype(K.dtype, copy=False)
    x = solve_triangular(factor, solve_triangular(factor, B, lower=True), lower=True, trans=True)
    return DirectResult(x=x, jitter=jitter, seconds=time.perf_counter() - start)
