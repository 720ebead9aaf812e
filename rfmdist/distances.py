"""Distances in a learned metric by GEMM, and the near pairs that the GEMM cannot resolve.

Both kernel paths start here: the reference path's array operations (:mod:`rfmdist.kernels`) and the
fused passes (:mod:`rfmdist.fused`). This module knows the centers, the rows and their squared
distances; what a kernel makes of a distance (clamp, ``sqrt``, ``exp``) is theirs.

Distances are computed by GEMM in the transformed space ``x' = x S`` with ``M = S S^T``
(``S = M^{1/2}``, or ``sqrt(M)`` elementwise for a diagonal ``M``), where
``||x - z||_M = ||x' - z'||``. The GEMM identity ``|x'|^2 + |z'|^2 - 2 x'.z'`` has an absolute error
of a few ulps of ``|x'|^2 + |z'|^2``, a large relative error for close pairs, which the Laplace
kernel's square root turned into entry errors of order sqrt(eps) and numerically indefinite kernels
(eigenvalues down to -2e-6 in float64 for clusters of near-duplicate rows). Such *near pairs*
(:func:`augment_rows`) are recomputed from their differences, and a row equal to a center, compared
before the transform, is at distance exactly 0: a point's kernel value against itself is exactly 1
and its Laplace gradient weight exactly 0, in float32 as in float64 and whatever the rounding of the
two transforms.

Every function takes NumPy or CuPy arrays and returns arrays of the same namespace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rfmdist.backend import TF32_EPSILON, get_namespace, tf32_enabled

# Below this distance a Laplace gradient term is treated as the x = z singularity and dropped.
LAPLACE_GRADIENT_GUARD = 1e-10
# The absolute error of a squared distance by the GEMM identity, in ulps of |x'|^2 + |z'|^2.
_GEMM_IDENTITY_ULPS = 16.0


def apply_metric_root(X: Any, S: Any) -> Any:
    """Map rows (shape (n, d)) to the transformed space: ``X`` itself (``S`` None, the identity),
    ``X * S`` (diagonal, shape (d,)) or ``X @ S`` (shape (d, k)); shape (n, k)."""
    if S is None:
        return X
    return X * S if S.ndim == 1 else X @ S


@dataclass(frozen=True)
class TransformedRows:
    """A block of rows ready for kernel evaluations against a :class:`KernelCenters`' centers.

    Attributes
    ----------
    X : array, shape (b, d)
        The rows in the kernel's dtype: the coordinates in which coincidence with a center is judged.
    Xt : array, shape (b, k)
        The rows in the transformed space, ``X S``.
    sq : array, shape (b,)
        Squared norms of ``Xt``.
    """

    X: Any
    Xt: Any
    sq: Any

    def __getitem__(self, rows: Any) -> TransformedRows:
        """The rows ``rows`` (a slice or an index array) of the block."""
        return TransformedRows(self.X[rows], self.Xt[rows], self.sq[rows])


@dataclass(frozen=True)
class KernelCenters:
    """A kernel's centers in the transformed space, with the kernel's name and bandwidth: what the
    distance GEMM, its near pairs and a kernel's elementwise tail need of the kernel, by either path.

    :class:`rfmdist.kernels.PreparedKernel` is one, with the backend that runs the tail.

    Attributes
    ----------
    S : array, shape (d, k) or (d,), or None
        A root of ``M`` (``M = S S^T``, :attr:`rfmdist.metric.Metric.root`): ``M^{1/2}``, a factor's
        transpose, a diagonal's square roots, or None for the identity.
    centers : array, shape (m, d)
        The centers in the kernel's dtype (where coincidence with a row is judged).
    centers_t : array, shape (m, k)
        Centers in the transformed space.
    centers_sq : array, shape (m,)
        Their squared norms.
    kernel : {'laplace', 'gaussian'}
    bandwidth : float
    centers_aug : array, shape (m, k + 2)
        ``[centers_t, centers_sq, 1]`` for the distance GEMM (:func:`augment_centers`).
    """

    S: Any
    centers: Any
    centers_t: Any
    centers_sq: Any
    kernel: str
    bandwidth: float
    centers_aug: Any

    @property
    def diag(self) -> bool:
        """True when ``M`` is diagonal."""
        return self.S is not None and self.S.ndim == 1

    @property
    def dtype(self) -> np.dtype:
        """The kernel's dtype."""
        return np.dtype(self.centers_t.dtype)

    @property
    def n_centers(self) -> int:
        """Number of centers ``m``."""
        return int(self.centers_t.shape[0])

    @property
    def distance_scale(self) -> float:
        """Factor folded into the squared distances: ``1/L^2`` (Laplace) or ``1/(2 L^2)`` (Gaussian)."""
        factor = 1.0 if self.kernel == "laplace" else 2.0
        return 1.0 / (factor * self.bandwidth**2)

    def transform(self, X: Any) -> TransformedRows:
        """The rows ``X`` (shape (b, d)) in the kernel's dtype, transformed (``X S``, shape (b, k)),
        with their squared norms."""
        X = X.astype(self.centers_t.dtype, copy=False)
        Xt = apply_metric_root(X, self.S)
        return TransformedRows(X, Xt, (Xt * Xt).sum(axis=1))


class NearLimits(NamedTuple):
    """The near-pair test of a block: the pair of row ``i`` and center ``j`` is near when its
    (scaled) GEMM distance is at most ``rows[i] + centers[j]`` (:func:`augment_rows`).

    Attributes
    ----------
    rows : array, shape (b,)
    centers : array, shape (m,)
    """

    rows: Any
    centers: Any


def gemm_distances(Xt: Any, x_sq: Any, centers_aug: Any, *, scale: float) -> tuple[Any, NearLimits]:
    """The distance GEMM, before the clamp at zero, and the block's near-pair limits.

    Parameters
    ----------
    Xt : array, shape (b, k)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, k + 2)
        ``[Zt, z_sq, 1]`` (:func:`augment_centers`).
    scale : float

    Returns
    -------
    dist : array, shape (b, m)
    limits : NearLimits
        See :func:`augment_rows`.
    """
    rows_aug, limits = augment_rows(Xt, x_sq, centers_aug, scale=scale)
    return rows_aug @ centers_aug.T, limits


def gemm_epsilon(dtype: Any, xp: Any = np) -> float:
    """The relative resolution of the distance GEMM's products: the dtype's epsilon, or TF32's
    (a 10-bit mantissa) for float32 CuPy GEMMs while TF32 is on (:func:`rfmdist.backend.set_tf32`)."""
    if xp is not np and np.dtype(dtype) == np.float32 and tf32_enabled():
        return TF32_EPSILON
    return float(np.finfo(dtype).eps)


def near_factor(dtype: Any, xp: Any = np) -> float:
    """``sqrt(r)``, ``r`` the GEMM identity's resolution (:data:`_GEMM_IDENTITY_ULPS` ulps): a squared
    distance below ``sqrt(r) (|x'|^2 + |z'|^2)`` may be wrong by more than ``sqrt(r)`` of itself.

    Examples
    --------
    >>> round(near_factor(np.float32), 6), round(near_factor(np.float64), 10)
    (0.001381, 5.96e-08)
    """
    return math.sqrt(_GEMM_IDENTITY_ULPS * gemm_epsilon(dtype, xp))


def augment_rows(Xt: Any, x_sq: Any, centers_aug: Any, *, scale: float) -> tuple[Any, NearLimits]:
    """The row side of the distance GEMM, and the block's near-pair limits.

    The norms are folded into the GEMM by augmenting both sides
    (``[-2 s x', s, s |x'|^2] . [z', |z'|^2, 1]``). The identity's absolute error is a few ulps of
    ``|x'|^2 + |z'|^2`` (``r (|x'|^2 + |z'|^2)``, ``r`` the resolution of :func:`near_factor`), so a
    pair whose distance is at most ``sqrt(r) (|x'|^2 + |z'|^2)`` is a *near pair*, whose relative
    error could exceed ``sqrt(r)``: it is recomputed from its difference (exactly 0 for a row equal
    to its center; :func:`recompute_near_pairs`). Every other distance keeps its own rounding, a
    relative ``sqrt(r)`` at most (1.4e-3 in float32, 6e-8 in float64) and usually far less. The
    limit is the pair's own (the row's norm plus the center's), so that a few outlying centers do
    not make every pair of the block near, and no distance is shifted: subtracting a resolution
    bound from every distance of a row to zero its coincident pairs (an earlier design) moved them
    all by the largest center's norm, which in float32 left kernels of data with outliers indefinite
    by more than the ridge (the California housing features: entry errors of 2e-3, against 2e-6).

    Parameters
    ----------
    Xt : array, shape (b, k)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, k + 2)
    scale : float

    Returns
    -------
    rows_aug : array, shape (b, k + 2)
    limits : NearLimits
        Scaled like the distances.
    """
    xp = get_namespace(Xt, centers_aug)
    factor = scale * near_factor(Xt.dtype, xp)
    rows_aug = xp.empty((Xt.shape[0], Xt.shape[1] + 2), dtype=Xt.dtype)
    rows_aug[:, :-2] = Xt * (-2.0 * scale)
    rows_aug[:, -2] = scale
    rows_aug[:, -1] = x_sq * scale
    limits = NearLimits(
        rows=(factor * x_sq).astype(Xt.dtype, copy=False),
        centers=xp.ascontiguousarray(factor * centers_aug[:, -2]).astype(Xt.dtype, copy=False),
    )
    return rows_aug, limits


def recompute_near_pairs(
    dist: Any, limits: NearLimits, rows: TransformedRows, centers: KernelCenters
) -> tuple[Any, Any]:
    """Clamp :func:`gemm_distances`'s output at zero and recompute its near pairs from their
    differences, in place, by array operations (the reference path's, and the fused path's on a
    GPU).

    A row-wise minimum (a fast reduction) finds the rows that may have any; usually few. A pair
    whose row and center are equal in the given coordinates (``rows.X`` and ``centers.centers``)
    gets distance exactly 0: their transformed coordinates may differ in the last bits (GEMMs of
    different shapes round differently, as cuBLAS's do), which in float32 put such pairs ~1e-7
    apart and gave the Laplace gradient's ``1 / ||x - z||`` weights of ~1e7 at ``x = z``.

    Parameters
    ----------
    dist : array, shape (b, m)
    limits : NearLimits
    rows : TransformedRows
    centers : KernelCenters

    Returns
    -------
    (rows, cols) : arrays of int
        The recomputed pairs.
    """
    xp = get_namespace(dist)
    xp.maximum(dist, 0, out=dist)
    empty = xp.zeros(0, dtype=xp.int64)
    pair_rows, cols = empty, empty
    if dist.size:
        widest = limits.rows + limits.centers.max()
        candidates = xp.nonzero(dist.min(axis=1) <= widest)[0]
        if candidates.shape[0]:
            some = dist if candidates.shape[0] == dist.shape[0] else dist[candidates]
            hits, cols = xp.nonzero(some - limits.centers <= limits.rows[candidates, None])
            pair_rows = candidates[hits]
            diff = rows.Xt[pair_rows] - centers.centers_t[cols]
            values = centers.distance_scale * (diff * diff).sum(axis=1)
            same = (rows.X[pair_rows] == centers.centers[cols]).all(axis=1)
            dist[pair_rows, cols] = xp.where(same, 0, values)
    return pair_rows, cols


def augment_centers(Zt: Any, z_sq: Any) -> Any:
    """``[Zt, z_sq, 1]``, shape (m, k + 2): the center side of :func:`gemm_distances`."""
    xp = get_namespace(Zt)
    out = xp.empty((Zt.shape[0], Zt.shape[1] + 2), dtype=Zt.dtype)
    out[:, :-2] = Zt
    out[:, -2] = z_sq
    out[:, -1] = 1
    return out
