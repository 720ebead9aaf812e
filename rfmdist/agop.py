"""Gradients of kernel predictors and the average gradient outer product (AGOP).

For a kernel machine ``f(x) = sum_i coef_i K_M(x, z_i)`` (``c`` outputs) the gradient is computed in the
transformed space ``x' = x S`` (``S = M^{1/2}``) with no ``n x c x d`` tensor for the data::

    laplace:   grad f_c(x) = -(1/L)   S [ (Q coef)_c x' - Q (coef_c * Z') ],  Q = K / ||x - z||_M
    gaussian:  grad f_c(x) = -(1/L^2) S [ (Q coef)_c x' - Q (coef_c * Z') ],  Q = K

where ``coef_c * Z'`` for all outputs is one ``m x (c d)`` matrix built once per pass
(:class:`GradientOperand`), so a block's gradients are two GEMMs with its weights ``Q``

(the Laplace term of a center at distance below 1e-10, the ``x = z`` singularity, is dropped).

The AGOP of a block is returned as a float64 *sum* ``sum_x J(x)^T J(x)`` (``(d, d)``, or its diagonal
``(d,)``) so that blocks, chunks and workers add up by any reduction; divide by the number of points at
the end. :func:`average_gradient_outer_product` does this for any predictor that provides its Jacobian,
which is how the Deep Neural Feature Ansatz compares a neural network's AGOP with its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfmdist import fused
from rfmdist.backend import get_namespace
from rfmdist.kernels import PreparedKernel, prepare_kernel


@dataclass(frozen=True)
class GradientOperand:
    """What the gradients of ``f = K(., Z) coef`` need besides the kernel, built once per pass.

    Attributes
    ----------
    coef : array, shape (m, c)
        In the kernel's dtype.
    weighted_centers : array, shape (m, c * d)
        ``coef[j, k] * Z'[j]`` for every center ``j`` and output ``k`` (``Z'`` the transformed
        centers), so that one GEMM with the kernel weights gives every output's center term.
    """

    coef: Any
    weighted_centers: Any

    @classmethod
    def build(cls, prepared: PreparedKernel, coef: Any, dtype: Any = None) -> GradientOperand:
        """From the predictor's kernel and coefficients; ``dtype`` of the GEMM (the kernel's by
        default)."""
        Zt = prepared.centers_t
        dtype = Zt.dtype if dtype is None else dtype
        coef = coef.astype(dtype, copy=False)
        weighted = coef[:, :, None] * Zt.astype(dtype, copy=False)[:, None, :]
        weighted = weighted.reshape(Zt.shape[0], -1)
        return cls(coef=coef, weighted_centers=weighted)


def transformed_gradients(
    prepared: PreparedKernel, X: Any, coef: Any, operand: GradientOperand | None = None
) -> Any:
    """Gradients of ``f = K(., Z) coef`` in the transformed space (before the final product with S).

    Parameters
    ----------
    prepared : PreparedKernel
    X : array, shape (b, d)
    coef : array, shape (m, c)
    operand : GradientOperand, optional
        ``GradientOperand.build(prepared, coef)``, built once for many blocks.

    Returns
    -------
    array, shape (b, c, d)
        ``g'`` with ``grad f(x) = S g'(x)``.
    """
    if operand is None:
        operand = GradientOperand.build(prepared, coef)
    rows = prepared.transform(X)
    scale = (
        -1.0 / prepared.bandwidth if prepared.kernel == "laplace" else -1.0 / prepared.bandwidth**2
    )
    b, d = rows.Xt.shape
    n_outputs = operand.coef.shape[1]
    # grad_k(x) = scale * [ (sum_j w_j coef_jk) x' - sum_j w_j coef_jk z'_j ]: two GEMMs per block,
    # on tiles of the weights with the fused backend on the CPU.
    if prepared.fused_tiles:
        center_terms, row_weight = fused.gradient_terms(
            prepared, rows, operand.weighted_centers, operand.coef
        )
    else:
        weights = prepared.gradient_weights(rows).astype(operand.coef.dtype, copy=False)
        center_terms, row_weight = weights @ operand.weighted_centers, weights @ operand.coef
    grads = center_terms.reshape(b, n_outputs, d)
    grads -= row_weight[:, :, None] * rows.Xt.astype(grads.dtype, copy=False)[:, None, :]
    grads *= -scale
    return grads


def predictor_gradients(
    X: Any,
    centers: Any,
    coef: Any,
    M: Any,
    *,
    kernel: str = "laplace",
    bandwidth: float = 10.0,
) -> Any:
    """Exact gradients of ``f(x) = K_M(x, centers) coef`` with respect to ``x``.

    Parameters
    ----------
    X : array, shape (b, d)
    centers : array, shape (m, d)
    coef : array, shape (m, c)
    M : array, shape (d, d) or (d,)
    kernel : {'laplace', 'gaussian'}
    bandwidth : float

    Returns
    -------
    array, shape (b, c, d)
        ``J[i, k, :]`` is the gradient of output ``k`` at ``X[i]``.
    """
    prepared = prepare_kernel(centers, M, kernel=kernel, bandwidth=bandwidth)
    return to_original_coordinates(transformed_gradients(prepared, X, coef), prepared.S)


def to_original_coordinates(grads: Any, S: Any) -> Any:
    """Gradients ``g'`` in the transformed space (shape (..., k)) as gradients in the original
    coordinates: ``g' S^T`` (shape (..., d)), ``S`` the kernel's root (None: the identity)."""
    if S is None:
        return grads
    return grads * S if S.ndim == 1 else grads @ S.T


def gradient_outer_product_sum(jacobians: Any, *, diag: bool = False) -> Any:
    """Sum of ``J^T J`` over a block of Jacobians, accumulated in float64.

    Parameters
    ----------
    jacobians : array, shape (b, c, d)
    diag : bool
        Return only the diagonal.

    Returns
    -------
    array, shape (d, d), or (d,) if ``diag``; float64
    """
    xp = get_namespace(jacobians)
    flat = jacobians.reshape(-1, jacobians.shape[-1]).astype(xp.float64, copy=False)
    if diag:
        return (flat * flat).sum(axis=0)
    return flat.T @ flat


def transformed_agop_sum(
    prepared: PreparedKernel,
    X: Any,
    coef: Any,
    *,
    accumulate: str,
    operand: GradientOperand | None = None,
) -> Any:
    """A block's AGOP partial sum in the kernel's transformed space (``k`` columns), float64.

    Parameters
    ----------
    prepared : PreparedKernel
        The predictor's kernel and centers.
    X : array, shape (b, d)
        Points at which the gradients are taken.
    coef : array, shape (m, c)
    accumulate : {'diagonal', 'gram', 'stack'}
        ``sum_x sum_k g'_k(x)^2`` (shape (k,)), ``sum_x g'(x)^T g'(x)`` (shape (k, k)), or the
        gradients ``g'`` themselves (shape (b, c, k)) (:meth:`rfmdist.metric.Metric.agop_plan`).
    operand : GradientOperand, optional
        Built once per pass (its dtype is the GEMMs').

    Returns
    -------
    array, float64
    """
    xp = get_namespace(X)
    grads = transformed_gradients(prepared, X, coef, operand)
    if accumulate == "stack":
        return grads.astype(xp.float64, copy=False)
    return gradient_outer_product_sum(grads, diag=accumulate == "diagonal")


def to_original_agop(total: Any, S: Any, *, diag: bool) -> Any:
    """An AGOP sum in the original coordinates (``S W S^T``) from its transformed-space sum ``W``.

    Parameters
    ----------
    total : array, shape (k, k), or (k,) where ``S`` is diagonal or None
        :func:`transformed_agop_sum`'s ``'gram'`` (or, for a diagonal ``S``, ``'diagonal'``) sum.
    S : array, shape (d, k) or (d,), or None
        The kernel's root.
    diag : bool
        Return the diagonal only.

    Returns
    -------
    array, shape (d, d) or (d,)
    """
    xp = get_namespace(total)
    if S is None:
        return xp.diagonal(total).copy() if diag and total.ndim == 2 else total
    S = S.astype(xp.float64)
    if S.ndim == 1:
        return total * S**2 if diag else S[:, None] * total * S[None, :]
    if diag:
        return ((S @ total) * S).sum(axis=1)
    return S @ total @ S.T


def original_accumulation(S: Any, diag: bool) -> str:
    """What :func:`transformed_agop_sum` accumulates for :func:`to_original_agop`: the diagonal
    where the root keeps coordinates apart (diagonal or identity), else the Gram matrix."""
    return "diagonal" if diag and (S is None or S.ndim == 1) else "gram"


def kernel_agop_sum(
    prepared: PreparedKernel,
    X: Any,
    coef: Any,
    *,
    diag: bool,
    operand: GradientOperand | None = None,
) -> Any:
    """AGOP partial sum ``sum_{x in X} J(x)^T J(x)`` of the kernel predictor over a block of
    points, in original coordinates: shape (d, d), or (d,) with ``diag``; float64. The other
    parameters are :func:`transformed_agop_sum`'s."""
    accumulate = original_accumulation(prepared.S, diag)
    total = transformed_agop_sum(prepared, X, coef, accumulate=accumulate, operand=operand)
    return to_original_agop(total, prepared.S, diag=diag)


def agop_block_sum(
    X: Any,
    centers: Any,
    coef: Any,
    M: Any,
    *,
    kernel: str = "laplace",
    bandwidth: float = 10.0,
    diag: bool = False,
) -> Any:
    """AGOP partial sum ``sum_{x in X} J(x)^T J(x)`` of ``f = K_M(., centers) coef``.

    Parameters
    ----------
    X : array, shape (b, d)
    centers : array, shape (m, d)
    coef : array, shape (m, c)
    M : array, shape (d, d) or (d,)
    kernel : {'laplace', 'gaussian'}
    bandwidth : float
    diag : bool

    Returns
    -------
    array, shape (d, d) or (d,); float64
    """
    prepared = prepare_kernel(centers, M, kernel=kernel, bandwidth=bandwidth)
    return kernel_agop_sum(prepared, X, coef, diag=diag)


def average_gradient_outer_product(
    gradient_fn: Callable[[Any], Any],
    X: Any,
    *,
    batch_size: int = 4096,
    diag: bool = False,
) -> Any:
    """AGOP ``(1/n) sum_x J(x)^T J(x)`` of any predictor that can give its input Jacobian.

    Parameters
    ----------
    gradient_fn : callable
        ``gradient_fn(X_block)`` with ``X_block`` of shape (b, d) returns Jacobians, shape (b, c, d).
    X : array, shape (n, d)
    batch_size : int
        Rows per call of ``gradient_fn``.
    diag : bool
        Return the diagonal only.

    Returns
    -------
    array, shape (d, d) or (d,); float64

    Examples
    --------
    The AGOP of a linear map ``f(x) = W x`` is ``W^T W``:

    >>> import numpy as np
    >>> W = np.array([[1.0, 2.0], [0.0, 3.0]])
    >>> X = np.random.default_rng(0).normal(size=(10, 2))
    >>> average_gradient_outer_product(lambda B: np.broadcast_to(W, (len(B), 2, 2)), X)
    array([[ 1.,  2.],
           [ 2., 13.]])
    """
    n = X.shape[0]
    if n == 0:
        raise ValueError("Expected at least one point to average gradients over, found 0 rows.")
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, found {batch_size}.")
    total = None
    for start in range(0, n, batch_size):
        part = gradient_outer_product_sum(gradient_fn(X[start : start + batch_size]), diag=diag)
        total = part if total is None else total + part
    return total / n


def normalized_diagonal(M: Any) -> np.ndarray:
    """Feature importances: the diagonal of ``M`` divided by its largest entry (NumPy, shape (d,))."""
    diag = np.asarray(M if np.ndim(M) == 1 else np.diagonal(M), dtype=np.float64)
    top = diag.max() if diag.size else 0.0
    return diag / top if top > 0 else diag
