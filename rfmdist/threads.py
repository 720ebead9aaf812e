"""CPU threads of the kernel passes: the BLAS thread budget and a thread pool over row blocks.

NumPy's elementwise functions (the ``exp`` and ``sqrt`` of a kernel block) run on one thread, and
they dominate a pass at small ``d`` (float64 ``exp`` alone costs about 10 ns per entry on the
development machine, the distance GEMM about 4). The blocked loop therefore runs its blocks on a
pool of threads (NumPy and BLAS release the GIL) with BLAS limited to one thread each, so that
every core works on the whole pass, not only on the GEMMs.

The pool's size is the BLAS thread budget in force (``threadpoolctl.threadpool_limits(1)`` around
a fit makes its passes sequential), capped by the cores this process may use.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rfmdist.dask_cluster import active_client

T = TypeVar("T")
Item = TypeVar("Item")


@functools.cache
def _controller() -> Any:
    """One threadpoolctl controller for the process (building one scans the loaded libraries)."""
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, so that the controller sees it)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas() -> Any:
    """Context limiting BLAS to one thread: OpenBLAS's threaded Cholesky and triangular solves were
    measured up to 20x slower than single-threaded ones on 2-vCPU machines (DESIGN.md section 2)."""
    return _controller().limit(limits=1, user_api="blas")


def blas_limit_for_dask(collection: Any) -> Any:
    """Context for computing a Dask ``collection``: BLAS on one thread if Dask's local thread pool
    will run it, nothing otherwise.

    The thread pool already runs one task per core; each task's GEMMs on the full BLAS budget
    oversubscribe the cores (measured on 2 cores: a fused pass and an AGOP pass 1.8x slower).
    Distributed workers limit their BLAS themselves (the nanny's environment), and the synchronous
    scheduler runs one task at a time, so those keep the budget in force.
    """
    import dask.threaded
    from dask.base import get_scheduler

    if get_scheduler(collections=[collection]) is dask.threaded.get:
        return single_threaded_blas()
    return contextlib.nullcontext()


def compute_dask(collection: Any) -> Any:
    """``collection.compute()``, with BLAS on one thread where Dask's thread pool runs the tasks; on
    a distributed client, with its text progress bar while :func:`rfmdist.progress.pass_progress` is
    on (the command line's progress display)."""
    from rfmdist.progress import show_pass_progress

    if show_pass_progress():
        client = active_client()
        if client is not None:
            from distributed import progress

            future = client.compute(collection)
            progress(future)
            return future.result()
    with blas_limit_for_dask(collection):
        return collection.compute()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return os.cpu_count() or 1


def blas_threads() -> int:
    """The BLAS thread budget in force now (the largest over the loaded BLAS libraries; 1 if none)."""
    counts = [
        int(lib.num_threads)
        for lib in _controller().lib_controllers
        if lib.user_api == "blas" and lib.num_threads
    ]
    return max(counts, default=1)


def block_workers() -> int:
    """Threads for the row blocks of one CPU pass: the BLAS budget, capped by the cores."""
    return max(1, min(blas_threads(), available_cores()))


def map_blocks(func: Callable[[Item], T], items: Sequence[Item], workers: int) -> list[T]:
    """``[func(item) for item in items]``, on ``workers`` threads with single-threaded BLAS.

    The results keep the order of ``items``, so sums over them are reproducible.

    Examples
    --------
    >>> map_blocks(lambda x: x * x, [1, 2, 3], workers=2)
    [1, 4, 9]
    """
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(func, items))


def sum_blocks(func: Callable[[Item], Any], items: Sequence[Item], workers: int) -> Any:
    """``sum(func(item) for item in items)`` on ``workers`` threads, holding one partial per thread.

    The items are cut into ``workers`` contiguous runs; each thread adds its run's results in order
    as they come, and the runs' totals are added in order: reproducible for a given ``workers``,
    and the memory of ``workers`` partial sums whatever the number of items (an ``m x m`` Gram
    matrix per block of a million rows would not fit).

    Examples
    --------
    >>> sum_blocks(lambda x: x * x, [1, 2, 3, 4], workers=2)
    30
    """

    def run_total(run: Sequence[Item]) -> Any:
        total = func(run[0])
        for item in run[1:]:
            total = total + func(item)
        return total

    size = -(-len(items) // max(1, min(workers, len(items))))
    runs = [items[start : start + size] for start in range(0, len(items), size)]
    return ordered_sum(map_blocks(run_total, runs, len(runs)))


def ordered_sum_blocks(func: Callable[[Item], Any], items: Sequence[Item], workers: int) -> Any:
    """``sum(func(item) for item in items)`` added in the items' order (as :func:`ordered_sum` of
    :func:`map_blocks`: the same result whatever ``workers``), computing ``workers`` items at a
    time so that at most that many results wait to be added (a ``k x k`` partial AGOP of wide data
    is a gigabyte).

    Examples
    --------
    >>> ordered_sum_blocks(lambda x: x * x, [1, 2, 3, 4, 5], workers=2)
    55
    """
    window = max(1, workers)
    total = None
    for start in range(0, len(items), window):
        for part in map_blocks(func, items[start : start + window], workers):
            total = part if total is None else total + part
    return total


def ordered_sum(parts: Sequence[Any]) -> Any:
    """Sum of ``parts`` from first to last (a fixed order, whatever thread computed each part)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
