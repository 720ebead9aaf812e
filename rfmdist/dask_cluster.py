"""The Dask cluster a fit runs on, as the library sees it: its client, its workers, what is sent
to them and how rows are chunked for them.

- :func:`active_client`: the active ``distributed`` client, or None (Dask's local schedulers);
- :func:`worker_info`, :func:`n_workers`, :func:`n_threads`: the client's workers, how many there
  are and how many threads they run;
- :func:`share_with_workers`: send an object to every worker once (a broadcast scatter, with a
  fallback for workers that die meanwhile);
- :func:`chunk_rows_for`: the row chunks of a Dask array for the kernel passes.

Not ``rfmdist/cluster.py``: :mod:`rfmdist.cli.cluster` *starts or connects* the cluster of a
command-line run (its options, a local or GPU cluster, the scheduler's address); this module only
uses whichever client is active, however it was made, and works the same for library users.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)


def active_client() -> Any:
    """The active ``distributed`` client, or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def worker_info(client: Any) -> dict[str, dict[str, Any]]:
    """What the scheduler of ``client`` knows of each of its workers (all of them), by address.

    Parameters
    ----------
    client : distributed.Client
    """
    return client.scheduler_info(n_workers=-1).get("workers", {})


def n_workers(client: Any) -> int:
    """Number of workers the client sees (1 without a client).

    Examples
    --------
    >>> n_workers(None)
    1
    """
    if client is None:
        return 1
    return max(1, len(worker_info(client)))


def n_threads(client: Any) -> int:
    """The worker threads of a distributed ``client`` (the cores its passes run on)."""
    return max(1, sum(int(info.get("nthreads", 1)) for info in worker_info(client).values()))


def share_with_workers(obj: Any, *, timeout: float) -> Any:
    """Send ``obj`` to every worker once when a ``distributed`` client is active; else return it.

    The result can be passed to ``map_blocks`` like the object itself. Every worker holds a copy, so
    losing workers later loses no data. If a worker dies while the copies are sent (the scatter fails),
    the object travels inside each pass's graph instead: more traffic, but a lost copy is then
    recreated from the graph like any other task. A broadcast that does not finish within
    ``timeout`` seconds falls back the same way: a worker killed mid-broadcast can make it wait
    forever, and ``client.scatter``'s own ``timeout`` only bounds the wait for workers to appear, so
    the broadcast runs on a helper thread whose result is awaited for that long.
    """
    client = active_client()
    if client is None:
        return obj
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfmdist-scatter")
    try:
        sent = pool.submit(client.scatter, obj, broadcast=True, hash=False)
        return sent.result(timeout=timeout)
    except (OSError, TimeoutError) as err:  # CommClosedError is an OSError
        logger.warning(
            "could not send the %s to every worker (%s: %s); sending it with each pass",
            type(obj).__name__,
            type(err).__name__,
            err,
        )
        import dask

        return dask.delayed(obj, pure=True)
    finally:
        pool.shutdown(wait=False)  # a broadcast still hanging is left to finish or fail alone


def chunk_rows_for(n_rows: int, n_centers: int, d: int, itemsize: int, n_workers: int = 1) -> int:
    """A row-chunk size for Dask passes: about 100 ms of kernel work and at least one chunk per worker.

    Parameters
    ----------
    n_rows, n_centers, d : int
        The array's rows, the kernel's centers and the features.
    itemsize : int
        Bytes of the kernel's dtype.
    n_workers : int
        Workers the chunks spread over.

    Examples
    --------
    >>> chunk_rows_for(1_000_000, 2_000, 20, 8, n_workers=4)  # a 256 MiB kernel chunk
    16777
    >>> chunk_rows_for(10_000, 2_000, 20, 8, n_workers=4)  # one chunk per worker
    2500
    """
    # Imported here: rfmdist.operators imports this module.
    from rfmdist.operators import rows_per_block

    target_flops = 2e9  # ~0.1 s at tens of GFLOP/s including exp/sqrt
    by_work = math.ceil(target_flops / max(1.0, 2.0 * n_centers * (d + 8)))
    by_memory = rows_per_block(n_centers, itemsize, block_bytes=256 * 2**20)
    by_spread = math.ceil(n_rows / max(1, n_workers))
    return int(max(1, min(max(by_work, 1024), by_memory, by_spread)))
