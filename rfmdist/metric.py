"""The feature matrix ``M`` of a round, held in the form that costs least for its shape.

RFM's kernels measure distances as ``||x - z||_M = ||(x - z) S||`` for any root ``S`` with
``M = S S^T``; the kernels only ever need ``S``. Four forms of ``M`` (:class:`Metric`):

========== ============================ ============================ =============================
form       stored values                root ``S``                   when
========== ============================ ============================ =============================
identity   none                         none (rows as they are)      ``M_0`` of a full-``M`` fit
diagonal   ``diag(M)``, shape (d,)      ``sqrt(diag(M))``, (d,)      ``diag=True``
dense      ``M``, shape (d, d)          ``M^{1/2}``, (d, d) by eigh  rank bound ``>= d``
factor     ``A``, shape (r, d)          ``A^T``, (d, r)              rank bound ``< d`` (wide data)
========== ============================ ============================ =============================

The AGOP of a predictor fitted with ``c`` outputs, estimated on ``s`` points, is a sum of ``s c``
outer products: its rank is at most ``s c``. When that is below ``d`` (wide data: images, omics)
the next ``M`` is kept as the stacked gradients ``A`` (``M = A^T A``): no ``d x d`` array, no
``d x d`` eigendecomposition (``d^3``: hours at ``d = 20,000``), and rows are transformed to ``r``
columns instead of ``d``. The root of a dense ``M`` is computed once per :class:`Metric` (once per
round), not once per prepared kernel.

A round's AGOP is accumulated in the kernel's transformed space (of dimension ``k``, the root's
columns; :meth:`Metric.agop_plan`): as the diagonal, as the ``k x k`` Gram matrix of the
transformed gradients, or as the transformed gradients themselves (``stack``, when ``s c < k``),
and mapped back to ``d`` coordinates once, by :meth:`Metric.next_from_gradients`.

Under the default policy a dense AGOP is also kept as a factor when its *numerical* rank is below
``d`` (:meth:`Metric.compact`: its eigendecomposition, which its root needs anyway, shows it; image
data with constant pixels, or outputs x points below ``d``): the same ``M`` to float64 resolution,
with rows transformed to ``r`` columns.

Which forms a fit may use is the *metric policy* (:func:`metric_policy`, ``$RFMDIST_METRIC``):
``'auto'`` (the default: a factor exactly when the rank bound is below ``d``), ``'dense'`` or
``'factored'`` (always a factor for a full ``M``), kept so that tests compare the two and
benchmarks time them side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from rfmdist.params import switch_value

logger = logging.getLogger(__name__)

FORMS: tuple[str, ...] = ("identity", "diagonal", "dense", "factor")
POLICIES: tuple[str, ...] = ("auto", "dense", "factored")
METRIC_ENV_VAR = "RFMDIST_METRIC"
# How a round's AGOP is accumulated in the transformed space (:meth:`Metric.agop_plan`).
ACCUMULATIONS: tuple[str, ...] = ("diagonal", "gram", "stack")


def metric_policy(policy: str | None = None) -> str:
    """The metric policy: ``policy``, else ``$RFMDIST_METRIC``, else ``'auto'``.

    Examples
    --------
    >>> metric_policy("dense")
    'dense'
    """
    return switch_value(
        "policy",
        policy,
        METRIC_ENV_VAR,
        POLICIES,
        "auto",
        "set it to 'auto' (the default: a factored M when its rank is below d), 'dense' or "
        "'factored'.",
    )


def metric_root(M: Any) -> Any:
    """``S = M^{1/2}``: the symmetric PSD square root of a full ``M`` (shape (d, d)), or
    ``sqrt(M)`` of a diagonal (shape (d,)); negative eigenvalues (round-off) are clipped to zero.
    Any array namespace (NumPy, CuPy); shape like ``M``."""
    from rfmdist.backend import get_namespace

    xp = get_namespace(M)
    if M.ndim == 1:
        return xp.sqrt(xp.clip(M, 0, None))
    return root_from_eigen(*xp.linalg.eigh((M + M.T) / 2))


def root_from_eigen(evals: Any, evecs: Any) -> Any:
    """``V sqrt(max(L, 0)) V^T`` from an eigendecomposition ``(L, V)`` (ascending, as ``eigh``)."""
    from rfmdist.backend import get_namespace

    xp = get_namespace(evals)
    return (evecs * xp.sqrt(xp.clip(evals, 0, None))) @ evecs.T


def factor_from_eigen(evals: np.ndarray, evecs: np.ndarray) -> np.ndarray:
    """``A`` (r, k) with ``A^T A = V L V^T`` for an eigendecomposition ``(L, V)`` of a symmetric
    PSD ``k x k`` matrix (ascending, as ``eigh``), without the directions whose eigenvalues are
    within its float64 rounding (``k`` ulps of the largest): its numerical rank ``r``, rows in
    descending order of eigenvalue."""
    keep = evals > max(evals[-1], 0.0) * evals.shape[0] * np.finfo(np.float64).eps
    return np.sqrt(evals[keep])[::-1, None] * evecs[:, keep][:, ::-1].T


@dataclass(frozen=True, eq=False)
class Metric:
    """A feature matrix ``M`` (float64, NumPy) in one of the forms of this module.

    Build it with :meth:`identity`, :meth:`from_array` or :meth:`from_factor`.

    Attributes
    ----------
    form : {'identity', 'diagonal', 'dense', 'factor'}
    d : int
        The number of features.
    values : numpy.ndarray or None
        None (identity), ``diag(M)`` (d,), ``M`` (d, d) or the factor ``A`` (r, d).
    """

    form: str
    d: int
    values: np.ndarray | None = None

    @classmethod
    def identity(cls, d: int, diag: bool) -> Metric:
        """``M_0 = I``: a diagonal of ones for a diagonal fit, else the identity form (no array)."""
        return cls("diagonal", d, np.ones(d)) if diag else cls("identity", d)

    @classmethod
    def from_array(cls, M: Any) -> Metric:
        """A dense ``M`` (shape (d, d)) or a diagonal one (shape (d,))."""
        M = np.asarray(M, dtype=np.float64)
        if M.ndim == 1:
            return cls("diagonal", M.shape[0], M)
        if M.ndim != 2 or M.shape[0] != M.shape[1]:
            raise ValueError(
                f"Expected a feature matrix of shape (d, d) or (d,), found shape {M.shape}; pass "
                "a square matrix or its diagonal."
            )
        return cls("dense", M.shape[0], M)

    @classmethod
    def from_factor(cls, A: Any) -> Metric:
        """``M = A^T A`` for a factor ``A`` of shape (r, d)."""
        A = np.asarray(A, dtype=np.float64)
        if A.ndim != 2:
            raise ValueError(f"Expected a factor of shape (r, d), found shape {A.shape}.")
        return cls("factor", A.shape[1], A)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its cached :attr:`root` (computed again where it is needed)."""
        return {key: value for key, value in self.__dict__.items() if key != "root"}

    @property
    def diag(self) -> bool:
        """True for a diagonal ``M``."""
        return self.form == "diagonal"

    @property
    def dim(self) -> int:
        """Columns of the transformed rows ``x S``: ``r`` for a factor, else ``d``."""
        return int(self.values.shape[0]) if self.form == "factor" else self.d

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values."""
        return 0 if self.values is None else int(self.values.nbytes)

    @cached_property
    def root(self) -> np.ndarray | None:
        """``S`` with ``M = S S^T``: None (identity), shape (d,) (diagonal, elementwise), (d, d)
        (dense: ``M^{1/2}``, one eigendecomposition per metric) or (d, r) (factor: ``A^T``)."""
        if self.form == "identity":
            return None
        if self.form == "factor":
            return self.values.T  # a view: GEMMs take it transposed, no d x r copy
        return metric_root(self.values)

    def dense(self) -> np.ndarray:
        """``M`` as an array: (d,) for a diagonal ``M``, else (d, d) (``8 d^2`` bytes; formed from
        a factor on request, and logged with its size)."""
        if self.form == "identity":
            return np.eye(self.d)
        if self.form == "factor":
            logger.info(
                "forming the dense %d x %d M (%.3g GB) from its rank-%d factor",
                self.d,
                self.d,
                8 * self.d**2 / 1e9,
                self.dim,
            )
            return self.values.T @ self.values
        return self.values

    def diagonal(self) -> np.ndarray:
        """``diag(M)``, shape (d,)."""
        if self.form == "identity":
            return np.ones(self.d)
        if self.form == "factor":
            return np.einsum("ij,ij->j", self.values, self.values)
        return self.values if self.diag else np.diagonal(self.values).copy()

    def top_eigen(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A factor's ``min(k, d)`` largest eigenvalues (descending) and their orthonormal
        eigenvectors (shape (d, k)), from its SVD, with no ``d x d`` matrix; beyond its rank, zeros
        and (seeded) orthonormal directions of its null space."""
        if self.form != "factor":
            raise ValueError(f"Expected a factored metric, found form {self.form!r}.")
        k = min(k, self.d)
        _, sigma, vt = np.linalg.svd(self.values, full_matrices=False)
        values, vectors = sigma[:k] ** 2, vt[:k].T
        missing = k - values.shape[0]
        if missing:
            extra = np.random.default_rng(0).normal(size=(self.d, missing))
            extra -= vectors @ (vectors.T @ extra)
            vectors = np.hstack([vectors, np.linalg.qr(extra)[0]])
            values = np.concatenate([values, np.zeros(missing)])
        return values, vectors

    def normalized(self, normalize: str | None) -> Metric:
        """Divided by its largest entry (``normalize='max'``), or itself. A PSD matrix's largest
        entry is on its diagonal, so a factor is divided by the root of its largest column norm."""
        if normalize != "max" or self.form == "identity":
            return self
        if self.form == "factor":
            top = float(self.diagonal().max()) if self.values.size else 0.0
            return self if top <= 0 else Metric.from_factor(self.values / np.sqrt(top))
        top = float(np.max(self.values)) if self.values.size else 0.0
        return self if top <= 0 else Metric(self.form, self.d, self.values / top)

    def compact(self) -> Metric:
        """The smallest exact form of a dense ``M``: as its ``r x d`` factor when its numerical rank
        ``r`` is below ``d`` (eigenvalues beyond ``d`` float64 ulps of the largest: constant pixels,
        features the predictor ignores, fewer outputs x points than features), else itself with
        its root (from the same eigendecomposition, which the root needs anyway). Other forms are
        returned as they are.

        Examples
        --------
        >>> factor = Metric.from_array(np.diag([4.0, 1.0, 0.0])).compact()
        >>> factor.form, factor.values
        ('factor', array([[2., 0., 0.],
               [0., 1., 0.]]))
        """
        if self.form != "dense":
            return self
        evals, evecs = np.linalg.eigh((self.values + self.values.T) / 2)
        factor = factor_from_eigen(evals, evecs)
        if factor.shape[0] < self.d:
            return Metric.from_factor(factor)
        rooted = Metric(self.form, self.d, self.values)
        rooted.__dict__["root"] = root_from_eigen(evals, evecs)  # what metric_root would give
        return rooted

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: form, transformed dimension and bytes."""
        return {"form": self.form, "dim": self.dim, "nbytes": self.nbytes}

    def agop_plan(self, points: int, outputs: int, policy: str) -> tuple[str, str]:
        """How this round's AGOP is accumulated and which form the next ``M`` takes.

        Parameters
        ----------
        points : int
            Points the AGOP is estimated on (``s``).
        outputs : int
            The predictor's outputs (``c``).
        policy : {'auto', 'dense', 'factored'}
            See :func:`metric_policy`.

        Returns
        -------
        accumulate : {'diagonal', 'gram', 'stack'}
            The transformed gradients' squares summed (k,), their Gram matrix summed (k, k), or the
            gradients themselves (s, c, k), ``k`` = :attr:`dim`.
        next_form : {'diagonal', 'dense', 'factor'}

        Examples
        --------
        >>> Metric.identity(20_000, diag=False).agop_plan(200, 1, "auto")
        ('stack', 'factor')
        >>> Metric.identity(20, diag=False).agop_plan(5_000, 1, "auto")
        ('gram', 'dense')
        """
        if self.diag:
            return "diagonal", "diagonal"
        rank_bound = points * outputs
        factored = policy == "factored" or (policy == "auto" and rank_bound < self.d)
        if not factored:
            return "gram", "dense"
        return ("stack" if rank_bound < self.dim else "gram"), "factor"

    def next_from_gradients(
        self, total: np.ndarray, accumulate: str, next_form: str, points: int
    ) -> Metric:
        """The AGOP ``(1/s) sum_x J(x)^T J(x)`` (``J = g' S^T``) from its transformed-space sum.

        Parameters
        ----------
        total : numpy.ndarray
            From the pass (:meth:`agop_plan`'s ``accumulate``): shape (k,), (k, k) or (s, c, k);
            float64.
        accumulate : {'diagonal', 'gram', 'stack'}
        next_form : {'diagonal', 'dense', 'factor'}
        points : int
            ``s``, the number of points summed over.

        Returns
        -------
        Metric
            Not normalized (:meth:`normalized`).
        """
        S = self.root
        if accumulate == "diagonal":
            values = total / points
            return Metric("diagonal", self.d, values if S is None else values * S**2)
        if accumulate == "stack":
            rows = total.reshape(-1, total.shape[-1])
            if S is not None:
                return Metric.from_factor((rows @ S.T) / np.sqrt(points))
            rows /= np.sqrt(points)  # the pass's own array: scaled in place
            return Metric.from_factor(rows)
        gram = total / points
        if next_form == "dense":
            return Metric.from_array(gram if S is None else S @ gram @ S.T)
        factor = factor_from_eigen(*np.linalg.eigh((gram + gram.T) / 2))
        return Metric.from_factor(factor if S is None else factor @ S.T)
