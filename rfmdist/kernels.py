"""Kernels with a learned feature matrix, evaluated on row blocks against a set of centers.

The two kernels of the RFM paper, with a positive semi-definite feature matrix ``M`` (full ``(d, d)`` or
diagonal ``(d,)``) and bandwidth ``L``::

    laplace:  K(x, z) = exp(-||x - z||_M / L)
    gaussian: K(x, z) = exp(-||x - z||_M^2 / (2 L^2)),     ||u||_M = sqrt(u^T M u)

Distances are computed by GEMM in the transformed space ``x' = x S`` with ``S = M^{1/2}`` (``S = sqrt(M)``
elementwise for a diagonal ``M``), where ``||x - z||_M = ||x' - z'||``. The GEMM identity
``|x'|^2 + |z'|^2 - 2 x'.z'`` has an absolute error of a few ulps of ``|x'|^2 + |z'|^2``, a large
relative error for close pairs, which the Laplace kernel's square root turned into entry errors of
order sqrt(eps) and numerically indefinite kernels (eigenvalues down to -2e-6 in float64 for
clusters of near-duplicate rows). Such *near pairs* (:func:`augment_rows`) are recomputed from their
differences, and a row equal to a center, compared before the transform, is at distance exactly 0:
a point's kernel value against itself is exactly 1 and its Laplace gradient weight exactly 0, in
float32 as in float64 and whatever the rounding of the two transforms.

Every function takes NumPy or CuPy arrays and returns arrays of the same namespace.

What follows the distance GEMM (near pairs, clamp, ``sqrt``, ``exp``) runs by one of two backends
(:func:`kernel_backend`, ``RFMDIST_KERNEL_BACKEND``): ``'fused'``, the default, in one compiled pass on
cache-sized tiles (:mod:`rfmdist.fused`), or ``'reference'``, this module's NumPy/CuPy array
operations, kept so that tests compare the two and benchmarks time them side by side.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np

from rfmdist.backend import TF32_EPSILON, get_namespace, tf32_enabled
from rfmdist.metric import Metric, symmetric_root

KernelName = Literal["laplace", "gaussian"]
KERNELS: tuple[str, ...] = ("laplace", "gaussian")

# Below this distance a Laplace gradient term is treated as the x = z singularity and dropped.
LAPLACE_GRADIENT_GUARD = 1e-10
# The absolute error of a squared distance by the GEMM identity, in ulps of |x'|^2 + |z'|^2.
_GEMM_IDENTITY_ULPS = 16.0


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
    return symmetric_root(M)


def apply_metric_root(X: Any, S: Any) -> Any:
    """Map rows (shape (n, d)) to the transformed space: ``X`` itself (``S`` None, the identity),
    ``X * S`` (diagonal, shape (d,)) or ``X @ S`` (shape (d, k)); shape (n, k)."""
    if S is None:
        return X
    return X * S if S.ndim == 1 else X @ S


@dataclass(frozen=True)
class TransformedRows:
    """A block of rows ready for kernel evaluations against a :class:`PreparedKernel`'s centers.

    Attributes
    ----------
    X : array, shape (b, d)
        The rows in the kernel's dtype: the coordinates in which coincidence with a center is judged.
    Xt : array, shape (b, d)
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
    Xt : array, shape (b, d)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, d + 2)
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
    Xt : array, shape (b, d)
    x_sq : array, shape (b,)
    centers_aug : array, shape (m, d + 2)
    scale : float

    Returns
    -------
    rows_aug : array, shape (b, d + 2)
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
    dist: Any, limits: NearLimits, rows: TransformedRows, prepared: PreparedKernel
) -> tuple[Any, Any]:
    """Clamp :func:`gemm_distances`'s output at zero and recompute its near pairs from their
    differences, in place (the reference path's array operations).

    A row-wise minimum (a fast reduction) finds the rows that may have any; usually few. A pair
    whose row and center are equal in the given coordinates (``rows.X`` and ``prepared.centers``)
    gets distance exactly 0: their transformed coordinates may differ in the last bits (GEMMs of
    different shapes round differently, as cuBLAS's do), which in float32 put such pairs ~1e-7
    apart and gave the Laplace gradient's ``1 / ||x - z||`` weights of ~1e7 at ``x = z``.

    Parameters
    ----------
    dist : array, shape (b, m)
    limits : NearLimits
    rows : TransformedRows
    prepared : PreparedKernel

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
            diff = rows.Xt[pair_rows] - prepared.centers_t[cols]
            values = prepared.distance_scale * (diff * diff).sum(axis=1)
            same = (rows.X[pair_rows] == prepared.centers[cols]).all(axis=1)
            dist[pair_rows, cols] = xp.where(same, 0, values)
    return pair_rows, cols


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
        ``[centers_t, centers_sq, 1]`` for the fused distance GEMM.
    backend : {'fused', 'reference'}
        How a block's elementwise tail runs (:func:`kernel_backend`).
    """

    S: Any
    centers: Any
    centers_t: Any
    centers_sq: Any
    kernel: str
    bandwidth: float
    centers_aug: Any
    backend: str = "fused"

    @property
    def diag(self) -> bool:
        """True when ``M`` is diagonal."""
        return self.S is not None and self.S.ndim == 1

    @property
    def dtype(self) -> np.dtype:
        """The kernel's dtype."""
        return np.dtype(self.centers_t.dtype)

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

    def transform(self, X: Any) -> TransformedRows:
        """The rows ``X`` (shape (b, d)) in the kernel's dtype, transformed (``X S``, shape (b, k)),
        with their squared norms."""
        X = X.astype(self.centers_t.dtype, copy=False)
        Xt = apply_metric_root(X, self.S)
        return TransformedRows(X, Xt, (Xt * Xt).sum(axis=1))

    def _fused(self, rows: TransformedRows, *, weights: bool, out: Any = None) -> Any:
        """The kernel (or gradient weights) by the fused backend: tiles on the CPU
        (:func:`rfmdist.fused.block`, written straight into ``out`` when it is C-contiguous and of
        the kernel's dtype), the GEMM then one elementwise kernel on a GPU."""
        from rfmdist import fused

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
