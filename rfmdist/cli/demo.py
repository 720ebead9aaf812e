"""``rfmdist demo``: the main job as batch users run it, on the bundled Computer Activity (cpu_act) data.

The bundled rows are split (seeded) into training, validation and test files in a temporary folder,
and fitted by the ``rfmdist fit`` command itself (the same code path: checks, an embedded local
Dask cluster with its dashboard link, the progress display on a terminal, one committed round at a
time in a model store, the per-round table). The written model is then loaded, scored on the test
rows and its learned feature importances shown.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_ROWS, VAL_ROWS = 4_000, 1_500


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command."""
    parser = sub.add_parser(
        "demo",
        help="Fit RFM on the bundled Computer Activity (cpu_act) data (no download) the way "
        "'rfmdist fit' runs, and show what it learned.",
        description=(
            "Fit a Recursive Feature Machine on the Computer Activity (cpu_act) data shipped with "
            f"rfmdist (8,192 rows, 21 system counters: {TRAIN_ROWS:,} training, {VAL_ROWS:,} "
            "validation and the rest test rows) through 'rfmdist fit' on a local Dask cluster: "
            "per-round train/validation error, the test error against predicting the mean, and the "
            "learned feature importances."
        ),
    )
    parser.add_argument("--iters", type=int, default=5, help="AGOP rounds (default 5).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split and the fit.")
    parser.add_argument(
        "--workers", type=int, default=None, help="Local cluster workers (default: one per core)."
    )
    parser.add_argument(
        "--progress", choices=["auto", "on", "off"], default="auto", help="As for 'rfmdist fit'."
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the split, run ``rfmdist fit`` on it, score the model; returns the exit code."""
    import rfmdist
    from rfmdist.cli import fit
    from rfmdist.datasets.bundled import load_cpu_act

    data = load_cpu_act()
    order = np.random.default_rng(args.seed).permutation(len(data.y))
    train, val = order[:TRAIN_ROWS], order[TRAIN_ROWS : TRAIN_ROWS + VAL_ROWS]
    test = order[TRAIN_ROWS + VAL_ROWS :]
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="rfmdist-demo-") as folder:
        paths = {name: Path(folder) / f"{name}.npz" for name in ("train", "val")}
        for name, rows in (("train", train), ("val", val)):
            np.savez(paths[name], X=data.X[rows], y=data.y[rows])
        model_path = Path(folder) / "model.zarr"
        argv = [
            "--train", paths["train"], "--val", paths["val"], "--out", model_path,
            "--iters", args.iters, "--seed", args.seed, "--progress", args.progress,
        ]  # fmt: skip
        if args.workers is not None:
            argv += ["--workers", args.workers]
        out.write(f"rfmdist fit {' '.join(str(a) for a in argv)}\n")
        out.flush()
        code = fit.run(_fit_arguments([str(a) for a in argv]))
        if code:
            return code
        model = rfmdist.load(model_path)
    test_mse = float(np.mean((model.predict(data.X[test]) - data.y[test]) ** 2))
    baseline = float(np.mean((data.y[test] - data.y[train].mean()) ** 2))
    out.write(
        f"\ntest MSE {test_mse:.4f} on {len(test):,} test rows (predicting the mean: "
        f"{baseline:.4f})\n\nlearned feature importances (normalised diagonal of M):\n"
    )
    importances = model.feature_importances_
    for i in np.argsort(importances)[::-1]:
        bar = "#" * round(30 * importances[i])
        out.write(f"  {data.feature_names[i]:>22}  {importances[i]:6.3f}  {bar}\n")
    return 0


def _fit_arguments(argv: list[str]) -> argparse.Namespace:
    """``rfmdist fit``'s parsed options for ``argv`` (its own parser: the same defaults)."""
    from rfmdist.cli import fit

    parser = argparse.ArgumentParser(prog="rfmdist")
    sub = parser.add_subparsers(dest="command")
    fit.register(sub)
    return parser.parse_args(["fit", *argv])
