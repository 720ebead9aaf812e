"""Float32 kernels against float64 ones, side by side in one run: does the fit finish, how does it
score, how long does it take, did a round fall back to float64.

One command, printing a table::

    python benchmarks/float32_fits.py [--sets planted-nystrom,california,...] [--json out.json]
        [--results-md benchmarks/RESULTS.md]

The sets: the two default-GPU-fit failures of the first GPU run as the issue reproduces them on the
CPU ("planted-nystrom": 5,000 x 20 rows, y = x0 x1 + 0.1 noise, 1,000 centers, direct solve, 2
rounds; "california": 12,000 random rows of the census-block features, RFMClassifier(iters=1)),
then the estimators' defaults on real sets (80/20 split, seeded). The float64 row of every set is
``dtype='float64'``, the CPU's default; the float32 row differs only by ``dtype='float32'``. No
``RFMDIST_*`` environment override is left in force. Test score: MSE (regression) or accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import command_line, machine_line, product_task, table, write_section
from benchmarks.datasets.grinsztajn import load_grinsztajn
from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.datasets.bundled import load_cpu_act

Task = dict[str, Any]


def planted_nystrom() -> Task:
    X, y = product_task(5_000, 20, seed=0)
    X_test, y_test = product_task(2_000, 20, seed=1)
    params = {"iters": 2, "centers": 1000, "solver": "direct", "random_state": 0}
    return {"X": X, "y": y, "X_test": X_test, "y_test": y_test, "params": params, "clf": False}


def california() -> Task:
    data = load_grinsztajn("clf_num/california")
    rows = np.random.default_rng(0).permutation(len(data.X))
    train, test = rows[:12_000], rows[12_000:16_000]
    return {
        "X": data.X[train],
        "y": data.y[train],
        "X_test": data.X[test],
        "y_test": data.y[test],
        "params": {"iters": 1, "random_state": 0},
        "clf": True,
    }


def split(X: np.ndarray, y: np.ndarray, clf: bool) -> Task:
    """An 80/20 split (seeded) run with the estimators' defaults (and random_state=0)."""
    rows = np.random.default_rng(0).permutation(len(X))
    cut = int(0.8 * len(X))
    train, test = rows[:cut], rows[cut:]
    return {
        "X": X[train],
        "y": y[train],
        "X_test": X[test],
        "y_test": y[test],
        "params": {"random_state": 0},
        "clf": clf,
    }


def grinsztajn(name: str, clf: bool) -> Callable[[], Task]:
    def load() -> Task:
        data = load_grinsztajn(name)
        return split(data.X, data.y, clf)

    return load


def cpu_act() -> Task:
    data = load_cpu_act()
    return split(data.X, data.y, clf=False)


SETS: dict[str, Callable[[], Task]] = {
    "planted-nystrom": planted_nystrom,
    "california": california,
    "cpu_act": cpu_act,
    "houses": grinsztajn("reg_num/houses", clf=False),
    "MagicTelescope": grinsztajn("clf_num/MagicTelescope", clf=True),
}


def run(task: Task, dtype: str) -> dict[str, Any]:
    """Fit with ``dtype``; the result row (``finished`` False with the error when it raised)."""
    cls = RFMClassifier if task["clf"] else RFMRegressor
    start = time.perf_counter()
    try:
        model = cls(dtype=dtype, **task["params"]).fit(task["X"], task["y"])
    except Exception as err:  # the row says how it failed: the benchmark's purpose
        return {"dtype": dtype, "finished": False, "error": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - start
    pred = model.predict(task["X_test"])
    score = (
        float(np.mean(pred == task["y_test"]))
        if task["clf"]
        else float(np.mean((pred - task["y_test"]) ** 2))
    )
    records = [*model.history_, *([model.refit_] if model.refit_ else [])]
    return {
        "dtype": dtype,
        "finished": True,
        "seconds": seconds,
        "score": score,
        "rounds": len(model.history_),
        "solvers": " ".join(r["solver"] for r in records),
        "fallbacks": sum("float64_fallback" in r["solve"] for r in records),
        "max_jitter": max(float(r["solve"].get("jitter", 0.0)) for r in records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"Of {', '.join(SETS)}.")
    parser.add_argument("--json", default=None, help="Write the rows as JSON here.")
    parser.add_argument("--results-md", default=None, help="Update this RESULTS.md section.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = (k for k in os.environ if k.startswith("RFMDIST_") and k != "RFMDIST_DATA")
    for key in sorted(overrides):  # RFMDIST_DATA says where the data are, not how to fit
        print(f"removed {key} from the environment: no row runs with overrides")
        del os.environ[key]
    results = []
    for name in args.sets.split(","):
        task = SETS[name]()
        for dtype in ("float64", "float32"):
            results.append({"set": name, "n": len(task["X"]), **run(task, dtype)})
            print(results[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    rows = []
    for r in results:
        reference = next(x for x in results if x["set"] == r["set"] and x["dtype"] == "float64")
        if not r["finished"]:
            rows.append([r["set"], r["n"], r["dtype"], "no: " + r["error"][:60], *"-" * 6])
            continue
        ratio = r["score"] / reference["score"] if reference.get("finished") else float("nan")
        rows.append(
            [
                r["set"],
                r["n"],
                r["dtype"],
                "yes",
                f"{r['score']:.5g}",
                f"{ratio:.4f}",
                f"{r['seconds']:.1f}",
                r["solvers"],
                r["fallbacks"],
                f"{r['max_jitter']:.2g}",
            ]
        )
    header = [
        "set",
        "train rows",
        "dtype",
        "fits",
        "test score",
        "/ float64",
        "fit s",
        "solvers (rounds, refit)",
        "float64 rounds",
        "max jitter",
    ]
    text = table(header, rows)
    print(f"\n{machine_line()}\n\n{text}")
    write_section(
        args.results_md,
        "float32_fits",
        "Float32 against float64 kernels (the GPU fit failures, reproduced on the CPU)",
        command_line("benchmarks/float32_fits.py", argv),
        f"{text}\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
