"""Kernels with a learned feature matrix, evaluated on row blocks against a set of centers.

The two kernels of the RFM paper, with a positive semi-definite feature matrix ``M`` (full ``(d, d)`` or
diagonal ``(d,)``) and bandwidth ``L``::

    laplace:  K(x, z) = exp(-||x - z||_M / L)
    gaussian: K(x, z) = exp(-||x - z||_M^2 / (2 L^2)),     ||u||_M = sqrt(u^T M u)

Distances are computed by GEMM in the transformed space ``x' = x S`` with ``S = M^{1/2}`` (``S = sqrt(M)``
elementwise for a diagonal ``M``), where ``||x - z||_M = ||x' - z'||``. Distances below the floating-point
resolution of the GEMM identity ``|x'|^2 + |z'|^2 - 2 x'.z'`` are set to exactly zero, so a point's kernel
value against itself is exactly 1 in float32 as in float64. Pairs closer than the square root of that
resolution are recomputed from their differences: the identity's absolute error (a few eps |x'|^2)
becomes a large relative error for near-coincident points, which the Laplace kernel's square root
turned into entry errors of order sqrt(eps) and numerically indefinite kernels (eigenvalues down to
-2e-6 in float64 for clusters of near-duplicate rows).

Every function takes NumPy or CuPy arrays and returns arrays of the same namespace.

What follows the distance GEMM (near pairs, clamp, ``sqrt``, ``exp``) runs by one of two backends
(:func:`kernel_backend`, ``RFMDIST_KERNEL_BACKEND``): ``'fused'``, the default, in one compiled pass on
cache-sized tiles (:mod:`rfmdist.fused`), or ``'reference'``, this module's NumPy/CuPy array
operations, kept so that tests compare the two and benchmarks time them side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from rfmdist.backend import get_namespace

KernelName = Literal["laplace", "gaussian"]
KERNELS: tuple[str, ...] = ("laplace", "gaussian")

# Below this distance a Laplace gradient term is treated as the x = z singularity and dropped.
LAPLACE_GRADIENT_GUARD = 1e-10
# Relative resolution (in units of the dtype's epsilon) of squared distances computed by GEMM.
_COINCIDENCE_ULPS = 16.0


def metric_root(M: Any) -> Any:
    """Return ``S = M^{1/2}``: the symmetric PSD square root of a full ``M``, or ``sqrt(M)`` if diagonal.

    Parameters
    ----------
    M : array, shape (d, d) or (d,)
        Symmetric positive semi-definite feature matrix, or its diagonal. Negative eigenvalues (round-off)
        are clipped to zero.

    Returns
    -------
    array, shape like ``M``
    """
    xp = get_namespace(M)
    if M.ndim == 1:
        return xp.sqrt(xp.clip(M, 0, None))
    evals, evecs = xp.linalg.eigh((M + M.T) / 2)
    return (evecs * xp.sqrt(xp.clip(evals, 0, None))) @ evecs.T


def apply_metric_root(X: Any, S: Any) -> Any:
    """Map rows to the transformed space: ``X @ S`` (full) or ``X * S`` (diagonal). Shape (n, d)."""
    return X * S if S.ndim == 1 else X @ S


def squared_distances(
    Xt: Any,
    Zt: Any,
    x_sq: Any,
    z_sq: Any,
    *,
    scale: float = 1.0,
    centers_aug: Any = None,
    near_pairs: bool = False,
) -> Any:
    """Scaled squared Euclidean distances ``scale * ||x' - z'||^2`` by one GEMM.

    :func:`gemm_distances`, then the clamp at zero and the near pairs recomputed
    (:func:`recompute_near_pairs`).

    Parameters
    ----------
    Xt : array, shape (b, d)
    Zt : array, shape (m, d)
    x_sq, z_sq : arrays, shapes (b,) and (m,)
        Squared row norms of ``Xt`` and ``Zt``.
    scale : float
        Factor applied to the distances (folded into the GEMM).
    centers_aug : array, shape (m, d + 2), optional
        ``[Zt, z_sq, 1]`` precomputed (see :class:`PreparedKernel`).
    near_pairs : bool, default False
        Also return the (row, column) indices of the pairs recomputed from their differences:
        every pair closer than the GEMM's resolution is among them (coincident points included).

    Returns
    -------
    array, shape (b, m)
        With ``near_pairs``: ``(distances, (rows, cols))``.
    """
    if centers_aug is None:
        centers_aug = augment_centers(Zt, z_sq)
    dist, limit = gemm_distances(Xt, x_sq, centers_aug, scale=scale)
    near = recompute_near_pairs(dist, limit, Xt, Zt, scale)
    return (dist, near) if near_pairs else dist


def gemm_distances(Xt: Any, x_sq: Any, centers_aug: Any, *, scale: float) -> tuple[Any, Any]:
    """The distance GEMM, before the clamp at zero, and each row's near-pair limit.

    Parameters
    ----------
    Xt : array, shape (b, d)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, d + 2)
        ``[Zt, z_sq, 1]`` (:func:`augment_centers`).
    scale : float

    Returns
    -------
    dist : array, shape (b, m)
    limit : array, shape (b,)
        See :func:`augment_rows`.
    """
    rows_aug, limit = augment_rows(Xt, x_sq, centers_aug, scale=scale)
    return rows_aug @ centers_aug.T, limit


def augment_rows(Xt: Any, x_sq: Any, centers_aug: Any, *, scale: float) -> tuple[Any, Any]:
    """The row side of the distance GEMM, and each row's near-pair limit.

    The norms and the coincidence threshold are folded into the GEMM by augmenting both sides
    (``[-2 s x', s, s (|x'|^2 - t)] . [z', |z'|^2, 1]``). ``t`` is the resolution of the GEMM identity
    (16 ulps of ``|x'|^2 + max |z'|^2``): distances below it become exactly zero once clamped, and
    the others move by less than their own rounding error. Pairs whose clamped distance is below the
    row's ``limit`` (the square root of that resolution, scaled) are the near pairs: the GEMM's
    absolute error is large relative to their distance.

    Parameters
    ----------
    Xt : array, shape (b, d)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, d + 2)
    scale : float

    Returns
    -------
    rows_aug : array, shape (b, d + 2)
    limit : array, shape (b,)
        ``inf`` for a row and centers that are all zero (every pair is near).
    """
    xp = get_namespace(Xt, centers_aug)
    resolution = _COINCIDENCE_ULPS * float(np.finfo(Xt.dtype).eps)
    z_max = float(centers_aug[:, -2].max()) if centers_aug.shape[0] else 0.0
    rows_aug = xp.empty((Xt.shape[0], Xt.shape[1] + 2), dtype=Xt.dtype)
    rows_aug[:, :-2] = Xt * (-2.0 * scale)
    rows_aug[:, -2] = scale
    rows_aug[:, -1] = (x_sq - resolution * (x_sq + z_max)) * scale
    limit = scale * xp.sqrt(resolution * (x_sq + z_max))
    # All-zero rows against all-zero centers have no resolution to speak of: every pair is near.
    limit = xp.where(limit > 0, limit, xp.inf).astype(Xt.dtype, copy=False)
    return rows_aug, limit


def recompute_near_pairs(dist: Any, limit: Any, Xt: Any, Zt: Any, scale: float) -> tuple[Any, Any]:
    """Clamp :func:`gemm_distances`'s output at zero and recompute its near pairs from their
    differences, in place (the reference path's array operations).

    A row-wise minimum (a fast reduction) finds the rows that have any; usually few.

    Returns
    -------
    (rows, cols) : arrays of int
        The recomputed pairs.
    """
    xp = get_namespace(dist)
    xp.maximum(dist, 0, out=dist)
    empty = xp.zeros(0, dtype=xp.int64)
    rows, cols = empty, empty
    if dist.size:
        near_rows = xp.nonzero(dist.min(axis=1) < limit)[0]
        if near_rows.shape[0]:
            hits, cols = xp.nonzero(dist[near_rows] < limit[near_rows, None])
            rows = near_rows[hits]
            diff = Xt[rows] - Zt[cols]
            dist[rows, cols] = scale * (diff * diff).sum(axis=1)
    return rows, cols


def augment_centers(Zt: Any, z_sq: Any) -> Any:
    """``[Zt, z_sq, 1]``, shape (m, d + 2): the center side of :func:`squared_distances`."""
    xp = get_namespace(Zt)
    out = xp.empty((Zt.shape[0], Zt.shape[1] + 2), dtype=Zt.dtype)
    out[:, :-2] = Zt
    out[:, -2] = z_sq
    out[:, -1] = 1
    return out


BACKENDS: tuple[str, ...] = ("fused", "reference")
BACKEND_ENV_VAR = "RFMDIST_KERNEL_BACKEND"


def kernel_backend(backend: str | None = None) -> str:
    """The kernel backend: ``backend``, else ``$RFMDIST_KERNEL_BACKEND``, else ``'fused'``.

    ``'fused'`` runs a block's elementwise tail in one pass (:mod:`rfmdist.fused`); ``'reference'`` runs
    it as NumPy/CuPy array operations. Both give the same kernel (to a few ulps).
    """
    chosen = backend if backend is not None else os.environ.get(BACKEND_ENV_VAR) or "fused"
    if chosen not in BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV_VAR
        raise ValueError(
            f"Expected {source} in {BACKENDS}, found {chosen!r}; set it to 'fused' (the default) "
            "or 'reference' (NumPy/CuPy array operations, for comparison)."
        )
    return chosen


@dataclass(frozen=True)
class PreparedKernel:
    """A kernel with its centers already transformed: reused for every row block of a pass.

    Build it with :func:`prepare_kernel`; it is small (``m x d``) and is what a distributed pass sends to
    the workers once (with its backend, so that every worker computes the same way).

    Attributes
    ----------
    S : array, shape (d, d) or (d,)
        ``M^{1/2}``.
    centers_t : array, shape (m, d)
        Centers in the transformed space.
    centers_sq : array, shape (m,)
        Their squared norms.
    kernel : {'laplace', 'gaussian'}
    bandwidth : float
    centers_aug : array, shape (m, d + 2)
        ``[centers_t, centers_sq, 1]`` for the fused distance GEMM.
    backend : {'fused', 'reference'}
        How a block's elementwise tail runs (:func:`kernel_backend`).
    """

    S: Any
    centers_t: Any
    centers_sq: Any
    kernel: str
    bandwidth: float
    centers_aug: Any
    backend: str = "fused"

    @property
    def diag(self) -> bool:
        """True when ``M`` is diagonal."""
        return self.S.ndim == 1

    @property
    def fused_tiles(self) -> bool:
        """True when passes run on the fused backend's CPU tiles (:mod:`rfmdist.fused`): the fused
        backend with NumPy centers."""
        return self.backend == "fused" and get_namespace(self.centers_t) is np

    @property
    def n_centers(self) -> int:
        """Number of centers ``m``."""
        return int(self.centers_t.shape[0])

    @property
    def distance_scale(self) -> float:
        """Factor folded into the squared distances: ``1/L^2`` (Laplace) or ``1/(2 L^2)`` (Gaussian)."""
        factor = 1.0 if self.kernel == "laplace" else 2.0
        return 1.0 / (factor * self.bandwidth**2)

    def subset(self, rows: Any) -> PreparedKernel:
        """The same kernel with only the centers ``rows`` (an index array), shape (r,)."""
        return replace(
            self,
            centers_t=self.centers_t[rows],
            centers_sq=self.centers_sq[rows],
            centers_aug=self.centers_aug[rows],
        )

    def transform(self, X: Any) -> tuple[Any, Any]:
        """Transformed rows ``X S`` and their squared norms; shapes (b, d) and (b,)."""
        Xt = apply_metric_root(X.astype(self.centers_t.dtype, copy=False), self.S)
        return Xt, (Xt * Xt).sum(axis=1)

    def _fused(self, Xt: Any, x_sq: Any, *, weights: bool, out: Any = None) -> Any:
        """The kernel (or gradient weights) by the fused backend: tiles on the CPU
        (:func:`rfmdist.fused.block`, written straight into ``out`` when it is C-contiguous and of
        the kernel's dtype), the GEMM then one elementwise kernel on a GPU."""
        from rfmdist import fused

        if self.fused_tiles:
            direct = (
                out is not None and out.flags.c_contiguous and out.dtype == self.centers_t.dtype
            )
            return fused.block(self, Xt, x_sq, weights=weights, out=out if direct else None)
        scale = self.distance_scale
        dist, limit = gemm_distances(Xt, x_sq, self.centers_aug, scale=scale)
        return fused.kernel_tail(
            dist,
            limit,
            Xt,
            self.centers_t,
            scale=scale,
            kernel=self.kernel,
            bandwidth=self.bandwidth,
            weights=weights,
            guard=LAPLACE_GRADIENT_GUARD,
        )

    def _scaled_distances(self, Xt: Any, x_sq: Any, near_pairs: bool = False) -> Any:
        return squared_distances(
            Xt,
            self.centers_t,
            x_sq,
            self.centers_sq,
            scale=self.distance_scale,
            centers_aug=self.centers_aug,
            near_pairs=near_pairs,
        )

    def gradient_weights(self, Xt: Any, x_sq: Any) -> Any:
        """The kernel weights of the predictor's gradient (:mod:`rfmdist.agop`): ``K`` (Gaussian) or
        ``K / ||x - z||_M`` (Laplace, 0 for centers closer than :data:`LAPLACE_GRADIENT_GUARD`, the
        ``x = z`` singularity).

        Parameters
        ----------
        Xt, x_sq : arrays, shapes (b, d) and (b,)
            Transformed rows and their squared norms (:meth:`transform`).

        Returns
        -------
        array, shape (b, m)
        """
        if self.backend == "fused":
            return self._fused(Xt, x_sq, weights=True)
        xp = get_namespace(Xt)
        scaled, (rows, cols) = self._scaled_distances(Xt, x_sq, near_pairs=True)
        if self.kernel == "gaussian":
            return xp.exp(xp.negative(scaled, out=scaled), out=scaled)
        root = xp.sqrt(scaled, out=scaled)  # ||x - z||_M / L
        weights = xp.exp(xp.negative(root))
        root *= self.bandwidth
        with np.errstate(divide="ignore", invalid="ignore"):
            weights /= root
        # Every pair within the guard is a near pair: the x = z singularity gets weight 0.
        singular = root[rows, cols] < LAPLACE_GRADIENT_GUARD
        weights[rows[singular], cols[singular]] = 0
        return weights

    def block(self, X: Any, out: Any = None) -> Any:
        """Kernel values ``K(X, Z)``; X shape (b, d), result shape (b, m).

        ``out`` (shape (b, m)), if given, receives them: the fused CPU path writes its tiles straight
        into a C-contiguous one of the kernel's dtype, the others copy their block into it.
        """
        Xt, x_sq = self.transform(X)
        if self.backend == "fused":
            values = self._fused(Xt, x_sq, weights=False, out=out)
        else:
            xp = get_namespace(X)
            values = self._scaled_distances(Xt, x_sq)
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
    M : array, shape (d, d) or (d,)
        Feature matrix (full) or its diagonal.
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
    xp = get_namespace(centers, M)
    S = metric_root(xp.asarray(M, dtype=centers.dtype))
    centers_t = apply_metric_root(centers, S)
    centers_sq = (centers_t * centers_t).sum(axis=1)
    return PreparedKernel(
        S=S,
        centers_t=centers_t,
        centers_sq=centers_sq,
        kernel=kernel,
        bandwidth=float(bandwidth),
        centers_aug=augment_centers(centers_t, centers_sq),
        backend=kernel_backend(backend),
    )


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
