"""Scaling of the out-of-core kernel passes with n, their efficiency, and the cost of distribution.

One command prints three tables::

    python benchmarks/scaling.py [--sizes 100000,300000,1000000] [--centers 5000] [--d 20]
        [--dtype float32] [--workdir DIR]

1. Scaling in n: data stored in Zarr (row chunks), read as a Dask array; one fused PCG pass
   ``K^T (K v)`` over all rows (threaded scheduler, kernel never cached) and one AGOP pass on
   ``agop_samples = 20,000`` rows: seconds and the peak RSS of a fresh process per size.
2. Efficiency: achieved FLOP/s of a pass (``2 n m d`` GEMM flops plus ``4 n m c`` for the two
   products) as a fraction of NumPy's float32 GEMM rate measured in the same run.
3. Distribution overhead: the same pass on a 2-process LocalCluster (2 workers x 1 thread) and on
   Dask's threaded scheduler in this process, against the blocked loop in one process (on one
   thread, and on its pool of threads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import command_line, machine_line, peak_rss_mib, table, write_section

AGOP_SAMPLES = 20_000


def write_zarr(path: Path, n: int, d: int, seed: int, chunk_rows: int) -> None:
    """Synthetic rows (standard normal, y = x0 * x1) written chunk by chunk to a Zarr group."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    X = group.create_array("X", shape=(n, d), chunks=(chunk_rows, d), dtype="float32")
    y = group.create_array("y", shape=(n,), chunks=(chunk_rows,), dtype="float32")
    gen = np.random.default_rng(seed)
    for start in range(0, n, chunk_rows):
        block = gen.normal(size=(min(chunk_rows, n - start), d)).astype(np.float32)
        X[start : start + len(block)] = block
        y[start : start + len(block)] = block[:, 0] * block[:, 1]


def gemm_rate(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """Best-of NumPy GEMM FLOP/s for square matrices."""
    gen = np.random.default_rng(0)
    a = gen.random((size, size), dtype=np.float64).astype(dtype)
    b = gen.random((size, size), dtype=np.float64).astype(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def child(path: str, m: int, dtype: str) -> dict:
    """Measure one size in this (fresh) process; return the record."""
    import dask
    import dask.array as da

    from rfmdist.kernels import prepare_kernel
    from rfmdist.operators import DaskKernelOperator
    from rfmdist.training import agop_rows

    X = da.from_zarr(str(Path(path) / "X")).astype(dtype)
    n, d = X.shape
    rows = np.sort(np.random.default_rng(1).choice(n, size=m, replace=False))
    with dask.config.set(scheduler="threads", num_workers=2):
        centers = X[rows].compute()
        prepared = prepare_kernel(centers, np.eye(d, dtype=dtype), bandwidth=10.0)
        op = DaskKernelOperator(X, prepared, cache=False)
        V = np.random.default_rng(2).normal(size=(m, 1))
        op.normal_matvec(V)  # warm-up (reads the store once)
        passes = []
        for _ in range(2):
            start = time.perf_counter()
            op.normal_matvec(V)
            passes.append(time.perf_counter() - start)
        sample = agop_rows(n, AGOP_SAMPLES, seed=0, round_index=0)
        start = time.perf_counter()
        op.agop_sum(V, diag=False, rows=sample)
        agop = time.perf_counter() - start
    return {
        "n": n,
        "m": m,
        "d": d,
        "pass_seconds": min(passes),
        "agop_seconds": agop,
        "peak_rss_mib": peak_rss_mib(),
        "chunks": len(X.chunks[0]),
    }


def pass_seconds(op: Any, V: np.ndarray, repeats: int = 1) -> float:
    """Seconds of ``op``'s fused pass ``K^T (K V)``: one warm-up, then the best of ``repeats``."""
    op.normal_matvec(V)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op.normal_matvec(V)
        times.append(time.perf_counter() - start)
    return min(times)


def distribution_overhead(n: int, m: int, d: int, dtype: str) -> dict:
    """One fused pass: 2-process LocalCluster and Dask's threaded scheduler vs the blocked loop in
    this process, the loop run both on one thread and on its default pool of threads
    (:mod:`rfmdist.threads`)."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from rfmdist.kernels import prepare_kernel
    from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator

    gen = np.random.default_rng(3)
    X = gen.normal(size=(n, d)).astype(dtype)
    prepared = prepare_kernel(X[:m].copy(), np.eye(d, dtype=dtype), bandwidth=10.0)
    V = gen.normal(size=(m, 1))
    blocked_seconds = pass_seconds(BlockedKernelOperator(X, prepared, workers=1), V)
    pool = BlockedKernelOperator(X, prepared)
    pool_seconds = pass_seconds(pool, V)
    chunks = (max(1, n // 8), d)
    with dask.config.set(scheduler="threads"):
        threaded_seconds = pass_seconds(
            DaskKernelOperator(da.from_array(X, chunks=chunks), prepared), V
        )
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        Xd = client.persist(da.from_array(X, chunks=chunks))
        cluster_seconds = pass_seconds(DaskKernelOperator(Xd, prepared), V, repeats=2)
    return {
        "n": n,
        "blocked_seconds": blocked_seconds,
        "pool_seconds": pool_seconds,
        "pool_threads": pool.workers,
        "cluster_seconds": cluster_seconds,
        "threaded_seconds": threaded_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--centers", type=int, default=5000)
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--overhead-rows", type=int, default=200_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results-md", default=None, help="Update this RESULTS.md section.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.centers, args.dtype)))
        return 0
    records = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"data-{n}.zarr"
            write_zarr(path, n, args.d, seed=n, chunk_rows=args.chunk_rows)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(path),
                    "--centers",
                    str(args.centers),
                    "--dtype",
                    args.dtype,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(records[-1], flush=True)
    rate32 = gemm_rate("float32")
    rate64 = gemm_rate("float64")
    c = 1
    rows = []
    for r in records:
        flops = 2 * r["n"] * r["m"] * r["d"] + 4 * r["n"] * r["m"] * c
        rows.append(
            [
                r["n"],
                r["chunks"],
                r["pass_seconds"],
                r["pass_seconds"] / r["n"] * 1e6,
                r["agop_seconds"],
                r["peak_rss_mib"],
                flops / r["pass_seconds"] / 1e9,
                flops / r["pass_seconds"] / rate32,
            ]
        )
    header = (
        f"centers m = {args.centers}, d = {args.d}, dtype {args.dtype}; NumPy GEMM rate: float32 "
        f"{rate32 / 1e9:.1f} GFLOP/s, float64 {rate64 / 1e9:.1f} GFLOP/s"
    )
    scaling_text = table(
        [
            "n",
            "chunks",
            "pass s",
            "us per row",
            "AGOP s (20k rows)",
            "peak RSS MiB",
            "GFLOP/s",
            "fraction of f32 GEMM",
        ],
        rows,
    )
    overhead = distribution_overhead(args.overhead_rows, args.centers, args.d, args.dtype)
    overhead_text = table(
        ["n", "Dask", "its s", "blocked loop", "its s", "Dask / loop"],
        [
            [overhead["n"], dask_label, dask_seconds, label, seconds, dask_seconds / seconds]
            for dask_label, dask_seconds in (
                ("2-process cluster", overhead["cluster_seconds"]),
                ("threaded scheduler", overhead["threaded_seconds"]),
            )
            for label, seconds in (
                ("one thread", overhead["blocked_seconds"]),
                (f"pool of {overhead['pool_threads']} threads", overhead["pool_seconds"]),
            )
        ],
    )
    print(f"\n{machine_line()}\n{header}\n\n{scaling_text}\n\n{overhead_text}")
    command = command_line("benchmarks/scaling.py", argv)
    write_section(
        args.results_md,
        "scaling",
        "Out-of-core passes: scaling in n, efficiency, distribution overhead",
        command,
        f"{header}\n\n{scaling_text}\n\n{overhead_text}\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
