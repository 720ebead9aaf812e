"""Kernels with a learned feature matrix, evaluated on row blocks against a set of centers.

The two kernels of the RFM paper, with a positive semi-definite feature matrix ``M`` (full ``(d, d)`` or
diagonal ``(d,)``) and bandwidth ``L``::

    laplace:  K(x, z) = exp(-||x - z||_M / L)
    gaussian: K(x, z) = exp(-||x - z||_M^2 / (2 L^2)),     ||u||_M = sqrt(u^T M u)

A kernel is prepared once per pass (:func:`prepare_kernel`): its centers transformed by a root of
``M`` (:class:`PreparedKernel`), then evaluated on row blocks. The squared distances come from the
distance GEMM of :mod:`rfmdist.distances`, which also finds and recomputes the pairs closer than the
GEMM resolves (the *near pairs*), so that a row equal to a center is at distance exactly 0.

Every function takes NumPy or CuPy arrays and returns arrays of the same namespace.

What follows the distance GEMM (near pairs, clamp, ``sqrt``, ``exp``) runs by one of two backends
(:func:`kernel_backend`, ``RFMDIST_KERNEL_BACKEND``): ``'fused'``, the default, in one compiled pass on
cache-sized tiles (:mod:`rfmdist.fused`), or ``'reference'``, this module's NumPy/CuPy array
operations, kept so that tests compare the two and benchmarks time them side by side. Both take the
distances from :mod:`rfmdist.distances`; :mod:`rfmdist.fused` imports nothing from this module.

The distance helpers are re-exported here (in ``__all__``) for the code that imports them from this
module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from rfmdist import fused
from rfmdist.backend import get_namespace

# The distance helpers, shared with rfmdist.fused, re-exported (__all__) for the callers, tests and
# benchmarks that import them from this module.
from rfmdist.distances import (
    LAPLACE_GRADIENT_GUARD,
    KernelCenters,
    NearLimits,
    TransformedRows,
    apply_metric_root,
    augment_centers,
    augment_rows,
    gemm_distances,
    gemm_epsilon,
    near_factor,
    recompute_near_pairs,
)
from rfmdist.metric import Metric, metric_root
from rfmdist.params import switch_value

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "KERNELS",
    "LAPLACE_GRADIENT_GUARD",
    "KernelCenters",
    "KernelName",
    "NearLimits",
    "PreparedKernel",
    "TransformedRows",
    "apply_metric_root",
    "augment_centers",
    "augment_rows",
    "gemm_distances",
    "gemm_epsilon",
    "kernel_backend",
    "kernel_block",
    "metric_root",
    "near_factor",
    "prepare_kernel",
    "recompute_near_pairs",
]

KernelName = Literal["laplace", "gaussian"]
KERNELS: tuple[str, ...] = ("laplace", "gaussian")


BACKENDS: tuple[str, ...] = ("fused", "reference")
BACKEND_ENV_VAR = "RFMDIST_KERNEL_BACKEND"


def kernel_backend(backend: str | None = None) -> str:
    """The kernel backend: ``backend``, else ``$RFMDIST_KERNEL_BACKEND``, else ``'fused'``.

    ``'fused'`` runs a block's elementwise tail in one pass (:mod:`rfmdist.fused`); ``'reference'`` runs
    it as NumPy/CuPy array operations. Both give the same kernel (to a few ulps).
    """
    return switch_value(
        "backend",
        backend,
        BACKEND_ENV_VAR,
        BACKENDS,
        "fused",
        "set it to 'fused' (the default) or 'reference' (NumPy/CuPy array operations, for "
        "comparison).",
    )


@dataclass(frozen=True)
class PreparedKernel(KernelCenters):
    """A kernel with its centers already transformed: reused for every row block of a pass.

    Build it with :func:`prepare_kernel`; it is small (``m x d``) and is what a distributed pass sends to
    the workers once (with its backend, so that every worker computes the same way). Its attributes
    are :class:`~rfmdist.distances.KernelCenters`' (what the distances and either backend need),
    and:

    Attributes
    ----------
    backend : {'fused', 'reference'}
        How a block's elementwise tail runs (:func:`kernel_backend`).
    """

    backend: str = "fused"

    @property
    def fused_tiles(self) -> bool:
        """True when passes run on the fused backend's CPU tiles (:mod:`rfmdist.fused`): the fused
        backend with NumPy centers."""
        return self.backend == "fused" and get_namespace(self.centers_t) is np

    def subset(self, rows: Any) -> PreparedKernel:
        """The same kernel with only the centers ``rows`` (an index array), shape (r,)."""
        return replace(
            self,
            centers=self.centers[rows],
            centers_t=self.centers_t[rows],
            centers_sq=self.centers_sq[rows],
            centers_aug=self.centers_aug[rows],
        )

    def astype(self, dtype: Any) -> PreparedKernel:
        """The same kernel evaluated in ``dtype`` (the centers and ``M^{1/2}`` cast, the centers
        transformed again in it); itself when it is already of ``dtype``."""
        if np.dtype(dtype) == self.dtype:
            return self
        S = None if self.S is None else self.S.astype(dtype)
        return replace(self, S=S, **_centers_fields(self.centers.astype(dtype), S))

    def _fused(self, rows: TransformedRows, *, weights: bool, out: Any = None) -> Any:
        """The kernel (or gradient weights) by the fused backend: tiles on the CPU
        (:func:`rfmdist.fused.block`, written straight into ``out`` when it is C-contiguous and of
        the kernel's dtype), the GEMM then one elementwise kernel on a GPU."""
        if self.fused_tiles:
            direct = (
                out is not None and out.flags.c_contiguous and out.dtype == self.centers_t.dtype
            )
            return fused.block(self, rows, weights=weights, out=out if direct else None)
        dist, limits = gemm_distances(rows.Xt, rows.sq, self.centers_aug, scale=self.distance_scale)
        return fused.kernel_tail(dist, limits, rows, self, weights=weights)

    def _scaled_distances(self, rows: TransformedRows) -> tuple[Any, tuple[Any, Any]]:
        """``||x - z||_M^2`` times :attr:`distance_scale` by the reference path, with the
        recomputed (near) pairs."""
        dist, limits = gemm_distances(rows.Xt, rows.sq, self.centers_aug, scale=self.distance_scale)
        return dist, recompute_near_pairs(dist, limits, rows, self)

    def gradient_weights(self, rows: TransformedRows) -> Any:
        """The kernel weights of the predictor's gradient (:mod:`rfmdist.agop`): ``K`` (Gaussian) or
        ``K / ||x - z||_M`` (Laplace, 0 for centers closer than :data:`LAPLACE_GRADIENT_GUARD`, the
        ``x = z`` singularity).

        Parameters
        ----------
        rows : TransformedRows
            The rows (:meth:`transform`), b of them.

        Returns
        -------
        array, shape (b, m)
        """
        if self.backend == "fused":
            return self._fused(rows, weights=True)
        xp = get_namespace(rows.Xt)
        scaled, (near_rows, cols) = self._scaled_distances(rows)
        if self.kernel == "gaussian":
            return xp.exp(xp.negative(scaled, out=scaled), out=scaled)
        root = xp.sqrt(scaled, out=scaled)  # ||x - z||_M / L
        weights = xp.exp(xp.negative(root))
        root *= self.bandwidth
        with np.errstate(divide="ignore", invalid="ignore"):
            weights /= root
        # Every pair within the guard is a near pair: the x = z singularity gets weight 0.
        singular = root[near_rows, cols] < LAPLACE_GRADIENT_GUARD
        weights[near_rows[singular], cols[singular]] = 0
        return weights

    def block(self, X: Any, out: Any = None) -> Any:
        """Kernel values ``K(X, Z)``; X shape (b, d), result shape (b, m).

        ``out`` (shape (b, m)), if given, receives them: the fused CPU path writes its tiles straight
        into a C-contiguous one of the kernel's dtype, the others copy their block into it.
        """
        rows = self.transform(X)
        if self.backend == "fused":
            values = self._fused(rows, weights=False, out=out)
        else:
            xp = get_namespace(X)
            values, _ = self._scaled_distances(rows)
            if self.kernel == "laplace":
                xp.sqrt(values, out=values)
            xp.negative(values, out=values)
            xp.exp(values, out=values)
        if out is None or values is out:
            return values
        out[...] = values
        return out


def prepare_kernel(
    centers: Any,
    M: Any,
    *,
    kernel: str = "laplace",
    bandwidth: float = 10.0,
    backend: str | None = None,
) -> PreparedKernel:
    """Transform the centers once for a pass of kernel evaluations.

    Parameters
    ----------
    centers : array, shape (m, d)
    M : Metric, or array of shape (d, d) or (d,)
        The feature matrix: a :class:`~rfmdist.metric.Metric` (whose root is computed once, however
        many kernels are prepared from it), or a full matrix or its diagonal (rooted here).
    kernel : {'laplace', 'gaussian'}
    bandwidth : float
        ``L > 0``.
    backend : {'fused', 'reference'}, optional
        By default :func:`kernel_backend`'s choice (``$RFMDIST_KERNEL_BACKEND``, else 'fused').
    """
    if kernel not in KERNELS:
        raise ValueError(
            f"Expected kernel in {KERNELS}, found {kernel!r}; pass kernel='laplace' or 'gaussian'."
        )
    if not bandwidth > 0:
        raise ValueError(f"Expected bandwidth > 0, found {bandwidth!r}; pass a positive float.")
    if isinstance(M, Metric):
        xp = get_namespace(centers)
        S = None if M.root is None else xp.asarray(M.root, dtype=centers.dtype)
    else:
        xp = get_namespace(centers, M)
        S = metric_root(xp.asarray(M, dtype=centers.dtype))
    return PreparedKernel(
        S=S,
        kernel=kernel,
        bandwidth=float(bandwidth),
        backend=kernel_backend(backend),
        **_centers_fields(centers, S),
    )


def _centers_fields(centers: Any, S: Any) -> dict[str, Any]:
    """The centers' fields of a :class:`PreparedKernel` with ``M^{1/2} = S``: the centers, their
    transform, its squared norms and the augmented GEMM side."""
    centers_t = apply_metric_root(centers, S)
    centers_sq = (centers_t * centers_t).sum(axis=1)
    return {
        "centers": centers,
        "centers_t": centers_t,
        "centers_sq": centers_sq,
        "centers_aug": augment_centers(centers_t, centers_sq),
    }


def kernel_block(
    X: Any, Z: Any, M: Any, *, kernel: str = "laplace", bandwidth: float = 10.0
) -> Any:
    """Kernel matrix ``K_M(X, Z)`` of a row block against centers.

    Parameters
    ----------
    X : array, shape (b, d)
    Z : array, shape (m, d)
    M : array, shape (d, d) or (d,)
    kernel : {'laplace', 'gaussian'}
    bandwidth : float

    Returns
    -------
    array, shape (b, m), dtype of ``Z``

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> kernel_block(X, X, np.ones(2), bandwidth=5.0).round(4)
    array([[1.    , 0.3679],
           [0.3679, 1.    ]])
    """
    return prepare_kernel(Z, M, kernel=kernel, bandwidth=bandwidth).block(X)
