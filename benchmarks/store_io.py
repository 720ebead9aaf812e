"""Size and speed of rfmdist model stores for a Fashion-MNIST-sized feature matrix (d = 784).

Fits RFM on synthetic data (full and diagonal M), then times ``save`` and ``rfmdist.load`` into a
local Zarr store and reports its size on disk, in all and per round (``history/M`` dominates).

    python benchmarks/store_io.py [--n 2000] [--d 784] [--iters 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import rfmdist
from rfmdist import RFMRegressor

logger = logging.getLogger("benchmarks.store_io")


def directory_bytes(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(n: int, d: int, iters: int, diag: bool, repeats: int, root: Path) -> dict[str, float]:
    """Fit once, then time ``repeats`` saves and loads; sizes in MiB, times in seconds (best of)."""
    rng = np.random.default_rng(0)
    X = rng.random((n, d)).astype(np.float32)  # pixel-like values in [0, 1)
    y = X[:, 0] * X[:, 1] + X[:, 2]
    start = time.perf_counter()
    model = RFMRegressor(iters=iters, diag=diag, agop_samples=1000, random_state=0).fit(X, y)
    fit_seconds = time.perf_counter() - start
    saves, loads = [], []
    path = root / f"model-{'diag' if diag else 'full'}.zarr"
    for _ in range(repeats):
        start = time.perf_counter()
        model.save(path, overwrite=True)
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        loaded = rfmdist.load(path)
        loads.append(time.perf_counter() - start)
    np.testing.assert_array_equal(loaded.predict(X[:100]), model.predict(X[:100]))
    size = directory_bytes(path)
    history = directory_bytes(path / "history")
    rounds = iters + 1
    return {
        "M": "diag" if diag else "full",
        "rounds": rounds,
        "fit_s": fit_seconds,
        "store_MiB": size / 2**20,
        "history_MiB": history / 2**20,
        "per_round_MiB": history / rounds / 2**20,
        "centers_MiB": directory_bytes(path / "centers") / 2**20,
        "raw_M_MiB": (d if diag else d * d) * 8 / 2**20,
        "save_s": min(saves),
        "load_s": min(loads),
    }


def main() -> None:
    """Run the measurements and log a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rfmdist").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        for diag in (False, True):
            rows.append(measure(args.n, args.d, args.iters, diag, args.repeats, Path(tmp)))
    columns = list(rows[0])
    logger.info(
        "store I/O: n=%d, d=%d, local disk, 1 BLAS thread, best of %d (zarr default codecs)",
        args.n,
        args.d,
        args.repeats,
    )
    logger.info("| %s |", " | ".join(columns))
    logger.info("|%s|", "|".join("---" for _ in columns))
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        logger.info("| %s |", " | ".join(cells))
    logger.info("cpu count: %s", os.cpu_count())


if __name__ == "__main__":
    main()
