"""Kernels with a learned feature matrix, evaluated on row blocks against a set of centers.

The two kernels of the RFM paper, with a positive semi-definite feature matrix ``M`` (full ``(d, d)`` or
diagonal ``(d,)``) and bandwidth ``L``::

    laplace:  K(x, z) = exp(-||x - z||_M / L)
    gaussian: K(x, z) = exp(-||x - z||_M^2 / (2 L^2)),     ||u||_M = sqrt(u^T M u)

Distances are computed by GEMM in the transformed space ``x' = x S`` with ``S = M^{1/2}`` (``S = sqrt(M)``
elementwise for a diagonal ``M``), where ``||x - z||_M = ||x' - z'||``. Distances below the floating-point
resolution of the GEMM identity ``|x'|^2 + |z'|^2 - 2 x'.z'`` are set to exactly zero, so a point's kernel
value against itself is exactly 1 in float32 as in float64.

Every function takes NumPy or CuPy arrays and returns arrays of the same namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def squared_distances(Xt: Any, Zt: Any, x_sq: Any, z_sq: Any) -> Any:
    """Squared Euclidean distances between transformed rows and centers by one GEMM.

    Parameters
    ----------
    Xt : array, shape (b, d)
    Zt : array, shape (m, d)
    x_sq, z_sq : arrays, shapes (b,) and (m,)
        Squared row norms of ``Xt`` and ``Zt``.

    Returns
    -------
    array, shape (b, m)
        Clamped at zero; entries below the GEMM's resolution are exactly zero.
    """
    xp = get_namespace(Xt, Zt)
    dist = Xt @ Zt.T
    dist *= -2
    dist += x_sq[:, None]
    dist += z_sq[None, :]
    xp.maximum(dist, 0, out=dist)
    resolution = _COINCIDENCE_ULPS * float(np.finfo(dist.dtype).eps)
    z_max = z_sq.max() if z_sq.shape[0] else 0.0
    threshold = resolution * (x_sq + z_max)
    dist[dist <= threshold[:, None]] = 0
    return dist


@dataclass(frozen=True)
class PreparedKernel:
    """A kernel with its centers already transformed: reused for every row block of a pass.

    Build it with :func:`prepare_kernel`; it is small (``m x d``) and is what a distributed pass sends to
    the workers once.

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
    """

    S: Any
    centers_t: Any
    centers_sq: Any
    kernel: str
    bandwidth: float

    @property
    def diag(self) -> bool:
        """True when ``M`` is diagonal."""
        return self.S.ndim == 1

    @property
    def n_centers(self) -> int:
        """Number of centers ``m``."""
        return int(self.centers_t.shape[0])

    def transform(self, X: Any) -> tuple[Any, Any]:
        """Transformed rows ``X S`` and their squared norms; shapes (b, d) and (b,)."""
        Xt = apply_metric_root(X.astype(self.centers_t.dtype, copy=False), self.S)
        return Xt, (Xt * Xt).sum(axis=1)

    def block_from_transformed(self, Xt: Any, x_sq: Any) -> tuple[Any, Any]:
        """Kernel block and squared distances for transformed rows; both shape (b, m).

        The squared distances are returned for the gradient (the Laplace kernel needs ``||x - z||``).
        """
        xp = get_namespace(Xt)
        dist_sq = squared_distances(Xt, self.centers_t, x_sq, self.centers_sq)
        if self.kernel == "laplace":
            values = xp.sqrt(dist_sq)
            values *= -1.0 / self.bandwidth
        else:
            values = dist_sq * (-0.5 / self.bandwidth**2)
        xp.exp(values, out=values)
        return values, dist_sq

    def block(self, X: Any) -> Any:
        """Kernel values ``K(X, Z)``; X shape (b, d), result shape (b, m)."""
        values, _ = self.block_from_transformed(*self.transform(X))
        return values


def prepare_kernel(
    centers: Any, M: Any, *, kernel: str = "laplace", bandwidth: float = 10.0
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
    return PreparedKernel(
        S=S,
        centers_t=centers_t,
        centers_sq=(centers_t * centers_t).sum(axis=1),
        kernel=kernel,
        bandwidth=float(bandwidth),
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
