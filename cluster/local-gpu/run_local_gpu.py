#!/usr/bin/env python3
"""Run ``rfmdist fit`` on all GPUs of this machine with dask-cuda's ``LocalCUDACluster``.

One Dask worker per visible GPU (``CUDA_VISIBLE_DEVICES`` is honoured, ``--devices``
overrides it), the RMM pool is off unless ``--rmm-pool-size`` is given, and CUDA managed
memory is never enabled. Usage (see ``cluster/local-gpu/README.md``)::

    python cluster/local-gpu/run_local_gpu.py -- --train data.parquet --target y \\
        --out model.zarr --resume

Everything after ``--`` is passed to ``rfmdist fit``; the script adds ``--scheduler``
and ``--gpus``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfmdist_cluster import fitcmd

logger = logging.getLogger("rfmdist.cluster.local_gpu")

DeviceId = int | str

INSTALL_HINT = "pip install 'rfmdist[cuda12]' (or 'rfmdist[cuda13]' on CUDA 13)"


class DaskCudaMissingError(ImportError):
    """dask-cuda is not installed."""


def require_dask_cuda() -> Any:
    """Import and return :mod:`dask_cuda`.

    Returns
    -------
    module
        The ``dask_cuda`` module.

    Raises
    ------
    DaskCudaMissingError
        If it cannot be imported, with the command that installs it.
    """
    try:
        import dask_cuda
    except ImportError as exc:
        raise DaskCudaMissingError(
            "expected the dask-cuda package (it provides LocalCUDACluster, one Dask "
            f"worker per GPU), found it is not importable ({exc}); fix: {INSTALL_HINT}"
        ) from exc
    return dask_cuda


def _nvml_device_count() -> int:
    """Count the machine's GPUs with NVML (used only when CUDA_VISIBLE_DEVICES is unset)."""
    try:
        import pynvml
    except ImportError as exc:
        raise DaskCudaMissingError(
            "expected pynvml (installed with dask-cuda) to count the GPUs, found it is not "
            f"importable ({exc}); fix: {INSTALL_HINT}, or set CUDA_VISIBLE_DEVICES=0,1,..."
        ) from exc
    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def _parse_one_device(token: str) -> DeviceId:
    if token.isdigit():
        return int(token)
    if token.startswith(("GPU-", "MIG-")):
        return token
    raise ValueError(
        f"expected GPU ids like '0,1' or UUIDs like 'GPU-…'/'MIG-…' in "
        f"CUDA_VISIBLE_DEVICES, found {token!r}; fix: export CUDA_VISIBLE_DEVICES=0,1 "
        "(see nvidia-smi -L) or pass --devices."
    )


def visible_devices(
    value: str | None, device_count: Callable[[], int] = _nvml_device_count
) -> list[DeviceId]:
    """Return the GPUs to start one worker each on, from a ``CUDA_VISIBLE_DEVICES`` value.

    Parameters
    ----------
    value : str or None
        The value of ``CUDA_VISIBLE_DEVICES`` (or ``--devices``); ``None`` when unset.
    device_count : callable, optional
        Returns the number of GPUs in the machine; only called when ``value`` is
        ``None`` (default: NVML via pynvml).

    Returns
    -------
    list of int or str
        Device ordinals (``[0, 1]``) or UUID strings, in the given order. An empty
        string means "no GPU visible" and yields ``[]``.

    Raises
    ------
    ValueError
        If an entry is neither an integer nor a ``GPU-``/``MIG-`` UUID, or repeats.
    """
    if value is None:
        return list(range(device_count()))
    tokens = [token.strip() for token in value.split(",")]
    if all(token == "" for token in tokens):
        return []
    devices = [_parse_one_device(token) for token in tokens if token != ""]
    if len(set(devices)) != len(devices):
        raise ValueError(f"expected distinct GPU ids, found {value!r}; fix: list each GPU once.")
    return devices


def devices_from_environment(
    override: str | None = None, device_count: Callable[[], int] = _nvml_device_count
) -> list[DeviceId]:
    """Return the GPUs to use: ``override`` if given, else ``$CUDA_VISIBLE_DEVICES``.

    Parameters
    ----------
    override : str, optional
        Value of ``--devices``; takes precedence over the environment.
    device_count : callable, optional
        GPU counter used when neither is set (default: NVML).

    Returns
    -------
    list of int or str
        See :func:`visible_devices`.
    """
    value = override if override is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible_devices(value, device_count)


def cluster_kwargs(
    devices: Sequence[DeviceId],
    *,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    device_memory_limit: str = "default",
    rmm_pool_size: str | None = None,
    protocol: str = "tcp",
    dashboard_address: str = ":8787",
    local_directory: str | None = None,
) -> dict[str, Any]:
    """Return ``LocalCUDACluster`` keyword arguments (one worker per device).

    Parameters
    ----------
    devices : sequence of int or str
        Output of :func:`visible_devices`; must not be empty.
    threads_per_worker : int, default 1
        Threads per GPU worker.
    memory_limit : str, default "auto"
        Host-memory limit per worker.
    device_memory_limit : str, default "default"
        Device spill threshold per worker (dask-cuda's default).
    rmm_pool_size : str, optional
        RMM pool size per GPU, e.g. ``"30GB"``; ``None`` (default) leaves RMM off.
    protocol : str, default "tcp"
        Comm protocol (``"tcp"`` or ``"ucx"``).
    dashboard_address : str, default ":8787"
        Scheduler dashboard address.
    local_directory : str, optional
        Worker scratch directory.

    Returns
    -------
    dict
        Keyword arguments for ``dask_cuda.LocalCUDACluster``.

    Raises
    ------
    RuntimeError
        If ``devices`` is empty.
    """
    if not devices:
        raise RuntimeError(
            "expected at least one visible GPU, found none (CUDA_VISIBLE_DEVICES is empty "
            "or the machine has no GPU); fix: export CUDA_VISIBLE_DEVICES=0[,1,...] or "
            "pass --devices 0,1, or use a CPU recipe (cluster/plain)."
        )
    kwargs: dict[str, Any] = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
        "n_workers": len(devices),
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit,
        "device_memory_limit": device_memory_limit,
        "rmm_pool_size": rmm_pool_size,
        "rmm_managed_memory": False,
        "protocol": protocol,
        "dashboard_address": dashboard_address,
    }
    if local_directory is not None:
        kwargs["local_directory"] = local_directory
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the options before ``--``.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="python cluster/local-gpu/run_local_gpu.py",
        description="Start one Dask worker per local GPU (dask-cuda LocalCUDACluster) and "
        "run 'rfmdist fit --scheduler ADDRESS --gpus ...'. Arguments after '--' go to "
        "rfmdist fit.",
        epilog="example: python cluster/local-gpu/run_local_gpu.py -- --train data.parquet "
        "--target y --out model.zarr --resume",
    )
    parser.add_argument(
        "--devices", help="GPU ids, e.g. 0,1 (default: $CUDA_VISIBLE_DEVICES, else all)"
    )
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--memory-limit", default="auto", help="host memory per worker")
    parser.add_argument("--device-memory-limit", default="default", help="spill threshold")
    parser.add_argument(
        "--rmm-pool-size", default=None, help="enable an RMM pool of this size per GPU (off)"
    )
    parser.add_argument("--protocol", default="tcp", choices=("tcp", "ucx"))
    parser.add_argument("--dashboard-address", default=":8787")
    parser.add_argument("--local-directory", help="worker scratch directory")
    parser.add_argument("--rfmdist-exe", default="rfmdist", help="rfmdist executable")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status of ``rfmdist fit`` (2 for usage errors).
    """
    own_argv, fit_argv = fitcmd.split_launcher_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own_argv)
    try:
        fitcmd.configure_logging(args.log_level)
        fitcmd.validate_fit_argv(fit_argv)
        dask_cuda = require_dask_cuda()
        executable = fitcmd.resolve_executable(args.rfmdist_exe)
        kwargs = cluster_kwargs(
            devices_from_environment(args.devices),
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            device_memory_limit=args.device_memory_limit,
            rmm_pool_size=args.rmm_pool_size,
            protocol=args.protocol,
            dashboard_address=args.dashboard_address,
            local_directory=args.local_directory,
        )
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")

    from distributed import Client

    logger.info(
        "starting %d GPU worker(s) on devices %s",
        kwargs["n_workers"],
        kwargs["CUDA_VISIBLE_DEVICES"],
    )
    with dask_cuda.LocalCUDACluster(**kwargs) as cluster, Client(cluster) as client:
        logger.info("dashboard: %s", client.dashboard_link)
        client.wait_for_workers(n_workers=kwargs["n_workers"], timeout=300)
        command = fitcmd.build_fit_command(
            cluster.scheduler_address, fit_argv, gpus=True, executable=executable
        )
        return fitcmd.run_fit(command)


if __name__ == "__main__":
    sys.exit(main())
