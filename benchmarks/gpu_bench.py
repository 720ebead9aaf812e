"""GPU benchmark: kernel-pass throughput against the same GPU's GEMM rate, and a 1M-row fit.

(a) One kernel pass ``K^T (K v)`` over n rows against m centers in d dimensions (float32, in-memory
    CuPy rows, BlockedKernelOperator with its memory-sized blocks) costs ``2 n m d`` GEMM flops for the
    distances plus ``4 n m`` for the two mat-vecs. Its rate is reported as a fraction of the same GPU's
    float32 and TF32 GEMM rates measured in the same run: an 8192^3 GEMM (the card's peak) and the GEMM
    of the pass's own shape (``n x (d + 2)`` by ``(d + 2) x m``, the ceiling for small d, where the
    elementwise sqrt/exp over ``n x m`` entries dominate).
(b) A fit of y = x0 * x1 + noise on n = 1,000,000 rows, d = 100, with 20,000 Nyström centers and 5
    rounds (iters = 4), on one GPU (float32, PCG): seconds per round, CG iterations, test MSE. With
    ``--cpu-rows N`` the same fit runs on the CPU (float32, all cores) on the first N rows, and its time
    is scaled by n / N (the passes are linear in n) as an estimate for the full size.

Usage (on a GPU machine)::

    python benchmarks/gpu_bench.py --out DIR [--quick] [--cpu-rows 50000]

Prints a table and writes ``DIR/gpu_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from rfmdist import RFMRegressor, backend, memory
from rfmdist.kernels import prepare_kernel
from rfmdist.operators import BlockedKernelOperator

logger = logging.getLogger("rfmdist.benchmarks.gpu")


def timed(fn, cp, repeats: int = 3) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up, synchronising the GPU."""
    fn()
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rates(cp, n: int, m: int, d: int) -> dict[str, float]:
    """TFLOP/s of float32 GEMMs, full float32 and TF32: square 8192^3 and the pass's shape."""
    rng = cp.random.default_rng(0)
    square = rng.standard_normal((8192, 8192), dtype=cp.float32)
    rows = rng.standard_normal((min(n, 65536), d + 2), dtype=cp.float32)
    cols = rng.standard_normal((d + 2, m), dtype=cp.float32)
    out: dict[str, float] = {}
    for mode in ("fp32", "tf32"):
        with backend.tf32_matmul(mode == "tf32"):
            seconds = timed(lambda: square @ square, cp)
            out[f"gemm_square_{mode}_tflops"] = 2 * 8192**3 / seconds / 1e12
            seconds = timed(lambda: rows @ cols, cp)
            out[f"gemm_pass_shape_{mode}_tflops"] = 2 * rows.shape[0] * m * (d + 2) / seconds / 1e12
    return out


def kernel_pass(cp, n: int, m: int, d: int) -> dict[str, Any]:
    """Seconds and TFLOP/s of one normal pass ``K^T (K v)``, TF32 off and on."""
    rng = np.random.default_rng(0)
    X = cp.asarray(rng.normal(size=(n, d)), dtype=cp.float32)
    prepared = prepare_kernel(X[:m].copy(), cp.eye(d, dtype=cp.float32))
    op = BlockedKernelOperator(X, prepared)
    v = cp.asarray(rng.normal(size=(m, 1)))
    flops = 2.0 * n * m * d + 4.0 * n * m
    result: dict[str, Any] = {"n": n, "m": m, "d": d, "block_rows": op.block_rows}
    for mode in ("fp32", "tf32"):
        with backend.tf32_matmul(mode == "tf32"):
            seconds = timed(lambda: op.normal_matvec(v), cp)
        result[f"pass_{mode}_seconds"] = seconds
        result[f"pass_{mode}_tflops"] = flops / seconds / 1e12
    return result


def product_task(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = X[:, 0] * X[:, 1] + 0.1 * rng.normal(size=n).astype(np.float32)
    return X, y


def fit_once(X, y, X_test, y_test, *, device: str, centers: int, iters: int, max_iter: int):
    """Fit, returning seconds, per-round records and the test MSE."""
    model = RFMRegressor(
        iters=iters,
        centers=centers,
        solver="pcg",
        max_iter=max_iter,
        dtype="float32",
        device=device,
        random_state=0,
    )
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    mse = float(np.mean((model.predict(X_test) - y_test) ** 2))
    rounds = [
        {
            "round": h["round"],
            "seconds": round(h["seconds"], 3),
            "cg_iterations": h["solve"].get("iterations"),
            "converged": h["solve"].get("converged"),
            "cached_kernel": h["cached_kernel"],
        }
        for h in model.history_
    ]
    top = np.argsort(model.feature_importances_)[::-1][:2].tolist()
    return {"seconds": seconds, "test_mse": mse, "rounds": rounds, "top_features": top}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=100)
    parser.add_argument("--centers", type=int, default=20_000)
    parser.add_argument("--iters", type=int, default=4, help="AGOP updates (rounds = iters + 1)")
    parser.add_argument("--max-iter", type=int, default=60, help="PCG iterations per round")
    parser.add_argument("--cpu-rows", type=int, default=0, help="also fit on the CPU on N rows")
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not backend.gpu_available():
        parser.exit(2, "error: expected a CUDA GPU that CuPy can allocate on, found none\n")
    cp = backend.cupy_module()
    if args.quick:
        args.rows, args.centers, args.dims = 50_000, 2_000, 20
        args.cpu_rows = min(args.cpu_rows, 20_000)
    pass_n, pass_m = (200_000, 20_000) if not args.quick else (20_000, 2_000)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    report: dict[str, Any] = {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "free_device_bytes": backend.free_device_bytes(),
        "gpu_memory_fraction": memory.gpu_fraction(),
    }
    report["gemm"] = gemm_rates(cp, pass_n, pass_m, args.dims)
    report["kernel_pass"] = kp = kernel_pass(cp, pass_n, pass_m, args.dims)
    for mode in ("fp32", "tf32"):
        kp[f"pass_{mode}_fraction_of_square_gemm"] = (
            kp[f"pass_{mode}_tflops"] / report["gemm"][f"gemm_square_{mode}_tflops"]
        )
        kp[f"pass_{mode}_fraction_of_pass_shape_gemm"] = (
            kp[f"pass_{mode}_tflops"] / report["gemm"][f"gemm_pass_shape_{mode}_tflops"]
        )
    cp.get_default_memory_pool().free_all_blocks()
    if not args.skip_fit:
        X, y = product_task(args.rows + 10_000, args.dims, seed=1)
        X_test, y_test = X[args.rows :], y[args.rows :]
        X, y = X[: args.rows], y[: args.rows]
        common = {"centers": args.centers, "iters": args.iters, "max_iter": args.max_iter}
        report["fit_gpu"] = fit_once(X, y, X_test, y_test, device="gpu", **common)
        report["fit_gpu"].update(n=args.rows, d=args.dims)
        cp.get_default_memory_pool().free_all_blocks()
        if args.cpu_rows:
            from threadpoolctl import threadpool_info

            rows = min(args.cpu_rows, args.rows)
            sub = (X[:rows], y[:rows], X_test, y_test)
            gpu_sub = fit_once(*sub, device="gpu", **common)
            cpu_sub = fit_once(*sub, device="cpu", **common)
            report["fit_subset"] = {
                "n": rows,
                "gpu": gpu_sub,
                "cpu": cpu_sub,
                "blas_threads": [i.get("num_threads") for i in threadpool_info()],
                "cpu_seconds_scaled_to_n": cpu_sub["seconds"] * args.rows / rows,
                "speedup_on_subset": cpu_sub["seconds"] / gpu_sub["seconds"],
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    return 0


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    g, k = report["gemm"], report["kernel_pass"]
    lines = [
        f"GPU: {report['gpu']} (CuPy {report['cupy']})",
        f"{'measure':<48}{'fp32':>12}{'tf32':>12}",
        f"{'GEMM 8192^3 TFLOP/s':<48}"
        f"{g['gemm_square_fp32_tflops']:>12.1f}{g['gemm_square_tf32_tflops']:>12.1f}",
        f"{'GEMM of the pass shape TFLOP/s':<48}"
        f"{g['gemm_pass_shape_fp32_tflops']:>12.1f}{g['gemm_pass_shape_tf32_tflops']:>12.1f}",
        f"{'kernel pass (n={n}, m={m}, d={d}) seconds'.format(**k):<48}"
        f"{k['pass_fp32_seconds']:>12.3f}{k['pass_tf32_seconds']:>12.3f}",
        f"{'kernel pass TFLOP/s':<48}{k['pass_fp32_tflops']:>12.2f}{k['pass_tf32_tflops']:>12.2f}",
        f"{'  fraction of square GEMM':<48}"
        f"{k['pass_fp32_fraction_of_square_gemm']:>12.3f}"
        f"{k['pass_tf32_fraction_of_square_gemm']:>12.3f}",
        f"{'  fraction of pass-shape GEMM':<48}"
        f"{k['pass_fp32_fraction_of_pass_shape_gemm']:>12.3f}"
        f"{k['pass_tf32_fraction_of_pass_shape_gemm']:>12.3f}",
    ]
    if "fit_gpu" in report:
        f = report["fit_gpu"]
        iters = [r["cg_iterations"] for r in f["rounds"]]
        lines.append(
            f"fit n={f['n']} d={f['d']}: {f['seconds']:.1f} s on the GPU, {len(f['rounds'])} "
            f"rounds, CG iterations {iters}, test MSE {f['test_mse']:.4f}, top features "
            f"{f['top_features']}"
        )
    if "fit_subset" in report:
        s = report["fit_subset"]
        lines.append(
            f"subset n={s['n']}: GPU {s['gpu']['seconds']:.1f} s, CPU {s['cpu']['seconds']:.1f} s "
            f"(x{s['speedup_on_subset']:.1f}); CPU scaled to the full n: "
            f"{s['cpu_seconds_scaled_to_n']:.0f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
