"""The plan of a fit: its size and placement, decided once, before the first pass.

A fit's plan is everything about how big it is and where it runs that more than one step needs:
the rows it holds out to choose its round, its centers, the row chunks its Dask passes map over,
the device, the kernel dtype, the solver policy and the AGOP sample. :func:`plan_fit` resolves it
from the estimator's settings (:class:`rfmdist.pipeline.FitSettings`), the data's shape, the
device and the Dask cluster (its workers and memory), and the run being resumed, whose stored plan
it keeps. The estimator's :meth:`~rfmdist.estimators.RFMRegressor.plan` gives it to the command
line, which chunks its data by it before the fit; the fit resolves the same plan, logs it, stores it
with the run (attribute ``plan``) and carries it out (:class:`rfmdist.pipeline.FitPipeline`).

The rules themselves live with what they size: the internal validation split
(:func:`held_out_rows`), the centers (:func:`rfmdist.sizing.auto_centers`), the row chunks
(:func:`rfmdist.dask_cluster.chunk_rows_for`, called only from here: :func:`row_chunks`) and the dtype
(:func:`rfmdist.precision.choose_dtype`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfmdist import memory
from rfmdist.centers import AllRows, selector_for
from rfmdist.dask_cluster import chunk_rows_for, n_workers
from rfmdist.sizing import CentersChoice, auto_centers, fit_capacity

logger = logging.getLogger(__name__)

# Format 1 stores have no count of centers: their 'auto' was min(n, 20,000).
FORMAT_1_AUTO_CENTERS = 20_000


@dataclass(frozen=True)
class FitPlan:
    """The plan of one fit (the module docstring says what decides each part).

    Attributes
    ----------
    n_rows, n_features : int
        The training data's shape.
    held_out_rows : int
        Rows an internal validation split holds out to choose the round (0: none).
    centers : int
        The rounds' centers (all their rows for the exact system).
    exact : bool
        The exact system (every row of the rounds a center).
    centers_reason : str
        What set ``centers``: 'exact', 'work', 'sqrt(n)', 'memory' (``centers='auto'``,
        :class:`rfmdist.sizing.CentersChoice`), 'stored' (a resumed run's) or 'given' (the
        ``centers`` parameter).
    chunk_rows : int or None
        Rows per chunk of the Dask passes (None: the rows are in memory, no cluster).
    workers : int
        Dask workers the passes run on (0: this process).
    device : {'cpu', 'gpu'}
    dtype : str
        The kernel's dtype.
    dtype_reason : str
    solver : {'auto', 'direct', 'mixed', 'pcg'}
        The solver policy ('auto': the cost model's choice, round by round).
    agop_rows : int
        Rows each round's AGOP is estimated on.
    capacity : str
        What the passes run on, as the sizing counts it.
    """

    n_rows: int
    n_features: int
    held_out_rows: int
    centers: int
    exact: bool
    centers_reason: str
    chunk_rows: int | None
    workers: int
    device: str
    dtype: str
    dtype_reason: str
    solver: str
    agop_rows: int
    capacity: str

    @property
    def rounds_rows(self) -> int:
        """Rows the rounds fit (all but the held-out ones)."""
        return self.n_rows - self.held_out_rows

    def selector_count(self) -> int | None:
        """What ``centers='auto'`` stands for in :func:`rfmdist.centers.selector_for` (None: the
        exact system)."""
        return None if self.exact else self.centers

    def record(self) -> dict[str, Any]:
        """JSON-ready: the store's attribute ``plan``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FitPlan:
        """The plan a store recorded (:meth:`record`)."""
        return cls(**{field.name: record[field.name] for field in dataclasses.fields(cls)})

    def describe(self) -> str:
        """One line for the start of a fit."""
        chunks = (
            "in memory"
            if self.chunk_rows is None
            else f"row chunks of {self.chunk_rows:,} rows over {self.workers} workers"
        )
        centers = (
            f"the exact system ({self.rounds_rows:,} rows)"
            if self.exact
            else f"{self.centers:,} Nyström centers ({self.centers_reason})"
        )
        return (
            f"plan: {self.n_rows:,} x {self.n_features:,} rows ({self.held_out_rows:,} held out), "
            f"{centers}, {chunks}, {self.device} {self.dtype} ({self.capacity}), solver "
            f"{self.solver}, AGOP on {self.agop_rows:,} rows a round"
        )


def held_out_rows(n: int, fraction: float | None, n_iter_no_change: int | None) -> int:
    """How many of ``n`` rows a fit without validation data holds out to choose the round: 0 when
    early stopping is off, ``fraction`` is None or too few rows would be left, else
    ``max(1, round(fraction * n))``.

    Examples
    --------
    >>> held_out_rows(1000, 0.1, 2), held_out_rows(1000, 0.1, None), held_out_rows(2, 0.1, 2)
    (100, 0, 0)
    """
    if n_iter_no_change is None or fraction is None:
        return 0
    n_val = max(1, round(fraction * n))
    return 0 if n - n_val < 2 else n_val


def row_chunks(n_rows: int, n_centers: int, n_features: int, dtype: Any, workers: int) -> int:
    """Rows per chunk of a Dask pass: about 0.1 s of kernel work against ``n_centers`` centers in
    ``dtype``, and at least one chunk per worker (:func:`rfmdist.dask_cluster.chunk_rows_for`)."""
    itemsize = np.dtype(dtype).itemsize
    return chunk_rows_for(n_rows, n_centers, n_features, itemsize, max(1, workers))


def plan_fit(
    settings: Any,
    n_rows: int,
    n_features: int,
    *,
    has_validation: bool,
    client: Any = None,
    chunk_rows: int | None = None,
    previous: Any = None,
) -> FitPlan:
    """Resolve a fit's plan (the module docstring).

    Parameters
    ----------
    settings : FitSettings
        The estimator's (:meth:`~rfmdist.estimators.RFMRegressor.fit_settings`).
    n_rows, n_features : int
        The training data's shape.
    has_validation : bool
        Validation data is given (``eval_set``): no rows are held out.
    client : distributed.Client, optional
        The active client, whose workers run the passes.
    chunk_rows : int, optional
        The row chunks asked for (``--chunk-rows``) or those of a Dask input; by default
        :func:`row_chunks` on a cluster, None in memory.
    previous : RunAttributes, optional
        The run being resumed (its attributes, or the whole StoredRun): its stored plan is kept; a run stored before plans were (format
        3's first writers and older) keeps its dtype and its count of centers.

    Returns
    -------
    FitPlan
    """
    if previous is not None and previous.plan is not None:
        return FitPlan.from_record(previous.plan)
    rounds = settings.rounds
    dtype, dtype_reason = np.dtype(rounds.dtype), rounds.dtype_reason
    stored_dtype = previous.dtype_choice if previous is not None else None
    if stored_dtype is not None:
        dtype = np.dtype(stored_dtype["dtype"])
        dtype_reason = stored_dtype["reason"]
    held_out = (
        0
        if has_validation
        else held_out_rows(n_rows, settings.validation_fraction, rounds.n_iter_no_change)
    )
    rounds_rows = n_rows - held_out
    capacity = fit_capacity(rounds.device, dtype, client)
    auto_count, reason = None, "given"
    if isinstance(settings.centers, str):  # 'auto'
        auto_count, reason = _auto_count(
            settings, rounds_rows, n_features, capacity, client, previous
        )
    selector = selector_for(settings.centers, rounds_rows, auto_count)
    centers = selector.count(rounds_rows)
    workers = 0 if client is None else n_workers(client)
    if chunk_rows is None and client is not None:
        chunk_rows = row_chunks(n_rows, centers, n_features, dtype, workers)
    agop = rounds.agop_samples
    return FitPlan(
        n_rows=int(n_rows),
        n_features=int(n_features),
        held_out_rows=int(held_out),
        centers=int(centers),
        exact=isinstance(selector, AllRows),
        centers_reason=reason,
        chunk_rows=None if chunk_rows is None else int(chunk_rows),
        workers=workers,
        device=rounds.device,
        dtype=dtype.name,
        dtype_reason=dtype_reason,
        solver=rounds.solver,
        agop_rows=int(rounds_rows if agop is None else min(rounds_rows, agop)),
        capacity=capacity.what,
    )


def _auto_count(
    settings: Any, rounds_rows: int, n_features: int, capacity: Any, client: Any, previous: Any
) -> tuple[int | None, str]:
    """What ``centers='auto'`` means for this fit (None: exact) and what set it; a resumed run's
    stored count; logged."""
    if previous is not None:
        m = previous.n_centers or min(rounds_rows, FORMAT_1_AUTO_CENTERS)
        return (None if m >= rounds_rows else m), "stored"
    choice = centers_choice(settings, rounds_rows, n_features, client, capacity)
    logger.info("centers='auto': %s", choice.describe(rounds_rows))
    return choice.n_centers, choice.bound


def centers_choice(
    settings: Any, n_rows: int, n_features: int, client: Any = None, capacity: Any = None
) -> CentersChoice:
    """What ``centers='auto'`` means for a new fit of ``n_rows`` rows on this machine or the
    cluster of ``client`` (:func:`rfmdist.sizing.auto_centers`), in the settings' device and
    dtype (``capacity``: :func:`rfmdist.sizing.fit_capacity`'s, when known)."""
    rounds = settings.rounds
    if capacity is None:
        capacity = fit_capacity(rounds.device, rounds.dtype, client)
    return auto_centers(
        n_rows,
        n_features,
        capacity,
        memory.available_bytes(rounds.device),
        worker_bytes=None if client is None else memory.worker_bytes(client),
        split_every=rounds.split_every,
    )
