"""UCI-121 benchmark: RFM against a Laplace kernel, a random forest and gradient boosting.

The protocol of the RFM paper (arXiv:2212.13881) on the 121 UCI sets of Fernández-Delgado et al.
(120 here: miniboone is missing), with the files and splits described in
``<data root>/README.md``:

1. Hyper-parameters are chosen on the ``conxuntos.dat`` train / validation split only.
2. The reported accuracy is the mean test accuracy over the 4 ``conxuntos_kfold.dat`` folds, each
   fold refitted on its own training rows with the chosen hyper-parameters.

Methods
-------
``rfm``
    :class:`rfmdist.RFMClassifier`, Laplace kernel, bandwidth L = 10, float64,
    ``standardize=False`` (the files are already z-scored, as in the paper's code), grid
    reg in {10, 1, 0.1, 1e-2, 1e-3} x diag in {False, True} x rounds 0..5. One fit per (reg, diag)
    with ``iters=5`` and ``eval_set=(X_val, y_val)`` gives the validation accuracy of every round
    (``history_``); the best (reg, diag, round) is refitted on each fold with ``iters=round``.
``laplace``
    The same Laplace kernel machine without feature learning: the best reg at round 0 (M = I) read
    from the same selection fits (diag=False), evaluated with ``iters=0``.
``random_forest``
    ``RandomForestClassifier(n_estimators=300, n_jobs=1)`` (``--rf-trees`` changes the 300),
    max_features in {sqrt, 0.5, 1.0}.
``hist_gb``
    ``HistGradientBoostingClassifier(early_stopping=False)``, learning_rate in {0.03, 0.1, 0.3}
    x max_leaf_nodes in {15, 63}.

Ties on validation go to the first candidate in grid order (for RFM: larger reg, then
diag=False, then fewer rounds). All methods see the same splits and ``--seed``.

Outputs
-------
- a CSV (``--out``), one row per (set, method): dataset, n (rows of the main file), d,
  n_classes, method, chosen_params (JSON), val_acc, test_acc_mean, test_acc_folds (JSON list of the
  4 fold accuracies), seconds (wall time of the method on the set: its selection fits plus its 4
  fold fits; for ``laplace`` the round-0 share of the shared selection fits), error (empty if
  the method ran). It is rewritten after every set, so an interrupted run keeps what it finished.
- a summary table printed at the end: per method, the number of sets, the mean test accuracy,
  the number of wins and the mean rank, over the sets where every method ran. A win is counted for
  EVERY method that reaches the best accuracy of a set (ties count for each, so wins may sum to
  more than the number of sets); ranks are 1 = best, ties share the average rank.
- the section between ``<!-- uci121:begin -->`` and ``<!-- uci121:end -->`` of ``--results-md``
  (created or replaced; the rest of the file is left untouched), with the machine, the command,
  the date, the summary, the per-set table and the skipped / failed sets.

- ``<out>.meta.json`` next to the CSV: the run's command, start / end (UTC), wall time, machine,
  ``--max-n`` and the sets run and skipped (read back by ``--merge``). Rewritten after every set
  with ``"stopped"`` set and the wall time so far, so that an interrupted run is reported as such;
  the final write drops ``"stopped"``.

``--max-n N`` skips the sets with more than N rows in their main file (listed in the outputs).

``--merge a.csv,b.csv`` runs nothing: it regenerates the section (and prints the summary) from the
CSVs of earlier runs (for example a ``--max-n 5000`` run and a run of larger sets), with one
summary over all of them, the table of runs (commands, dates, wall times from the ``.meta.json``
files) and their total wall time, and every set without results with the reason (skipped by
``--max-n`` in run k; in run k's list but not reached because the run was stopped, as recorded
by a ``"stopped"`` entry of its ``.meta.json``; not requested; or missing from the data copy:
miniboone). A set present in several CSVs keeps the rows of the last. ``--note TEXT`` (repeatable) adds a line under "Notes".

``--jobs J`` runs J sets at a time in worker processes, each limited to ``--threads`` (default 1)
BLAS / OpenMP threads with threadpoolctl (also applied in this process when J = 1; 0 leaves the
libraries' defaults).

Usage::

    python benchmarks/uci121.py [--sets a,b,c] [--max-n N] [--jobs J] [--out results.csv]
        [--data-root DIR] [--results-md benchmarks/RESULTS.md] [--seed 0] [--rf-trees 300]
        [--threads 1] [--note TEXT]
    python benchmarks/uci121.py --merge out1.csv,out2.csv [--results-md ...] [--note TEXT]

The exit status is 0 when every method ran on every set, 1 when some failed (their rows carry
the error; the outputs are written anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("rfmdist") is None:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO))

from rfmdist.datasets.uci121 import (  # noqa: E402
    load_uci121,
    read_uci121_meta,
    read_uci121_summary,
    resolve_data_root,
)

logger = logging.getLogger("benchmarks.uci121")

REGS: tuple[float, ...] = (10.0, 1.0, 0.1, 1e-2, 1e-3)
"""Ridge regularisations of the RFM / Laplace grid."""
DIAGS: tuple[bool, ...] = (False, True)
"""Full or diagonal M."""
MAX_ROUNDS = 5
"""RFM rounds 0..MAX_ROUNDS are scored on validation (round 0 = Laplace kernel, M = I)."""
BANDWIDTH = 10.0
"""Laplace kernel bandwidth L."""
RF_N_ESTIMATORS = 300
RF_GRID: tuple[dict[str, Any], ...] = tuple({"max_features": m} for m in ("sqrt", 0.5, 1.0))
HGB_GRID: tuple[dict[str, Any], ...] = tuple(
    {"learning_rate": lr, "max_leaf_nodes": leaves}
    for lr in (0.03, 0.1, 0.3)
    for leaves in (15, 63)
)
METHODS: tuple[str, ...] = ("rfm", "laplace", "random_forest", "hist_gb")
# The row of the estimators' defaults (no hyper-parameter grid, no validation split given): kept out
# of METHODS so that sets run before it existed keep their summary; reported beside it.
DEFAULTS_METHOD = "rfm_defaults"
CSV_COLUMNS: tuple[str, ...] = (
    "dataset",
    "n",
    "d",
    "n_classes",
    "method",
    "chosen_params",
    "val_acc",
    "test_acc_mean",
    "test_acc_folds",
    "seconds",
    "error",
)
DEFAULT_RESULTS_MD = _REPO / "benchmarks" / "RESULTS.md"
SECTION = "uci121"


# --------------------------------------------------------------------------------------------
# Shared machinery (benchmarks/grinsztajn.py imports these)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RFMChoice:
    """A point of the RFM grid and its validation score.

    Attributes
    ----------
    reg : float
        Ridge regularisation.
    diag : bool
        Diagonal M.
    iters : int
        The round (0 = Laplace kernel with M = I).
    val_score : float
        The validation score of that round (``history_[round]["val_score"]``).
    """

    reg: float
    diag: bool
    iters: int
    val_score: float

    def params(self) -> dict[str, Any]:
        """The chosen hyper-parameters as a JSON-able dict."""
        return {"reg": self.reg, "diag": self.diag, "iters": self.iters}


@dataclass
class RFMSelection:
    """The outcome of the RFM grid search on the validation split.

    Attributes
    ----------
    rfm : RFMChoice
        The best (reg, diag, round) over the whole grid.
    laplace : RFMChoice
        The best reg at round 0 (diag=False runs; round 0 does not depend on diag).
    seconds : float
        Wall time of all the selection fits.
    laplace_seconds : float
        The round-0 share of the diag=False fits (sum of their ``history_[0]["seconds"]``).
    rfm_estimator : Any
        The selection fit that produced ``rfm`` (only if requested, else None).
    """

    rfm: RFMChoice
    laplace: RFMChoice
    seconds: float
    laplace_seconds: float
    rfm_estimator: Any = None


def _better(value: float, best: RFMChoice | float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    ref = best.val_score if isinstance(best, RFMChoice) else best
    return value > ref if higher_is_better else value < ref


def select_rfm(
    make: Callable[..., Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    higher_is_better: bool,
    keep_estimator: bool = False,
) -> RFMSelection:
    """Search the RFM grid on a train / validation split.

    Parameters
    ----------
    make : callable
        ``make(reg=..., diag=..., iters=...)`` returns an unfitted rfmdist estimator.
    X_train, y_train : numpy.ndarray of shape (n_train, d), (n_train,)
        Training rows.
    X_val, y_val : numpy.ndarray of shape (n_val, d), (n_val,)
        Validation rows.
    higher_is_better : bool
        True for accuracy, False for MSE (the ``val_score`` of ``history_``).
    keep_estimator : bool, default False
        Keep the selection fit of the best RFM choice (to reuse it instead of refitting).

    Returns
    -------
    RFMSelection
        The RFM and Laplace choices. Ties go to the first in grid order (``REGS`` order, then
        diag False before True, then fewer rounds).
    """
    best: RFMChoice | None = None
    best_lap: RFMChoice | None = None
    best_est = None
    seconds = 0.0
    lap_seconds = 0.0
    for reg in REGS:
        for diag in DIAGS:
            est = make(reg=reg, diag=diag, iters=MAX_ROUNDS)
            start = time.perf_counter()
            est.fit(X_train, y_train, eval_set=(X_val, y_val))
            seconds += time.perf_counter() - start
            for record in est.history_:
                value = record.get("val_score")
                if value is None or not math.isfinite(float(value)):
                    continue
                value = float(value)
                rnd = int(record["round"])
                if _better(value, best, higher_is_better):
                    best = RFMChoice(reg, diag, rnd, value)
                    best_est = est if keep_estimator else None
                if rnd == 0 and not diag:
                    lap_seconds += float(record.get("seconds", 0.0) or 0.0)
                    if _better(value, best_lap, higher_is_better):
                        best_lap = RFMChoice(reg, False, 0, value)
            logger.debug(
                "reg=%g diag=%s: val %s",
                reg,
                diag,
                [r.get("val_score") for r in est.history_],
            )
    if best is None or best_lap is None:
        raise RuntimeError(
            "RFM selection: expected a finite validation score in history_ for at least one "
            "round, found none (did fit() ignore eval_set, or did every fit diverge?). "
            "Fix: check the estimator's history_ entries."
        )
    return RFMSelection(best, best_lap, seconds, lap_seconds, best_est)


def select_grid(
    make: Callable[..., Any],
    grid: Iterable[dict[str, Any]],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], float],
    *,
    higher_is_better: bool,
) -> tuple[dict[str, Any], float, Any]:
    """Fit ``make(**params)`` for every point of ``grid`` and keep the best on validation.

    Parameters
    ----------
    make : callable
        ``make(**params)`` returns an unfitted scikit-learn estimator.
    grid : iterable of dict
        The candidate parameters, in tie-breaking order (the first best wins).
    X_train, y_train, X_val, y_val : numpy.ndarray
        The split, shapes (n_train, d), (n_train,), (n_val, d), (n_val,).
    score : callable
        ``score(y_true, y_pred)``.
    higher_is_better : bool
        Direction of ``score``.

    Returns
    -------
    params : dict
        The best parameters.
    val_score : float
        Their validation score.
    estimator : object
        The fitted best estimator.
    """
    best: tuple[dict[str, Any], float, Any] | None = None
    for params in grid:
        est = make(**params).fit(X_train, y_train)
        value = float(score(y_val, est.predict(X_val)))
        if best is None or _better(value, best[1], higher_is_better):
            best = (dict(params), value, est)
    if best is None:
        raise ValueError("select_grid: expected a non-empty grid, found none. Fix: pass a grid.")
    return best


def limit_threads_in_worker(threads: int = 1) -> None:
    """Worker-process initializer: ``threads`` BLAS / OpenMP threads per process (threadpoolctl).

    Parameters
    ----------
    threads : int, default 1
        Threads per pool; 0 leaves the libraries' defaults.
    """
    if threads <= 0:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    global _THREAD_LIMITS
    _THREAD_LIMITS = threadpool_limits(limits=threads)


_THREAD_LIMITS: Any = None


def run_sets(
    func: Callable[..., list[dict[str, Any]]],
    names: Sequence[str],
    jobs: int,
    on_result: Callable[[list[dict[str, Any]]], None],
    threads: int = 1,
    **kwargs: Any,
) -> None:
    """Run ``func(name, **kwargs)`` for every name, in this process or in ``jobs`` workers.

    Parameters
    ----------
    func : callable
        Per-set evaluation returning result rows; it must not raise (it records errors in rows).
    names : sequence of str
        The sets.
    jobs : int
        1: sequentially in this process; more: a process pool (fork where available).
    on_result : callable
        Called in this process with each set's rows, as sets finish.
    threads : int, default 1
        BLAS / OpenMP threads of each process running sets (this one when ``jobs`` is 1), set
        with threadpoolctl; 0 leaves the libraries' defaults. One thread avoids
        oversubscription, which slows scikit-learn's OpenMP code by orders of magnitude on
        small sets when the cores are busy.
    **kwargs
        Passed to ``func``.
    """
    if jobs <= 1 or len(names) <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads) if threads > 0 else contextlib.nullcontext():
            for i, name in enumerate(names, 1):
                logger.info("[%d/%d] %s", i, len(names), name)
                on_result(func(name, **kwargs))
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=limit_threads_in_worker,
        initargs=(threads,),
    ) as pool:
        futures = {pool.submit(func, name, **kwargs): name for name in names}
        for i, future in enumerate(as_completed(futures), 1):
            logger.info("[%d/%d] done %s", i, len(names), futures[future])
            on_result(future.result())


def add_max_centers_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-centers`` (RFM's Nyström centers, default: the estimator's 'auto')."""
    parser.add_argument(
        "--max-centers",
        type=int,
        default=None,
        help="cap RFM's Nystrom centers at this many rows (default: the estimator's 'auto')",
    )


def rfm_centers(max_centers: int | None) -> Any:
    """RFM's ``centers`` for a ``--max-centers`` value (None: 'auto')."""
    return "auto" if max_centers is None else max_centers


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` (BLAS / OpenMP threads per process, default 1, 0 = library default)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads per process running sets (default 1; 0: library default)",
    )


def summarize(
    table: pd.DataFrame, score: str, methods: Sequence[str], *, higher_is_better: bool = True
) -> pd.DataFrame:
    """Mean score, wins and mean rank per method over the sets where every method has a score.

    Parameters
    ----------
    table : pandas.DataFrame
        Long format, columns ``dataset``, ``method`` and ``score``.
    score : str
        The score column.
    methods : sequence of str
        The methods, in output order.
    higher_is_better : bool, default True
        Direction of the score.

    Returns
    -------
    pandas.DataFrame
        Indexed by method: ``sets`` (number compared), ``mean`` (mean score), ``wins`` (sets where
        the method reaches the best score; a tie counts as a win for each tied method) and
        ``mean_rank`` (1 = best, ties share the average rank).
    """
    wide = table.pivot_table(index="dataset", columns="method", values=score, aggfunc="first")
    wide = wide.reindex(columns=list(methods)).dropna(how="any")
    if wide.empty:
        return pd.DataFrame(
            {"sets": 0, "mean": np.nan, "wins": 0, "mean_rank": np.nan}, index=list(methods)
        )
    best = wide.max(axis=1) if higher_is_better else wide.min(axis=1)
    wins = wide.sub(best, axis=0).abs().le(1e-12).sum(axis=0)
    ranks = wide.rank(axis=1, ascending=not higher_is_better, method="average")
    out = pd.DataFrame(
        {
            "sets": len(wide),
            "mean": wide.mean(axis=0),
            "wins": wins.astype(int),
            "mean_rank": ranks.mean(axis=0),
        }
    )
    out.index.name = "method"
    return out


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """Render ``frame`` (with its index as the first column) as a GitHub markdown table."""
    frame = frame.reset_index()

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if math.isnan(value) else format(float(value), floatfmt)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def machine_info() -> str:
    """One markdown bullet list describing the machine and the software versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for mod in ("numpy", "scipy", "sklearn", "dask", "rfmdist"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            versions.append(f"{mod} ?")
    return "\n".join(
        [
            f"- Machine: {platform.platform()}, {platform.machine()}, {cpu or 'unknown CPU'}",
            f"- CPUs (os.cpu_count): {os.cpu_count()}",
            f"- Python {platform.python_version()}; " + ", ".join(versions),
        ]
    )


def write_results_section(path: Path, section: str, body: str) -> None:
    """Create or replace the ``<!-- {section}:begin -->`` ... ``<!-- {section}:end -->`` block.

    Parameters
    ----------
    path : pathlib.Path
        The markdown file (created with a title if missing; other sections are kept verbatim).
    section : str
        The marker name, e.g. ``"uci121"``.
    body : str
        The generated markdown between the markers.
    """
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    i, j = text.find(begin), text.find(end)
    if (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise ValueError(
            f"{path}: expected the markers {begin} and {end} together and in order, found "
            f"begin at {i}, end at {j}. Fix: repair or delete the broken markers by hand."
        )
    if i >= 0:
        text = text[:i] + block + text[j + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def error_text(err: BaseException) -> str:
    """A one-line description of an exception for the CSV."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:500]


def configure_logging(level: str) -> None:
    """Log to stderr with the process name (basicConfig: a no-op if the root logger has handlers).

    The per-round INFO lines of rfmdist are shown only at DEBUG.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=numeric, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("benchmarks").setLevel(numeric)
    logging.getLogger("rfmdist").setLevel(max(numeric, logging.WARNING))


# --------------------------------------------------------------------------------------------
# UCI-121
# --------------------------------------------------------------------------------------------


def _make_rfm(seed: int, max_centers: int | None = None) -> Callable[..., Any]:
    """Factory of the RFM classifiers; ``max_centers`` caps the Nyström centers (None: 'auto')."""
    import rfmdist

    centers = rfm_centers(max_centers)

    def make(*, reg: float, diag: bool, iters: int) -> Any:
        return rfmdist.RFMClassifier(
            centers=centers,
            kernel="laplace",
            bandwidth=BANDWIDTH,
            reg=reg,
            iters=iters,
            diag=diag,
            standardize=False,
            random_state=seed,
            dtype="float64",
        )

    return make


def _make_rf(seed: int, n_estimators: int = RF_N_ESTIMATORS) -> Callable[..., Any]:
    from sklearn.ensemble import RandomForestClassifier

    def make(**params: Any) -> Any:
        return RandomForestClassifier(
            n_estimators=n_estimators, n_jobs=1, random_state=seed, **params
        )

    return make


def _make_hgb(seed: int) -> Callable[..., Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    def make(**params: Any) -> Any:
        return HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **params)

    return make


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _fold_accuracies(make: Callable[[], Any], ds: Any) -> list[float]:
    accs = []
    for train, test in ds.folds:
        est = make().fit(ds.X[train], ds.y[train])
        accs.append(_accuracy(ds.y[test], est.predict(ds.X[test])))
    return accs


def _row(
    base: dict[str, Any],
    method: str,
    params: dict[str, Any] | None,
    val: float,
    folds: list[float] | None,
    seconds: float,
    error: str = "",
) -> dict[str, Any]:
    return {
        **base,
        "method": method,
        "chosen_params": json.dumps(params, sort_keys=True) if params is not None else "",
        "val_acc": val,
        "test_acc_mean": float(np.mean(folds)) if folds else np.nan,
        "test_acc_folds": json.dumps([round(a, 6) for a in folds]) if folds else "",
        "seconds": round(seconds, 3),
        "error": error,
    }


def evaluate_uci_set(
    name: str,
    *,
    root: str,
    seed: int = 0,
    rf_trees: int = RF_N_ESTIMATORS,
    max_centers: int | None = None,
) -> list[dict[str, Any]]:
    """Run every method on one UCI set; never raises (a failure becomes the row's ``error``).

    Parameters
    ----------
    name : str
        The set.
    root : str
        The data root.
    seed : int, default 0
        ``random_state`` of every method.
    rf_trees : int, default RF_N_ESTIMATORS
        Trees of the random forest.

    Returns
    -------
    list of dict
        One row per method with the keys of ``CSV_COLUMNS``.
    """
    try:
        ds = load_uci121(name, root)
    except Exception as err:
        logger.exception("%s: loading failed", name)
        base = {"dataset": name, "n": np.nan, "d": np.nan, "n_classes": np.nan}
        return [_row(base, m, None, np.nan, None, 0.0, error_text(err)) for m in METHODS]
    base = {"dataset": name, "n": ds.n, "d": ds.d, "n_classes": ds.n_classes}
    X_tr, y_tr = ds.X[ds.train_idx], ds.y[ds.train_idx]
    X_va, y_va = ds.X[ds.val_idx], ds.y[ds.val_idx]
    rows: list[dict[str, Any]] = []

    make_rfm = _make_rfm(seed, max_centers)
    try:
        sel = select_rfm(make_rfm, X_tr, y_tr, X_va, y_va, higher_is_better=True)
    except Exception as err:
        logger.error("%s: RFM selection failed:\n%s", name, traceback.format_exc())
        rows += [_row(base, m, None, np.nan, None, 0.0, error_text(err)) for m in METHODS[:2]]
    else:
        for method, choice, sel_seconds in (
            ("rfm", sel.rfm, sel.seconds),
            ("laplace", sel.laplace, sel.laplace_seconds),
        ):
            start = time.perf_counter()
            try:
                accs = _fold_accuracies(
                    lambda c=choice: make_rfm(reg=c.reg, diag=c.diag, iters=c.iters), ds
                )
            except Exception as err:
                logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
                rows.append(
                    _row(
                        base, method, choice.params(), choice.val_score, None, 0.0, error_text(err)
                    )
                )
                continue
            seconds = sel_seconds + time.perf_counter() - start
            rows.append(_row(base, method, choice.params(), choice.val_score, accs, seconds))

    start = time.perf_counter()
    try:
        import rfmdist

        accs = _fold_accuracies(lambda: rfmdist.RFMClassifier(random_state=seed), ds)
    except Exception as err:
        logger.error("%s: %s failed:\n%s", name, DEFAULTS_METHOD, traceback.format_exc())
        rows.append(_row(base, DEFAULTS_METHOD, None, np.nan, None, 0.0, error_text(err)))
    else:
        rows.append(_row(base, DEFAULTS_METHOD, {}, np.nan, accs, time.perf_counter() - start))

    for method, make, grid in (
        ("random_forest", _make_rf(seed, rf_trees), RF_GRID),
        ("hist_gb", _make_hgb(seed), HGB_GRID),
    ):
        start = time.perf_counter()
        try:
            params, val, _ = select_grid(
                make, grid, X_tr, y_tr, X_va, y_va, _accuracy, higher_is_better=True
            )
            accs = _fold_accuracies(lambda p=params, mk=make: mk(**p), ds)
        except Exception as err:
            logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
            rows.append(_row(base, method, None, np.nan, None, 0.0, error_text(err)))
            continue
        rows.append(_row(base, method, params, val, accs, time.perf_counter() - start))
    for r in rows:
        logger.info(
            "%s %-13s val %.4f test %.4f (%.1fs)%s",
            name,
            r["method"],
            r["val_acc"],
            r["test_acc_mean"],
            r["seconds"],
            " ERROR " + r["error"] if r["error"] else "",
        )
    return rows


def _rows_used(name: str, summary: pd.DataFrame, root: Path) -> int:
    """Rows of the main file (fich1): SUMMARY's n, or n_patrons1 for sets with a test file."""
    if bool(summary.loc[name, "has_test_file"]):
        return int(read_uci121_meta(name, root)["n_patrons1"])
    return int(summary.loc[name, "n"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/uci121.py",
        description="RFM vs Laplace, random forest and gradient boosting on the UCI-121 sets.",
    )
    parser.add_argument("--sets", default=None, help="comma-separated set names (default: all)")
    parser.add_argument(
        "--max-n", type=int, default=None, help="skip sets with more rows (default: none)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="sets run in parallel (processes)")
    parser.add_argument("--out", default="uci121_results.csv", help="per-set CSV")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder holding uci121/ (default: $RFMDIST_DATA, else <repo>/../shared/data)",
    )
    parser.add_argument(
        "--results-md",
        default=str(DEFAULT_RESULTS_MD),
        help="markdown file whose uci121 section is (re)generated; '' to skip",
    )
    parser.add_argument("--seed", type=int, default=0, help="random_state of every method")
    parser.add_argument(
        "--rf-trees", type=int, default=RF_N_ESTIMATORS, help="trees of the random forest"
    )
    add_max_centers_option(parser)
    add_threads_option(parser)
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
    if args.jobs < 1:
        parser.error(f"--jobs: expected an integer >= 1, found {args.jobs}.")
    if args.rf_trees < 1:
        parser.error(f"--rf-trees: expected an integer >= 1, found {args.rf_trees}.")
    return args


def _order(frame: pd.DataFrame, names: Sequence[str], methods: Sequence[str]) -> pd.DataFrame:
    frame = frame.copy()
    frame["_s"] = frame["dataset"].map({n: i for i, n in enumerate(names)})
    frame["_m"] = frame["method"].map({m: i for i, m in enumerate(methods)})
    return frame.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)


def shown_methods(wide: pd.DataFrame) -> list[str]:
    """The per-set table's columns: METHODS, and the defaults row where any set has it."""
    return [*METHODS, *([DEFAULTS_METHOD] if DEFAULTS_METHOD in wide.columns else [])]


def _per_set_table(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[frame["error"].eq("")]
    wide = ok.pivot_table(index="dataset", columns="method", values="test_acc_mean")
    methods = shown_methods(wide)
    wide = wide.reindex(columns=methods) * 100
    info = frame.groupby("dataset")[["n", "d", "n_classes"]].first()
    table = info.join(wide, how="left").reindex(frame["dataset"].drop_duplicates())
    for col in ("n", "d", "n_classes"):
        table[col] = table[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for m in methods:
        table[m] = table[m].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    return table


PAPER_COMPARISON = """\
### Comparison with the RFM paper

The RFM paper (Radhakrishnan, Beaglehole, Pandit, Belkin, arXiv:2212.13881; Science 2024) evaluates
RFM on these 121 UCI sets (its tabular-data section), against the Laplace kernel, the NTK, random
forests and the other classifiers of Fernández-Delgado et al. **Its reported average accuracy could
not be retrieved in this environment** (no copy of the paper's text or tables was reachable; the
authors' repository aradha/recursive_feature_machines has no results table, only the experiment
code `tabular_benchmark_experiments/`), so no paper figure is quoted and no paper-vs-ours difference
is computed here. Whoever fills it in should cite the table and its place in the paper.

Protocol differences from the authors' experiment code (`tabular_benchmark_experiments/main.py`,
`rfm.py` of that repository), which any comparison must keep in mind:

- miniboone is missing from our data copy (120 sets); sets above `--max-n` are not run (listed
  below), so our means are over fewer, mostly smaller sets.
- Their grid is reg in {10, 1, 0.1, 1e-2, 1e-3} x row normalisation (x / ||x||) on/off, rounds
  0..4 (5 kernel fits, 4 AGOP updates); ours is the same reg grid x diag M on/off, rounds 0..5.
- Their 4 evaluation folds reuse the M learned on the conxuntos.dat training split (one kernel
  ridge fit per fold with that fixed M; the fold's test rows may overlap that split); ours re-learns
  M on each fold's training rows for the chosen number of rounds.
- Their kernels run in float32 (PyTorch) with a fresh random AGOP subset; ours in float64, seeded.
"""


def run_meta_path(csv: Path) -> Path:
    """The run-metadata file written next to a CSV: ``<csv>.meta.json``."""
    csv = Path(csv)
    return csv.with_name(csv.name + ".meta.json")


def write_run_meta(csv: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` (JSON) next to ``csv`` and return its path."""
    path = run_meta_path(csv)
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


def read_run_meta(csv: Path) -> dict[str, Any] | None:
    """The metadata of the run that wrote ``csv`` (None if there is no ``<csv>.meta.json``)."""
    path = run_meta_path(csv)
    return json.loads(path.read_text()) if path.exists() else None


def _read_results_csv(path: Path) -> pd.DataFrame:
    text_columns = {"chosen_params": object, "test_acc_folds": object, "error": object}
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text_columns)
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise SystemExit(
            f"--merge: expected the columns {list(CSV_COLUMNS)} in {path}, found none of "
            f"{missing}. Fix: pass CSVs written by benchmarks/uci121.py."
        )
    frame["error"] = frame["error"].fillna("").astype(str)
    return frame[list(CSV_COLUMNS)]


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def defaults_line(frame: pd.DataFrame, score: str, *, scale: float = 1.0, unit: str = "") -> str:
    """One line comparing the defaults row with the tuned methods on the sets that have it ("" if
    none has). ``score``: the column, higher is better; ``scale`` and ``unit`` for the printout."""
    wide = frame.pivot_table(index="dataset", columns="method", values=score, aggfunc="first")
    if DEFAULTS_METHOD not in wide.columns:
        return ""
    wide = wide.dropna(subset=[DEFAULTS_METHOD])
    parts = [f"The estimators' defaults (`{DEFAULTS_METHOD}`: no grid, no validation split given) "
             f"on {len(wide)} sets: mean {wide[DEFAULTS_METHOD].mean() * scale:.2f}"]  # fmt: skip
    for other in ("rfm", "laplace", "hist_gb"):
        if other in wide.columns:
            diff = (wide[DEFAULTS_METHOD] - wide[other]).dropna() * scale
            parts.append(f"minus {other} {diff.mean():+.2f}{unit} (median {diff.median():+.2f})")
    return "; ".join(parts) + "."


def _rfm_vs_laplace(frame: pd.DataFrame) -> str:
    ok = frame[frame["error"].eq("")]
    wide = ok.pivot_table(index="dataset", columns="method", values="test_acc_mean")
    if not {"rfm", "laplace"} <= set(wide.columns):
        return ""
    pair = wide[["rfm", "laplace"]].dropna()
    if pair.empty:
        return ""
    diff = (pair["rfm"] - pair["laplace"]) * 100
    better, worse = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
    return (
        f"RFM vs its own round 0 (laplace) on {len(pair)} sets: RFM higher on {better}, lower on "
        f"{worse}, equal on {len(pair) - better - worse}; mean difference {diff.mean():+.2f} "
        f"points (median {diff.median():+.2f})."
    )


def build_section(
    frame: pd.DataFrame,
    runs: Sequence[dict[str, Any]],
    not_run: Sequence[tuple[str, str]],
    *,
    header: Sequence[str],
    skipped_line: str = "",
    notes: Sequence[str] = (),
) -> tuple[str, pd.DataFrame]:
    """The markdown of the uci121 section and the summary table shown in it.

    Parameters
    ----------
    frame : pandas.DataFrame
        Result rows (``CSV_COLUMNS``), possibly from several runs.
    runs : sequence of dict
        The run metadata (``command``, ``finished_utc``, ``elapsed_s``, ``machine``,
        ``rf_trees``, ``sets_run``, ``csv``).
    not_run : sequence of (name, reason)
        The sets without results, listed at the end (merge mode).
    header : sequence of str
        The first lines (title, generation line, commands).
    skipped_line : str
        One line listing the sets skipped by ``--max-n`` (single-run mode).
    notes : sequence of str
        Free-text notes (``--note``), printed under "Notes".
    """
    ok = frame[frame["error"].eq("")]
    table = summarize(ok, "test_acc_mean", METHODS)
    shown = table.assign(mean=table["mean"] * 100).rename(columns={"mean": "mean_acc_%"})
    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    machines = list(dict.fromkeys(r.get("machine", "") for r in runs if r.get("machine")))
    trees = sorted({int(r["rf_trees"]) for r in runs if r.get("rf_trees")}) or [RF_N_ESTIMATORS]
    parts = [*header, ""]
    parts += machines[:1] or [machine_info()]
    if len(machines) > 1:
        parts += ["", "(other runs on:)", *machines[1:]]
    parts += [
        "",
        "Protocol: hyper-parameters chosen on the conxuntos.dat train/validation split, "
        "accuracy = mean test accuracy over the 4 conxuntos_kfold.dat folds. RFM: Laplace "
        f"kernel, L = {BANDWIDTH:g}, reg in {list(REGS)}, diag in {{False, True}}, rounds "
        f"0..{MAX_ROUNDS}; laplace = RFM round 0; random_forest: "
        f"{'/'.join(str(t) for t in trees)} trees, max_features in {{sqrt, 0.5, 1.0}}; hist_gb: "
        "learning_rate in {0.03, 0.1, 0.3} x max_leaf_nodes in {15, 63}.",
        "",
        f"### Summary ({int(table['sets'].max()) if len(table) else 0} sets where every "
        "method ran)",
        "",
        "Wins: every method reaching a set's best accuracy counts a win (ties count for each). "
        "Rank 1 = best; ties share the average rank.",
        "",
        markdown_table(shown, ".2f"),
        "",
    ]
    head_to_head = _rfm_vs_laplace(frame)
    if head_to_head:
        parts += [head_to_head, ""]
    defaults = defaults_line(ok, "test_acc_mean", scale=100, unit=" points")
    if defaults:
        parts += [defaults, ""]
    if notes:
        parts += ["### Notes", "", *[f"- {n}" for n in notes], ""]
    parts += [
        PAPER_COMPARISON,
        "### Test accuracy per set (%, mean over the 4 folds)",
        "",
        markdown_table(_per_set_table(frame)) if not frame.empty else "(no set run)",
        "",
    ]
    if skipped_line:
        parts += [skipped_line, ""]
    if not_run:
        parts += [
            f"### Sets not run ({len(not_run)})",
            "",
            markdown_table(
                pd.DataFrame(not_run, columns=["dataset", "reason"]).set_index("dataset")
            ),
            "",
        ]
    if not failed.empty:
        parts += ["Failed:", "", markdown_table(failed.set_index("dataset")), ""]
    return "\n".join(parts), shown


def merge_results(args: argparse.Namespace, argv_list: Sequence[str]) -> int:
    """``--merge``: regenerate the section (and print the summary) from existing CSVs."""
    root = resolve_data_root(args.data_root)
    summary = read_uci121_summary(root)
    paths = [Path(p.strip()) for p in args.merge.split(",") if p.strip()]
    frames, runs = [], []
    for k, path in enumerate(paths, 1):
        meta = read_run_meta(path) or {}
        if path.exists():
            part = _read_results_csv(path)
        elif meta:  # a run stopped before its first set finished
            part = pd.DataFrame(columns=list(CSV_COLUMNS))
        else:
            raise SystemExit(f"--merge: expected a CSV at {path}, found none. Fix: check the path.")
        meta = {**meta, "csv": str(path), "run": k, "sets_in_csv": part["dataset"].nunique()}
        if frames:  # a set in several CSVs: the later CSV wins
            earlier = pd.concat(frames)
            dup = sorted(set(earlier["dataset"]) & set(part["dataset"]))
            if dup:
                logger.warning("%s re-runs %s: keeping its rows", path, dup)
                frames = [f[~f["dataset"].isin(dup)] for f in frames]
        frames.append(part)
        runs.append(meta)
    names = list(summary.index)
    frame = _order(pd.concat(frames, ignore_index=True), names, METHODS)
    done = set(frame["dataset"])
    not_run: list[tuple[str, str]] = []
    for name in names:
        if name in done:
            continue
        rows = _rows_used(name, summary, root)
        reasons = []
        for r in runs:
            if name in (r.get("skipped") or {}):
                reasons.append(f"n = {rows} > --max-n {r.get('max_n')} in run {r['run']}")
            elif name in (r.get("sets_run") or []):
                why = f": {r['stopped']}" if r.get("stopped") else ""
                reasons.append(f"n = {rows}; run {r['run']} stopped before reaching it{why}")
        not_run.append(
            (
                name,
                (reasons[-1] if reasons else "not requested by any merged run")
                + f" (d = {int(summary.loc[name, 'd'])})",
            )
        )
    not_run.append(("miniboone", "not in the shared data copy (see the data README)"))
    total = sum(float(r.get("elapsed_s") or 0.0) for r in runs)
    spans = [
        (start, start + _dt.timedelta(seconds=float(r["elapsed_s"])))
        for r in runs
        if r.get("started_utc") and r.get("elapsed_s")
        for start in [_dt.datetime.strptime(r["started_utc"], "%Y-%m-%d %H:%M:%S UTC")]
    ]
    span = ""
    if spans:
        clock = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
        span = f"; from the first start to the last end {_fmt_seconds(clock)} (runs may overlap)"
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    run_rows = pd.DataFrame(
        [
            {
                "run": r["run"],
                "command": f"`{r.get('command', '(not recorded)')}`",
                "finished": r.get("finished_utc") or r.get("stopped", ""),
                "wall time": _fmt_seconds(float(r["elapsed_s"])) if r.get("elapsed_s") else "",
                "sets": r["sets_in_csv"],
                "csv": r["csv"],
            }
            for r in runs
        ]
    ).set_index("run")
    header = [
        "## UCI-121 (Fernández-Delgado et al. 2014), RFM paper protocol",
        "",
        f"Generated by `{shlex.join(['python', 'benchmarks/uci121.py', *argv_list])}` on {now} "
        f"from {len(paths)} run(s); do not edit by hand.",
        "",
        f"Total wall time of the runs (sum): {_fmt_seconds(total)}{span}; "
        f"{frame['dataset'].nunique()} sets with results, {len(not_run)} not run.",
        "",
        markdown_table(run_rows),
    ]
    body, shown = build_section(frame, runs, not_run, header=header, notes=args.note or ())
    print(f"\nUCI-121 merged: {frame['dataset'].nunique()} sets, total {_fmt_seconds(total)}")
    print(markdown_table(shown, ".2f"))
    if args.results_md:
        write_results_section(Path(args.results_md), SECTION, body)
        logger.info("updated the %s section of %s", SECTION, args.results_md)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or merge runs); see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if args.merge:
        return merge_results(args, argv_list)
    root = resolve_data_root(args.data_root)
    summary = read_uci121_summary(root)
    names = list(summary.index)
    if args.sets:
        wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in summary.index]
        if unknown:
            raise SystemExit(
                f"--sets: expected names from {root / 'uci121' / 'SUMMARY.tsv'}, found unknown "
                f"{unknown}. Fix: check the spelling (e.g. 'acute-inflammation', 'iris')."
            )
        names = wanted
    rows_used = {name: _rows_used(name, summary, root) for name in names}
    skipped = [n for n in names if args.max_n is not None and rows_used[n] > args.max_n]
    to_run = [n for n in names if n not in skipped]
    if skipped:
        logger.info("skipping %d sets with n > %d: %s", len(skipped), args.max_n, skipped)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    command = shlex.join(["python", "benchmarks/uci121.py", *argv_list])
    started = _dt.datetime.now(_dt.UTC)
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "runner": "uci121",
        "command": command,
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": machine_info(),
        "max_n": args.max_n,
        "seed": args.seed,
        "rf_trees": args.rf_trees,
        "max_centers": args.max_centers,
        "jobs": args.jobs,
        "threads": args.threads,
        "sets_run": to_run,
        "skipped": {n: rows_used[n] for n in skipped},
    }

    def progress_meta() -> None:
        now = _dt.datetime.now(_dt.UTC)
        meta["stopped"] = (
            "interrupted (the last progress record is "
            f"{now.strftime('%Y-%m-%d %H:%M:%S UTC')}, {len(rows) // len(METHODS)} sets done)"
        )
        meta["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_run_meta(out, meta)

    def collect(new_rows: list[dict[str, Any]]) -> None:
        rows.extend(new_rows)
        partial = _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names, METHODS)
        partial.to_csv(out, index=False)
        progress_meta()

    progress_meta()
    run_sets(
        evaluate_uci_set,
        to_run,
        args.jobs,
        collect,
        threads=args.threads,
        root=str(root),
        seed=args.seed,
        rf_trees=args.rf_trees,
        max_centers=args.max_centers,
    )
    elapsed = time.perf_counter() - start
    frame = _order(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), names, METHODS)
    frame.to_csv(out, index=False)
    logger.info("wrote %s (%d rows) in %.1f s", out, len(frame), elapsed)
    finished = _dt.datetime.now(_dt.UTC)
    meta.pop("stopped", None)
    meta["finished_utc"] = finished.strftime("%Y-%m-%d %H:%M:%S UTC")
    meta["elapsed_s"] = round(elapsed, 1)
    write_run_meta(out, meta)

    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    header = [
        "## UCI-121 (Fernández-Delgado et al. 2014), RFM paper protocol",
        "",
        f"Generated by `benchmarks/uci121.py` on {finished.strftime('%Y-%m-%d %H:%M UTC')} in "
        f"{elapsed:.0f} s; do not edit by hand.",
        "",
        f"Command: `{command}`",
    ]
    skipped_line = f"Skipped (n > {args.max_n}): {', '.join(skipped)}" if skipped else ""
    body, shown = build_section(
        frame, [meta], [], header=header, skipped_line=skipped_line, notes=args.note or ()
    )
    print(f"\nUCI-121: {len(to_run)} sets run, {len(skipped)} skipped, {elapsed:.0f} s")
    print(markdown_table(shown, ".2f"))
    if skipped:
        print(skipped_line)
    if not failed.empty:
        print(f"Failed: {len(failed)} (set, method) pairs; see the 'error' column of {out}")
    if args.results_md:
        write_results_section(Path(args.results_md), SECTION, body)
        logger.info("updated the %s section of %s", SECTION, args.results_md)
    return 0 if failed.empty else 1


if __name__ == "__main__":
    sys.exit(main())
