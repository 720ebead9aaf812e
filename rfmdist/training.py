"""The RFM round loop, independent of scikit-learn: solve, score, update M by the AGOP, repeat.

Round ``t`` (``t = 0 .. iters``) uses the feature matrix ``M_t`` (``M_0 = I``):

1. fit the kernel machine: ``(K + reg I) a = Y`` on all rows (exact) or the Nyström-centers system
   ``(K_nm^T K_nm + reg K_mm) b = K_nm^T Y``, by a direct solve or preconditioned conjugate gradient;
2. score it on the training rows and, when given, on validation rows;
3. unless it is the last round, ``M_{t+1} = AGOP`` of this round's predictor on (a seeded random subset
   of) the training rows.

:func:`iterate_rounds` yields one :class:`RoundOutcome` per round so that callers can record, checkpoint
or stop between rounds; it can start from a later round with a given ``M`` (resume).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist import memory
from rfmdist.backend import get_namespace, to_numpy
from rfmdist.data import is_dask_array
from rfmdist.kernels import prepare_kernel
from rfmdist.model import KernelMachine, Standardizer
from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator
from rfmdist.solvers.cg import conjugate_gradient
from rfmdist.solvers.direct import cholesky_jittered, solve_direct
from rfmdist.solvers.preconditioners import CentersPreconditioner, NystromPreconditioner
from rfmdist.threads import compute_dask

logger = logging.getLogger(__name__)

# 'auto' solver: a direct Cholesky of the exact system up to this many rows, PCG beyond.
DIRECT_MAX_ROWS = 10_000
# 'auto' centers: all rows (the exact system) up to this many rows, this many Nyström centers beyond.
AUTO_CENTERS = 20_000


def kernel_cache_bytes() -> int:
    """Memory the solver may spend keeping a round's ``n x m`` kernel (env RFMDIST_KERNEL_CACHE_BYTES)."""
    return memory.host_cache_bytes()


@dataclass(frozen=True)
class RoundConfig:
    """Resolved settings of a fit (from the estimator's parameters).

    Attributes
    ----------
    kernel : str
    bandwidth : float
    reg : float
    iters : int
        Number of AGOP updates; rounds ``0 .. iters`` are fitted.
    diag : bool
    agop_samples : int or None
        Points per round on which the AGOP is estimated (None: all).
    solver : {'auto', 'direct', 'pcg'}
    tol : float
        PCG relative residual target.
    max_iter : int
    preconditioner_rank : int
    cache_kernel : bool or 'auto'
    split_every : int
    dtype : numpy.dtype
    seed : int
    device : {'cpu', 'gpu'}
        Where the kernel passes run (resolved from the estimator's ``device``).
    tf32 : bool
        TF32 tensor-core GEMMs on the GPU (set by the caller around the rounds).
    """

    kernel: str
    bandwidth: float
    reg: float
    iters: int
    diag: bool
    agop_samples: int | None
    solver: str
    tol: float
    max_iter: int
    preconditioner_rank: int
    cache_kernel: bool | str
    split_every: int
    dtype: np.dtype
    seed: int
    device: str = "cpu"
    tf32: bool = False


@dataclass
class TrainingData:
    """Preprocessed training rows and targets for the round loop.

    Attributes
    ----------
    X : array or dask.array.Array, shape (n, d)
        Preprocessed features in the kernel dtype.
    Y : array or dask.array.Array, shape (n, c)
        Float targets (one-hot for classification).
    score : callable
        ``score(predictions (n, c) numpy, in target units) -> float`` on the training rows.
    center_rows : numpy.ndarray of int or None
        Row indices of the Nyström centers; None for the exact system (all rows).
    centers : array, shape (m, d)
        The centers (client side, kernel dtype).
    preprocessing : Standardizer
        Feature preprocessing already applied to ``X``.
    target_scaling : Standardizer
        Standardisation already applied to ``Y`` (identity for classification).
    """

    X: Any
    Y: Any
    score: Callable[[np.ndarray], float]
    center_rows: np.ndarray | None
    centers: Any
    preprocessing: Standardizer
    target_scaling: Standardizer = field(default_factory=Standardizer)
    Y_client: Any = field(default=None)

    @property
    def n_rows(self) -> int:
        """Number of training rows."""
        return int(self.X.shape[0])

    @property
    def exact(self) -> bool:
        """True when the centers are all the rows (the exact system)."""
        return self.center_rows is None or (
            len(self.center_rows) == self.n_rows
            and bool(np.all(self.center_rows == np.arange(self.n_rows)))
        )

    def operator(self, prepared: Any, *, cache: bool, split_every: int) -> Any:
        """A kernel operator over the training rows."""
        if is_dask_array(self.X):
            return DaskKernelOperator(self.X, prepared, cache=cache, split_every=split_every)
        return BlockedKernelOperator(self.X, prepared, cache=cache)

    def targets_on_client(self) -> Any:
        """``Y`` as a float64 in-memory array (computed once for Dask data)."""
        if self.Y_client is None:
            Y = self.Y.compute() if is_dask_array(self.Y) else self.Y
            self.Y_client = get_namespace(Y).asarray(Y, dtype=np.float64)
        return self.Y_client


@dataclass
class RoundOutcome:
    """What one round produced.

    Attributes
    ----------
    round : int
    machine : KernelMachine
        The round's predictor (with ``M_t``).
    record : dict
        JSON-ready: scores, seconds, solver record, AGOP seconds.
    next_M : numpy.ndarray or None
        ``M_{t+1}`` (None after the last round).
    """

    round: int
    machine: KernelMachine
    record: dict[str, Any]
    next_M: np.ndarray | None


def identity_metric(d: int, diag: bool) -> np.ndarray:
    """``M_0``: the identity, as a (d, d) matrix or a (d,) diagonal."""
    return np.ones(d) if diag else np.eye(d)


def agop_rows(n: int, samples: int | None, seed: int, round_index: int) -> np.ndarray | None:
    """Sorted row indices for round ``round_index``'s AGOP (None: all rows); reproducible."""
    if samples is None or samples >= n:
        return None
    rng = np.random.default_rng([seed, 1, round_index])
    return np.sort(rng.choice(n, size=samples, replace=False))


def choose_solver(config: RoundConfig, data: TrainingData) -> str:
    """Resolve ``solver='auto'``: direct for exact systems up to ``DIRECT_MAX_ROWS`` rows (the kernel
    is gathered on the client, also from Dask data), PCG otherwise."""
    if config.solver != "auto":
        return config.solver
    if data.exact and data.n_rows <= DIRECT_MAX_ROWS:
        return "direct"
    return "pcg"


def use_cache(config: RoundConfig, n: int, m: int) -> bool:
    """Resolve ``cache_kernel``: 'auto' keeps the ``n x m`` kernel when it fits the budget of the
    device (:func:`rfmdist.memory.cache_bytes`: a fixed host budget, or the GPU's free memory)."""
    if config.cache_kernel != "auto":
        return bool(config.cache_kernel)
    return n * m * np.dtype(config.dtype).itemsize <= memory.cache_bytes(config.device)


def solve_round(
    op: Any,
    data: TrainingData,
    prepared: Any,
    config: RoundConfig,
    solver: str,
    round_index: int,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fit one round's coefficients.

    Returns
    -------
    coef : array, shape (m, c), float64
    train_pred : array, shape (n, c)
        The training rows' predictions.
    record : dict
    """
    reg = config.reg
    if data.exact:
        Y = data.targets_on_client()
        if solver == "direct":
            # Factor in float64 whatever the kernel dtype: a float32 Cholesky of a feature-learned
            # kernel (norm ~ n, reg 1e-3) fails or needs a jitter comparable to reg itself.
            result = solve_direct(op.dense().astype(np.float64), Y, reg)
            coef = result.x.astype(np.float64)
            # (K + (reg + jitter) I) a = Y, so K a = Y - (reg + jitter) a without another pass.
            return coef, Y - (reg + result.jitter) * coef, result.record()
        rng = np.random.default_rng([config.seed, 2, round_index])
        precond = NystromPreconditioner.from_matvec(
            op.matvec, op.n_rows, rank=config.preconditioner_rank, shift=reg, rng=rng, like=Y
        )
        result = conjugate_gradient(
            lambda V: op.matvec(V) + reg * V,
            Y,
            preconditioner=precond,
            tol=config.tol,
            max_iter=config.max_iter,
        )
        record = result.record() | precond.record()
        return result.x, op.matvec(result.x), record

    K_mm = prepared.block(data.centers)
    xp = get_namespace(K_mm)
    rhs = op.rmatvec(data.Y if is_dask_array(data.X) else data.targets_on_client())
    rhs = xp.asarray(rhs, dtype=np.float64)
    K_mm64 = K_mm.astype(np.float64)
    if solver == "direct":
        start = time.perf_counter()
        A = op.gram() + reg * K_mm64
        factor, jitter = cholesky_jittered(A, 0.0, what="K_nm^T K_nm + reg K_mm")
        from rfmdist.backend import solve_triangular

        coef = solve_triangular(
            factor, solve_triangular(factor, rhs, lower=True), lower=True, trans=True
        )
        record = {"solver": "direct", "jitter": jitter, "seconds": time.perf_counter() - start}
    else:
        precond = CentersPreconditioner(
            K_mm64, op.n_rows, reg, resolution=float(np.finfo(K_mm.dtype).eps)
        )
        result = conjugate_gradient(
            lambda V: op.normal_matvec(V) + reg * (K_mm64 @ V),
            rhs,
            preconditioner=precond,
            tol=config.tol,
            max_iter=config.max_iter,
        )
        coef = result.x
        record = result.record() | precond.record()
    train_pred = op.predict(coef)
    return coef, train_pred, record


def iterate_rounds(
    data: TrainingData,
    config: RoundConfig,
    *,
    start_round: int = 0,
    start_M: np.ndarray | None = None,
    validation: tuple[Any, Callable[[np.ndarray], float]] | None = None,
) -> Iterator[RoundOutcome]:
    """Run rounds ``start_round .. config.iters``, yielding each as it finishes.

    Parameters
    ----------
    data : TrainingData
    config : RoundConfig
    start_round : int
        First round to run (resume); ``start_M`` must then be that round's ``M``.
    start_M : numpy.ndarray, optional
        Feature matrix of ``start_round`` (identity by default).
    validation : (X_val, score) , optional
        Raw validation features (NumPy, CuPy or Dask) and ``score(predictions) -> float``.
    """
    d = int(data.X.shape[1])
    M = (
        identity_metric(d, config.diag)
        if start_M is None
        else np.asarray(start_M, dtype=np.float64)
    )
    for t in range(start_round, config.iters + 1):
        started = time.perf_counter()
        xp = get_namespace(data.centers)
        prepared = prepare_kernel(
            data.centers, xp.asarray(M), kernel=config.kernel, bandwidth=config.bandwidth
        )
        m = prepared.n_centers
        solver = choose_solver(config, data)
        cache = use_cache(config, data.n_rows, m) if solver == "pcg" else False
        op = data.operator(prepared, cache=cache, split_every=config.split_every)
        coef, train_pred, solve_record = solve_round(op, data, prepared, config, solver, t)
        machine = KernelMachine(
            centers=to_numpy(data.centers),
            coef=to_numpy(coef).astype(np.float64),
            M=M.copy(),
            kernel=config.kernel,
            bandwidth=config.bandwidth,
            preprocessing=data.preprocessing,
            dtype=np.dtype(config.dtype),
            target_scaling=data.target_scaling,
        )
        record: dict[str, Any] = {
            "round": t,
            "solver": solver,
            "n_centers": m,
            "cached_kernel": cache,
            "solve": solve_record,
            "train_score": float(data.score(data.target_scaling.inverse(to_numpy(train_pred)))),
            "val_score": None,
        }
        if validation is not None:
            X_val, val_score = validation
            pred = machine.decision(X_val)
            pred = compute_dask(pred) if is_dask_array(pred) else pred
            record["val_score"] = float(val_score(to_numpy(pred)))
        next_M = None
        if t < config.iters:
            agop_start = time.perf_counter()
            rows = agop_rows(data.n_rows, config.agop_samples, config.seed, t)
            n_used = data.n_rows if rows is None else len(rows)
            total = op.agop_sum(xp.asarray(coef), diag=config.diag, rows=rows)
            next_M = to_numpy(total) / n_used
            record["agop_seconds"] = time.perf_counter() - agop_start
            record["agop_rows"] = n_used
        record["seconds"] = time.perf_counter() - started
        logger.info(
            "round %d: train %.6g, val %s, %s in %.2f s",
            t,
            record["train_score"],
            "-" if record["val_score"] is None else f"{record['val_score']:.6g}",
            solver,
            record["seconds"],
        )
        yield RoundOutcome(round=t, machine=machine, record=record, next_M=next_M)
        if next_M is not None:
            M = next_M
