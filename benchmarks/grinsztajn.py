"""Grinsztajn et al. (NeurIPS 2022) tabular benchmark: RFM against a Laplace kernel and trees.

Every set of ``<data root>/grinsztajn/`` (39 here) is split once by
:func:`benchmarks.datasets.grinsztajn.split_grinsztajn` (seeded shuffle, train = 70 % capped at
``--max-train`` = 10,000 rows, validation / test = 30 / 70 % of the rest). Features are z-scored
with the training statistics; regression targets too (R² does not change under that affine map,
and the validation MSE is on the standardised scale). The ``rfm_defaults`` row sees the features
and targets as they are in the file, with the validation split as ``eval_set``.

The methods, grids and outputs are those of :mod:`benchmarks.runner`: hyper-parameters are chosen
on the validation split (accuracy, or MSE for regression), the model is scored once on the test
split (accuracy, or R² for regression). RFM's selection fit is reused when its ``best_iter_`` is
the chosen round, else the model is refitted on the training rows. The CSV (``--out``) has the
columns dataset, task, n, d, n_train, n_val, n_test, method, chosen_params (JSON), val_metric,
val_score, test_metric, test_score, seconds, error; the summary is printed per task.

Usage::

    python benchmarks/grinsztajn.py [--sets reg_num/abalone,clf_num/credit] [--max-n N]
        [--jobs J] [--out results.csv] [--data-root DIR] [--results-md benchmarks/RESULTS.md]
        [--seed 0] [--max-train 10000] [--rf-trees 300] [--max-centers M] [--threads 1]
        [--note TEXT]
    python benchmarks/grinsztajn.py --merge a.csv[,b.csv] [--results-md ...] [--note TEXT]
    python -m benchmarks.grinsztajn ...  # the same, from the repository root
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

if __package__ in (None, ""):  # run as a script: python benchmarks/grinsztajn.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import runner
from benchmarks.collection import Collection, SetRun
from benchmarks.datasets import grinsztajn as data
from benchmarks.report import run_values
from benchmarks.selection import RF_N_ESTIMATORS, methods_text

__all__ = ["CSV_COLUMNS", "MAX_TRAIN", "main"]

CSV_COLUMNS = tuple(
    "dataset task n d n_train n_val n_test method chosen_params val_metric val_score test_metric "
    "test_score seconds error".split()
)
"""The CSV's columns."""
MAX_TRAIN = 10_000
"""The benchmark's cap on the training rows."""


class Grinsztajn(Collection):
    """The Grinsztajn sets: one seeded train / validation / test split per set."""

    name = "grinsztajn"
    label = "Grinsztajn"
    title = "## Grinsztajn et al. (NeurIPS 2022) tabular benchmark"
    description = "RFM vs Laplace, random forest and gradient boosting on the Grinsztajn sets."
    columns = CSV_COLUMNS
    val_column = "val_score"
    score = "test_score"
    info_columns = ("task", "n", "d", "n_train")
    per_set_title = "Test score per set"
    set_examples = "'reg_num/abalone', 'clf_num/credit'"
    not_in_copy = (
        "covertype",
        "Higgs",
        "MiniBooNE",
        "jannis",
        "Bioresponse",
        "nyc-taxi",
        "medical_charges",
        "wine",
        "phoneme",
        "kdd_ipums",
    )
    positive_options = ("max_train",)

    def read_summary(self, root: Path) -> pd.DataFrame:
        """``grinsztajn/SUMMARY.tsv``."""
        return data.read_grinsztajn_summary(root)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--max-train``."""
        parser.add_argument("--max-train", type=int, default=MAX_TRAIN, help="cap on training rows")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """``max_train``."""
        return {"max_train": args.max_train}

    def set_name(self, text: str) -> str:
        """``"reg_num/abalone.csv.gz"`` -> ``"reg_num/abalone"``."""
        return data.normalise_name(text)

    def prepare(self, name: str, root: Path, *, seed: int, max_train: int = MAX_TRAIN) -> SetRun:
        """One set, split with ``seed``, standardised on its training rows."""
        import rfmdist

        ds = data.load_grinsztajn(name, root)
        train, val, test_idx = data.split_grinsztajn(ds.n, seed=seed, max_train=max_train)
        classification = ds.task == "classification"
        X, _, _ = data.standardize(ds.X, train)
        y = ds.y if classification else data.standardize_target(ds.y, train)[0]

        def test(make: Callable[[], Any], fitted: Any = None) -> dict[str, Any]:
            est = fitted if fitted is not None else make().fit(X[train], y[train])
            return {"test_score": float(est.score(X[test_idx], y[test_idx]))}

        def defaults() -> tuple[dict[str, Any], float, dict[str, Any]]:
            cls = rfmdist.RFMClassifier if classification else rfmdist.RFMRegressor
            est = cls(random_state=seed).fit(
                ds.X[train], ds.y[train], eval_set=(ds.X[val], ds.y[val])
            )
            score = float(est.score(ds.X[test_idx], ds.y[test_idx]))
            return {}, est.history_[est.best_iter_]["val_score"], {"test_score": score}

        base = {
            "dataset": ds.name,
            "task": ds.task,
            "n": ds.n,
            "d": ds.d,
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test_idx),
            "val_metric": "accuracy" if classification else "mse",
            "test_metric": "accuracy" if classification else "r2",
        }
        return SetRun(base, X, y, train, val, classification, test, defaults)

    def groups(self, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        """Classification (test accuracy) and regression (test R²) apart."""
        parts = [
            (f"{task}, test {metric}", frame[frame["task"].eq(task)])
            for task, metric in (("classification", "accuracy"), ("regression", "R²"))
        ]
        return [(label, part) for label, part in parts if not part.empty]

    def preamble(self, frame: pd.DataFrame, runs: Sequence[dict[str, Any]]) -> list[str]:
        """How many sets hit the training cap."""
        caps = [int(r["max_train"]) for r in runs if r.get("max_train")] or [MAX_TRAIN]
        n_train = frame.groupby("dataset")["n_train"].first()
        capped = int((n_train >= min(caps)).sum()) if len(n_train) else 0
        return [
            f"Training cap: `--max-train {run_values(runs, 'max_train', MAX_TRAIN)}` (the "
            f"documented cap is {MAX_TRAIN:,}); {capped} of {frame['dataset'].nunique()} sets "
            "hit it.",
            "",
        ]

    def protocol(self, runs: Sequence[dict[str, Any]]) -> str:
        """The split, the scores and the grids."""
        cap = run_values(runs, "max_train", MAX_TRAIN)
        return (
            f"one seeded split per set (seed {run_values(runs, 'seed', 0)}; train 70 % capped at "
            f"{cap}, validation / test 30 / 70 % of the rest), features and regression targets "
            "z-scored on the training rows; hyper-parameters chosen on validation (accuracy, or "
            "MSE for regression); test accuracy (classification) or R² (regression). "
            + methods_text(
                run_values(runs, "rf_trees", RF_N_ESTIMATORS),
                run_values(runs, "max_centers", "auto (exact up to 20,000 rows)"),
            )
        )

    def per_set_info(self, info: pd.DataFrame) -> pd.DataFrame:
        """The task as ``clf (acc)`` / ``reg (R²)``, the counts as integers."""
        info["task"] = info["task"].map({"classification": "clf (acc)", "regression": "reg (R²)"})
        return super().per_set_info(info)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or ``--merge``); see the module docstring. Returns the exit status."""
    return runner.main(Grinsztajn(), argv)


if __name__ == "__main__":
    sys.exit(main())
