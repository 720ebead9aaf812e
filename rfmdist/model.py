"""A fitted kernel machine of one RFM round: centers, coefficients, feature matrix and preprocessing.

This is the plain state that predicts, that the store saves and that the estimators wrap. Predictions
are blockwise: an in-memory array is processed in row blocks, a Dask array lazily chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rfmdist.backend import get_namespace, to_numpy
from rfmdist.data import is_dask_array
from rfmdist.kernels import PreparedKernel, prepare_kernel
from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator


@dataclass(frozen=True)
class Standardizer:
    """Per-feature affine preprocessing ``(x - mean) / scale`` (identity when both are None).

    Attributes
    ----------
    mean, scale : numpy.ndarray, shape (d,), or None
    """

    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @classmethod
    def fit(cls, X: Any) -> Standardizer:
        """Statistics of an in-memory or Dask array (float64; zero or non-finite spread -> 1)."""
        if is_dask_array(X):
            import dask

            mean, std = dask.compute(
                X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64)
            )
        else:
            xp = get_namespace(X)
            mean = X.mean(axis=0, dtype=xp.float64)
            std = X.std(axis=0, dtype=xp.float64)
        mean, std = to_numpy(mean), to_numpy(std)
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return cls(mean=mean, scale=std)

    def transform(self, X: Any, dtype: Any) -> Any:
        """Apply to ``X`` (NumPy, CuPy or Dask), returning ``dtype``; shape (n, d)."""
        if is_dask_array(X):
            return X.map_blocks(self.transform, dtype, dtype=dtype, meta=X._meta.astype(dtype))
        xp = get_namespace(X)
        out = xp.asarray(X, dtype=dtype)
        if self.mean is None:
            return out
        return (out - xp.asarray(self.mean, dtype=dtype)) / xp.asarray(self.scale, dtype=dtype)

    def inverse(self, Z: Any) -> Any:
        """Undo the transform: ``Z * scale + mean`` (NumPy, CuPy or Dask), shape (n, d)."""
        if self.mean is None:
            return Z
        if is_dask_array(Z):
            return Z.map_blocks(self.inverse, dtype=Z.dtype, meta=Z._meta)
        xp = get_namespace(Z)
        return Z * xp.asarray(self.scale, dtype=Z.dtype) + xp.asarray(self.mean, dtype=Z.dtype)


@dataclass(frozen=True)
class KernelMachine:
    """``f(x) = K_M(T(x), centers) coef`` with preprocessing ``T``.

    Attributes
    ----------
    centers : numpy.ndarray, shape (m, d)
        In the preprocessed space.
    coef : numpy.ndarray, shape (m, c)
    M : numpy.ndarray, shape (d, d) or (d,)
    kernel : str
    bandwidth : float
    preprocessing : Standardizer
    dtype : numpy.dtype
        Dtype of the kernel computations.
    target_scaling : Standardizer
        Maps the machine's outputs back to target units (identity for classifiers).
    """

    centers: np.ndarray
    coef: np.ndarray
    M: np.ndarray
    kernel: str
    bandwidth: float
    preprocessing: Standardizer
    dtype: np.dtype
    target_scaling: Standardizer = Standardizer()

    def prepared(self, like: Any = None) -> PreparedKernel:
        """The kernel with centers transformed, in the namespace of ``like`` (NumPy by default)."""
        xp = np if like is None or is_dask_array(like) else get_namespace(like)
        centers = xp.asarray(self.centers, dtype=self.dtype)
        return prepare_kernel(
            centers, xp.asarray(self.M), kernel=self.kernel, bandwidth=self.bandwidth
        )

    def decision(self, X: Any) -> Any:
        """Outputs ``f(X)`` in target units, shape (n, c): NumPy/CuPy in memory, lazy Dask for Dask.

        Parameters
        ----------
        X : array or dask.array.Array, shape (n, d)
            Raw (not yet preprocessed) features.
        """
        Xp = self.preprocessing.transform(X, self.dtype)
        if is_dask_array(X):
            meta_like = X._meta
            coef = (
                get_namespace(meta_like).asarray(self.coef)
                if hasattr(meta_like, "shape")
                else self.coef
            )
            prepared = self.prepared(None if isinstance(meta_like, np.ndarray) else meta_like)
            raw = DaskKernelOperator(Xp, prepared).lazy_predict(coef)
        else:
            xp = get_namespace(X)
            raw = BlockedKernelOperator(Xp, self.prepared(Xp)).predict(xp.asarray(self.coef))
        return self.target_scaling.inverse(raw)
