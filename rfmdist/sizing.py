"""How big a default fit is: the Nyström centers, the row chunks and the AGOP sample, from the data's
size and the machine that fits it.

``centers='auto'`` (:func:`auto_centers`) gives each round a work budget that follows the compute
that runs the passes (:func:`fit_capacity`), counted in the reference machine's cores:

- *work*: a round may cost what the exact system of :data:`REFERENCE_EXACT_ROWS` rows costs on
  :data:`REFERENCE_CORES` cores (its Cholesky, ``n^3 / 3`` multiply-adds), scaled with the cores
  that run the fit, ``W = cores / REFERENCE_CORES x REFERENCE_EXACT_ROWS^3 / 3``. CPU cores count
  one each; a GPU counts as many reference cores as its measured GEMM rate in the kernel's dtype is
  a multiple of a reference core's (:data:`REFERENCE_GEMM_FLOPS` / :data:`REFERENCE_CORES`), so that
  a round costs about the seconds it costs on the reference machine, on any device (an H200 at
  ~50 TFLOP/s counts as ~1,100 cores). The exact system
  (all rows as centers) is used while it fits that budget (``n^3 / 3 <= W``) and its two ``n x n``
  arrays (and its centers' ``m x d`` ones, :data:`CENTER_COPIES`) fit the client's memory; beyond, a Nyström round's passes cost ``n m (m + d)``
  multiply-adds (the ``m x m`` Gram matrix ``K_nm^T K_nm`` and the kernel itself), and ``m`` is the
  most centers within ``W``. The budget keeps the round time of 20,000 rows on this project's
  2-core reference machine (about a minute) as rows grow, so that centers shrink as ``1 / sqrt(n)``.
- *statistics*: never fewer than ``sqrt(n)`` centers (the order at which Nyström kernel ridge
  regression keeps the exact solution's learning rate, Rudi, Camoriano and Rosasco 2015, and
  Falkon's advice). Past the crossing of the two (1.6 million rows on 2 cores) the rounds grow as
  ``n^2`` rather than lose accuracy.
- *memory*: the client's ``m x m`` work (the centers' kernel, the Gram matrix, the system and its
  factor, the preconditioner, a partial sum per thread: :data:`CLIENT_SQUARES` float64 squares) and
  its centers (:data:`CENTER_COPIES` ``m x d`` arrays: the bound for wide data) within its memory
  budget, and on a cluster the ``m x m`` partial sums a worker holds in a Gram
  pass (bounded as for a tree reduction of fan-in ``split_every``: that many and
  :data:`WORKER_EXTRA_SQUARES` more; Gram passes add theirs in pairs, so this is conservative)
  within :func:`rfmdist.memory.worker_bytes`.

The count is rounded down to two significant digits, so that small differences in the memory free
at the start do not change it. The rule and its measured accuracy against fit time are in the
README (section "Large data sets").

Row chunks follow :func:`rfmdist.dask_cluster.chunk_rows_for` (about 0.1 s of kernel work per
chunk, at least one chunk per worker). The AGOP sample stays ``agop_samples`` rows (5,000) whatever
``n``: the AGOP is a mean over rows, whose sampling error depends on the sample's size, not on ``n``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from rfmdist.dask_cluster import n_threads, n_workers

#: The reference: the exact system of this many rows on this many cores is one round's work budget.
REFERENCE_EXACT_ROWS = 20_000
REFERENCE_CORES = 2
#: The reference machine's float64 GEMM rate on its REFERENCE_CORES cores (measured with NumPy's
#: OpenBLAS: 88-95 GFLOP/s at n = 1,024-4,096), the unit in which a GPU's measured rate counts as
#: cores.
REFERENCE_GEMM_FLOPS = 9e10
#: float64 ``m x m`` (``n x n`` for the exact system: 2) arrays the client holds in a round.
CLIENT_SQUARES = 8
EXACT_SQUARES = 2
#: float64 ``m x d`` arrays the client holds for the centers (the centers, their transform and its
#: augmented GEMM side, :class:`rfmdist.kernels.PreparedKernel`): negligible beside the squares for
#: tabular data, the bound for wide data (20,000 centers of 27,648 features: 13 GB).
CENTER_COPIES = 3
#: ``m x m`` partials of a Gram pass a worker may hold beyond ``split_every`` (its own chunk's, the
#: reduction's output, copies in transfer).
WORKER_EXTRA_SQUARES = 4


def local_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Capacity:
    """The compute that runs a fit's passes, in the reference machine's cores.

    Attributes
    ----------
    cores : int
        Reference cores (CPU cores count one each).
    what : str
        What they are, for the log.
    """

    cores: int
    what: str


def cpu_capacity(cores: int) -> Capacity:
    """``cores`` CPU cores.

    Examples
    --------
    >>> cpu_capacity(2)
    Capacity(cores=2, what='2 cores')
    """
    return Capacity(cores, f"{cores} cores")


def gpu_capacity(gpus: int, gemm_flops: float, dtype: str) -> Capacity:
    """``gpus`` GPUs whose GEMM in ``dtype`` was measured at ``gemm_flops`` flop/s each, counted
    as reference cores (rounded down to two digits, so that the noise of the measurement rarely
    changes the centers).

    Examples
    --------
    >>> gpu_capacity(1, 51e12, "float64").cores
    1100
    """
    cores = _two_digits(int(REFERENCE_CORES * gpus * gemm_flops / REFERENCE_GEMM_FLOPS))
    gpus_at = "1 GPU at" if gpus == 1 else f"{gpus} GPUs at"
    each = "" if gpus == 1 else " each"
    return Capacity(
        cores,
        f"{gpus_at} {gemm_flops / 1e12:.1f} TFLOP/s{each} ({dtype} GEMM, measured), as "
        f"{cores:,} reference cores",
    )


def fit_capacity(device: str, dtype: Any, client: Any = None) -> Capacity:
    """What runs the passes of a fit on ``device`` with a kernel of ``dtype``: this process's cores
    or a distributed ``client``'s worker threads; on a GPU, this process's GPU (its GEMM rate
    measured once per process, :func:`rfmdist.solvers.costs.gemm_rates`) or one per worker."""
    if device == "gpu":
        import numpy as np

        from rfmdist.solvers.costs import gemm_rates
        from rfmdist.threads import blas_threads

        name = np.dtype(dtype).name
        gpus = n_workers(client)
        return gpu_capacity(gpus, gemm_rates("gpu", blas_threads())[name], name)
    return cpu_capacity(local_cores() if client is None else n_threads(client))


def work_budget(cores: int) -> float:
    """One round's multiply-adds: the exact system of the reference rows, scaled with ``cores``."""
    return cores / REFERENCE_CORES * REFERENCE_EXACT_ROWS**3 / 3.0


def _two_digits(value: int) -> int:
    """``value`` rounded down to two significant digits (at least 1)."""
    if value < 100:
        return max(1, value)
    scale = 10 ** (int(math.log10(value)) - 1)
    return value // scale * scale


@dataclass(frozen=True)
class CentersChoice:
    """The 'auto' centers of a fit.

    Attributes
    ----------
    n_centers : int or None
        Nyström centers, or None for the exact system (all rows).
    bound : str
        What set it: 'exact', 'work', 'sqrt(n)', 'memory', or 'stored' (a resumed run's count).
    capacity : Capacity
        The compute whose work budget it is.
    """

    n_centers: int | None
    bound: str
    capacity: Capacity

    def describe(self, n_rows: int) -> str:
        """One line for the start of a fit."""
        if self.n_centers is None:
            return f"the exact system (all {n_rows:,} rows as centers; {self.capacity.what})"
        why = {
            "work": "a round's work budget",
            "sqrt(n)": "the floor of sqrt(n) centers",
            "memory": "the memory of the client or the workers",
            "stored": "the run being resumed",
        }[self.bound]
        return (
            f"{self.n_centers:,} Nyström centers of {n_rows:,} rows (set by {why}; "
            f"{self.capacity.what})"
        )


def auto_centers(
    n_rows: int,
    n_features: int,
    cores: int | Capacity,
    client_bytes: int,
    worker_bytes: int | None = None,
    split_every: int = 8,
) -> CentersChoice:
    """The default number of centers (the rule in the module docstring).

    Parameters
    ----------
    n_rows, n_features : int
        The rows the rounds fit and their features.
    cores : int or Capacity
        What the passes run on (:func:`fit_capacity`; an int is that many CPU cores).
    client_bytes : int
        Memory the solver's process may use (:func:`rfmdist.memory.available_bytes`).
    worker_bytes : int, optional
        On a cluster, what a worker's task may hold (:func:`rfmdist.memory.worker_bytes`).
    split_every : int
        The tree reduction's fan-in.

    Examples
    --------
    >>> auto_centers(10_000, 20, cores=2, client_bytes=8 * 2**30).n_centers is None
    True
    >>> auto_centers(1_000_000, 20, cores=2, client_bytes=8 * 2**30).n_centers
    1600
    """
    capacity = cores if isinstance(cores, Capacity) else cpu_capacity(cores)
    budget = work_budget(capacity.cores)
    client_bytes = max(0, int(client_bytes))
    d = n_features
    exact_by_memory = most_rows_within(client_bytes, EXACT_SQUARES, CENTER_COPIES * d)
    if n_rows**3 / 3.0 <= budget and n_rows <= exact_by_memory:
        return CentersChoice(None, "exact", capacity)
    by_work = int((-d + math.sqrt(d * d + 4.0 * budget / n_rows)) / 2)
    by_memory = most_rows_within(client_bytes, CLIENT_SQUARES, CENTER_COPIES * d)
    if worker_bytes is not None:
        squares = split_every + WORKER_EXTRA_SQUARES
        by_memory = min(by_memory, math.isqrt(max(0, int(worker_bytes)) // (squares * 8)))
    by_rows = math.isqrt(n_rows - 1) + 1
    m, bound = (by_work, "work") if by_work >= by_rows else (by_rows, "sqrt(n)")
    if by_memory < m:
        m, bound = by_memory, "memory"
    m = min(_two_digits(max(1, m)), n_rows)
    return CentersChoice(m, bound, capacity)


def most_rows_within(budget_bytes: int, squares: int, per_row: int) -> int:
    """The largest ``m`` with ``squares`` float64 ``m x m`` arrays and ``m x per_row`` float64
    entries within ``budget_bytes``: ``8 (squares m^2 + per_row m) <= budget_bytes``.

    Examples
    --------
    >>> most_rows_within(8 * 100, 1, 0), most_rows_within(8 * 200, 1, 100)
    (10, 1)
    """
    entries = max(0, budget_bytes) // 8
    root = math.sqrt(per_row * per_row + 4.0 * squares * entries)
    m = int((-per_row + root) / (2 * squares))
    while squares * (m + 1) ** 2 + per_row * (m + 1) <= entries:
        m += 1
    while m > 0 and squares * m * m + per_row * m > entries:
        m -= 1
    return m
