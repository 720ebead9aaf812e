"""How loose can the PCG tolerance be? Iterations and test scores of RFM fits across tolerances.

One command prints a table (and regenerates the ``cg_tolerance`` section of RESULTS.md)::

    python benchmarks/cg_tolerance.py [--tols 1e-7,1e-5,1e-4,1e-3] [--max-train 4000]
        [--centers 2000] [--results-md benchmarks/RESULTS.md]

For each data set (real regression and classification sets of ../shared/data/grinsztajn, and the
planted task ``y = x0 x1 + noise``) and each tolerance, RFM (Laplace, L = 10, reg 1e-3, 5 rounds,
float64) is fitted with ``solver='pcg'`` twice: on the exact system (``centers=None``, all
``--max-train`` rows) and on the Nystrom system (``--centers`` uniform centers of up to 10,000
rows). A row per set gives the estimator's defaults (``RFMRegressor()`` / ``RFMClassifier()`` as shipped,
on the exact-system rows) for reference. Reported per fit: the PCG iterations summed over the rounds,
the test score of the round chosen on validation (R^2 or accuracy), and how far the validation score
of every round moved from the tightest tolerance's (the round chosen can change when two rounds score alike). Iteration counts and scores
do not depend on the machine's load, so this benchmark can run beside others; its seconds can not.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import command_line, product_task, table, write_section

logger = logging.getLogger("benchmarks.cg_tolerance")

SETS = (
    "reg_num/cpu_act",
    "reg_num/pol",
    "reg_num/elevators",
    "reg_num/Ailerons",
    "clf_num/MagicTelescope",
    "clf_num/credit",
)
NYSTROM_MAX_TRAIN = 10_000


def load_splits(name: str, max_train: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Standardised train / validation / test arrays of a Grinsztajn set or the planted task."""
    if name == "product":
        X, y = product_task(max_train + 6_000, 20, seed)
        n = max_train
        return X[:n], y[:n], X[n : n + 3000], y[n : n + 3000], X[n + 3000 :], y[n + 3000 :]
    from benchmarks.datasets import resolve_data_root
    from benchmarks.datasets.grinsztajn import (
        load_grinsztajn,
        split_grinsztajn,
        standardize,
        standardize_target,
    )

    ds = load_grinsztajn(name, resolve_data_root(None))
    train, val, test = split_grinsztajn(ds.n, seed=seed, max_train=max_train)
    X, _, _ = standardize(ds.X, train)
    y = ds.y if ds.task == "classification" else standardize_target(ds.y, train)[0]
    return X[train], y[train], X[val], y[val], X[test], y[test]


def fit_once(
    name: str, splits: tuple[np.ndarray, ...], tol: float | None, centers: int | None
) -> dict:
    """One PCG fit (``tol=None``: the estimator's defaults as shipped): iterations over the rounds,
    validation score per round, test score, seconds."""
    import rfmdist

    X_tr, y_tr, X_va, y_va, X_te, y_te = splits
    classification = name.startswith("clf")
    cls = rfmdist.RFMClassifier if classification else rfmdist.RFMRegressor
    est = (
        cls()
        if tol is None
        else cls(
            centers=centers,
            solver="pcg",
            tol=tol,
            reg=1e-3,
            iters=5,
            bandwidth=10.0,
            standardize=False,
            random_state=0,
            dtype="float64",
            n_iter_no_change=None,
        )
    )
    start = time.perf_counter()
    est.fit(X_tr, y_tr, eval_set=(X_va, y_va))
    seconds = time.perf_counter() - start
    solves = [r["solve"] for r in est.history_]
    return {
        "iterations": int(sum(s.get("iterations", 0) for s in solves)),
        "converged": all(s.get("converged", True) for s in solves),
        "score": float(est.score(X_te, y_te)),
        "best_round": int(est.best_iter_),
        "val_scores": np.array([r["val_score"] for r in est.history_], dtype=np.float64),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tols", default="1e-7,1e-5,1e-4,1e-3")
    parser.add_argument("--sets", default=",".join((*SETS, "product")))
    parser.add_argument("--max-train", type=int, default=4000, help="rows of the exact systems")
    parser.add_argument("--centers", type=int, default=2000, help="centers of the Nystrom systems")
    parser.add_argument("--results-md", default=None, help="Update this RESULTS.md section.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("rfmdist").setLevel(logging.WARNING)
    tols = sorted((float(t) for t in args.tols.split(",")), reverse=False)
    rows = []
    for name in args.sets.split(","):
        splits = load_splits(name, args.max_train)
        fit = fit_once(name, splits, None, None)
        rows.append(
            [
                name, "defaults", len(splits[0]), "-", fit["iterations"], "-", "-",
                fit["best_round"], fit["score"], "-", "-", fit["seconds"],
            ]
        )  # fmt: skip
        for system, centers, max_train in (
            ("exact", None, args.max_train),
            (f"nystrom {args.centers}", args.centers, NYSTROM_MAX_TRAIN),
        ):
            splits = load_splits(name, max_train)
            tight = None
            for tol in tols:
                fit = fit_once(name, splits, tol, centers)
                if tight is None:
                    tight = fit
                moved = float(np.abs(fit["val_scores"] - tight["val_scores"]).max())
                logger.info("%s %s tol %g: %s", name, system, tol, fit)
                rows.append(
                    [
                        name,
                        system,
                        len(splits[0]),
                        f"{tol:g}",
                        fit["iterations"],
                        fit["iterations"] / tight["iterations"],
                        "yes" if fit["converged"] else "no",
                        fit["best_round"],
                        fit["score"],
                        fit["score"] - tight["score"],
                        moved,
                        fit["seconds"],
                    ]
                )
    text = table(
        [
            "set",
            "system",
            "n_train",
            "tol",
            "PCG iterations (5 rounds)",
            "vs tightest",
            "converged",
            "best round",
            "test score",
            "minus tightest's",
            "max val score change (any round)",
            "fit s (loaded machine)",
        ],
        rows,
    )
    print(text)
    command = command_line("benchmarks/cg_tolerance.py", argv)
    write_section(
        args.results_md,
        "cg_tolerance",
        "PCG tolerance: iterations and test scores",
        command,
        "Test score: R^2 (reg_*, product) or accuracy (clf_*) of the round chosen on validation. "
        "Scores and iterations do not depend on the machine's load; seconds do.\n\n" + text + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
