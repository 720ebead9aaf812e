"""The RFM round loop, independent of scikit-learn: solve, score, update M by the AGOP, repeat.

Round ``t`` (``t = 0 .. iters``) uses the feature matrix ``M_t`` (``M_0 = I``):

1. fit the kernel machine: ``(K + reg I) a = Y`` on all rows (exact) or the Nyström-centers system
   ``(K_nm^T K_nm + reg K_mm) b = K_nm^T Y`` (:mod:`rfmdist.solvers.systems`), by the solver the
   cost model of :mod:`rfmdist.solvers.costs` finds cheapest on this device within its memory
   budget (or the one asked for);
2. score it on the training rows and, when given, on validation rows;
3. unless it is the last round, ``M_{t+1} = AGOP`` of this round's predictor on (a seeded random subset
   of) the training rows, divided by its largest entry (``normalize_agop='max'``) or raw.

:func:`iterate_rounds` yields one :class:`RoundOutcome` per round; :func:`run_rounds` drives it and owns
what a fit keeps: the best round on validation (the last one without validation), early stopping
(``n_iter_no_change``), the wall-clock budget (``time_budget``), and why the rounds stopped. Both can
start from a later round with a given ``M`` (resume): everything they decide is a function of the
recorded history, so a resumed run decides as the uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rfmdist import memory
from rfmdist.backend import get_namespace, to_numpy
from rfmdist.dask_cluster import active_client
from rfmdist.data import is_dask_array
from rfmdist.kernels import prepare_kernel
from rfmdist.metric import Metric
from rfmdist.model import KernelMachine, Standardizer
from rfmdist.operators import KernelOperator, kernel_operator
from rfmdist.progress import CGTracker, LogProgress
from rfmdist.solvers import costs
from rfmdist.solvers.systems import (
    ExactSystem,
    NystromSystem,
    PCGSettings,
    centers_kernel,
    solve_system,
)
from rfmdist.threads import blas_threads, compute_dask

logger = logging.getLogger(__name__)

# The training score of a round whose solve does not give the predictions is estimated on this many
# rows (at an even stride).
TRAIN_SCORE_ROWS = 20_000
# Exact systems with at most this many rows are solved by float64 Cholesky without consulting the
# cost model: every solver takes well under a second there, and float64 Cholesky is the reference.
SMALL_EXACT_ROWS = 2_000

SOLVERS: tuple[str, ...] = ("auto", "direct", "mixed", "pcg")
# The GEMMs of a round's AGOP run in float32; the gradients' outer products are summed in float64.
# Measured on four real sets (5 rounds, float64 kernels): test scores equal to 1e-6 relative, and the
# AGOP of 8x8 digits on a 14x14 canvas (d = 196, 10 classes) 1.8x faster.
AGOP_GEMM_DTYPE = "float32"

# Why the rounds stopped (the last record's "stopped").
STOP_ITERS = "iters"
STOP_NO_CHANGE = "n_iter_no_change"
STOP_TIME = "time_budget"
STOP_CALLBACK = "callback"


@dataclass(frozen=True)
class RoundConfig:
    """Resolved settings of a fit (from the estimator's parameters).

    Attributes
    ----------
    kernel : str
    bandwidth : float
    reg : float
    iters : int
        Number of AGOP updates; rounds ``0 .. iters`` at most.
    diag : bool
    agop_samples : int or None
        Points per round on which the AGOP is estimated (None: all).
    solver : {'auto', 'direct', 'mixed', 'pcg'}
    tol : float
        PCG relative residual target.
    max_iter : int
    preconditioner_rank : int
    cache_kernel : bool or 'auto'
    split_every : int
    dtype : numpy.dtype
        The kernel's dtype (:func:`rfmdist.precision.choose_dtype`).
    seed : int
    device : {'cpu', 'gpu'}
        Where the kernel passes run (resolved from the estimator's ``device``).
    tf32 : bool
        TF32 tensor-core GEMMs on the GPU (set by the caller around the rounds).
    normalize_agop : {'max', None}
        Divide each AGOP by its largest entry before it becomes the next ``M``.
    n_iter_no_change : int or None
        Stop once the validation score has not improved for this many rounds (None: never).
    time_budget : float or None
        Wall-clock seconds for the rounds (None: no limit).
    dtype_reason : str
        Why ``dtype`` (recorded with every round).
    metric_policy : {'auto', 'dense', 'factored'}
        Which forms ``M`` may take (:func:`rfmdist.metric.metric_policy`).
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
    normalize_agop: str | None = "max"
    n_iter_no_change: int | None = None
    time_budget: float | None = None
    dtype_reason: str = "as requested"
    metric_policy: str = "auto"


@dataclass(frozen=True)
class TrainingData:
    """Preprocessed training rows and targets for the round loop, built complete and not changed
    (what the rounds learn as they go, the client's copy of the targets and the cost model's rates,
    is kept by :meth:`targets_on_client` and :meth:`solver_rates` in their own memo).

    Attributes
    ----------
    X : array or dask.array.Array, shape (n, d)
        Preprocessed features in the kernel dtype.
    Y : array or dask.array.Array, shape (n, c)
        Float targets (one-hot for classification), scaled by ``target_scaling``.
    score : callable
        ``score(predictions, rows=None) -> float``: the score of predictions (numpy, in target units)
        of the training rows ``rows`` (an index array; None: all, in order).
    center_rows : numpy.ndarray of int or None
        Row indices of the Nyström centers; None for the exact system (all rows).
    centers : array, shape (m, d)
        The centers (client side, kernel dtype).
    preprocessing : Standardizer
        Feature preprocessing already applied to ``X``.
    target_scaling : Standardizer
        Standardisation already applied to ``Y`` (identity for classification).
    workspace : Workspace
        The large arrays the rounds reuse (see :class:`rfmdist.memory.Workspace`).
    known_rates : Rates or None
        The cost model's rates of the run being resumed (stored with it), so that a resumed run
        chooses as the uninterrupted one; None: measured at the first choice
        (:meth:`solver_rates`).
    """

    X: Any
    Y: Any
    score: Callable[[np.ndarray], float]
    center_rows: np.ndarray | None
    centers: Any
    preprocessing: Standardizer
    target_scaling: Standardizer = field(default_factory=Standardizer)
    workspace: memory.Workspace = field(default_factory=memory.Workspace)
    known_rates: costs.Rates | None = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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

    def operator(self, prepared: Any, *, cache: bool, split_every: int) -> KernelOperator:
        """A kernel operator over the training rows."""
        return kernel_operator(
            self.X, prepared, cache=cache, split_every=split_every, workspace=self.workspace
        )

    def train_score(self, prepared: Any, coef: Any, train_pred: Any = None) -> tuple[float, int]:
        """The training score of a round: from ``train_pred`` (all rows) when the solve gave them,
        else from the predictions of at most :data:`TRAIN_SCORE_ROWS` rows drawn at an even stride
        (a full pass over millions of rows for one number would cost as much as the solve).

        Returns
        -------
        score : float
        rows : int
            How many rows it was computed on.
        """
        if train_pred is not None:
            pred = self.target_scaling.inverse(to_numpy(train_pred))
            return float(self.score(pred)), self.n_rows
        rows = None
        X = self.X
        if self.n_rows > TRAIN_SCORE_ROWS:
            rows = np.unique(np.linspace(0, self.n_rows - 1, TRAIN_SCORE_ROWS).astype(np.int64))
            X = X[rows] if is_dask_array(X) else X[get_namespace(X).asarray(rows)]
        if is_dask_array(X):
            X = compute_dask(X)
        xp = get_namespace(X)
        pred = kernel_operator(X, prepared).predict(xp.asarray(coef))
        pred = self.target_scaling.inverse(to_numpy(pred))
        return float(self.score(pred, rows)), self.n_rows if rows is None else len(rows)

    def targets_on_client(self) -> Any:
        """``Y`` as a float64 in-memory array (computed once for Dask data)."""
        if "Y_client" not in self._memo:
            Y = self.Y.compute() if is_dask_array(self.Y) else self.Y
            self._memo["Y_client"] = get_namespace(Y).asarray(Y, dtype=np.float64)
        return self._memo["Y_client"]

    def solver_rates(self, config: RoundConfig) -> costs.Rates:
        """The cost model's rates: the resumed run's, else measured once (at the first choice)."""
        if "rates" not in self._memo:
            self._memo["rates"] = self.known_rates or costs.measured_rates(
                config.device, blas_threads(), np.dtype(config.dtype).name
            )
        return self._memo["rates"]

    @property
    def rates(self) -> costs.Rates | None:
        """The rates the rounds have chosen solvers with (None: no choice asked for them yet)."""
        return self._memo.get("rates", self.known_rates)


@dataclass
class RoundOutcome:
    """What one round produced.

    Attributes
    ----------
    round : int
    machine : KernelMachine
        The round's predictor (with ``M_t``).
    record : dict
        JSON-ready: scores, seconds, the solver choice and record, AGOP seconds.
    next_metric : Metric or None
        ``M_{t+1}`` (None after the last round).
    """

    round: int
    machine: KernelMachine
    record: dict[str, Any]
    next_metric: Metric | None


def agop_rows(n: int, samples: int | None, seed: int, round_index: int) -> np.ndarray | None:
    """Sorted row indices for round ``round_index``'s AGOP (None: all rows); reproducible."""
    if samples is None or samples >= n:
        return None
    rng = np.random.default_rng([seed, 1, round_index])
    return np.sort(rng.choice(n, size=samples, replace=False))


def memory_budget(config: RoundConfig, data: TrainingData) -> int:
    """Bytes a solve may use where it runs (the client process or its GPU), counting the arrays the
    previous rounds left in the workspace for it to reuse."""
    return memory.available_bytes(config.device) + data.workspace.nbytes


def use_cache(config: RoundConfig, n: int, m: int, *, on_workers: bool = False) -> bool:
    """Resolve ``cache_kernel``: 'auto' keeps the ``n x m`` kernel when it fits the memory budget of
    where it would live (:func:`rfmdist.memory.cache_bytes` in this process or on its GPU;
    :func:`rfmdist.memory.workers_cache_bytes` for a kernel persisted on distributed workers)."""
    if config.cache_kernel != "auto":
        return bool(config.cache_kernel)
    return n * m * np.dtype(config.dtype).itemsize <= cache_budget(config, on_workers=on_workers)


def cache_budget(config: RoundConfig, *, on_workers: bool = False) -> int:
    """Bytes a cached ``n x m`` kernel may take where it would live."""
    client = active_client() if on_workers else None
    if client is not None:
        return memory.workers_cache_bytes(client)
    return memory.cache_bytes(config.device)


def choose_solver(
    config: RoundConfig, data: TrainingData, m: int, iterations: float | None
) -> tuple[str, dict[str, Any], costs.Choice | None]:
    """The round's solver and the record of how it was chosen.

    ``solver='auto'`` asks the cost model (:func:`rfmdist.solvers.costs.choose`) for the fastest
    solver that fits the memory budget, assuming ``iterations`` CG iterations (the previous PCG
    round's, else the prior); small exact systems take float64 Cholesky directly. Another
    ``solver`` is used as asked ('mixed' applies to exact systems only: Nyström systems take
    'direct' instead).

    Returns
    -------
    solver : {'direct', 'mixed', 'pcg'}
    record : dict
        JSON-ready (``history_[t]["solver_choice"]``).
    choice : Choice or None
        The cost model's choice (None when it was not asked).
    """
    exact = data.exact
    if config.solver != "auto":
        solver = "direct" if config.solver == "mixed" and not exact else config.solver
        return solver, {"chosen": solver, "reason": "as requested"}, None
    n = data.n_rows
    if exact and n <= SMALL_EXACT_ROWS:
        reason = f"exact system of at most {SMALL_EXACT_ROWS} rows"
        return "direct", {"chosen": "direct", "reason": reason}, None
    kind = "exact" if exact else "nystrom"
    problem = costs.Problem(
        n=n,
        m=m,
        d=int(data.X.shape[1]),
        c=int(data.Y.shape[1]),
        exact=exact,
        dtype=np.dtype(config.dtype).name,
        cache_bytes=cache_budget(config, on_workers=is_dask_array(data.X)),
        rank=config.preconditioner_rank,
    )
    rates = data.solver_rates(config)
    choice = costs.choose(
        problem,
        rates,
        iterations=costs.PRIOR_ITERATIONS[kind] if iterations is None else iterations,
        memory_bytes=memory_budget(config, data),
        allowed=("direct", "mixed", "pcg") if exact else ("direct", "pcg"),
    )
    return choice.solver, choice.record(), choice


def solve_with_watch(
    system: Any, solver: str, settings: PCGSettings, choice: costs.Choice | None
) -> tuple[Any, float | None]:
    """Solve the round's system; a PCG solve chosen by the cost model switches to its fallback
    factorisation when :class:`~rfmdist.solvers.costs.PCGWatch` predicts it would cost more.

    Returns
    -------
    solved : SolveOutcome
    iterations : float or None
        CG iterations the system took or (when PCG was abandoned) was predicted to need: what the
        next round's estimate assumes. None when no PCG ran.
    """
    if solver != "pcg" or choice is None or choice.fallback is None:
        solved = solve_system(system, solver, settings)
        return solved, float(solved.record["iterations"]) if solver == "pcg" else None
    watch = costs.PCGWatch(
        tol=settings.tol,
        fallback_seconds=choice.fallback.seconds,
        iteration_seconds=choice.iteration_seconds,
    )
    report = settings.callback

    def watched(iteration: int, x: Any, residuals: list[float]) -> bool:
        if report is not None:
            report(iteration, x, residuals)
        return watch(iteration, x, residuals)

    solved = solve_system(system, "pcg", replace(settings, callback=watched))
    if watch.stopped is None:
        return solved, float(solved.record["iterations"])
    stop = watch.stopped
    if stop["predicted_iterations_left"] >= 1e9:  # the residual did not decrease any more
        logger.info(
            "PCG stopped after %d iterations: its residual no longer decreases; %s instead "
            "(%.1f s predicted)",
            stop["iterations"],
            choice.fallback.solver,
            choice.fallback.seconds,
        )
    else:
        logger.info(
            "PCG stopped after %d iterations: %.0f more predicted (%.1f s), more than %s's %.1f s",
            stop["iterations"],
            stop["predicted_iterations_left"],
            stop["predicted_seconds_left"],
            choice.fallback.solver,
            choice.fallback.seconds,
        )
    fallback = solve_system(system, choice.fallback.solver, settings)
    fallback.record["abandoned_pcg"] = stop | {"seconds": solved.record["seconds"]}
    fallback.record["seconds"] += solved.record["seconds"]
    return fallback, float(stop["iterations"] + stop["predicted_iterations_left"])


def solve_round(
    op: KernelOperator,
    data: TrainingData,
    config: RoundConfig,
    solver: str,
    settings: PCGSettings,
    choice: costs.Choice | None,
) -> tuple[Any, float | None, KernelOperator]:
    """Solve the round's system over ``op`` (:func:`solve_with_watch`); when a float32 kernel is
    indefinite beyond the jitters of its resolution (a factorisation raised ``LinAlgError``), run
    the round in float64: the same kernel evaluated in float64, solved by float64 Cholesky, logged
    and recorded in the solve's record (``"float64_fallback"``). The round's predictor and AGOP then
    use the float64 kernel too: coefficients of a system that float32 cannot resolve are not to be
    multiplied by float32 kernel values (measured: a Gaussian kernel at reg 1e-7, test MSE 4.1
    with float32 predictions of the float64 solution, 0.003 in float64). A float64 kernel's
    failure is raised: its error says how to fix it.

    Returns
    -------
    solved : SolveOutcome
    iterations : float or None
        As :func:`solve_with_watch` (None after a fallback).
    op : KernelOperator
        The operator the round's predictor uses: ``op``, or its float64 counterpart.
    """
    try:
        solved, iterations = solve_with_watch(
            build_system(op, data, config), solver, settings, choice
        )
        return solved, iterations, op
    except np.linalg.LinAlgError as err:
        if op.prepared.dtype == np.float64:
            raise
        reason = str(err)
    logger.warning(
        "the %s system's %s kernel is not positive definite to its resolution (%s); solving this "
        "round with the kernel in float64",
        "exact" if data.exact else "Nyström",
        op.prepared.dtype,
        reason,
    )
    data.workspace.release()  # the float32 arrays, before the float64 ones are made
    wide = data.operator(
        op.prepared.astype(np.float64), cache=False, split_every=config.split_every
    )
    solved = solve_system(build_system(wide, data, config), "direct", settings)
    solved.record["float64_fallback"] = {"solver": solver, "error": reason}
    return solved, None, wide


def build_system(op: Any, data: TrainingData, config: RoundConfig) -> ExactSystem | NystromSystem:
    """The round's linear system over ``op``."""
    if data.exact:
        return ExactSystem(op, data.targets_on_client(), config.reg, data.workspace)
    Y = data.Y if is_dask_array(data.X) else data.targets_on_client()
    return NystromSystem(op, centers_kernel(op.prepared, data.centers), Y, config.reg)


def iterate_rounds(
    data: TrainingData,
    config: RoundConfig,
    *,
    start_round: int = 0,
    start_metric: Metric | None = None,
    validation: tuple[Any, Callable[[np.ndarray], float]] | None = None,
    pcg_iterations: float | None = None,
    progress: Any = None,
    stage: str = "round",
) -> Iterator[RoundOutcome]:
    """Run rounds ``start_round .. config.iters``, yielding each as it finishes.

    Parameters
    ----------
    data : TrainingData
    config : RoundConfig
    start_round : int
        First round to run (resume); ``start_metric`` must then be that round's ``M``.
    start_metric : Metric, optional
        Feature matrix of ``start_round`` (identity by default).
    validation : (X_val, score) , optional
        Raw validation features (NumPy, CuPy or Dask) and ``score(predictions) -> float``.
    pcg_iterations : float, optional
        CG iterations of the last PCG round before ``start_round`` (for the cost model).
    progress : FitProgress, optional
        Told of every round and CG iteration (:mod:`rfmdist.progress`; default: logging).
    stage : {'round', 'refit'}
        What the rounds are, for ``progress``.
    """
    progress = LogProgress() if progress is None else progress
    d = int(data.X.shape[1])
    metric = Metric.identity(d, config.diag) if start_metric is None else start_metric
    for t in range(start_round, config.iters + 1):
        started = time.perf_counter()
        prepared = prepare_kernel(
            data.centers, metric, kernel=config.kernel, bandwidth=config.bandwidth
        )
        m = prepared.n_centers
        solver, choice_record, choice = choose_solver(config, data, m, pcg_iterations)
        cache = (
            use_cache(config, data.n_rows, m, on_workers=is_dask_array(data.X))
            if solver == "pcg"
            else False
        )
        op = data.operator(prepared, cache=cache, split_every=config.split_every)
        progress.round_started(t, config.iters, {"solver": solver, "n_centers": m, "stage": stage})
        settings = PCGSettings(
            tol=config.tol,
            max_iter=config.max_iter,
            preconditioner_rank=config.preconditioner_rank,
            seed=(config.seed, 2, t),
            callback=CGTracker(t, config.tol, config.max_iter, progress),
        )
        solved, iterations, op = solve_round(op, data, config, solver, settings, choice)
        if iterations is not None:
            pcg_iterations = iterations
        solver = solved.record["solver"]
        machine = KernelMachine(
            centers=to_numpy(data.centers),
            coef=to_numpy(solved.coef).astype(np.float64),
            metric=metric,
            kernel=config.kernel,
            bandwidth=config.bandwidth,
            preprocessing=data.preprocessing,
            dtype=op.prepared.dtype,
            target_scaling=data.target_scaling,
        )
        record: dict[str, Any] = {
            "round": t,
            "solver": solver,
            "solver_choice": choice_record,
            "n_centers": m,
            "cached_kernel": cache,
            "dtype": op.prepared.dtype.name,
            "dtype_choice": {"dtype": np.dtype(config.dtype).name, "reason": config.dtype_reason},
            "metric": metric.record(),
            "solve": solved.record,
            "train_score": None,
            "train_score_rows": None,
            "val_score": None,
        }
        record["train_score"], record["train_score_rows"] = data.train_score(
            op.prepared, solved.coef, solved.train_pred
        )
        if validation is not None:
            X_val, val_score = validation
            pred = machine.decision(X_val, reuse=op.prepared)
            pred = compute_dask(pred) if is_dask_array(pred) else pred
            record["val_score"] = float(val_score(to_numpy(pred)))
        next_metric = None
        if t < config.iters:
            agop_start = time.perf_counter()
            next_metric, record["agop"] = agop_metric(op, metric, solved.coef, data, config, t)
            record["agop_seconds"] = time.perf_counter() - agop_start
            record["agop_rows"] = record["agop"]["rows"]
        record["seconds"] = time.perf_counter() - started
        logger.info(
            "round %d: train %.6g, val %s, %s in %.2f s",
            t,
            record["train_score"],
            "-" if record["val_score"] is None else f"{record['val_score']:.6g}",
            solver,
            record["seconds"],
        )
        outcome = RoundOutcome(round=t, machine=machine, record=record, next_metric=next_metric)
        progress.round_finished(outcome)
        yield outcome
        if next_metric is not None:
            metric = next_metric


def agop_metric(
    op: Any, metric: Metric, coef: Any, data: TrainingData, config: RoundConfig, t: int
) -> tuple[Metric, dict[str, Any]]:
    """``M_{t+1}``: the AGOP of round ``t``'s predictor (kernel operator ``op`` with ``M_t =
    metric``, coefficients ``coef`` (m, c)) on its sampled rows, normalized, in the form
    :meth:`Metric.agop_plan` picks; with a JSON-ready record of how it was accumulated."""
    rows = agop_rows(data.n_rows, config.agop_samples, config.seed, t)
    points = data.n_rows if rows is None else len(rows)
    accumulate, form = metric.agop_plan(points, int(coef.shape[1]), config.metric_policy)
    total = op.gradient_sum(
        get_namespace(data.centers).asarray(coef),
        accumulate=accumulate,
        rows=rows,
        gemm_dtype=AGOP_GEMM_DTYPE,
    )
    agop = metric.next_from_gradients(to_numpy(total), accumulate, form, points)
    agop = agop.normalized(config.normalize_agop)
    if config.metric_policy == "auto":
        agop = agop.compact()
    return agop, {"rows": points, "accumulate": accumulate, "form": agop.form}


def refit_round(
    data: TrainingData,
    config: RoundConfig,
    metric: Metric,
    round_index: int,
    progress: Any = None,
) -> RoundOutcome:
    """Fit round ``round_index``'s feature matrix ``metric`` on ``data`` once more (one solve, no
    AGOP, no validation): the final model of a fit whose rounds saw only part of the rows."""
    last = replace(config, iters=round_index)
    rounds = iterate_rounds(
        data, last, start_round=round_index, start_metric=metric, progress=progress, stage="refit"
    )
    return next(rounds)


@dataclass
class EarlyStopping:
    """Best round on validation and early stopping, from the validation scores alone.

    Parameters
    ----------
    greater_is_better : bool
        Accuracy (True) or a loss (False).
    n_iter_no_change : int or None
        Stop after this many rounds without improvement over the best (None: never).

    Examples
    --------
    >>> stop = EarlyStopping(greater_is_better=False, n_iter_no_change=2)
    >>> [stop.observe(t, s) for t, s in enumerate([0.5, 0.4, 0.45, 0.41])]
    [False, False, False, True]
    >>> stop.best_round
    1
    """

    greater_is_better: bool
    n_iter_no_change: int | None
    best_round: int | None = None
    best_score: float | None = None
    last_round: int | None = None

    def improves(self, score: float) -> bool:
        """True when ``score`` is strictly better than the best so far (or the first)."""
        if self.best_score is None:
            return True
        return score > self.best_score if self.greater_is_better else score < self.best_score

    def observe(self, round_index: int, score: float | None) -> bool:
        """Take round ``round_index``'s validation score (None: no validation, every round is the
        best); True when the rounds should stop after it."""
        self.last_round = round_index
        if score is None or self.improves(score):
            self.best_round, self.best_score = round_index, score
        return self.should_stop()

    def should_stop(self) -> bool:
        """True when the last ``n_iter_no_change`` rounds did not improve on the best."""
        if self.n_iter_no_change is None or self.best_round is None or self.last_round is None:
            return False
        return self.last_round - self.best_round >= self.n_iter_no_change


@dataclass
class RoundsResult:
    """What :func:`run_rounds` kept.

    Attributes
    ----------
    best : RoundOutcome
        The round kept (best on validation, or the last).
    history : list of dict
        Every round's record; the last one's ``"stopped"`` says why the rounds stopped.
    metric_history : list of Metric
        ``M_t`` of every round.
    stop_reason : str
        :data:`STOP_ITERS`, :data:`STOP_NO_CHANGE`, :data:`STOP_TIME` or :data:`STOP_CALLBACK`.
    """

    best: RoundOutcome
    history: list[dict[str, Any]]
    metric_history: list[Metric]
    stop_reason: str


def time_left_for_another_round(history: list[dict[str, Any]], budget: float | None) -> bool:
    """True when another round fits ``budget`` seconds: the rounds so far plus one more of their
    mean length (the AGOP after the last one included) end within it."""
    if budget is None or not history:
        return True
    spent = sum(float(h["seconds"]) for h in history)
    return spent + spent / len(history) <= budget


def run_rounds(
    data: TrainingData,
    config: RoundConfig,
    *,
    greater_is_better: bool,
    validation: tuple[Any, Callable[[np.ndarray], float]] | None = None,
    previous: tuple[list[dict[str, Any]], list[Metric], RoundOutcome, Metric | None] | None = None,
    on_round: Callable[[RoundOutcome, int, list[dict[str, Any]]], bool] | None = None,
    progress: Any = None,
) -> RoundsResult:
    """Run the rounds and keep the best, stopping early on validation or on the time budget.

    Parameters
    ----------
    data : TrainingData
    config : RoundConfig
    greater_is_better : bool
        How validation scores compare.
    validation : (X_val, score), optional
    previous : (history, metric_history, best, next_metric), optional
        The committed rounds of a run being resumed, its best round and the next round's ``M``.
    on_round : callable, optional
        ``on_round(outcome, best_round, history)`` after each round (commit it, call the user's
        callback); True stops the rounds after it. The round's record already says whether the
        rounds stop after it for another reason (``"stopped"``).
    progress : FitProgress, optional
        See :func:`iterate_rounds`.

    Returns
    -------
    RoundsResult
    """
    history: list[dict[str, Any]] = [] if previous is None else list(previous[0])
    metric_history: list[Metric] = [] if previous is None else list(previous[1])
    best = None if previous is None else previous[2]
    stopping = EarlyStopping(greater_is_better, config.n_iter_no_change)
    for record in history:
        stopping.observe(int(record["round"]), record["val_score"])
    stop_reason = _stop_reason(stopping, history, config)
    if stop_reason is not None or len(history) > config.iters:
        return RoundsResult(best, history, metric_history, stop_reason or STOP_ITERS)
    iterations = [h["solve"]["iterations"] for h in history if h["solver"] == "pcg"]
    rounds = iterate_rounds(
        data,
        config,
        start_round=len(history),
        start_metric=None if previous is None else previous[3],
        validation=validation,
        pcg_iterations=float(iterations[-1]) if iterations else None,
        progress=progress,
    )
    stop_reason = STOP_ITERS
    for outcome in rounds:
        stopping.observe(outcome.round, outcome.record["val_score"])
        if stopping.best_round == outcome.round:
            best = outcome
        history.append(outcome.record)
        metric_history.append(outcome.machine.metric)
        reason = _stop_reason(stopping, history, config)
        if reason is not None:
            outcome.record["stopped"] = reason
        elif outcome.next_metric is None:
            outcome.record["stopped"] = STOP_ITERS
        if on_round is not None and on_round(outcome, best.round, history):
            stop_reason = reason or STOP_CALLBACK
            outcome.record.setdefault("stopped", STOP_CALLBACK)
            break
        if reason is not None:
            stop_reason = reason
            logger.info("stopping after round %d: %s", outcome.round, _describe(reason, config))
            break
    return RoundsResult(best, history, metric_history, stop_reason)


def _stop_reason(
    stopping: EarlyStopping, history: list[dict[str, Any]], config: RoundConfig
) -> str | None:
    """Why the rounds stop after the last recorded one before ``iters`` (None: they go on)."""
    if not history or len(history) > config.iters:
        return None
    if stopping.should_stop():
        return STOP_NO_CHANGE
    if not time_left_for_another_round(history, config.time_budget):
        return STOP_TIME
    return None


def _describe(reason: str, config: RoundConfig) -> str:
    if reason == STOP_NO_CHANGE:
        return f"the validation score did not improve for {config.n_iter_no_change} rounds"
    if reason == STOP_TIME:
        return f"another round would end past the time budget of {config.time_budget:g} s"
    return reason
