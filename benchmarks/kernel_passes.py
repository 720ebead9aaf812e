"""The fused CPU kernel passes against the reference path, side by side in one run (issue 13).

One command, four tables::

    python benchmarks/kernel_passes.py [--rows 1000000] [--repeats 2] [--parts passes,libraries,fits,uci]
        [--keops-python /path/to/python-with-pykeops] [--json benchmarks/out/kernel_passes.json]
        [--results-md benchmarks/RESULTS.md] [--note TEXT]
    python benchmarks/kernel_passes.py --from-json benchmarks/out/kernel_passes.json [--results-md ...]

- **passes**: one kernel pass ``K(X, Z) v`` (the PCG iteration and predict pass) over ``--rows`` rows
  by :class:`~rfmdist.operators.BlockedKernelOperator` with its defaults (all cores), Laplace kernel,
  for (d, m) = (20, 5000), (200, 5000), (784, 2000), float32 and float64, both backends
  (``RFMDIST_KERNEL_BACKEND``), alternating, best of ``--repeats`` (interference only slows a run
  down). Throughput in kernel entries per second; ``GEMM fraction`` = entries/s x 2d / the float32
  GEMM rate of this machine measured in the same run (4096 x 4096 x 1024 SGEMM on all cores).
- **libraries**: the elementwise tail of one kernel block (clamp, sqrt, exp of 419 x 5,000 float64
  GEMM outputs, on one thread) by NumPy (the reference path), numexpr (if installed) and Numba
  (rfmdist.fused); and, with ``--keops-python``, pyKeOps's whole fused pass on the CPU.
- **fits**: ``RFMRegressor()`` / ``RFMClassifier()`` as shipped on the planted task (20,000 x 50) and
  on digits on a 28 x 28 canvas (d = 784), with each backend twice (reference, fused, fused,
  reference): AGOP seconds per round, fit seconds and test score of the faster run.
- **uci**: ``RFMClassifier()`` defaults on fold 0 of every UCI-121 set with at most ``--uci-max-n``
  rows, each backend: mean test accuracy and the sets whose accuracy differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import command_line, machine_line, table, write_section

logger = logging.getLogger("kernel_passes")

BACKENDS = ("reference", "fused")
# The shipped default: its rows run with no RFMDIST_* variable set.
DEFAULT_BACKEND = "fused"
SHAPES = ((20, 5000), (200, 5000), (784, 2000))
PARTS = ("passes", "libraries", "fits", "uci")


@contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """The kernel backend ``name`` for the duration: the shipped default (``'fused'``) with
    ``RFMDIST_KERNEL_BACKEND`` unset, the reference path with it set (read when a kernel is
    prepared)."""
    before = os.environ.pop("RFMDIST_KERNEL_BACKEND", None)
    if name != DEFAULT_BACKEND:
        os.environ["RFMDIST_KERNEL_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("RFMDIST_KERNEL_BACKEND", None)
        if before is not None:
            os.environ["RFMDIST_KERNEL_BACKEND"] = before


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` timed calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sgemm_rate() -> float:
    """FLOP/s of a 4096 x 4096 x 1024 float32 GEMM on this process's BLAS threads."""
    gen = np.random.default_rng(0)
    A = gen.random((4096, 1024), dtype=np.float32)
    B = gen.random((1024, 4096), dtype=np.float32)
    out = np.empty((4096, 4096), dtype=np.float32)
    seconds = best_seconds(lambda: np.matmul(A, B, out=out), 5)
    return 2 * 4096 * 4096 * 1024 / seconds


def measure_passes(rows: int, repeats: int) -> dict[str, Any]:
    """Throughput of one matvec pass per shape, dtype and backend."""
    from rfmdist.kernels import prepare_kernel
    from rfmdist.operators import BlockedKernelOperator

    gemm = sgemm_rate()
    logger.info("float32 GEMM rate: %.1f GFLOP/s", gemm / 1e9)
    results = []
    gen = np.random.default_rng(0)
    for d, m in SHAPES:
        X64 = gen.normal(size=(rows, d))
        for dtype in (np.float32, np.float64):
            X = X64.astype(dtype, copy=False)
            M = np.full(d, 1.0 / d, dtype=dtype)  # unit-scale distances
            v = gen.normal(size=(m, 1))
            operators = {}
            for backend in BACKENDS:
                with kernel_backend(backend):
                    prepared = prepare_kernel(X[:m], M, bandwidth=1.0)
                operators[backend] = BlockedKernelOperator(X, prepared)
            times: dict[str, list[float]] = {b: [] for b in BACKENDS}
            for backend in BACKENDS:
                operators[backend].matvec(v)  # warm-up (compilation, page faults)
            for _ in range(repeats):  # alternating: both see the same machine
                for backend in BACKENDS:
                    start = time.perf_counter()
                    operators[backend].matvec(v)
                    times[backend].append(time.perf_counter() - start)
            for backend in BACKENDS:
                entries = rows * m / min(times[backend])
                results.append(
                    {
                        "d": d,
                        "m": m,
                        "dtype": np.dtype(dtype).name,
                        "backend": backend,
                        "seconds": min(times[backend]),
                        "entries_per_s": entries,
                        "gemm_fraction": entries * 2 * d / gemm,
                    }
                )
                logger.info("passes %s", results[-1])
        del X64
    return {"rows": rows, "repeats": repeats, "sgemm_flops": gemm, "rows_table": results}


KEOPS_SCRIPT = """
import json, sys, time, numpy as np
from pykeops.numpy import LazyTensor
n, m, d = (int(a) for a in sys.argv[1:4])
gen = np.random.default_rng(0)
out = {}
for dtype in (np.float32, np.float64):
    X = gen.normal(size=(n, d)).astype(dtype); Z = X[:m].copy(); v = gen.normal(size=(m, 1)).astype(dtype)
    def run():
        x, z, w = LazyTensor(X[:, None, :]), LazyTensor(Z[None, :, :]), LazyTensor(v[None, :, :])
        return ((-(((x - z) ** 2).sum(-1)).sqrt()).exp() * w).sum(1, backend="CPU")
    run()
    start = time.perf_counter(); run(); out[np.dtype(dtype).name] = n * m / (time.perf_counter() - start)
print(json.dumps(out))
"""


def measure_libraries(keops_python: str | None) -> dict[str, Any]:
    """The Laplace tail of one (419 x 5,000) float64 block on one thread, by three libraries."""
    from threadpoolctl import threadpool_limits

    from rfmdist import fused
    from rfmdist.kernels import gemm_distances, prepare_kernel

    gen = np.random.default_rng(0)
    X, Z = gen.normal(size=(419, 20)), gen.normal(size=(5000, 20))
    prepared = prepare_kernel(Z, np.full(20, 0.05), bandwidth=1.0)
    block = prepared.transform(X)
    dist, limits = gemm_distances(block.Xt, block.sq, prepared.centers_aug, scale=1.0)
    work = np.empty_like(dist)

    def numpy_tail() -> None:
        np.maximum(dist, 0, out=work)
        np.sqrt(work, out=work)
        np.negative(work, out=work)
        np.exp(work, out=work)

    def numba_tail() -> None:
        np.copyto(work, dist)
        fused.kernel_tail(work, limits, block, prepared)

    tails: dict[str, Callable[[], None]] = {"numpy (reference)": numpy_tail, "numba": numba_tail}
    try:
        import numexpr

        numexpr.set_num_threads(1)
        tails["numexpr"] = lambda: numexpr.evaluate(
            "exp(-sqrt(where(dist > 0, dist, 0)))", local_dict={"dist": dist}, out=work
        )
    except ImportError:
        logger.warning("numexpr is not installed (pip install numexpr): its row is left out")
    copy_seconds = 0.0
    with threadpool_limits(1):
        copy_seconds = best_seconds(lambda: np.copyto(work, dist), 20)
        rows = []
        for name, tail in tails.items():
            seconds = best_seconds(tail, 20) - (copy_seconds if name == "numba" else 0.0)
            rows.append({"library": name, "ns_per_entry": seconds / dist.size * 1e9})
    keops = None
    if keops_python:
        done = subprocess.run(
            [keops_python, "-c", KEOPS_SCRIPT, "100000", "5000", "20"],
            capture_output=True,
            text=True,
            check=True,
        )
        keops = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tail_rows": rows, "keops_pass_entries_per_s": keops}


def measure_fits() -> list[dict[str, Any]]:
    """Default fits with each backend: AGOP seconds per round, fit seconds, test score."""
    from vs_xrfm import load_task, run_rfmdist

    tasks = {
        "planted 20000 x 50": load_task("planted", 0),
        "canvas 28x28 (d = 784)": load_task("canvas28", 0),
    }
    results = []
    for name, data in tasks.items():
        # Both orders (reference, fused, fused, reference): a later run is slower on this machine.
        for backend in (*BACKENDS, *reversed(BACKENDS)):
            with kernel_backend(backend):
                fit = run_rfmdist(data, random_state=0)
            fit.update(task=name, backend=backend, n_train=len(data["y"]), d=data["X"].shape[1])
            results.append(fit)
            logger.info("fits %s", fit)
    return results


def measure_uci(max_n: int) -> list[dict[str, Any]]:
    """``RFMClassifier()`` on fold 0 of every UCI-121 set with at most ``max_n`` rows."""
    from benchmarks.datasets.uci121 import list_uci121, load_uci121
    from rfmdist import RFMClassifier

    results = []
    for name in list_uci121():
        data = load_uci121(name)
        if data.n > max_n:
            continue
        train, test = data.folds[0]
        row: dict[str, Any] = {"set": name, "n": data.n, "d": data.d}
        for backend in BACKENDS:
            with kernel_backend(backend):
                start = time.perf_counter()
                model = RFMClassifier(random_state=0).fit(data.X[train], data.y[train])
                row[f"{backend}_seconds"] = time.perf_counter() - start
                row[f"{backend}_acc"] = float((model.predict(data.X[test]) == data.y[test]).mean())
        results.append(row)
        logger.info("uci %s", row)
    return results


LABELS = {
    "fused": "fused (shipped default, no RFMDIST_* set)",
    "reference": "reference (RFMDIST_KERNEL_BACKEND=reference)",
}


def report(results: dict[str, Any]) -> str:
    """The tables of a run."""
    out = []
    if "passes" in results:
        passes = results["passes"]
        by_key = {(r["d"], r["m"], r["dtype"], r["backend"]): r for r in passes["rows_table"]}
        rows = []
        for (d, m, dtype, backend), r in by_key.items():
            if backend != "fused":
                continue
            ref = by_key[(d, m, dtype, "reference")]
            rows.append(
                [
                    d,
                    m,
                    dtype,
                    f"{ref['entries_per_s'] / 1e9:.3f}",
                    f"{r['entries_per_s'] / 1e9:.3f}",
                    f"{r['entries_per_s'] / ref['entries_per_s']:.2f}",
                    f"{ref['gemm_fraction']:.2f}",
                    f"{r['gemm_fraction']:.2f}",
                ]
            )
        out.append(
            f"Passes: one K(X, Z) v over {passes['rows']:,} rows (Laplace, BlockedKernelOperator "
            f"defaults, all cores), best of {passes['repeats']} alternating runs; float32 GEMM rate "
            f"{passes['sgemm_flops'] / 1e9:.1f} GFLOP/s.\n"
        )
        header = [
            "d",
            "m",
            "dtype",
            "reference G entries/s",
            "fused (default) G entries/s",
            "fused / reference",
            "reference GEMM fraction",
            "fused (default) GEMM fraction",
        ]
        out.append(table(header, rows))
    if "libraries" in results:
        libs = results["libraries"]
        rows = [[r["library"], f"{r['ns_per_entry']:.2f}"] for r in libs["tail_rows"]]
        out.append(
            "\nLibraries: the Laplace tail (clamp, sqrt, exp) of one 419 x 5,000 float64 block, "
            "one thread.\n"
        )
        out.append(table(["library", "ns per entry"], rows))
        if libs.get("keops_pass_entries_per_s"):
            keops = libs["keops_pass_entries_per_s"]
            out.append(
                "\npyKeOps (CPU backend), the whole fused pass K v at n = 100,000, m = 5,000, "
                "d = 20: " + ", ".join(f"{k} {v / 1e9:.3f} G entries/s" for k, v in keops.items())
            )
    if "fits" in results:
        fastest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in results["fits"]:
            key = (r["task"], r["backend"])
            if key not in fastest or r["seconds"] < fastest[key]["seconds"]:
                fastest[key] = r
        rows = [
            [
                r["task"],
                LABELS[r["backend"]],
                f"{r['seconds']:.1f}",
                f"{np.mean(r['agop_seconds']):.2f}",
                " ".join(f"{s:.2f}" for s in r["agop_seconds"]),
                f"{r['test_score']:.5g}",
                f"{r['best_round']}/{r['rounds']}",
            ]
            for r in fastest.values()
        ]
        out.append(
            "\nFits: the estimators' defaults (random_state=0), validation rows as eval_set; each "
            "backend twice (order reference, fused, fused, reference), the faster run shown.\n"
        )
        header = ["task", "backend", "fit s", "AGOP s / round", "AGOP s by round", "test", "best"]
        out.append(table(header, rows))
    if "uci" in results:
        uci = results["uci"]
        differing = [r["set"] for r in uci if r["reference_acc"] != r["fused_acc"]]
        rows = [
            [
                LABELS[backend],
                len(uci),
                f"{100 * np.mean([r[f'{backend}_acc'] for r in uci]):.3f}",
                f"{sum(r[f'{backend}_seconds'] for r in uci):.1f}",
            ]
            for backend in BACKENDS
        ]
        out.append("\nUCI-121: RFMClassifier() defaults on fold 0 of each set.\n")
        out.append(table(["backend", "sets", "mean test accuracy %", "fit s (sum)"], rows))
        out.append(
            f"\nSets whose test accuracy differs between the backends: {len(differing)}"
            + (f" ({', '.join(differing)})" if differing else "")
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the passes")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per pass")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {PARTS}")
    parser.add_argument("--uci-max-n", type=int, default=2000, help="largest UCI-121 set run")
    parser.add_argument("--keops-python", default=None, help="a Python with pykeops installed")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--from-json", default=None, help="print the tables of a --json file")
    parser.add_argument("--results-md", default=None, help="regenerate this RESULTS.md section")
    parser.add_argument("--note", default="", help="a paragraph printed under the tables")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        parts = args.parts.split(",")
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            parser.error(f"--parts: expected names among {PARTS}, found {unknown}")
        results = {"machine": machine_line()}
        if "passes" in parts:
            results["passes"] = measure_passes(args.rows, args.repeats)
        if "libraries" in parts:
            results["libraries"] = measure_libraries(args.keops_python)
        if "fits" in parts:
            results["fits"] = measure_fits()
        if "uci" in parts:
            results["uci"] = measure_uci(args.uci_max_n)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    text = report(results) + (f"\n\n{args.note}" if args.note else "")
    print(text)
    write_section(
        args.results_md,
        "kernel_passes",
        "Fused CPU kernel passes against the reference path (issue 13)",
        command_line("benchmarks/kernel_passes.py", argv),
        text + "\n",
    )


if __name__ == "__main__":
    main()
