"""RFM on the planted task of the RFM issues: n_train = 20,000, d = 50, y = x0 * x1 + noise, 5 rounds.

One command, printing a table (fit seconds, test MSE of the round chosen on validation, per-round
validation MSE) for rfmdist's defaults (``RFMRegressor()`` as shipped, no ``RFMDIST_*`` environment
overrides), labelled solver settings and, side by side in the same run, xRFM (the authors' library,
in its own virtual environment; see ``xrfm_runner.py``)::

    python benchmarks/synthetic_20k.py [--configs nystrom-pcg,nystrom-direct,...]
        [--xrfm-python PATH] [--xrfm plain,default] [--json out.json]

Validation (5,000 rows) picks the round for every method; test MSE on 10,000 fresh rows; noise
standard deviation 0.1, so the Bayes test MSE is 0.01. Laplace kernel, L = 10, reg = 1e-3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import command_line, machine_line, product_task, table, write_section
from rfmdist import RFMRegressor

N_TRAIN, N_VAL, N_TEST, D = 20_000, 5_000, 10_000, 50

# "defaults" is RFMRegressor() exactly as shipped; the others are labelled settings (5 rounds, all
# run: no early stopping, the seed fixed).
CONFIGS: dict[str, dict] = {
    "defaults": {},
    "nystrom-pcg": {"centers": 4000, "solver": "pcg"},
    "nystrom-direct": {"centers": 4000, "solver": "direct"},
    "nystrom-pcg-8k": {"centers": 8000, "solver": "pcg"},
    "nystrom-pcg-f32": {"centers": 4000, "solver": "pcg", "dtype": "float32"},
    "exact-pcg": {"centers": None, "solver": "pcg"},
    "exact-direct": {"centers": None, "solver": "direct"},
}
DEFAULT_CONFIGS = "defaults,nystrom-pcg,nystrom-direct,nystrom-pcg-8k,exact-pcg"


def run_rfmdist(name: str, data: dict[str, np.ndarray], seed: int) -> dict:
    labelled = {"iters": 5, "random_state": seed, "n_iter_no_change": None}
    params = {} if name == "defaults" else labelled | CONFIGS[name]
    test_mse: list[float] = []
    test_seconds = 0.0

    def score_round(outcome) -> None:  # test MSE of every round's predictor, not timed
        nonlocal test_seconds
        start = time.perf_counter()
        pred = outcome.machine.decision(data["X_test"])[:, 0]
        test_mse.append(float(np.mean((pred - data["y_test"]) ** 2)))
        test_seconds += time.perf_counter() - start

    start = time.perf_counter()
    model = RFMRegressor(**params).fit(
        data["X"], data["y"], eval_set=(data["X_val"], data["y_val"]), callback=score_round
    )
    seconds = time.perf_counter() - start - test_seconds
    mse = float(np.mean((model.predict(data["X_test"]) - data["y_test"]) ** 2))
    return {
        "method": f"rfmdist {name}",
        "seconds": seconds,
        "test_mse": mse,
        "best_round": model.best_iter_,
        "val_mse": [h["val_score"] for h in model.history_],
        "test_mse_per_round": test_mse,
        "round_seconds": [h["seconds"] for h in model.history_],
        "iterations": [h["solve"].get("iterations", "-") for h in model.history_],
        "agop_seconds": [h.get("agop_seconds", 0.0) for h in model.history_],
    }


def run_xrfm(python: str, setting: str, task_path: str) -> dict:
    runner = Path(__file__).resolve().parent / "xrfm_runner.py"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, str(runner), task_path, setting, out.name], check=True)
        result = json.loads(Path(out.name).read_text())
    return {"method": f"xRFM 0.4.5 {setting}", **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="rfmdist settings to run.")
    parser.add_argument("--xrfm-python", default=None, help="Python with xrfm installed.")
    parser.add_argument("--xrfm", default="plain", help="xRFM settings: plain, default.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write all results as JSON here.")
    parser.add_argument("--results-md", default=None, help="Update this RESULTS.md section.")
    parser.add_argument(
        "--from-json", default=None, help="Regenerate the tables from a --json file of a past run."
    )
    parser.add_argument("--note", default="", help="A note printed under the tables.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.from_json:
        results = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        return report(results, args, argv)
    X, y = product_task(N_TRAIN, D, seed=args.seed)
    X_val, y_val = product_task(N_VAL, D, seed=args.seed + 1)
    X_test, y_test = product_task(N_TEST, D, seed=args.seed + 2)
    data = {"X": X, "y": y, "X_val": X_val, "y_val": y_val, "X_test": X_test, "y_test": y_test}
    results = []
    overrides = sorted(k for k in os.environ if k.startswith("RFMDIST_"))
    for key in overrides:  # every row runs with the budgets the machine gives
        del os.environ[key]
    if overrides:
        print(f"removed {overrides} from the environment: no row runs with overrides")
    with tempfile.TemporaryDirectory() as tmp:
        task_path = str(Path(tmp) / "task.npz")
        np.savez(task_path, **data)
        if args.xrfm_python:
            for setting in args.xrfm.split(","):
                results.append(run_xrfm(args.xrfm_python, setting, task_path))
                print(results[-1], flush=True)
        for name in args.configs.split(","):
            results.append(run_rfmdist(name, data, args.seed))
            print({k: results[-1][k] for k in ("method", "seconds", "test_mse")}, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return report(results, args, argv)


def report(results: list[dict], args: argparse.Namespace, argv: list[str] | None) -> int:
    """Print the tables and, with ``--results-md``, regenerate the RESULTS.md section."""
    header = f"Synthetic task n={N_TRAIN}, d={D}, y = x0*x1 + 0.1 noise; {machine_line()}"
    rows = [
        [
            r["method"],
            r["seconds"],
            r["test_mse"],
            r.get("best_round", "-"),
            " ".join(f"{v:.4f}" for v in r.get("val_mse", [])) or "-",
            " ".join(f"{v:.4f}" for v in r.get("test_mse_per_round", [])) or "-",
            " ".join(str(i) for i in r.get("iterations", [])) or "-",
        ]
        for r in results
    ]
    text = table(
        [
            "method",
            "fit s",
            "test MSE",
            "best round",
            "val MSE per round",
            "test MSE per round",
            "CG iters",
        ],
        rows,
    )
    agop = [
        [
            r["method"],
            " ".join(f"{a:.1f}" for a in r["agop_seconds"]),
            " ".join(
                f"{t - a:.1f}" for t, a in zip(r["round_seconds"], r["agop_seconds"], strict=True)
            ),
        ]
        for r in results
        if "agop_seconds" in r
    ]
    agop_text = table(["method", "AGOP s per round", "rest of the round s (solve, scores)"], agop)
    print(f"\n{header}\n\n{text}\n\n{agop_text}")
    command = command_line("benchmarks/synthetic_20k.py", argv)
    write_section(
        args.results_md,
        "synthetic20k",
        "Planted task, n = 20,000, d = 50 (RFM issues)",
        command,
        f"{header}\n\n{text}\n\n{agop_text}\n\n{args.note}\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
