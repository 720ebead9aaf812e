"""Deep Neural Feature Ansatz (NFA) for a small NumPy fully connected network.

The Deep Neural Feature Ansatz of Radhakrishnan et al. (arXiv:2212.13881) states that, for a
trained fully connected network ``f``, the Gram matrix of the first layer weights
``W1^T W1`` is (approximately) proportional to a power of the network's average gradient outer
product ``AGOP = mean_x J(x)^T J(x)`` with ``J = df/dx`` of shape ``(c, d)``; the paper compares
``W1^T W1`` with ``AGOP^{1/2}`` by the Pearson correlation of the matrix entries. This module
provides a minimal NumPy network to check it:

* :class:`MLP` -- ``d -> h -> h -> c``, ReLU, with a bias on every layer (the first layer's
  bias included; biases do not enter ``W1^T W1`` nor the input Jacobian's form), He
  initialisation from a seed;
* :func:`fit_mlp` -- mini-batch Adam on the mean squared error with manual backprop;
* :meth:`MLP.input_jacobian` -- the exact input Jacobian, backpropagated through the ReLU masks;
* :func:`neural_feature_ansatz` -- the correlations of ``W1^T W1`` with ``AGOP^{1/2}`` and with
  ``AGOP``, the AGOP computed by :func:`rfmdist.agop.average_gradient_outer_product`.

No PyTorch: everything is NumPy, float64 by default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

logger = logging.getLogger(__name__)

__all__ = [
    "MLP",
    "first_layer_gram",
    "fit_mlp",
    "matrix_sqrt_psd",
    "neural_feature_ansatz",
    "pearson_matrix_correlation",
]

PARAM_NAMES: tuple[str, ...] = ("W1", "b1", "W2", "b2", "W3", "b3")


@dataclass
class MLP:
    """Fully connected ReLU network ``d -> h -> h -> c`` with biases on all layers.

    ``f(x) = W3 relu(W2 relu(W1 x + b1) + b2) + b3``. Weights are stored as ``(fan_out, fan_in)``
    so that the first layer Gram matrix is ``W1.T @ W1`` of shape ``(d, d)``.

    Parameters
    ----------
    W1 : ndarray, shape (h, d)
        First layer weights.
    b1 : ndarray, shape (h,)
        First layer bias.
    W2 : ndarray, shape (h, h)
        Second layer weights.
    b2 : ndarray, shape (h,)
        Second layer bias.
    W3 : ndarray, shape (c, h)
        Output layer weights.
    b3 : ndarray, shape (c,)
        Output layer bias.
    history : list of float
        Training loss per epoch (filled by :func:`fit_mlp`).
    """

    W1: NDArray[np.floating]
    b1: NDArray[np.floating]
    W2: NDArray[np.floating]
    b2: NDArray[np.floating]
    W3: NDArray[np.floating]
    b3: NDArray[np.floating]
    history: list[float] = field(default_factory=list)

    @classmethod
    def init(
        cls,
        d: int,
        c: int,
        *,
        hidden: int = 256,
        seed: int | None = 0,
        dtype: type = np.float64,
    ) -> MLP:
        """He-initialised network.

        Hidden layer weights are ``N(0, 2 / fan_in)`` (He), the output layer ``N(0, 1 / fan_in)``;
        biases are zero.

        Parameters
        ----------
        d : int
            Input dimension.
        c : int
            Number of outputs.
        hidden : int, default 256
            Width ``h`` of both hidden layers.
        seed : int or None, default 0
            Seed of the NumPy generator.
        dtype : numpy dtype, default float64
            Parameter dtype.

        Returns
        -------
        MLP
        """
        rng = np.random.default_rng(seed)
        h = int(hidden)

        def gauss(shape: tuple[int, int], var: float) -> NDArray[np.floating]:
            return (rng.standard_normal(shape) * np.sqrt(var)).astype(dtype)

        return cls(
            W1=gauss((h, d), 2.0 / d),
            b1=np.zeros(h, dtype=dtype),
            W2=gauss((h, h), 2.0 / h),
            b2=np.zeros(h, dtype=dtype),
            W3=gauss((c, h), 1.0 / h),
            b3=np.zeros(c, dtype=dtype),
        )

    # ------------------------------------------------------------------ shapes / params
    @property
    def n_inputs(self) -> int:
        """Input dimension ``d``."""
        return int(self.W1.shape[1])

    @property
    def n_outputs(self) -> int:
        """Number of outputs ``c``."""
        return int(self.W3.shape[0])

    def params(self) -> dict[str, NDArray[np.floating]]:
        """The parameters by name (the arrays themselves, not copies).

        Returns
        -------
        dict of str to ndarray
            Keys ``W1, b1, W2, b2, W3, b3``.
        """
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def copy(self) -> MLP:
        """Deep copy of the parameters (and history).

        Returns
        -------
        MLP
        """
        return MLP(**{k: v.copy() for k, v in self.params().items()}, history=list(self.history))

    # ------------------------------------------------------------------ forward / backward
    def _forward(self, X: NDArray[np.floating]) -> tuple[NDArray[np.floating], ...]:
        z1 = X @ self.W1.T + self.b1
        a1 = np.maximum(z1, 0.0)
        z2 = a1 @ self.W2.T + self.b2
        a2 = np.maximum(z2, 0.0)
        out = a2 @ self.W3.T + self.b3
        return z1, a1, z2, a2, out

    def _as_input(self, X: ArrayLike) -> NDArray[np.floating]:
        X = np.asarray(X, dtype=self.W1.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"X must have shape (n, {self.n_inputs}), got {X.shape}")
        return X

    def predict(self, X: ArrayLike) -> NDArray[np.floating]:
        """Network outputs.

        Parameters
        ----------
        X : array_like, shape (n, d)

        Returns
        -------
        ndarray, shape (n, c)
        """
        return self._forward(self._as_input(X))[-1]

    def preactivations(self, X: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Hidden pre-activations (to check the distance from the ReLU kinks).

        Parameters
        ----------
        X : array_like, shape (n, d)

        Returns
        -------
        z1, z2 : ndarray, shape (n, h)
        """
        z1, _, z2, _, _ = self._forward(self._as_input(X))
        return z1, z2

    def input_jacobian(self, X: ArrayLike) -> NDArray[np.floating]:
        """Exact Jacobian of the outputs with respect to the inputs.

        ``J(x) = W3 diag(1[z2 > 0]) W2 diag(1[z1 > 0]) W1``, computed by backpropagation
        through the ReLU masks (the derivative of ReLU at 0 is taken as 0).

        Parameters
        ----------
        X : array_like, shape (n, d)

        Returns
        -------
        ndarray, shape (n, c, d)
        """
        z1, _, z2, _, _ = self._forward(self._as_input(X))
        m1 = (z1 > 0).astype(z1.dtype)
        m2 = (z2 > 0).astype(z2.dtype)
        G = self.W3[None, :, :] * m2[:, None, :]  # (n, c, h): d out / d a2 * relu'(z2)
        G = (G @ self.W2) * m1[:, None, :]  # (n, c, h): d out / d z1
        return G @ self.W1  # (n, c, d)

    def loss(self, X: ArrayLike, Y: ArrayLike) -> float:
        """Mean squared error ``mean_{i,k} (f_k(x_i) - y_ik)^2``.

        Parameters
        ----------
        X : array_like, shape (n, d)
        Y : array_like, shape (n, c)

        Returns
        -------
        float
        """
        R = self.predict(X) - np.asarray(Y, dtype=self.W1.dtype).reshape(len(X), -1)
        return float(np.mean(R * R))

    def loss_and_gradients(
        self, X: ArrayLike, Y: ArrayLike
    ) -> tuple[float, dict[str, NDArray[np.floating]]]:
        """Loss :meth:`loss` and its gradient with respect to every parameter (manual backprop).

        Parameters
        ----------
        X : array_like, shape (n, d)
        Y : array_like, shape (n, c)

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            Same keys and shapes as :meth:`params`.
        """
        X = self._as_input(X)
        Y = np.asarray(Y, dtype=self.W1.dtype).reshape(len(X), -1)
        z1, a1, z2, a2, out = self._forward(X)
        R = out - Y
        loss = float(np.mean(R * R))
        g_out = (2.0 / R.size) * R  # (n, c)
        g_z2 = (g_out @ self.W3) * (z2 > 0)  # (n, h)
        g_z1 = (g_z2 @ self.W2) * (z1 > 0)  # (n, h)
        grads = {
            "W3": g_out.T @ a2,
            "b3": g_out.sum(axis=0),
            "W2": g_z2.T @ a1,
            "b2": g_z2.sum(axis=0),
            "W1": g_z1.T @ X,
            "b1": g_z1.sum(axis=0),
        }
        return loss, grads


def fit_mlp(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    hidden: int = 256,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int | None = 0,
    weight_decay: float = 0.0,
    init: MLP | None = None,
    dtype: type = np.float64,
) -> MLP:
    """Train an :class:`MLP` by mini-batch Adam on the mean squared error.

    Parameters
    ----------
    X : array_like, shape (n, d)
        Inputs.
    Y : array_like, shape (n,) or (n, c)
        Targets (one-hot encode class labels for classification); a 1-d ``Y`` means ``c = 1``.
    hidden : int, default 256
        Width of both hidden layers.
    epochs : int, default 100
        Passes over the data (the rows are reshuffled every epoch).
    lr : float, default 1e-3
        Adam step size (betas 0.9, 0.999, eps 1e-8).
    batch_size : int, default 128
        Mini-batch size.
    seed : int or None, default 0
        Seed of the initialisation (when ``init`` is None) and of the shuffling.
    weight_decay : float, default 0.0
        Decoupled (AdamW-style) weight decay applied to the weight matrices only.
    init : MLP, optional
        Starting network (copied, not modified); by default ``MLP.init(d, c, hidden, seed)``.
    dtype : numpy dtype, default float64
        Parameter dtype of a freshly initialised network.

    Returns
    -------
    MLP
        The trained network; ``history`` holds the mean training loss of every epoch.
    """
    X = np.asarray(X, dtype=dtype)
    Y = np.asarray(Y, dtype=dtype)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X (n, d) and Y (n, c) must match, got {X.shape} and {Y.shape}")
    n, d = X.shape
    c = Y.shape[1]
    rng = np.random.default_rng(seed)
    if init is None:
        mlp = MLP.init(d, c, hidden=hidden, seed=seed, dtype=dtype)
    else:
        mlp = init.copy()
        if mlp.n_inputs != d or mlp.n_outputs != c:
            raise ValueError("init network does not match the data shapes")
    X = X.astype(mlp.W1.dtype, copy=False)
    Y = Y.astype(mlp.W1.dtype, copy=False)
    params = mlp.params()
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    bs = max(1, min(int(batch_size), n))
    for epoch in range(int(epochs)):
        perm = rng.permutation(n)
        total = 0.0
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            loss, grads = mlp.loss_and_gradients(X[idx], Y[idx])
            total += loss * len(idx)
            step += 1
            corr1 = 1.0 - beta1**step
            corr2 = 1.0 - beta2**step
            for k, p in params.items():
                g = grads[k]
                m[k] *= beta1
                m[k] += (1.0 - beta1) * g
                v[k] *= beta2
                v[k] += (1.0 - beta2) * g * g
                p -= lr * (m[k] / corr1) / (np.sqrt(v[k] / corr2) + eps)
                if weight_decay and k.startswith("W"):
                    p -= lr * weight_decay * p
        mlp.history.append(total / n)
        if (epoch + 1) % max(1, int(epochs) // 10) == 0 or epoch == 0:
            logger.debug("epoch %d/%d: train mse %.6g", epoch + 1, epochs, total / n)
    logger.info("fit_mlp: %d epochs, final train mse %.6g", epochs, mlp.history[-1])
    return mlp


def first_layer_gram(mlp: MLP) -> NDArray[np.float64]:
    """Gram matrix of the first layer weights.

    Parameters
    ----------
    mlp : MLP

    Returns
    -------
    ndarray, shape (d, d)
        ``W1.T @ W1`` in float64.
    """
    W1 = np.asarray(mlp.W1, dtype=np.float64)
    return W1.T @ W1


def matrix_sqrt_psd(A: ArrayLike) -> NDArray[np.float64]:
    """Principal square root of a symmetric positive semi-definite matrix.

    Computed by ``eigh`` of the symmetrised matrix; eigenvalues below zero (round-off) are
    clipped to 0.

    Parameters
    ----------
    A : array_like, shape (d, d)

    Returns
    -------
    ndarray, shape (d, d)
        Symmetric PSD ``S`` with ``S @ S ~= A``.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got {A.shape}")
    w, V = np.linalg.eigh(0.5 * (A + A.T))
    w = np.clip(w, 0.0, None)
    return (V * np.sqrt(w)) @ V.T


def pearson_matrix_correlation(A: ArrayLike, B: ArrayLike) -> float:
    """Pearson correlation of the flattened entries of two matrices.

    Parameters
    ----------
    A, B : array_like, same shape

    Returns
    -------
    float
        ``corr(vec(A), vec(B))``; ``nan`` if either is constant.
    """
    a = np.asarray(A, dtype=np.float64).ravel()
    b = np.asarray(B, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {np.shape(A)} vs {np.shape(B)}")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    if denom == 0.0:
        return float("nan")
    return float((a @ b) / denom)


def neural_feature_ansatz(mlp: MLP, X: ArrayLike, batch_size: int = 4096) -> dict[str, object]:
    """Compare the first layer Gram matrix with the network's AGOP (the NFA).

    Parameters
    ----------
    mlp : MLP
        Network (trained or not).
    X : array_like, shape (n, d)
        Points at which the AGOP is averaged (typically the training inputs).
    batch_size : int, default 4096
        Rows per Jacobian block, passed to the AGOP routine.

    Returns
    -------
    dict
        ``corr_sqrt`` (float): Pearson correlation of ``W1^T W1`` with ``AGOP^{1/2}``;
        ``corr_agop`` (float): with ``AGOP``;
        ``corr_sqrt_offdiag`` (float): ``corr_sqrt`` over the off-diagonal entries only (nan if
        d = 1). When the width is much larger than d, ``W1^T W1`` and the AGOP are both close to
        multiples of the identity at initialisation, so ``corr_sqrt`` is already high there; the
        off-diagonal correlation is free of that effect;
        ``gram`` (ndarray, (d, d)): ``W1^T W1``; ``agop`` (ndarray, (d, d));
        ``agop_sqrt`` (ndarray, (d, d)).
    """
    from rfmdist.agop import average_gradient_outer_product

    X = np.asarray(X, dtype=mlp.W1.dtype)
    agop = np.asarray(
        average_gradient_outer_product(mlp.input_jacobian, X, batch_size=batch_size),
        dtype=np.float64,
    )
    gram = first_layer_gram(mlp)
    agop_sqrt = matrix_sqrt_psd(agop)
    off = ~np.eye(len(gram), dtype=bool)
    out: dict[str, object] = {
        "corr_sqrt": pearson_matrix_correlation(gram, agop_sqrt),
        "corr_agop": pearson_matrix_correlation(gram, agop),
        "corr_sqrt_offdiag": (
            pearson_matrix_correlation(gram[off], agop_sqrt[off]) if off.any() else float("nan")
        ),
        "gram": gram,
        "agop": agop,
        "agop_sqrt": agop_sqrt,
    }
    logger.info(
        "NFA: corr(W1^T W1, AGOP^1/2) = %.4f, corr(W1^T W1, AGOP) = %.4f",
        out["corr_sqrt"],
        out["corr_agop"],
    )
    return out
