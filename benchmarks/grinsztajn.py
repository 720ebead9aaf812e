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
(command, dates, wall time, machine; rewritten after every set with ``"stopped"`` until the
run ends, as in benchmarks/uci121.py).

``--merge a.csv[,b.csv]`` runs nothing: it regenerates the section from the CSVs (and their
``.meta.json``) of earlier runs, with the table of runs, their total wall time and every set of
the data copy without results with the reason (skipped by ``--max-n``, run stopped before it, or
not requested).

Usage::

    python benchmarks/grinsztajn.py [--sets reg_num/abalone,clf_num/credit] [--max-n N]
        [--jobs J] [--out results.csv] [--data-root DIR] [--results-md benchmarks/RESULTS.md]
        [--seed 0] [--max-train 10000] [--rf-trees 300] [--threads 1] [--note TEXT]
    python benchmarks/grinsztajn.py --merge a.csv[,b.csv] [--results-md ...] [--note TEXT]

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


def _makers(
    classification: bool, seed: int, rf_trees: int, max_centers: int | None = None
) -> dict[str, Callable[..., Any]]:
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
            centers=common.rfm_centers(max_centers),
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
    max_centers: int | None = None,
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
    max_centers : int, optional
        Cap on RFM's Nyström centers (None: the estimator's 'auto').

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
    makers = _makers(classification, seed, rf_trees, max_centers)
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

    start = time.perf_counter()
    try:  # the estimators' defaults, on the features and targets as they are in the file
        import rfmdist

        cls = rfmdist.RFMClassifier if classification else rfmdist.RFMRegressor
        est = cls(random_state=seed).fit(ds.X[train], ds.y[train], eval_set=(ds.X[val], ds.y[val]))
        score = float(est.score(ds.X[test], ds.y[test]))
    except Exception as err:
        logger.error("%s: %s failed:\n%s", name, common.DEFAULTS_METHOD, traceback.format_exc())
        rows.append(row(common.DEFAULTS_METHOD, None, np.nan, np.nan, 0.0, common.error_text(err)))
    else:
        val_score = est.history_[est.best_iter_]["val_score"]
        rows.append(row(common.DEFAULTS_METHOD, {}, val_score, score, time.perf_counter() - start))

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
    common.add_max_centers_option(parser)
    common.add_threads_option(parser)
    parser.add_argument(
        "--merge",
        default=None,
        help="comma-separated CSVs of earlier runs: run nothing, regenerate the section from them",
    )
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
    wide = wide.reindex(columns=common.shown_methods(wide))
    info = frame.groupby("dataset")[["task", "n", "d", "n_train"]].first()
    table = info.join(wide, how="left").reindex(frame["dataset"].drop_duplicates())
    table["task"] = table["task"].map({"classification": "clf (acc)", "regression": "reg (R²)"})
    for col in ("n", "d", "n_train"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for m in common.shown_methods(wide):
        table[m] = table[m].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    return table


def _summary_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    ok = frame[frame["error"].eq("")]
    tables = {}
    for task, label in (("classification", "accuracy"), ("regression", "R²")):
        part = ok[ok["task"].eq(task)]
        if not part.empty:
            tables[f"{task} (test {label})"] = common.summarize(part, "test_score", METHODS)
    return tables


def build_section(
    frame: pd.DataFrame,
    runs: Sequence[dict[str, Any]],
    *,
    header: Sequence[str],
    not_run: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """The markdown of the grinsztajn section (shared by a run and ``--merge``).

    Parameters
    ----------
    frame : pandas.DataFrame
        Result rows (``CSV_COLUMNS``), possibly from several runs.
    runs : sequence of dict
        Run metadata (``max_train``, ``seed``, ``rf_trees``, ``machine``).
    header : sequence of str
        Title, generation line and command(s).
    not_run : sequence of (name, reason)
        Sets of the data copy without results.
    notes : sequence of str
        ``--note`` lines.
    """

    def values(key: str, default: Any) -> str:
        found = list(dict.fromkeys(r[key] for r in runs if r.get(key) is not None))
        return "/".join(str(v) for v in found) if found else str(default)

    caps = [int(r["max_train"]) for r in runs if r.get("max_train")] or [MAX_TRAIN]
    centers = values("max_centers", "auto (exact up to 20,000 rows)")
    n_train = frame.groupby("dataset")["n_train"].first()
    capped = int((n_train >= min(caps)).sum()) if len(n_train) else 0
    machines = list(dict.fromkeys(r["machine"] for r in runs if r.get("machine")))
    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    parts = [
        *header,
        "",
        f"Training cap: `--max-train {values('max_train', MAX_TRAIN)}` (the documented cap is "
        f"{MAX_TRAIN:,}); {capped} of {frame['dataset'].nunique()} sets hit it.",
        "",
        *(machines[:1] or [common.machine_info()]),
        "",
        f"Protocol: one seeded split per set (seed {values('seed', 0)}; train 70 % capped at "
        f"{values('max_train', MAX_TRAIN)}, validation / test 30 / 70 % of the rest), features "
        "and regression targets z-scored on the training rows; hyper-parameters chosen on "
        "validation (accuracy, or MSE for regression); test accuracy (classification) or R² "
        "(regression). RFM: Laplace kernel, "
        f"L = {common.BANDWIDTH:g}, reg in {list(common.REGS)}, diag in {{False, True}}, "
        f"rounds 0..{common.MAX_ROUNDS}, centers {centers}; laplace = RFM round 0; random_forest: "
        f"{values('rf_trees', common.RF_N_ESTIMATORS)} trees, max_features in "
        "{sqrt, 0.5, 1.0}; hist_gb: learning_rate in {0.03, 0.1, 0.3} x max_leaf_nodes in "
        "{15, 63}.",
        "",
        "Wins: every method reaching a set's best score counts a win (ties count for each). "
        "Rank 1 = best; ties share the average rank. Only sets where every method ran.",
        "",
    ]
    for title, table in _summary_tables(frame).items():
        parts += [f"### Summary: {title}", "", common.markdown_table(table, ".4f"), ""]
    ok = frame[frame["error"].eq("")]
    for task in ("classification", "regression"):
        line = common.defaults_line(ok[ok["task"].eq(task)], "test_score")
        if line:
            parts += [f"{task.capitalize()}: {line}", ""]
    if notes:
        parts += ["### Notes", "", *[f"- {n}" for n in notes], ""]
    parts += [
        "### Test score per set",
        "",
        common.markdown_table(_per_set_table(frame)) if not frame.empty else "(no set run)",
        "",
    ]
    if not_run:
        table = pd.DataFrame(not_run, columns=["dataset", "reason"]).set_index("dataset")
        parts += [f"### Sets not run ({len(not_run)})", "", common.markdown_table(table), ""]
    parts += [
        f"Not in the shared data copy ({len(MISSING_FROM_COPY)} sets of the original "
        f"benchmark): {', '.join(MISSING_FROM_COPY)}.",
        "",
    ]
    if not failed.empty:
        parts += ["Failed:", "", common.markdown_table(failed.set_index("dataset")), ""]
    return "\n".join(parts)


def _print_summary(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}")
    for name, table in _summary_tables(frame).items():
        print(f"\n{name}\n{common.markdown_table(table, '.4f')}")


def merge_results(args: argparse.Namespace, argv_list: Sequence[str]) -> int:
    """``--merge``: regenerate the section from the CSVs (and ``.meta.json``) of earlier runs."""
    root = resolve_data_root(args.data_root)
    names = list(read_grinsztajn_summary(root).index)
    frames, runs = [], []
    for k, path in enumerate(Path(p.strip()) for p in args.merge.split(",") if p.strip()):
        meta = common.read_run_meta(path) or {}
        if path.exists():
            part = pd.read_csv(
                path,
                keep_default_na=False,
                na_values=[""],
                dtype={"chosen_params": object, "error": object},
            )
            part["error"] = part["error"].fillna("").astype(str)
        elif meta:
            part = pd.DataFrame(columns=list(CSV_COLUMNS))
        else:
            raise SystemExit(f"--merge: expected a CSV at {path}, found none. Fix: check the path.")
        if frames:  # a set in several CSVs: the later CSV wins
            frames = [f[~f["dataset"].isin(set(part["dataset"]))] for f in frames]
        frames.append(part)
        runs.append({**meta, "run": k + 1, "csv": str(path), "sets": part["dataset"].nunique()})
    frame = _order(pd.concat(frames, ignore_index=True), names)
    done = set(frame["dataset"])
    not_run = []
    for name in names:
        if name in done:
            continue
        reason = "not requested by any merged run"
        for r in runs:
            if name in (r.get("skipped") or {}):
                reason = f"n > --max-n {r.get('max_n')} in run {r['run']}"
            elif name in (r.get("sets_run") or []):
                why = f": {r['stopped']}" if r.get("stopped") else ""
                reason = f"run {r['run']} stopped before reaching it{why}"
        not_run.append((name, reason))
    total = sum(float(r.get("elapsed_s") or 0.0) for r in runs)
    run_table = pd.DataFrame(
        [
            {
                "run": r["run"],
                "command": f"`{r.get('command', '(not recorded)')}`",
                "finished": r.get("finished_utc") or r.get("stopped", ""),
                "wall time": f"{float(r.get('elapsed_s') or 0):.0f} s",
                "sets": r["sets"],
                "csv": r["csv"],
            }
            for r in runs
        ]
    ).set_index("run")
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "## Grinsztajn et al. (NeurIPS 2022) tabular benchmark",
        "",
        f"Generated by `{shlex.join(['python', 'benchmarks/grinsztajn.py', *argv_list])}` on "
        f"{now} from {len(runs)} run(s); do not edit by hand.",
        "",
        f"Total wall time of the runs: {total:.0f} s ({total / 60:.1f} min); "
        f"{len(done)} sets with results, {len(not_run)} not run.",
        "",
        common.markdown_table(run_table),
    ]
    body = build_section(frame, runs, header=header, not_run=not_run, notes=args.note or ())
    _print_summary(f"Grinsztajn merged: {len(done)} sets, total {total:.0f} s", frame)
    if args.results_md:
        common.write_results_section(Path(args.results_md), SECTION, body)
        logger.info("updated the %s section of %s", SECTION, args.results_md)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or merge runs); see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    common.configure_logging(args.log_level)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.merge:
        return merge_results(args, argv_list)
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
    command = shlex.join(["python", "benchmarks/grinsztajn.py", *argv_list])
    started = _dt.datetime.now(_dt.UTC)
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "runner": "grinsztajn",
        "command": command,
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": common.machine_info(),
        "max_n": args.max_n,
        "max_train": args.max_train,
        "seed": args.seed,
        "rf_trees": args.rf_trees,
        "max_centers": args.max_centers,
        "jobs": args.jobs,
        "threads": args.threads,
        "sets_run": to_run,
        "skipped": {n: int(summary.loc[n, "n"]) for n in skipped},
    }

    def progress_meta() -> None:
        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        meta["stopped"] = (
            f"interrupted (the last progress record is {now}, "
            f"{len(rows) // len(METHODS)} sets done)"
        )
        meta["elapsed_s"] = round(time.perf_counter() - start, 1)
        common.write_run_meta(out, meta)

    def collect(new_rows: list[dict[str, Any]]) -> None:
        rows.extend(new_rows)
        _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names).to_csv(out, index=False)
        progress_meta()

    progress_meta()
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
        max_centers=args.max_centers,
    )
    elapsed = time.perf_counter() - start
    frame = _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names)
    frame["error"] = frame["error"].fillna("")
    frame.to_csv(out, index=False)
    logger.info("wrote %s (%d rows) in %.1f s", out, len(frame), elapsed)
    finished = _dt.datetime.now(_dt.UTC)
    meta.pop("stopped", None)
    meta["finished_utc"] = finished.strftime("%Y-%m-%d %H:%M:%S UTC")
    meta["elapsed_s"] = round(elapsed, 1)
    common.write_run_meta(out, meta)

    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    _print_summary(
        f"Grinsztajn: {len(to_run)} sets run, {len(skipped)} skipped, {elapsed:.0f} s", frame
    )
    if skipped:
        print(f"Skipped (n > {args.max_n}): {', '.join(skipped)}")
    if not failed.empty:
        print(f"Failed: {len(failed)} (set, method) pairs; see the 'error' column of {out}")
    if args.results_md:
        header = [
            "## Grinsztajn et al. (NeurIPS 2022) tabular benchmark",
            "",
            f"Generated by `benchmarks/grinsztajn.py` on {finished.strftime('%Y-%m-%d %H:%M UTC')}"
            f" in {elapsed:.0f} s ({elapsed / 60:.1f} min) for {len(to_run)} sets; do not edit "
            "by hand.",
            "",
            f"Command: `{command}`",
        ]
        not_run = [(n, f"n = {int(summary.loc[n, 'n'])} > --max-n {args.max_n}") for n in skipped]
        body = build_section(frame, [meta], header=header, not_run=not_run, notes=args.note or ())
        common.write_results_section(Path(args.results_md), SECTION, body)
        logger.info("updated the %s section of %s", SECTION, args.results_md)
    return 0 if failed.empty else 1


if __name__ == "__main__":
    sys.exit(main())
