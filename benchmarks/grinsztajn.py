"""Grinsztajn et al. (NeurIPS 2022) tabular benchmark: RFM against a Laplace kernel and trees.

Every set of ``<data root>/grinsztajn/`` (39 here) is split once by
:func:`rfmdist.datasets.grinsztajn.split_grinsztajn` (seeded shuffle, train = 70 % capped at
``--max-train`` = 10,000 rows, validation / test = 30 / 70 % of the rest). Features are z-scored
with the training statistics; regression targets too (R² does not change under that affine map,
and the validation MSE is on the standardised scale).

Methods (hyper-parameters chosen on the validation split, scored once on the test split):

``rfm``
    :class:`rfmdist.RFMClassifier` / :class:`rfmdist.RFMRegressor`, Laplace kernel, L = 10,
    float64, ``standardize=False`` (the runner has z-scored the features already), grid
    reg in {10, 1, 0.1, 1e-2, 1e-3} x diag in {False, True} x rounds 0..5, read from
    ``history_`` of one ``iters=5`` fit per (reg, diag) with ``eval_set``. The selection fit is
    reused when its ``best_iter_`` is the chosen round, else the model is refitted on the
    training rows with ``iters=round``.
``laplace``
    The best reg at round 0 (M = I) of the same fits, refitted with ``iters=0``.
``random_forest``
    ``RandomForest{Classifier,Regressor}(n_estimators=300, n_jobs=1)``, max_features in
    {sqrt, 0.5, 1.0}.
``hist_gb``
    ``HistGradientBoosting{Classifier,Regressor}(early_stopping=False)``, learning_rate in
    {0.03, 0.1, 0.3} x max_leaf_nodes in {15, 63}.

Validation score: accuracy (higher is better) for classification, MSE (lower is better) for
regression. Test score: accuracy for classification, R² for regression. Ties on validation go to
the first candidate in grid order.

Outputs: a CSV (``--out``; columns dataset, task, n, d, n_train, n_val, n_test, method,
chosen_params (JSON), val_metric, val_score, test_metric, test_score, seconds, error), a summary
printed per task (mean test score, wins with ties counted for each tied method, mean rank with
ties averaged, over the sets where every method ran), and the section between
``<!-- grinsztajn:begin -->`` and ``<!-- grinsztajn:end -->`` of ``--results-md`` (with the training
cap used, the sets missing from the data copy and the ``--note`` lines), and ``<out>.meta.json``
(command, dates, wall time, machine; as in benchmarks/uci121.py).

Usage::

    python benchmarks/grinsztajn.py [--sets reg_num/abalone,clf_num/credit] [--max-n N]
        [--jobs J] [--out results.csv] [--data-root DIR] [--results-md benchmarks/RESULTS.md]
        [--seed 0] [--max-train 10000] [--rf-trees 300] [--threads 1] [--note TEXT]

``--jobs J`` runs J sets at a time in worker processes; every process running sets uses
``--threads`` (default 1; 0 = library default) BLAS / OpenMP threads (threadpoolctl).

Exit status 0 when every method ran on every set, 1 otherwise (the outputs are written anyway).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd


def _load_common() -> ModuleType:
    """Import benchmarks/uci121.py (the shared runner machinery) by path."""
    name = "rfmdist_benchmarks_uci121"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("uci121.py"))
    if spec is None or spec.loader is None:
        raise ImportError(
            f"expected the shared runner {Path(__file__).with_name('uci121.py')}, found none. "
            "Fix: keep benchmarks/uci121.py next to this file."
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


common = _load_common()

from rfmdist.datasets.grinsztajn import (  # noqa: E402
    load_grinsztajn,
    read_grinsztajn_summary,
    split_grinsztajn,
    standardize,
    standardize_target,
)
from rfmdist.datasets.uci121 import resolve_data_root  # noqa: E402

logger = logging.getLogger("benchmarks.grinsztajn")

METHODS = common.METHODS
CSV_COLUMNS: tuple[str, ...] = (
    "dataset",
    "task",
    "n",
    "d",
    "n_train",
    "n_val",
    "n_test",
    "method",
    "chosen_params",
    "val_metric",
    "val_score",
    "test_metric",
    "test_score",
    "seconds",
    "error",
)
SECTION = "grinsztajn"
MAX_TRAIN = 10_000
MISSING_FROM_COPY: tuple[str, ...] = (
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
"""Sets of the original benchmark absent from the shared data copy (its README)."""


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    diff = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64).reshape(-1)
    return float(np.mean(diff**2))


def _makers(classification: bool, seed: int, rf_trees: int) -> dict[str, Callable[..., Any]]:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    import rfmdist

    rfm_cls = rfmdist.RFMClassifier if classification else rfmdist.RFMRegressor
    rf_cls = RandomForestClassifier if classification else RandomForestRegressor
    hgb_cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor

    def rfm(*, reg: float, diag: bool, iters: int) -> Any:
        return rfm_cls(
            kernel="laplace",
            bandwidth=common.BANDWIDTH,
            reg=reg,
            iters=iters,
            diag=diag,
            standardize=False,
            random_state=seed,
            dtype="float64",
        )

    def rf(**params: Any) -> Any:
        return rf_cls(n_estimators=rf_trees, n_jobs=1, random_state=seed, **params)

    def hgb(**params: Any) -> Any:
        return hgb_cls(early_stopping=False, random_state=seed, **params)

    return {"rfm": rfm, "random_forest": rf, "hist_gb": hgb}


def evaluate_grinsztajn_set(
    name: str,
    *,
    root: str,
    seed: int = 0,
    max_train: int = MAX_TRAIN,
    rf_trees: int = common.RF_N_ESTIMATORS,
) -> list[dict[str, Any]]:
    """Run every method on one set; never raises (a failure becomes the row's ``error``).

    Parameters
    ----------
    name : str
        The set, e.g. ``"reg_num/abalone"``.
    root : str
        The data root.
    seed : int, default 0
        Seed of the split and ``random_state`` of every method.
    max_train : int, default 10_000
        Cap on the training rows.
    rf_trees : int, default 300
        Trees of the random forest.

    Returns
    -------
    list of dict
        One row per method with the keys of ``CSV_COLUMNS``.
    """
    try:
        ds = load_grinsztajn(name, root)
        train, val, test = split_grinsztajn(ds.n, seed=seed, max_train=max_train)
    except Exception as err:
        logger.exception("%s: loading failed", name)
        return [
            {"dataset": name, "method": m, "error": common.error_text(err), "seconds": 0.0}
            for m in METHODS
        ]
    classification = ds.task == "classification"
    X, _, _ = standardize(ds.X, train)
    y = ds.y if classification else standardize_target(ds.y, train)[0]
    base = {
        "dataset": ds.name,
        "task": ds.task,
        "n": ds.n,
        "d": ds.d,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "val_metric": "accuracy" if classification else "mse",
        "test_metric": "accuracy" if classification else "r2",
    }
    X_tr, y_tr, X_va, y_va = X[train], y[train], X[val], y[val]
    X_te, y_te = X[test], y[test]
    makers = _makers(classification, seed, rf_trees)
    rows: list[dict[str, Any]] = []

    def row(
        method: str,
        params: Any,
        val_score: float,
        test_score: float,
        seconds: float,
        error: str = "",
    ) -> dict[str, Any]:
        return {
            **base,
            "method": method,
            "chosen_params": json.dumps(params, sort_keys=True) if params is not None else "",
            "val_score": val_score,
            "test_score": test_score,
            "seconds": round(seconds, 3),
            "error": error,
        }

    try:
        sel = common.select_rfm(
            makers["rfm"],
            X_tr,
            y_tr,
            X_va,
            y_va,
            higher_is_better=classification,
            keep_estimator=True,
        )
    except Exception as err:
        logger.error("%s: RFM selection failed:\n%s", name, traceback.format_exc())
        rows += [row(m, None, np.nan, np.nan, 0.0, common.error_text(err)) for m in METHODS[:2]]
    else:
        for method, choice, sel_seconds in (
            ("rfm", sel.rfm, sel.seconds),
            ("laplace", sel.laplace, sel.laplace_seconds),
        ):
            start = time.perf_counter()
            try:
                est = sel.rfm_estimator if method == "rfm" else None
                if est is None or getattr(est, "best_iter_", None) != choice.iters:
                    est = makers["rfm"](reg=choice.reg, diag=choice.diag, iters=choice.iters)
                    est.fit(X_tr, y_tr)
                score = float(est.score(X_te, y_te))
            except Exception as err:
                logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
                rows.append(
                    row(
                        method,
                        choice.params(),
                        choice.val_score,
                        np.nan,
                        0.0,
                        common.error_text(err),
                    )
                )
                continue
            seconds = sel_seconds + time.perf_counter() - start
            rows.append(row(method, choice.params(), choice.val_score, score, seconds))
        sel.rfm_estimator = None

    grids = {"random_forest": common.RF_GRID, "hist_gb": common.HGB_GRID}
    for method, grid in grids.items():
        start = time.perf_counter()
        try:
            params, val_score, est = common.select_grid(
                makers[method],
                grid,
                X_tr,
                y_tr,
                X_va,
                y_va,
                _accuracy if classification else _mse,
                higher_is_better=classification,
            )
            score = float(est.score(X_te, y_te))
        except Exception as err:
            logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
            rows.append(row(method, None, np.nan, np.nan, 0.0, common.error_text(err)))
            continue
        rows.append(row(method, params, val_score, score, time.perf_counter() - start))
    for r in rows:
        logger.info(
            "%s %-13s val %s %.4f test %s %.4f (%.1fs)%s",
            name,
            r["method"],
            base["val_metric"],
            r["val_score"],
            base["test_metric"],
            r["test_score"],
            r["seconds"],
            " ERROR " + r["error"] if r["error"] else "",
        )
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/grinsztajn.py",
        description="RFM vs Laplace, random forest and gradient boosting on the Grinsztajn sets.",
    )
    parser.add_argument(
        "--sets", default=None, help="comma-separated names, e.g. reg_num/abalone (default: all)"
    )
    parser.add_argument(
        "--max-n", type=int, default=None, help="skip sets with more rows (default: none)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="sets run in parallel (processes)")
    parser.add_argument("--out", default="grinsztajn_results.csv", help="per-set CSV")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder holding grinsztajn/ (default: $RFMDIST_DATA, else <repo>/../shared/data)",
    )
    parser.add_argument(
        "--results-md",
        default=str(common.DEFAULT_RESULTS_MD),
        help="markdown file whose grinsztajn section is (re)generated; '' to skip",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed and random_state")
    parser.add_argument("--max-train", type=int, default=MAX_TRAIN, help="cap on training rows")
    parser.add_argument(
        "--rf-trees", type=int, default=common.RF_N_ESTIMATORS, help="trees of the random forest"
    )
    common.add_threads_option(parser)
    parser.add_argument(
        "--note",
        action="append",
        default=None,
        help="a note printed under 'Notes' in the generated section (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    for opt in ("jobs", "max_train", "rf_trees"):
        if getattr(args, opt) < 1:
            parser.error(f"--{opt.replace('_', '-')}: expected an integer >= 1.")
    return args


def _order(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    frame = frame.copy()
    frame["_s"] = frame["dataset"].map({n: i for i, n in enumerate(names)})
    frame["_m"] = frame["method"].map({m: i for i, m in enumerate(METHODS)})
    return frame.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)


def _per_set_table(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[frame["error"].eq("")]
    wide = ok.pivot_table(index="dataset", columns="method", values="test_score")
    wide = wide.reindex(columns=list(METHODS))
    info = frame.groupby("dataset")[["task", "n", "d", "n_train"]].first()
    table = info.join(wide, how="left").reindex(frame["dataset"].drop_duplicates())
    table["task"] = table["task"].map({"classification": "clf (acc)", "regression": "reg (R²)"})
    for col in ("n", "d", "n_train"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for m in METHODS:
        table[m] = table[m].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    common.configure_logging(args.log_level)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    root = resolve_data_root(args.data_root)
    summary = read_grinsztajn_summary(root)
    names = list(summary.index)
    if args.sets:
        wanted = [s.strip().removesuffix(".gz").removesuffix(".csv") for s in args.sets.split(",")]
        wanted = [s for s in wanted if s]
        unknown = [s for s in wanted if s not in summary.index]
        if unknown:
            raise SystemExit(
                f"--sets: expected names from {root / 'grinsztajn' / 'SUMMARY.tsv'} such as "
                f"'reg_num/abalone', found unknown {unknown}. Fix: check the spelling."
            )
        names = wanted
    skipped = [n for n in names if args.max_n is not None and int(summary.loc[n, "n"]) > args.max_n]
    to_run = [n for n in names if n not in skipped]
    if skipped:
        logger.info("skipping %d sets with n > %d: %s", len(skipped), args.max_n, skipped)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def collect(new_rows: list[dict[str, Any]]) -> None:
        rows.extend(new_rows)
        _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names).to_csv(out, index=False)

    started = _dt.datetime.now(_dt.timezone.utc)
    start = time.perf_counter()
    common.run_sets(
        evaluate_grinsztajn_set,
        to_run,
        args.jobs,
        collect,
        threads=args.threads,
        root=str(root),
        seed=args.seed,
        max_train=args.max_train,
        rf_trees=args.rf_trees,
    )
    elapsed = time.perf_counter() - start
    frame = _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names)
    frame["error"] = frame["error"].fillna("")
    frame.to_csv(out, index=False)
    logger.info("wrote %s (%d rows) in %.1f s", out, len(frame), elapsed)
    finished = _dt.datetime.now(_dt.timezone.utc)
    command = shlex.join(["python", "benchmarks/grinsztajn.py", *argv_list])
    common.write_run_meta(
        out,
        {
            "runner": "grinsztajn",
            "command": command,
            "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "finished_utc": finished.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "elapsed_s": round(elapsed, 1),
            "machine": common.machine_info(),
            "max_n": args.max_n,
            "max_train": args.max_train,
            "seed": args.seed,
            "rf_trees": args.rf_trees,
            "jobs": args.jobs,
            "threads": args.threads,
            "sets_run": to_run,
            "skipped": {n: int(summary.loc[n, "n"]) for n in skipped},
        },
    )

    ok = frame[frame["error"].eq("")]
    tables = {}
    for task, label in (("classification", "accuracy"), ("regression", "R²")):
        part = ok[ok["task"].eq(task)]
        if not part.empty:
            tables[f"{task} (test {label})"] = common.summarize(part, "test_score", METHODS)
    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    print(f"\nGrinsztajn: {len(to_run)} sets run, {len(skipped)} skipped, {elapsed:.0f} s")
    for title, table in tables.items():
        print(f"\n{title}\n{common.markdown_table(table, '.4f')}")
    if skipped:
        print(f"Skipped (n > {args.max_n}): {', '.join(skipped)}")
    if not failed.empty:
        print(f"Failed: {len(failed)} (set, method) pairs; see the 'error' column of {out}")

    if args.results_md:
        now = finished.strftime("%Y-%m-%d %H:%M UTC")
        capped = int((frame.groupby("dataset")["n_train"].first() >= args.max_train).sum())
        cap_line = (
            f"Training cap: `--max-train {args.max_train}` (the documented cap is {MAX_TRAIN:,}); "
            f"{capped} of {frame['dataset'].nunique()} sets hit it."
        )
        parts = [
            "## Grinsztajn et al. (NeurIPS 2022) tabular benchmark",
            "",
            f"Generated by `benchmarks/grinsztajn.py` on {now} in {elapsed:.0f} s "
            f"({elapsed / 60:.1f} min) for {len(to_run)} sets; do not edit by hand.",
            "",
            f"Command: `{command}`",
            "",
            cap_line,
            "",
            common.machine_info(),
            "",
            f"Protocol: one seeded split per set (seed {args.seed}; train 70 % capped at "
            f"{args.max_train}, validation / test 30 / 70 % of the rest), features and "
            "regression targets z-scored on the training rows; hyper-parameters chosen on "
            "validation (accuracy, or MSE for regression); test accuracy (classification) or R² "
            "(regression). RFM: Laplace kernel, "
            f"L = {common.BANDWIDTH:g}, reg in {list(common.REGS)}, diag in {{False, True}}, "
            f"rounds 0..{common.MAX_ROUNDS}; laplace = RFM round 0; random_forest: "
            f"{args.rf_trees} trees, max_features in {{sqrt, 0.5, 1.0}}; hist_gb: learning_rate "
            "in {0.03, 0.1, 0.3} x max_leaf_nodes in {15, 63}.",
            "",
            "Wins: every method reaching a set's best score counts a win (ties count for each). "
            "Rank 1 = best; ties share the average rank. Only sets where every method ran.",
            "",
        ]
        for title, table in tables.items():
            parts += [f"### Summary: {title}", "", common.markdown_table(table, ".4f"), ""]
        if args.note:
            parts += ["### Notes", "", *[f"- {n}" for n in args.note], ""]
        parts += [
            "### Test score per set",
            "",
            common.markdown_table(_per_set_table(frame)) if not frame.empty else "(no set run)",
            "",
        ]
        if skipped:
            parts += [f"Skipped (n > {args.max_n}): {', '.join(skipped)}", ""]
        parts += [
            f"Not in the shared data copy ({len(MISSING_FROM_COPY)} sets of the original "
            f"benchmark): {', '.join(MISSING_FROM_COPY)}.",
            "",
        ]
        if not failed.empty:
            parts += ["Failed:", "", common.markdown_table(failed.set_index("dataset")), ""]
        common.write_results_section(Path(args.results_md), SECTION, "\n".join(parts))
        logger.info("updated the %s section of %s", SECTION, args.results_md)
    return 0 if failed.empty else 1


if __name__ == "__main__":
    sys.exit(main())
