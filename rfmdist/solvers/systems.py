"""The linear system of one RFM round: its mat-vec, right-hand side, preconditioner and solves.

Two systems, each bound to a kernel operator over the training rows (:mod:`rfmdist.operators`):

- :class:`ExactSystem`: ``(K + reg I) a = Y`` with all ``n`` rows as centers; preconditioned by the
  randomized Nyström preconditioner of ``K``;
- :class:`NystromSystem`: ``(K_nm^T K_nm + reg K_mm) b = K_nm^T Y`` with ``m`` centers; preconditioned by
  Falkon's.

Each solves directly (Cholesky, float64; the exact system also in float32 refined to float64
accuracy) or by preconditioned conjugate gradient (float64 iterate over
kernel products in the kernel's dtype), optionally warm-started, and returns the coefficients, the
training rows' predictions (without another pass where the solve gives them) and a JSON record. The
solvers themselves know nothing of kernels (:mod:`rfmdist.solvers.cg`, :mod:`rfmdist.solvers.direct`).

Precision of the direct solves with a float32 kernel: the exact system factors the float32 kernel's
values in float64; the Nyström system forms ``K_nm^T K_nm`` by float64 GEMMs of the float32 entries
(their products are exact in float64, so the sum is a Gram matrix to float64 resolution; a float32
GEMM's rounding, 1e-7 of its largest entries, made it indefinite by more than ``reg K_mm``'s
smallest eigenvalues: jitters up to 2e-3 failed at 300,000 rows and 8,400 centers on a GPU) and
takes ``K_mm`` from a float64 kernel. Diagonal jitters are scaled to the kernel's resolution
(:func:`~rfmdist.solvers.direct.cholesky_jittered`); a float32 kernel indefinite beyond them raises
``LinAlgError``, which the round loop answers with a float64 kernel for that round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.backend import get_namespace, solve_triangular
from rfmdist.memory import Workspace
from rfmdist.solvers.cg import Callback, conjugate_gradient
from rfmdist.solvers.direct import (
    cholesky_jittered,
    coarse_jitter_limit,
    solve_direct,
    solve_mixed,
)
from rfmdist.solvers.preconditioners import CentersPreconditioner, NystromPreconditioner


@dataclass(frozen=True)
class PCGSettings:
    """Settings of a conjugate-gradient solve.

    Attributes
    ----------
    tol : float
        Relative residual target of every column.
    max_iter : int
    preconditioner_rank : int
        Sketch rank of the exact system's Nyström preconditioner.
    seed : tuple of int
        Seeds the preconditioner's sketch (``numpy.random.default_rng(seed)``).
    callback : callable, optional
        ``callback(iteration, x, relative_residuals)`` after each iteration (see
        :func:`~rfmdist.solvers.cg.conjugate_gradient`).
    """

    tol: float
    max_iter: int
    preconditioner_rank: int = 500
    seed: tuple[int, ...] = (0,)
    callback: Callback | None = field(default=None, compare=False)


@dataclass
class SolveOutcome:
    """Coefficients of a solved system and how they were obtained.

    Attributes
    ----------
    coef : array, shape (m, c), float64
        ``a`` (exact system, ``m = n``) or ``b`` (Nyström system).
    train_pred : array, shape (n, c), or None
        ``K(X, Z) coef``: the training rows' predictions, when the solve gives them without another
        pass over the data (the exact system); None otherwise.
    record : dict
        JSON-ready: solver, seconds, iterations and residuals (PCG), jitter (direct).
    """

    coef: Any
    train_pred: Any
    record: dict[str, Any]


class ExactSystem:
    """``(K + reg I) a = Y`` over all training rows.

    Parameters
    ----------
    op : BlockedKernelOperator or DaskKernelOperator
        The kernel of the rows against themselves.
    Y : array, shape (n, c), float64
        Targets, in memory (NumPy or CuPy).
    reg : float
    workspace : Workspace, optional
        Where the ``n x n`` arrays of the direct solves live from round to round.
    """

    kind = "exact"

    def __init__(self, op: Any, Y: Any, reg: float, workspace: Workspace | None = None) -> None:
        self.op = op
        self.Y = Y
        self.reg = float(reg)
        self.workspace = Workspace() if workspace is None else workspace
        self.resolution = float(np.finfo(op.prepared.dtype).eps)

    @property
    def n_rows(self) -> int:
        """Number of training rows ``n``."""
        return int(self.op.n_rows)

    @property
    def n_centers(self) -> int:
        """Number of unknowns per output (``n``)."""
        return self.n_rows

    def matvec(self, V: Any) -> Any:
        """``(K + reg I) V``; V shape (n, c)."""
        return self.op.matvec(V) + self.reg * V

    def rhs(self) -> Any:
        """``Y``, shape (n, c)."""
        return self.Y

    def preconditioner(self, settings: PCGSettings) -> NystromPreconditioner:
        """The Nyström preconditioner of ``K`` from ``rank`` of its columns, drawn uniformly.

        A Gaussian sketch (``K Omega``, :meth:`NystromPreconditioner.from_matvec`) costs a pass with
        ``rank`` vectors (``2 n^2 rank`` flops); the columns cost ``n rank`` kernel entries.
        Measured on the planted task (n = 10,000; M = I and after one round; rank 500): the same
        CG iterations to 1e-4 (12 and 21-22), the preconditioner built in 0.4-0.7 s instead of
        1.8-2.0 s.
        """
        rng = np.random.default_rng(list(settings.seed))
        rank = max(1, min(settings.preconditioner_rank, self.n_rows))
        rows = np.sort(rng.choice(self.n_rows, size=rank, replace=False))
        columns = self.op.columns(rows)
        xp = get_namespace(self.Y)
        return NystromPreconditioner.from_columns(
            xp.asarray(columns, dtype=self.Y.dtype), rows, shift=self.reg
        )

    def _dense(self, name: str, dtype: Any, source: Any = None) -> Any:
        """``K`` (or ``source``) as a workspace array of ``dtype``."""
        K = self.op.dense() if source is None else source
        xp = get_namespace(K)
        if K.dtype == np.dtype(dtype) and source is None:
            return K
        out = self.workspace.array(name, K.shape, dtype, xp)
        out[...] = K
        return out

    def solve_direct(self) -> SolveOutcome:
        """Cholesky of ``K + reg I`` in float64 (the kernel gathered on the client), factored in
        place: the kernel is not needed once the system is solved."""
        # Factor in float64 whatever the kernel dtype: a float32 Cholesky of a feature-learned
        # kernel (norm ~ n, reg 1e-3) fails or needs a jitter comparable to reg itself.
        K = self._dense("kernel64", np.float64)
        return self._outcome(
            solve_direct(K, self.Y, self.reg, overwrite=True, resolution=self.resolution)
        )

    def solve_mixed(self) -> SolveOutcome:
        """Float32 Cholesky of ``K + reg I`` refined to float64 accuracy
        (:func:`~rfmdist.solvers.direct.solve_mixed`)."""
        K64 = self._dense("kernel64", np.float64)
        scratch = self._dense("factor32", np.float32, source=K64)
        return self._outcome(
            solve_mixed(K64, self.Y, self.reg, scratch=scratch, resolution=self.resolution)
        )

    def _outcome(self, result: Any) -> SolveOutcome:
        coef = result.x.astype(np.float64, copy=False)
        # (K + (reg + jitter) I) a = Y, so K a = Y - (reg + jitter) a without another pass (up to
        # the refinement's residual for the mixed solve).
        return SolveOutcome(coef, self.Y - (self.reg + result.jitter) * coef, result.record())

    def predictions(self, coef: Any) -> Any:
        """``K coef``, shape (n, c)."""
        return self.op.matvec(coef)


class NystromSystem:
    """``(K_nm^T K_nm + reg K_mm) b = K_nm^T Y`` with ``m`` centers.

    Parameters
    ----------
    op : BlockedKernelOperator or DaskKernelOperator
        The kernel of the rows against the centers.
    K_mm : array, shape (m, m)
        The kernel among the centers (float64: :func:`centers_kernel`).
    Y : array or dask.array.Array, shape (n, c), float64
        Targets (a Dask array with the rows' chunks for Dask operators).
    reg : float
    """

    kind = "nystrom"

    def __init__(self, op: Any, K_mm: Any, Y: Any, reg: float) -> None:
        self.op = op
        self.K_mm = K_mm.astype(get_namespace(K_mm).float64, copy=False)
        self.resolution = float(np.finfo(op.prepared.dtype).eps)
        self.Y = Y
        self.reg = float(reg)
        self._rhs: Any = None

    @property
    def n_rows(self) -> int:
        """Number of training rows ``n``."""
        return int(self.op.n_rows)

    @property
    def n_centers(self) -> int:
        """Number of centers ``m``."""
        return int(self.K_mm.shape[0])

    def matvec(self, V: Any) -> Any:
        """``(K_nm^T K_nm + reg K_mm) V``; V shape (m, c)."""
        return self.op.normal_matvec(V) + self.reg * (self.K_mm @ V)

    def rhs(self) -> Any:
        """``K_nm^T Y``, shape (m, c), float64 (one pass, kept)."""
        if self._rhs is None:
            xp = get_namespace(self.K_mm)
            rhs = self.op.rmatvec(self.Y)
            self._rhs = xp.asarray(rhs, dtype=np.float64)
        return self._rhs

    def preconditioner(self, settings: PCGSettings) -> CentersPreconditioner:
        """Falkon's preconditioner from ``K_mm``."""
        return CentersPreconditioner(self.K_mm, self.n_rows, self.reg, resolution=self.resolution)

    def solve_direct(self) -> SolveOutcome:
        """Cholesky of ``K_nm^T K_nm + reg K_mm``: the ``m x m`` Gram matrix and the right-hand side
        from one pass."""
        start = time.perf_counter()
        xp = get_namespace(self.K_mm)
        gram, rhs = self.op.gram_and_rmatvec(self.Y)
        self._rhs = xp.asarray(rhs, dtype=np.float64)
        A = xp.asarray(gram, dtype=np.float64) + self.reg * self.K_mm
        factor, jitter = cholesky_jittered(
            A,
            0.0,
            what="K_nm^T K_nm + reg K_mm",
            resolution=self.resolution,
            max_jitter=coarse_jitter_limit(self.resolution, self.reg),
        )
        rhs = self.rhs()
        coef = solve_triangular(
            factor, solve_triangular(factor, rhs, lower=True), lower=True, trans=True
        )
        record = {"solver": "direct", "jitter": jitter, "seconds": time.perf_counter() - start}
        return SolveOutcome(coef, None, record)

    def predictions(self, coef: Any) -> None:
        """None: the training predictions would cost a pass over the data (the round loop scores a
        sample of the rows instead)."""
        return None


def centers_kernel(prepared: Any, centers: Any) -> Any:
    """``K_mm``, the kernel among the centers, in float64 whatever the kernel's dtype: the
    regulariser ``reg K_mm`` of the Nyström system must be positive semi-definite to the
    resolution of the system, which a float32 Laplace kernel is not (and ``m^2 d`` is little next to
    a pass's ``n m d``).

    Parameters
    ----------
    prepared : PreparedKernel
    centers : array, shape (m, d)

    Returns
    -------
    array, shape (m, m), float64
    """
    return prepared.astype(np.float64).block(centers)


def solve_pcg(system: Any, settings: PCGSettings, *, x0: Any = None) -> SolveOutcome:
    """Solve ``system`` by preconditioned conjugate gradient.

    Parameters
    ----------
    system : ExactSystem or NystromSystem
    settings : PCGSettings
    x0 : array, shape (m, c), optional
        Starting point (a warm start, e.g. the previous round's coefficients); zero by default.

    Returns
    -------
    SolveOutcome
        Its record holds the CG record, the preconditioner's record, ``warm_start`` and the seconds
        spent building the preconditioner.
    """
    start = time.perf_counter()
    rhs = system.rhs()
    precond = system.preconditioner(settings)
    precond_seconds = time.perf_counter() - start
    if x0 is not None:
        x0 = get_namespace(rhs).asarray(x0, dtype=rhs.dtype)
    result = conjugate_gradient(
        system.matvec,
        rhs,
        preconditioner=precond,
        x0=x0,
        tol=settings.tol,
        max_iter=settings.max_iter,
        callback=settings.callback,
    )
    record = (
        result.record()
        | precond.record()
        | {
            "warm_start": x0 is not None,
            "preconditioner_seconds": precond_seconds,
            "seconds": time.perf_counter() - start,
        }
    )
    return SolveOutcome(result.x, system.predictions(result.x), record)


def solve_system(
    system: Any, solver: str, settings: PCGSettings, *, x0: Any = None
) -> SolveOutcome:
    """Solve ``system`` with ``solver`` ('direct', 'mixed' (exact systems) or 'pcg'; ``x0``
    warm-starts PCG only)."""
    if solver == "direct":
        return system.solve_direct()
    if solver == "mixed":
        return system.solve_mixed()
    return solve_pcg(system, settings, x0=x0)
