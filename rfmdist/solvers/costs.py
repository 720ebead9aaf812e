"""What a round's solve costs: the seconds and bytes of each way to solve it, on the device at hand.

The rates come from short calibration runs, once per process, device and BLAS thread budget
(:func:`measured_rates`, about 0.3 s): GEMM flop rates in float32 and float64 (a large Cholesky runs at
:data:`CHOLESKY_EFFICIENCY` of it), the cost of
one kernel entry beyond its distance GEMM (clamp, square root, exponential) with the pass's threads,
and the bytes per second of a pass that streams a cached kernel. The estimates below count, for ``n``
rows, ``m`` centers (``m = n`` for the exact system), ``d`` features and ``c`` outputs, with a pass
over the kernel costing ``n m`` entries (or a stream of ``n m`` cached entries):

=============  ======================================================================================
exact, direct  one pass to build ``K`` (float64), a float64 Cholesky (``n^3 / 3`` flops); memory
               ``2 n^2 x 8`` bytes (``K`` and its factor)
exact, mixed   the same pass, a float32 Cholesky and a few float64 refinement products (see
               :func:`~rfmdist.solvers.direct.solve_mixed`); memory ``n^2 x 12`` bytes
exact, pcg     ``r`` sampled columns of the kernel and their factorisation (``~10 n r^2`` flops), then
               one pass per CG iteration (streamed when the kernel fits the cache budget) and one for
               the predictions; memory: the cached kernel and ``3 n r x 8`` bytes
nystrom, dir.  the Gram pass (``2 n m^2`` flops), an ``m x m`` Cholesky, the right-hand side and the
               predictions (two more passes unless cached); memory ``2 m^2 x 8``
nystrom, pcg   Falkon's preconditioner (``m^3`` flops of Cholesky and ``lauum``), the right-hand side,
               one fused pass ``K^T (K v)`` per iteration and the predictions; memory ``3 m^2 x 8``
               and the cached kernel
=============  ======================================================================================

CG iteration counts are not known before a solve: the first PCG round assumes
:data:`PRIOR_ITERATIONS`, later rounds the count the previous PCG round measured, and while PCG runs
:class:`PCGWatch` checks its measured progress against the fastest factorisation and switches to that
when PCG would take longer. The estimates are for choosing between ways that differ by large factors,
not for predicting the fit's time.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# CG iterations assumed before any was measured (median of the PCG rounds measured on the real
# sets of benchmarks/vs_xrfm.py and the planted task, tol 1e-4, rank-500 sketch / Falkon).
PRIOR_ITERATIONS = {"exact": 60, "nystrom": 40}
# Products with K that solve_mixed's float64 refinement takes (measured: 2 to 1e-4, 3-4 to 1e-10);
# each reads K (8 bytes an entry) and half the float32 factor twice (4 bytes an entry).
MIXED_REFINEMENT_PASSES = 4
# Every this many CG iterations the exact residual costs one more pass (rfmdist.solvers.cg).
RESTART_EVERY = 20
# PCGWatch extrapolates only after this many iterations (earlier decay rates are noise).
WATCH_MIN_ITERATIONS = 5


@dataclass(frozen=True)
class Rates:
    """Measured speeds of one device with its threads.

    Attributes
    ----------
    gemm : dict
        Flop/s of a large GEMM, by dtype name ('float32', 'float64').
    cholesky : dict
        Flop/s of a Cholesky factorisation (``n^3 / 3`` flops), by dtype name.
    entry : dict
        Seconds per kernel entry of a pass at small ``d`` (distance GEMM, clamp, square root and
        exponential, on the pass's threads), by dtype name.
    stream : float
        Bytes per second read by a product with a cached kernel.
    """

    gemm: dict[str, float]
    cholesky: dict[str, float]
    entry: dict[str, float]
    stream: float

    def pass_seconds(
        self, entries: float, d: int, columns: int, dtype: str, *, cached: bool
    ) -> float:
        """One pass over ``entries`` kernel entries times ``columns`` vectors."""
        product = 2.0 * entries * columns / self.gemm[dtype]
        if cached:
            return entries * np.dtype(dtype).itemsize / self.stream + product
        extra_d = 2.0 * entries * max(0, d - CALIBRATION_D) / self.gemm[dtype]
        return entries * self.entry_seconds(dtype) + extra_d + product

    def entry_seconds(self, dtype: str) -> float:
        """Seconds per kernel entry's elementwise work in ``dtype``: measured for the kernel's
        dtype; another (the float64 ``K_mm`` of a float32 fit) from it, in proportion to the
        itemsize (elementwise passes run as many bytes per second in either dtype)."""
        if dtype in self.entry:
            return self.entry[dtype]
        measured, seconds = next(iter(self.entry.items()))
        return seconds * np.dtype(dtype).itemsize / np.dtype(measured).itemsize


@dataclass(frozen=True)
class Problem:
    """The size of one round's system.

    Attributes
    ----------
    n, m, d, c : int
        Rows, centers (``n`` for the exact system), features, outputs.
    exact : bool
    dtype : str
        The kernel's dtype.
    cache_bytes : int
        What a cached ``n x m`` kernel may take (0: passes recompute it).
    rank : int
        Sketch rank of the exact system's preconditioner.
    """

    n: int
    m: int
    d: int
    c: int
    exact: bool
    dtype: str
    cache_bytes: int
    rank: int = 500

    @property
    def kernel_bytes(self) -> int:
        """Bytes of the whole ``n x m`` kernel in its dtype."""
        return self.n * self.m * np.dtype(self.dtype).itemsize

    @property
    def cached(self) -> bool:
        """Whether PCG passes can stream a cached kernel."""
        return self.kernel_bytes <= self.cache_bytes


@dataclass(frozen=True)
class Estimate:
    """Predicted cost of one way to solve a round's system.

    Attributes
    ----------
    solver : {'direct', 'mixed', 'pcg'}
    seconds : float
    bytes : int
        Peak memory the solve adds on the device that runs it.
    """

    solver: str
    seconds: float
    bytes: int

    def record(self) -> dict[str, float]:
        """JSON-ready."""
        return {"seconds": round(self.seconds, 4), "bytes": int(self.bytes)}


def estimate(problem: Problem, rates: Rates, iterations: float) -> list[Estimate]:
    """Estimates of every solver that applies to ``problem``.

    Parameters
    ----------
    problem : Problem
    rates : Rates
    iterations : float
        CG iterations to assume for 'pcg'.
    """
    n, m, d, c, dt = problem.n, problem.m, problem.d, problem.c, problem.dtype
    gemm64 = rates.gemm["float64"]
    build = rates.pass_seconds(n * m, d, 0, dt, cached=False)
    pcg_pass = rates.pass_seconds(n * m, d, c, dt, cached=problem.cached)
    cache = problem.kernel_bytes if problem.cached else 0
    if problem.exact:
        passes = iterations * (1 + 1 / RESTART_EVERY) + 1  # + the predictions
        chol = n**3 / 3
        r = min(problem.rank, n)
        # The preconditioner: the kernel's columns of r sampled rows and their factorisation.
        sketch = rates.pass_seconds(n * r, d, 0, dt, cached=False) + 10 * n * r**2 / gemm64
        refine = MIXED_REFINEMENT_PASSES * n * n * 12 / rates.stream
        return [
            Estimate("direct", build + chol / rates.cholesky["float64"], 2 * n * n * 8),
            Estimate("mixed", build + chol / rates.cholesky["float32"] + refine, n * n * 12),
            Estimate(
                "pcg",
                (build if problem.cached else 0.0)
                + sketch
                + passes * (pcg_pass + 4 * n * r * c / gemm64),
                cache + 3 * n * r * 8,
            ),
        ]
    # The centers' kernel is evaluated in float64 (rfmdist.solvers.systems.centers_kernel).
    kernel_mm = rates.pass_seconds(m * m, d, 0, "float64", cached=False)
    # The right-hand side and the predictions: one pass each (streamed when cached); a CG iteration
    # is one fused pass K^T (K v): the kernel once, two products.
    rhs_and_predict = 2 * pcg_pass
    fused = rates.pass_seconds(n * m, d, 2 * c, dt, cached=problem.cached)
    # The Gram matrix is formed by float64 GEMMs whatever the kernel's dtype (rfmdist.operators).
    gram = build + 2.0 * n * m * m / gemm64
    return [
        Estimate(
            "direct",
            kernel_mm + gram + m**3 / 3 / rates.cholesky["float64"] + rhs_and_predict,
            2 * m * m * 8,
        ),
        Estimate(
            "pcg",
            kernel_mm
            + (build if problem.cached else 0.0)
            + m**3 / rates.cholesky["float64"]  # two Choleskys and lauum, m^3 / 3 each
            + rhs_and_predict
            + iterations * (1 + 1 / RESTART_EVERY) * fused,
            3 * m * m * 8 + cache,
        ),
    ]


@dataclass(frozen=True)
class Choice:
    """The solver chosen for a round, with the estimates it was chosen from.

    Attributes
    ----------
    solver : str
    estimates : list of Estimate
    iterations : float
        CG iterations the 'pcg' estimate assumed.
    memory_bytes : int
        Memory budget the choice respected.
    reason : str
    fallback : Estimate or None
        When PCG is chosen: the fastest factorisation that fits, to switch to if PCG's measured
        progress predicts it would cost more (:class:`PCGWatch`).
    iteration_seconds : float
        The estimated seconds of one PCG iteration.
    """

    solver: str
    estimates: list[Estimate]
    iterations: float
    memory_bytes: int
    reason: str
    fallback: Estimate | None = None
    iteration_seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready: what ``history_`` shows of the choice."""
        return {
            "chosen": self.solver,
            "reason": self.reason,
            "pcg_iterations_assumed": round(float(self.iterations), 1),
            "memory_budget_bytes": int(self.memory_bytes),
            "estimates": {e.solver: e.record() for e in self.estimates},
            "fallback": None if self.fallback is None else self.fallback.solver,
        }


def choose(
    problem: Problem,
    rates: Rates,
    *,
    iterations: float,
    memory_bytes: int,
    allowed: tuple[str, ...] = ("direct", "mixed", "pcg"),
) -> Choice:
    """The fastest allowed solver whose memory fits ``memory_bytes`` (PCG when none fits).

    Parameters
    ----------
    problem : Problem
    rates : Rates
    iterations : float
        CG iterations to assume.
    memory_bytes : int
        What the solve may add on its device (:func:`rfmdist.memory.available_bytes`).
    allowed : tuple of str
        The solvers to choose from.

    Examples
    --------
    >>> rates = Rates(gemm={"float32": 2e11, "float64": 1e11},
    ...               cholesky={"float32": 2e11, "float64": 1e11},
    ...               entry={"float32": 1e-9, "float64": 2e-9}, stream=1e10)
    >>> mid = Problem(n=10_000, m=10_000, d=10, c=1, exact=True, dtype="float64", cache_bytes=2**30)
    >>> choose(mid, rates, iterations=60, memory_bytes=2**33).solver
    'mixed'
    >>> choose(mid, rates, iterations=60, memory_bytes=2**30).solver  # too little memory for it
    'pcg'
    >>> big = Problem(n=200_000, m=200_000, d=10, c=1, exact=True, dtype="float64", cache_bytes=0)
    >>> choose(big, rates, iterations=60, memory_bytes=2**33).solver
    'pcg'
    """
    estimates = [e for e in estimate(problem, rates, iterations) if e.solver in allowed]
    fitting = [e for e in estimates if e.bytes <= memory_bytes]
    if fitting:
        best = min(fitting, key=lambda e: e.seconds)
        reason = f"fastest estimate of those that fit the {memory_bytes / 2**30:.1f} GiB budget"
    else:
        best = next(e for e in estimates if e.solver == "pcg")
        reason = (
            f"no solver's memory fits the {memory_bytes / 2**30:.1f} GiB budget; PCG needs least"
        )
    factorisations = [e for e in fitting if e.solver != "pcg"]
    fallback = (
        min(factorisations, key=lambda e: e.seconds)
        if best.solver == "pcg" and factorisations
        else None
    )
    return Choice(
        best.solver,
        estimates,
        iterations,
        memory_bytes,
        reason,
        fallback,
        iteration_seconds(problem, rates),
    )


def iteration_seconds(problem: Problem, rates: Rates) -> float:
    """Estimated seconds of one PCG iteration on ``problem`` (a pass and the preconditioner)."""
    n, m, d, c, dt = problem.n, problem.m, problem.d, problem.c, problem.dtype
    columns = c if problem.exact else 2 * c  # the Nystrom system's fused K^T (K v)
    passes = rates.pass_seconds(n * m, d, columns, dt, cached=problem.cached)
    rank = min(problem.rank, n) if problem.exact else m
    return passes * (1 + 1 / RESTART_EVERY) + 4 * n * rank * c / rates.gemm["float64"]


@dataclass
class PCGWatch:
    """A CG callback that stops PCG once its progress predicts that finishing would take longer than
    solving afresh by the fallback factorisation.

    CG iteration counts vary far more between systems than factorisation times (measured: 16 to 284
    iterations for rounds of similar size), so the PCG estimate can be far off; the watch follows the
    residuals instead. After :data:`WATCH_MIN_ITERATIONS` iterations it extrapolates the largest
    relative residual's recent geometric decay to ``tol`` and prices the iterations still needed at
    ``iteration_seconds`` (an estimate, not a clock: the decision, and so the fit, is the same
    whenever it runs on the same rates); PCG stops when that exceeds ``fallback_seconds``.

    Attributes
    ----------
    tol : float
    fallback_seconds : float
    iteration_seconds : float
    stopped : dict or None
        After a stop: the iterations run and the iterations and seconds still predicted.
    """

    tol: float
    fallback_seconds: float
    iteration_seconds: float
    stopped: dict[str, float] | None = None
    _history: list[float] = field(default_factory=list)

    def __call__(self, iteration: int, x: Any, residuals: list[float]) -> bool:
        self._history.append(max(residuals))
        if iteration < WATCH_MIN_ITERATIONS:
            return False
        recent = self._history[-max(WATCH_MIN_ITERATIONS, iteration // 2) :]
        first, last = recent[0], recent[-1]
        rate = (last / first) ** (1.0 / (len(recent) - 1)) if first > 0 and last > 0 else 0.0
        needed = float("inf") if rate >= 1 else max(0.0, np.log(self.tol / last) / np.log(rate))
        remaining = min(needed * self.iteration_seconds, 1e12)
        if remaining <= self.fallback_seconds:
            return False
        self.stopped = {
            "iterations": iteration,
            "predicted_iterations_left": min(needed, 1e9),
            "predicted_seconds_left": remaining,
        }
        return True


# --- calibration -----------------------------------------------------------------------------------

# The features of the calibration kernel block: passes at larger d add their extra GEMM flops.
CALIBRATION_D = 8
# Flop rate of a large Cholesky factorisation over that of a large GEMM (LAPACK potrf; measured on
# 2 cores at n = 5,000-8,000: 0.72-0.75 in float64 and float32, one thread and two).
CHOLESKY_EFFICIENCY = 0.7
# Bytes of the array whose product with a vector measures the streaming rate.
STREAM_BYTES = 96 * 2**20


def _timed(func: Any, sync: Any, repeats: int = 2) -> float:
    """Best of ``repeats`` wall times of ``func()`` (after a warm-up call)."""
    func()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        sync()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def calibration_size(device: str) -> int:
    """The side of the calibration's square GEMMs (and centers of its kernel block)."""
    return 1024 if device == "cpu" else 4096


@functools.cache
def gemm_rates(device: str, threads: int) -> dict[str, float]:
    """Flop/s of a large GEMM on ``device`` in float32 and float64 (keys 'float32', 'float64'),
    measured once per process, device and BLAS thread budget (part of the cache key).

    What a GPU's default dtype (:func:`rfmdist.precision.choose_dtype`), the cost model and the
    'auto' centers' work budget (:func:`rfmdist.sizing.fit_capacity`) follow. On a GPU the float32
    rate is measured with TF32 off, whatever this process's setting when it is first asked.
    """
    from rfmdist.backend import synchronize, tf32_matmul, working_namespace

    xp = working_namespace(device)
    sync = functools.partial(synchronize, xp)
    rng = np.random.default_rng(0)
    size = calibration_size(device)
    rates = {}
    with tf32_matmul(False) if device == "gpu" else contextlib.nullcontext():
        for name in ("float32", "float64"):
            A = xp.asarray(rng.standard_normal((size, size)), dtype=name)
            rates[name] = 2.0 * size**3 / _timed(lambda A=A: A @ A, sync)
    return rates


@functools.cache
def measured_rates(device: str, threads: int, dtype: str = "float64") -> Rates:
    """Calibrate the rates of ``device`` with ``threads`` BLAS threads (cached per process).

    Parameters
    ----------
    device : {'cpu', 'gpu'}
    threads : int
        The BLAS thread budget in force (part of the cache key: the rates depend on it).
    dtype : str
        The kernel's dtype, whose per-entry cost is measured.
    """
    from rfmdist.backend import synchronize, working_namespace
    from rfmdist.kernels import prepare_kernel
    from rfmdist.operators import BlockedKernelOperator

    xp = working_namespace(device)
    sync = functools.partial(synchronize, xp)
    rng = np.random.default_rng(0)
    size = calibration_size(device)
    gemm = gemm_rates(device, threads)
    # A Cholesky of the calibration's size is far from its large-n rate; large ones run at a fixed
    # fraction of the GEMM rate.
    cholesky = {name: CHOLESKY_EFFICIENCY * rate for name, rate in gemm.items()}
    X = xp.asarray(rng.standard_normal((2 * size, CALIBRATION_D)), dtype=dtype)
    prepared = prepare_kernel(X[:size], xp.eye(CALIBRATION_D, dtype=dtype), bandwidth=10.0)
    kernel = BlockedKernelOperator(X, prepared).dense
    entry = {dtype: _timed(kernel, sync) / (2 * size * size)}
    # Larger than the caches: a cached kernel is read from memory.
    big = xp.full((STREAM_BYTES // (8 * size), size), 1.0, dtype="float64")
    vector = xp.ones((size, 1), dtype="float64")
    stream = big.nbytes / _timed(lambda: big @ vector, sync)
    return Rates(gemm=gemm, cholesky=cholesky, entry=entry, stream=stream)
