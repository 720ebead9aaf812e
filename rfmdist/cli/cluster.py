"""Where the command line's Dask work runs: an existing scheduler, or a cluster started for the command.

``--scheduler ADDRESS`` / ``--scheduler-file FILE`` connect to a running scheduler with a timeout (a
wrong address fails in seconds with exit 2, it does not hang). TLS and other security settings come from
dask config (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``), exactly as
``distributed.Client`` reads them. Without either, :func:`cluster_client` starts an embedded
``LocalCluster`` on 127.0.0.1 (worker processes; BLAS single-threaded by the nanny), or with ``--gpus``
a dask-cuda ``LocalCUDACluster`` (one worker per GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from rfmdist.cli.errors import UsageError
from rfmdist.dask_cluster import worker_info

logger = logging.getLogger(__name__)

GPU_INSTALL_HINT = "pip install 'rfmdist[cuda12]' (or 'rfmdist[cuda13]' on CUDA 13)"


def add_cluster_arguments(parser: argparse.ArgumentParser, *, local_default: str) -> None:
    """Add the scheduler / local-cluster options shared by the commands.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    local_default : str
        What runs the work when no scheduler is given, for the help text.
    """
    group = parser.add_argument_group(
        "cluster",
        f"Where the work runs. Without --scheduler/--scheduler-file: {local_default}.",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 or tls://host:8786 "
        "(TLS settings from dask config distributed.comm.tls.*).",
    )
    where.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="Scheduler file written by 'dask scheduler --scheduler-file FILE'.",
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="Give up connecting to the scheduler after this long (exit 2). Default: 15.",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Local cluster: worker processes (default: one per core, or one per GPU with --gpus).",
    )
    group.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        metavar="T",
        help="Local cluster: threads per worker (default 1).",
    )
    group.add_argument(
        "--memory-limit",
        default="auto",
        metavar="LIMIT",
        help="Local cluster: memory per worker: bytes, '4GB', '512MiB', a fraction of the "
        "machine's memory such as 0.5, or 'auto' (machine memory / workers; the default).",
    )
    group.add_argument(
        "--gpus",
        action="store_true",
        help=f"Use GPU workers: locally a dask-cuda LocalCUDACluster, one worker per GPU "
        f"(needs {GPU_INSTALL_HINT}); with --scheduler, workers started by 'dask cuda worker'.",
    )


def check_cluster_arguments(args: argparse.Namespace) -> None:
    """Validate the cluster options without starting or contacting anything (exit-2 errors).

    Parameters
    ----------
    args : argparse.Namespace
    """
    if args.scheduler_file is not None and not os.path.isfile(args.scheduler_file):
        raise FileNotFoundError(
            f"Expected a scheduler file at {args.scheduler_file!r}, found nothing there; start the "
            "scheduler with 'dask scheduler --scheduler-file FILE' first or fix the path."
        )
    if args.scheduler is not None and "://" not in args.scheduler and ":" not in args.scheduler:
        raise ValueError(
            f"Expected a scheduler address such as tcp://host:8786, found {args.scheduler!r}; pass "
            "the address printed by 'dask scheduler'."
        )
    if args.connect_timeout <= 0:
        raise ValueError(
            f"Expected --connect-timeout > 0 seconds, found {args.connect_timeout}; e.g. 15."
        )
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"Expected --workers >= 1, found {args.workers}.")
    if args.threads_per_worker < 1:
        raise ValueError(f"Expected --threads-per-worker >= 1, found {args.threads_per_worker}.")
    memory = _memory_limit(args.memory_limit)
    if args.gpus:
        if importlib.util.find_spec("cupy") is None or (
            uses_local_cluster(args) and importlib.util.find_spec("dask_cuda") is None
        ):
            raise ValueError(
                "Expected dask-cuda and CuPy for --gpus, found them missing; fix: "
                f"{GPU_INSTALL_HINT} (or drop --gpus to run on CPUs)."
            )
    args.memory_limit = memory


def uses_local_cluster(args: argparse.Namespace) -> bool:
    """True when the command starts its own cluster (no scheduler given)."""
    return args.scheduler is None and args.scheduler_file is None


def _memory_limit(text: str) -> str | float | int:
    from dask.utils import parse_bytes

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if 0 < value <= 1:
            return value
        if value > 1:
            return int(value)
    else:
        try:
            return parse_bytes(text)
        except (ValueError, TypeError):
            pass
    raise ValueError(
        f"Expected --memory-limit as bytes ('4GB', '512MiB', 4000000000), a fraction in (0, 1] or "
        f"'auto', found {text!r}; e.g. --memory-limit 4GB."
    )


@contextlib.contextmanager
def cluster_client(args: argparse.Namespace, *, local: bool = True) -> Iterator[Any]:
    """A ``distributed.Client`` for the command, made the default for Dask work; closed on exit.

    Parameters
    ----------
    args : argparse.Namespace
        Checked by :func:`check_cluster_arguments`.
    local : bool, default True
        Without a scheduler, start a local cluster; if False, yield None (Dask's threaded scheduler).

    Yields
    ------
    distributed.Client or None
    """
    from distributed import Client

    quiet_distributed()
    if not uses_local_cluster(args):
        address = args.scheduler or _address_from_file(args.scheduler_file)
        client = _connect(Client, address, args.connect_timeout)
        try:
            logger.info(
                "connected to %s (%d workers); dashboard: %s",
                address,
                len(worker_info(client)),
                client.dashboard_link,
            )
            yield client
        finally:
            client.close()
        return
    if not local:
        yield None
        return
    with _local_cluster(args) as cluster, Client(cluster) as client:
        _log_dashboard(client)
        yield client


def _address_from_file(path: str) -> str:
    try:
        with open(path) as handle:
            address = json.load(handle)["address"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Expected a Dask scheduler file (JSON with an 'address') at {path!r}, found content "
            f"that is not ({type(err).__name__}); pass the file written by 'dask scheduler "
            "--scheduler-file FILE'."
        ) from err
    return str(address)


def _connect(client_class: Any, address: str, timeout: float) -> Any:
    try:
        return client_class(address, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError) as err:
        raise UsageError(
            f"Expected a Dask scheduler at {address}, found none answering within {timeout:g} s "
            f"({type(err).__name__}); check the address, that the scheduler runs and is reachable, "
            "and the TLS settings for tls:// (dask config distributed.comm.tls.*)."
        ) from err


@contextlib.contextmanager
def _local_cluster(args: argparse.Namespace) -> Iterator[Any]:
    common: dict[str, Any] = {
        "threads_per_worker": args.threads_per_worker,
        "memory_limit": args.memory_limit,
        "dashboard_address": "127.0.0.1:0",
    }
    if args.gpus:
        from dask_cuda import LocalCUDACluster

        if args.workers is not None:
            common["n_workers"] = args.workers
        cluster = LocalCUDACluster(**common)
        logger.info("started a local GPU cluster (%d workers)", len(cluster.workers))
    else:
        from distributed import LocalCluster

        workers = args.workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=workers, processes=True, host="127.0.0.1", **common)
        logger.info(
            "started a local cluster: %d worker processes x %d threads",
            workers,
            args.threads_per_worker,
        )
    try:
        yield cluster
    finally:
        cluster.close()


def quiet_distributed() -> None:
    """Keep distributed's own INFO chatter (workers starting, stopping) out of the command's log,
    unless the command runs at ``--log-level debug``."""
    import distributed  # noqa: F401  (its import sets the 'distributed' logger's level)

    if logging.getLogger().level > logging.DEBUG:
        for name in ("distributed", "dask_cuda"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def has_bokeh() -> bool:
    """True when bokeh (the dashboard and performance reports) is installed."""
    return importlib.util.find_spec("bokeh") is not None


def _log_dashboard(client: Any) -> None:
    if has_bokeh():
        logger.info("dashboard: %s", client.dashboard_link)
    else:
        logger.info("dashboard: not available (pip install bokeh to follow the work live)")
