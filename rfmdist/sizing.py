"""How big a default fit is: the Nyström centers, the row chunks and the AGOP sample, from the data's
size and the machine that fits it.

``centers='auto'`` (:func:`auto_centers`) gives each round a work budget that follows the cores:

- *work*: a round may cost what the exact system of :data:`REFERENCE_EXACT_ROWS` rows costs on
  :data:`REFERENCE_CORES` cores (its Cholesky, ``n^3 / 3`` multiply-adds), scaled with the cores
  that run the fit, ``W = cores / REFERENCE_CORES x REFERENCE_EXACT_ROWS^3 / 3``. The exact system
  (all rows as centers) is used while it fits that budget (``n^3 / 3 <= W``) and its two ``n x n``
  arrays fit the client's memory; beyond, a Nyström round's passes cost ``n m (m + d)``
  multiply-adds (the ``m x m`` Gram matrix ``K_nm^T K_nm`` and the kernel itself), and ``m`` is the
  most centers within ``W``. The budget keeps the round time of 20,000 rows on this project's
  2-core reference machine (about a minute) as rows grow, so that centers shrink as ``1 / sqrt(n)``.
- *statistics*: never fewer than ``sqrt(n)`` centers (the order at which Nyström kernel ridge
  regression keeps the exact solution's learning rate, Rudi, Camoriano and Rosasco 2015, and
  Falkon's advice). Past the crossing of the two (1.6 million rows on 2 cores) the rounds grow as
  ``n^2`` rather than lose accuracy.
- *memory*: the client's ``m x m`` work (the centers' kernel, the Gram matrix, the system and its
  factor, the preconditioner, a partial sum per thread: :data:`CLIENT_SQUARES` float64 squares)
  within its memory budget, and on a cluster the ``m x m`` partial sums a worker holds in a Gram
  pass (bounded as for a tree reduction of fan-in ``split_every``: that many and
  :data:`WORKER_EXTRA_SQUARES` more; Gram passes add theirs in pairs, so this is conservative)
  within :func:`rfmdist.memory.worker_bytes`.

The count is rounded down to two significant digits, so that small differences in the memory free
at the start do not change it. The rule and its measured accuracy against fit time are in the
README (section "Large data sets").

Row chunks follow :func:`rfmdist.operators.chunk_rows_for` (about 0.1 s of kernel work per chunk, at
least one chunk per worker). The AGOP sample stays ``agop_samples`` rows (5,000) whatever ``n``: the
AGOP is a mean over rows, whose sampling error depends on the sample's size, not on ``n``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

#: The reference: the exact system of this many rows on this many cores is one round's work budget.
REFERENCE_EXACT_ROWS = 20_000
REFERENCE_CORES = 2
#: float64 ``m x m`` (``n x n`` for the exact system: 2) arrays the client holds in a round.
CLIENT_SQUARES = 8
EXACT_SQUARES = 2
#: ``m x m`` partials of a Gram pass a worker may hold beyond ``split_every`` (its own chunk's, the
#: reduction's output, copies in transfer).
WORKER_EXTRA_SQUARES = 4


def local_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cluster_cores(client: Any) -> int:
    """The worker threads of a distributed ``client`` (the cores its passes run on)."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(info.get("nthreads", 1)) for info in workers.values()))


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
    cores : int
    """

    n_centers: int | None
    bound: str
    cores: int

    def describe(self, n_rows: int) -> str:
        """One line for the start of a fit."""
        if self.n_centers is None:
            return f"the exact system (all {n_rows:,} rows as centers; {self.cores} cores)"
        why = {
            "work": f"a round's work budget on {self.cores} cores",
            "sqrt(n)": "the floor of sqrt(n) centers",
            "memory": "the memory of the client or the workers",
            "stored": "the run being resumed",
        }[self.bound]
        return f"{self.n_centers:,} Nyström centers of {n_rows:,} rows (set by {why})"


def auto_centers(
    n_rows: int,
    n_features: int,
    cores: int,
    client_bytes: int,
    worker_bytes: int | None = None,
    split_every: int = 8,
) -> CentersChoice:
    """The default number of centers (the rule in the module docstring).

    Parameters
    ----------
    n_rows, n_features : int
        The rows the rounds fit and their features.
    cores : int
        Cores the passes run on (:func:`cluster_cores` or :func:`local_cores`).
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
    budget = work_budget(cores)
    client_bytes = max(0, int(client_bytes))
    exact_by_memory = math.isqrt(client_bytes // (EXACT_SQUARES * 8))
    if n_rows**3 / 3.0 <= budget and n_rows <= exact_by_memory:
        return CentersChoice(None, "exact", cores)
    d = n_features
    by_work = int((-d + math.sqrt(d * d + 4.0 * budget / n_rows)) / 2)
    by_memory = math.isqrt(client_bytes // (CLIENT_SQUARES * 8))
    if worker_bytes is not None:
        squares = split_every + WORKER_EXTRA_SQUARES
        by_memory = min(by_memory, math.isqrt(max(0, int(worker_bytes)) // (squares * 8)))
    by_rows = math.isqrt(n_rows - 1) + 1
    m, bound = (by_work, "work") if by_work >= by_rows else (by_rows, "sqrt(n)")
    if by_memory < m:
        m, bound = by_memory, "memory"
    m = min(_two_digits(max(1, m)), n_rows)
    return CentersChoice(m, bound, cores)
