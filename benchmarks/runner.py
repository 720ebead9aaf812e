"""The runner of the tabular benchmarks: RFM against a Laplace kernel, a random forest and gradient
boosting, on every set of a collection. ``benchmarks/uci121.py`` and ``benchmarks/grinsztajn.py``
plug into it with a :class:`Collection`: which sets there are, how one set is loaded and split
(:meth:`Collection.prepare`, a :class:`SetRun`), how a chosen model is tested, and what their
results section says. The runner does the rest, the same way for both.

Methods
-------
``rfm``
    :class:`rfmdist.RFMClassifier` / :class:`rfmdist.RFMRegressor`, Laplace kernel, bandwidth
    L = 10, float64, ``standardize=False`` (the features are z-scored already), the grid
    :data:`RFM_GRID` (reg in {10, 1, 0.1, 1e-2, 1e-3} x diag in {False, True}) x rounds 0..5. One
    fit per (reg, diag) with ``iters=5`` and ``eval_set`` gives the validation score of every
    round (``history_``); the best (reg, diag, round) is then tested with ``iters=round``.
``laplace``
    The same kernel machine without feature learning: the best reg at round 0 (M = I) of the same
    fits (diag=False), tested with ``iters=0``.
``random_forest``
    ``RandomForest{Classifier,Regressor}(n_estimators=300, n_jobs=1)`` (``--rf-trees`` changes the
    300), :data:`RF_GRID`.
``hist_gb``
    ``HistGradientBoosting{Classifier,Regressor}(early_stopping=False)``, :data:`HGB_GRID`.
``rfm_defaults``
    ``RFMClassifier()`` / ``RFMRegressor()`` with their defaults (and ``random_state``): no grid.

Hyper-parameters are chosen on the collection's validation split only (accuracy, or MSE for
regression); ties go to the first candidate in grid order (for RFM: larger reg, then diag=False,
then fewer rounds). The grids are scikit-learn ``ParameterGrid`` objects, the validation metrics
scikit-learn's.

Outputs
-------
- the CSV ``--out`` (the collection's columns), one row per (set, method), rewritten after every
  set, and ``<out>.meta.json`` beside it (command, start / end, wall time, machine, options, the
  sets run and skipped; ``"stopped"`` until the run ends, so an interrupted run says so);
- a summary printed at the end: per method the number of sets, the mean test score, the wins (every
  method reaching a set's best score wins it: ties count for each) and the mean rank (ties share
  the average rank), over the sets where every method ran;
- the section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` of ``--results-md``
  (the rest of the file is kept).

``--merge a.csv,b.csv`` runs nothing: it regenerates the section (and prints the summary) from the
CSVs and ``.meta.json`` of earlier runs, a set in several CSVs keeping the rows of the last, with
the table of runs and every set without results with the reason. ``--jobs J`` runs J sets at a time
in joblib worker processes; every set runs under ``--threads`` BLAS / OpenMP threads
(threadpoolctl; 0 leaves the libraries' defaults). The exit status is 0 when every method ran on
every set, 1 when some failed (their rows carry the error; the outputs are written anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import shlex
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.metrics import accuracy_score, mean_squared_error
from sklearn.model_selection import ParameterGrid

from benchmarks.common import machine_info, write_results_section
from benchmarks.datasets import resolve_data_root

logger = logging.getLogger(__name__)

REGS: tuple[float, ...] = (10.0, 1.0, 0.1, 1e-2, 1e-3)
"""Ridge regularisations of the RFM / Laplace grid."""
DIAGS: tuple[bool, ...] = (False, True)
"""Full or diagonal M."""
MAX_ROUNDS = 5
"""RFM rounds 0..MAX_ROUNDS are scored on validation (round 0 = Laplace kernel, M = I)."""
BANDWIDTH = 10.0
"""Laplace kernel bandwidth L."""
RFM_GRID = ParameterGrid([{"reg": [reg], "diag": list(DIAGS)} for reg in REGS])
"""The (reg, diag) fits, in tie-breaking order: larger reg first, then diag=False."""
RF_N_ESTIMATORS = 300
RF_GRID = ParameterGrid({"max_features": ["sqrt", 0.5, 1.0]})
HGB_GRID = ParameterGrid({"learning_rate": [0.03, 0.1, 0.3], "max_leaf_nodes": [15, 63]})
METHODS: tuple[str, ...] = ("rfm", "laplace", "random_forest", "hist_gb")
DEFAULTS_METHOD = "rfm_defaults"
"""The row of the estimators' defaults (no grid, no validation split given): kept out of METHODS
so that the summaries of sets run before it existed stay as they were; reported beside them."""
DEFAULT_RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
WINS = (
    "Wins: every method reaching a set's best score counts a win (ties count for each). "
    "Rank 1 = best; ties share the average rank. Only sets where every method ran."
)


def _grid_text(grid: ParameterGrid) -> str:
    (space,) = grid.param_grid
    return " x ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in space.items())


def methods_text(trees: str, centers: str | None = None) -> str:
    """The methods and their grids, for a section's protocol paragraph."""
    where = f", centers {centers}" if centers else ""
    return (
        f"RFM: Laplace kernel, L = {BANDWIDTH:g}, reg in {list(REGS)}, diag in {{False, True}}, "
        f"rounds 0..{MAX_ROUNDS}{where}; laplace = RFM round 0; random_forest: {trees} trees, "
        f"{_grid_text(RF_GRID)}; hist_gb: {_grid_text(HGB_GRID)}."
    )


# --------------------------------------------------------------------------------------------
# Selection on the validation split
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
        The best reg at round 0 (diag=False fits; round 0 does not depend on diag).
    seconds : float
        Wall time of all the selection fits.
    laplace_seconds : float
        The round-0 share of the diag=False fits (sum of their ``history_[0]["seconds"]``).
    rfm_estimator : object
        The selection fit that produced ``rfm``.
    """

    rfm: RFMChoice
    laplace: RFMChoice
    seconds: float
    laplace_seconds: float
    rfm_estimator: Any


def _better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def select_rfm(
    make: Callable[..., Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    higher_is_better: bool,
) -> RFMSelection:
    """Search :data:`RFM_GRID` x rounds 0..MAX_ROUNDS on a train / validation split.

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

    Returns
    -------
    RFMSelection
        The RFM and Laplace choices; ties go to the first in grid order, then fewer rounds.
    """
    best: RFMChoice | None = None
    best_lap: RFMChoice | None = None
    best_est = None
    seconds = lap_seconds = 0.0
    for params in RFM_GRID:
        est = make(**params, iters=MAX_ROUNDS)
        start = time.perf_counter()
        est.fit(X_train, y_train, eval_set=(X_val, y_val))
        seconds += time.perf_counter() - start
        reg, diag = params["reg"], params["diag"]
        for record in est.history_:
            value = record.get("val_score")
            if value is None or not math.isfinite(float(value)):
                continue
            value, rnd = float(value), int(record["round"])
            if _better(value, best and best.val_score, higher_is_better):
                best, best_est = RFMChoice(reg, diag, rnd, value), est
            if rnd == 0 and not diag:
                lap_seconds += float(record.get("seconds", 0.0) or 0.0)
                if _better(value, best_lap and best_lap.val_score, higher_is_better):
                    best_lap = RFMChoice(reg, False, 0, value)
        logger.debug("%s: val %s", params, [r.get("val_score") for r in est.history_])
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
    *,
    classification: bool,
) -> tuple[dict[str, Any], float, Any]:
    """Fit ``make(**params)`` for every point of ``grid`` and keep the best on validation.

    Parameters
    ----------
    make : callable
        ``make(**params)`` returns an unfitted scikit-learn estimator.
    grid : iterable of dict
        The candidates (a ``ParameterGrid``), in tie-breaking order: the first best wins.
    X_train, y_train, X_val, y_val : numpy.ndarray
        The split, shapes (n_train, d), (n_train,), (n_val, d), (n_val,).
    classification : bool
        Score by accuracy (higher is better), else by MSE (lower is better).

    Returns
    -------
    params : dict
        The best parameters.
    val_score : float
        Their validation accuracy or MSE.
    estimator : object
        The best estimator, fitted on the training rows.
    """
    score = accuracy_score if classification else mean_squared_error
    best: tuple[dict[str, Any], float, Any] | None = None
    for params in grid:
        est = make(**params).fit(X_train, y_train)
        value = float(score(y_val, est.predict(X_val)))
        if _better(value, best and best[1], classification):
            best = (dict(params), value, est)
    if best is None:
        raise ValueError("select_grid: expected a non-empty grid, found none. Fix: pass a grid.")
    return best


def estimator_factories(
    classification: bool, *, seed: int, rf_trees: int, max_centers: int | None
) -> dict[str, Callable[..., Any]]:
    """The unfitted models of ``rfm`` (and ``laplace``), ``random_forest`` and ``hist_gb``.

    Parameters
    ----------
    classification : bool
        Classifiers, else regressors.
    seed : int
        ``random_state`` of every model.
    rf_trees : int
        Trees of the random forest.
    max_centers : int or None
        Cap on RFM's Nyström centers (None: the estimator's ``'auto'``).

    Returns
    -------
    dict of str to callable
        ``"rfm"``: ``make(reg=, diag=, iters=)``; ``"random_forest"``, ``"hist_gb"``:
        ``make(**params)`` of their grids.
    """
    from sklearn import ensemble

    import rfmdist

    if classification:
        rfm, forest, boosting = (
            rfmdist.RFMClassifier,
            ensemble.RandomForestClassifier,
            ensemble.HistGradientBoostingClassifier,
        )
    else:
        rfm, forest, boosting = (
            rfmdist.RFMRegressor,
            ensemble.RandomForestRegressor,
            ensemble.HistGradientBoostingRegressor,
        )
    centers = "auto" if max_centers is None else max_centers
    return {
        "rfm": partial(
            rfm,
            centers=centers,
            kernel="laplace",
            bandwidth=BANDWIDTH,
            standardize=False,
            random_state=seed,
            dtype="float64",
        ),
        "random_forest": partial(forest, n_estimators=rf_trees, n_jobs=1, random_state=seed),
        "hist_gb": partial(boosting, early_stopping=False, random_state=seed),
    }


# --------------------------------------------------------------------------------------------
# One set
# --------------------------------------------------------------------------------------------

Scores = dict[str, Any]
"""Test columns of a result row (e.g. ``{"test_score": 0.91}``)."""


@dataclass
class SetRun:
    """One set, loaded and split, ready for the methods.

    Attributes
    ----------
    base : dict
        The set's columns of every result row (``dataset``, ``n``, ``d``, ...).
    X, y : numpy.ndarray of shape (n, d), (n,)
        The rows the methods see.
    train, val : numpy.ndarray of int
        The hyper-parameter selection split (indices into ``X``).
    classification : bool
        Accuracy (else MSE) on validation; classifiers (else regressors).
    test : callable
        ``test(make, fitted)``: the test columns of the model ``make()`` (``fitted``: that model
        already fitted on ``train``, or None).
    defaults : callable
        ``defaults()``: ``(params, val_score, test columns)`` of the ``rfm_defaults`` row.
    """

    base: dict[str, Any]
    X: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    classification: bool
    test: Callable[[Callable[[], Any], Any], Scores]
    defaults: Callable[[], tuple[dict[str, Any], float, Scores]]


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
# Tables
# --------------------------------------------------------------------------------------------


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
    """Render ``frame`` (its index as the first column) as a GitHub markdown table.

    ``DataFrame.to_markdown`` would need the optional ``tabulate`` package, which rfmdist does not
    depend on; this is the same table from pandas alone (floats as ``floatfmt``, NaN empty).
    """
    frame = frame.reset_index()

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "" if math.isnan(value) else format(float(value), floatfmt)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def run_values(runs: Sequence[dict[str, Any]], key: str, default: Any) -> str:
    """The distinct values of ``key`` over the runs' metadata, ``/``-joined (``default`` if none)."""
    found = list(dict.fromkeys(r[key] for r in runs if r.get(key) is not None))
    return "/".join(str(v) for v in found) if found else str(default)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def run_meta_path(csv: Path) -> Path:
    """The run-metadata file written next to a CSV: ``<csv>.meta.json``."""
    csv = Path(csv)
    return csv.with_name(csv.name + ".meta.json")


def write_run_meta(csv: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` (JSON) next to ``csv``."""
    run_meta_path(csv).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_run_meta(csv: Path) -> dict[str, Any] | None:
    """The metadata of the run that wrote ``csv`` (None if there is no ``<csv>.meta.json``)."""
    path = run_meta_path(csv)
    return json.loads(path.read_text()) if path.exists() else None


def _now(fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return dt.datetime.now(dt.UTC).strftime(fmt)


# --------------------------------------------------------------------------------------------
# A collection and its command line
# --------------------------------------------------------------------------------------------


class Collection(ABC):
    """What a benchmark collection plugs into the runner; see the module docstring.

    The class attributes name its script, its CSV and its tables; the methods load a set
    (:meth:`prepare`) and write what only this collection says (:meth:`protocol`, ...).
    """

    name: ClassVar[str]
    """Script ``benchmarks/<name>.py``, results section marker and ``runner`` in the metadata."""
    label: ClassVar[str]
    """Short name in the printed summary, e.g. ``"UCI-121"``."""
    title: ClassVar[str]
    """The section's heading (markdown)."""
    description: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]
    """The CSV columns."""
    val_column: ClassVar[str]
    score: ClassVar[str]
    """The test score column (higher is better) of the summaries and the per-set table."""
    info_columns: ClassVar[tuple[str, ...]]
    """The set's columns shown in the per-set table."""
    per_set_title: ClassVar[str]
    set_examples: ClassVar[str]
    """Set names for the help and the errors, e.g. ``"'iris', 'fertility'"``."""
    not_in_copy: ClassVar[tuple[str, ...]] = ()
    """Sets of the original collection absent from the shared data."""
    scale: ClassVar[float] = 1.0
    """Factor of the score in the tables (100 for accuracy in %)."""
    unit: ClassVar[str] = ""
    mean_column: ClassVar[str] = "mean"
    floatfmt: ClassVar[str] = ".4f"
    positive_options: ClassVar[tuple[str, ...]] = ()
    """Extra options (:meth:`add_arguments`) that must be >= 1."""

    # -- what each collection says ------------------------------------------------------------

    @abstractmethod
    def read_summary(self, root: Path) -> pd.DataFrame:
        """The collection's ``SUMMARY.tsv``, indexed by set name (columns ``n`` and ``d``)."""

    @abstractmethod
    def prepare(self, name: str, root: Path, *, seed: int, **options: Any) -> SetRun:
        """Load and split one set (``options``: those of :meth:`options`)."""

    @abstractmethod
    def protocol(self, runs: Sequence[dict[str, Any]]) -> str:
        """The protocol paragraph of the section (``runs``: the runs' metadata)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the collection's own options (after ``--seed``; none by default)."""
        return None

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """The collection's own options passed to :meth:`prepare` (and kept in the metadata)."""
        return {}

    def set_name(self, text: str) -> str:
        """A name given to ``--sets`` as in ``SUMMARY.tsv``."""
        return text.strip()

    def rows(self, name: str, summary: pd.DataFrame, root: Path) -> int:
        """The rows of a set that ``--max-n`` compares."""
        return int(summary.loc[name, "n"])

    def groups(self, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        """The parts of ``frame`` summarised apart, with their labels (one part by default)."""
        return [("", frame)]

    def preamble(self, frame: pd.DataFrame, runs: Sequence[dict[str, Any]]) -> list[str]:
        """Lines of the section before the machine."""
        return []

    def appendix(self) -> list[str]:
        """Lines of the section before the per-set table."""
        return []

    def per_set_info(self, info: pd.DataFrame) -> pd.DataFrame:
        """Format the set columns of the per-set table (integers as text, NaN empty)."""
        for col in info.columns:
            if pd.api.types.is_numeric_dtype(info[col]):
                info[col] = info[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
        return info

    # -- one set --------------------------------------------------------------------------

    def _row(
        self,
        base: dict[str, Any],
        method: str,
        params: dict[str, Any] | None = None,
        val: float = np.nan,
        test: Scores | None = None,
        seconds: float = 0.0,
        error: str = "",
    ) -> dict[str, Any]:
        return {
            **base,
            "method": method,
            "chosen_params": json.dumps(params, sort_keys=True) if params is not None else "",
            self.val_column: val,
            **(test or {}),
            "seconds": round(seconds, 3),
            "error": error,
        }

    def run_set(
        self,
        name: str,
        *,
        root: Path,
        seed: int,
        rf_trees: int,
        max_centers: int | None,
        threads: int,
        log_level: str,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Run every method on one set; never raises (a failure becomes the row's ``error``).

        Parameters
        ----------
        name : str
            The set.
        root : pathlib.Path
            The data root.
        seed : int
            ``random_state`` of every model (and the split's seed where the collection draws one).
        rf_trees : int
            Trees of the random forest.
        max_centers : int or None
            Cap on RFM's Nyström centers (None: the estimator's ``'auto'``).
        threads : int
            BLAS / OpenMP threads while the set runs (threadpoolctl); 0 leaves the defaults.
        log_level : str
            Logging level (configured here when this is a fresh worker process).
        **options
            The collection's own options (:meth:`options`).

        Returns
        -------
        list of dict
            One row per method with the keys of :attr:`columns`.
        """
        from threadpoolctl import threadpool_limits

        configure_logging(log_level)
        limits = threadpool_limits(limits=threads) if threads > 0 else contextlib.nullcontext()
        with limits:
            try:
                task = self.prepare(name, root, seed=seed, **options)
            except Exception as err:
                logger.exception("%s: loading failed", name)
                return [self._row({"dataset": name}, m, error=error_text(err)) for m in METHODS]
            makers = estimator_factories(
                task.classification, seed=seed, rf_trees=rf_trees, max_centers=max_centers
            )
            rows = self._run_methods(name, task, makers)
        for r in rows:
            logger.info(
                "%s %-13s val %.4f test %.4f (%.1fs)%s",
                name,
                r["method"],
                r[self.val_column],
                r.get(self.score, np.nan),
                r["seconds"],
                " ERROR " + r["error"] if r["error"] else "",
            )
        return rows

    def _run_methods(
        self, name: str, task: SetRun, makers: dict[str, Callable[..., Any]]
    ) -> list[dict[str, Any]]:
        def measure(
            method: str, run: Callable[[], tuple[dict[str, Any], float, Scores]], spent: float = 0
        ) -> dict[str, Any]:
            start = time.perf_counter()
            try:
                params, val, test = run()
            except Exception as err:
                logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
                return self._row(task.base, method, error=error_text(err))
            seconds = spent + time.perf_counter() - start
            return self._row(task.base, method, params, val, test, seconds)

        X_tr, y_tr = task.X[task.train], task.y[task.train]
        X_va, y_va = task.X[task.val], task.y[task.val]
        rows: list[dict[str, Any]] = []
        try:
            sel = select_rfm(
                makers["rfm"], X_tr, y_tr, X_va, y_va, higher_is_better=task.classification
            )
        except Exception as err:
            logger.error("%s: RFM selection failed:\n%s", name, traceback.format_exc())
            rows += [self._row(task.base, m, error=error_text(err)) for m in METHODS[:2]]
        else:
            # the selection fit predicts with its best round: reuse it when that is the choice
            fitted = sel.rfm_estimator
            if getattr(fitted, "best_iter_", None) != sel.rfm.iters:
                fitted = None
            for method, choice, spent, est in (
                ("rfm", sel.rfm, sel.seconds, fitted),
                ("laplace", sel.laplace, sel.laplace_seconds, None),
            ):
                make = partial(makers["rfm"], reg=choice.reg, diag=choice.diag, iters=choice.iters)

                def tested(c: RFMChoice = choice, m: Any = make, e: Any = est) -> Any:
                    return c.params(), c.val_score, task.test(m, e)

                rows.append(measure(method, tested, spent))
            del sel, fitted
        rows.append(measure(DEFAULTS_METHOD, task.defaults))
        for method, grid in (("random_forest", RF_GRID), ("hist_gb", HGB_GRID)):

            def selected(make: Any = makers[method], grid: ParameterGrid = grid) -> Any:
                params, val, est = select_grid(
                    make, grid, X_tr, y_tr, X_va, y_va, classification=task.classification
                )
                return params, val, task.test(partial(make, **params), est)

            rows.append(measure(method, selected))
        return rows

    # -- the results ----------------------------------------------------------------------

    def order(self, frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
        """Rows in the order of ``names``, then of METHODS (the defaults row last)."""
        frame = frame.copy()
        frame["_s"] = frame["dataset"].map({n: i for i, n in enumerate(names)})
        frame["_m"] = frame["method"].map({m: i for i, m in enumerate(METHODS)})
        return frame.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)

    def summary_tables(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """The summary of each group (:meth:`groups`) by title, the mean scaled by ``scale``."""
        tables = {}
        for label, part in self.groups(frame[frame["error"].eq("")]):
            table = summarize(part, self.score, METHODS)
            sets = int(table["sets"].max()) if len(table) else 0
            title = "Summary" + (f": {label}" if label else "")
            tables[f"{title} ({sets} sets where every method ran)"] = table.assign(
                mean=table["mean"] * self.scale
            ).rename(columns={"mean": self.mean_column})
        return tables

    def comparisons(self, frame: pd.DataFrame) -> list[str]:
        """Per group: RFM against its round 0, and the defaults row against the tuned methods."""
        ok = frame[frame["error"].eq("")]
        fmt = f"+{self.floatfmt}"
        lines = []
        for label, part in self.groups(ok):
            wide = part.pivot_table(
                index="dataset", columns="method", values=self.score, aggfunc="first"
            )
            wide = wide * self.scale
            prefix = f"{label[:1].upper()}{label[1:]}: " if label else ""
            if {"rfm", "laplace"} <= set(wide.columns):
                pair = wide[["rfm", "laplace"]].dropna()
                diff = pair["rfm"] - pair["laplace"]
                better, worse = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
                if len(pair):
                    lines += [
                        f"{prefix}RFM vs its own round 0 (laplace) on {len(pair)} sets: RFM higher "
                        f"on {better}, lower on {worse}, equal on {len(pair) - better - worse}; "
                        f"mean difference {diff.mean():{fmt}}{self.unit} (median "
                        f"{diff.median():{fmt}}).",
                        "",
                    ]
            if DEFAULTS_METHOD in wide.columns:
                own = wide[DEFAULTS_METHOD].dropna()
                parts = [
                    f"{prefix}The estimators' defaults (`{DEFAULTS_METHOD}`: no grid, no "
                    f"validation split given) on {len(own)} sets: mean {own.mean():{self.floatfmt}}"
                ]
                for other in ("rfm", "laplace", "hist_gb"):
                    if other in wide.columns:
                        diff = (own - wide[other]).dropna()
                        parts.append(
                            f"minus {other} {diff.mean():{fmt}}{self.unit} (median "
                            f"{diff.median():{fmt}})"
                        )
                lines += ["; ".join(parts) + ".", ""]
        return lines

    def per_set_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Test score per set and method (the defaults row where any set has it)."""
        ok = frame[frame["error"].eq("")]
        wide = ok.pivot_table(index="dataset", columns="method", values=self.score)
        methods = [*METHODS, *([DEFAULTS_METHOD] if DEFAULTS_METHOD in wide.columns else [])]
        wide = wide.reindex(columns=methods) * self.scale
        info = self.per_set_info(frame.groupby("dataset")[list(self.info_columns)].first())
        table = info.join(wide, how="left").reindex(frame["dataset"].drop_duplicates())
        for m in methods:
            table[m] = table[m].map(lambda v: "" if pd.isna(v) else f"{v:{self.floatfmt}}")
        return table

    def section(
        self,
        frame: pd.DataFrame,
        runs: Sequence[dict[str, Any]],
        *,
        header: Sequence[str],
        not_run: Sequence[tuple[str, str]] = (),
        skipped_line: str = "",
        notes: Sequence[str] = (),
    ) -> str:
        """The markdown of the collection's section of the results page.

        Parameters
        ----------
        frame : pandas.DataFrame
            Result rows (:attr:`columns`), possibly from several runs.
        runs : sequence of dict
            The runs' metadata (``machine``, ``rf_trees``, ``seed``, ...).
        header : sequence of str
            The first lines (title, generation line, commands).
        not_run : sequence of (name, reason)
            The sets without results (merge mode).
        skipped_line : str
            One line listing the sets skipped by ``--max-n`` (single-run mode).
        notes : sequence of str
            Free-text notes (``--note``), printed under "Notes".
        """
        machines = list(dict.fromkeys(r["machine"] for r in runs if r.get("machine")))
        parts = [*header, "", *self.preamble(frame, runs), *(machines[:1] or [machine_info()])]
        if len(machines) > 1:
            parts += ["", "(other runs on:)", *machines[1:]]
        parts += ["", f"Protocol: {self.protocol(runs)}", "", WINS, ""]
        for title, table in self.summary_tables(frame).items():
            parts += [f"### {title}", "", markdown_table(table, self.floatfmt), ""]
        parts += self.comparisons(frame)
        if notes:
            parts += ["### Notes", "", *[f"- {n}" for n in notes], ""]
        parts += [
            *self.appendix(),
            f"### {self.per_set_title}",
            "",
            markdown_table(self.per_set_table(frame)) if not frame.empty else "(no set run)",
            "",
        ]
        if skipped_line:
            parts += [skipped_line, ""]
        if not_run:
            table = pd.DataFrame(not_run, columns=["dataset", "reason"]).set_index("dataset")
            parts += [f"### Sets not run ({len(not_run)})", "", markdown_table(table), ""]
        if self.not_in_copy:
            parts += [
                f"Not in the shared data copy ({len(self.not_in_copy)} of the original sets; see "
                f"the data README): {', '.join(self.not_in_copy)}.",
                "",
            ]
        failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
        if not failed.empty:
            parts += ["Failed:", "", markdown_table(failed.set_index("dataset")), ""]
        return "\n".join(parts)

    def _publish(
        self, headline: str, frame: pd.DataFrame, md: str, body: Callable[[], str]
    ) -> None:
        """Print the summary; write the section to ``md`` ('' or None: nowhere)."""
        print(f"\n{headline}")
        for title, table in self.summary_tables(frame).items():
            print(f"\n{title}\n{markdown_table(table, self.floatfmt)}")
        if md:
            write_results_section(Path(md), self.name, body())
            logger.info("updated the %s section of %s", self.name, md)

    # -- the command line -------------------------------------------------------------------

    def parse_args(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parse the command line (see the module docstring)."""
        parser = argparse.ArgumentParser(
            prog=f"python benchmarks/{self.name}.py", description=self.description
        )
        parser.add_argument(
            "--sets", help=f"comma-separated names, e.g. {self.set_examples} (default: all)"
        )
        parser.add_argument("--max-n", type=int, help="skip sets with more rows (default: none)")
        parser.add_argument(
            "--jobs", type=int, default=1, help="sets run in parallel (joblib worker processes)"
        )
        parser.add_argument("--out", default=f"{self.name}_results.csv", help="per-set CSV")
        parser.add_argument(
            "--data-root",
            help=f"folder holding {self.name}/ (default: $RFMDIST_DATA, else "
            "<repo>/../shared/data)",
        )
        parser.add_argument(
            "--results-md",
            default=str(DEFAULT_RESULTS_MD),
            help=f"markdown file whose {self.name} section is (re)generated; '' to skip",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="random_state of every method (and split seed)"
        )
        self.add_arguments(parser)
        parser.add_argument(
            "--rf-trees", type=int, default=RF_N_ESTIMATORS, help="trees of the random forest"
        )
        parser.add_argument(
            "--max-centers",
            type=int,
            help="cap RFM's Nystrom centers at this many rows (default: the estimator's 'auto')",
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="BLAS/OpenMP threads per process running sets (default 1; 0: library default)",
        )
        parser.add_argument(
            "--merge",
            help="comma-separated CSVs of earlier runs: run nothing, regenerate the section",
        )
        parser.add_argument(
            "--note",
            action="append",
            help="a note printed under 'Notes' in the generated section (repeatable)",
        )
        parser.add_argument("--log-level", default="INFO")
        args = parser.parse_args(argv)
        for opt in ("jobs", "rf_trees", *self.positive_options):
            if getattr(args, opt) < 1:
                parser.error(
                    f"--{opt.replace('_', '-')}: expected an integer >= 1, found "
                    f"{getattr(args, opt)}."
                )
        return args

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the benchmark (or ``--merge``); see the module docstring. Returns the exit status."""
        args = self.parse_args(argv)
        configure_logging(args.log_level)
        argv_list = list(sys.argv[1:] if argv is None else argv)
        command = shlex.join(["python", f"benchmarks/{self.name}.py", *argv_list])
        root = resolve_data_root(args.data_root)
        summary = self.read_summary(root)
        if args.merge:
            return self.merge(args, command, root, summary)
        names = list(summary.index)
        if args.sets:
            names = [self.set_name(s) for s in args.sets.split(",") if s.strip()]
            unknown = [s for s in names if s not in summary.index]
            if unknown:
                raise SystemExit(
                    f"--sets: expected names from {root / self.name / 'SUMMARY.tsv'} such as "
                    f"{self.set_examples}, found unknown {unknown}. Fix: check the spelling."
                )
        rows_used = {name: self.rows(name, summary, root) for name in names}
        skipped = [n for n in names if args.max_n is not None and rows_used[n] > args.max_n]
        to_run = [n for n in names if n not in skipped]
        if skipped:
            logger.info("skipping %d sets with n > %d: %s", len(skipped), args.max_n, skipped)

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        options = self.options(args)
        common = {"seed": args.seed, "rf_trees": args.rf_trees, "max_centers": args.max_centers}
        start = time.perf_counter()
        meta: dict[str, Any] = {
            "runner": self.name,
            "command": command,
            "started_utc": _now(),
            "machine": machine_info(),
            "max_n": args.max_n,
            **common,
            **options,
            "jobs": args.jobs,
            "threads": args.threads,
            "sets_run": to_run,
            "skipped": {n: rows_used[n] for n in skipped},
        }
        rows: list[dict[str, Any]] = []

        def progress() -> pd.DataFrame:
            frame = self.order(pd.DataFrame(rows, columns=list(self.columns)), names)
            frame["error"] = frame["error"].fillna("")
            frame.to_csv(out, index=False)
            meta["stopped"] = (
                f"interrupted (the last progress record is {_now()}, "
                f"{len(rows) // len(METHODS)} sets done)"
            )
            meta["elapsed_s"] = round(time.perf_counter() - start, 1)
            write_run_meta(out, meta)
            return frame

        progress()
        run = partial(
            self.run_set, root=root, threads=args.threads, log_level=args.log_level, **common
        )
        results = Parallel(n_jobs=args.jobs, return_as="generator_unordered")(
            delayed(run)(name, **options) for name in to_run
        )
        for i, set_rows in enumerate(results, 1):
            logger.info("[%d/%d] done %s", i, len(to_run), set_rows[0]["dataset"])
            rows.extend(set_rows)
            progress()
        frame = progress()
        elapsed = time.perf_counter() - start
        logger.info("wrote %s (%d rows) in %.1f s", out, len(frame), elapsed)
        meta.pop("stopped")
        meta["finished_utc"] = _now()
        meta["elapsed_s"] = round(elapsed, 1)
        write_run_meta(out, meta)

        skipped_line = f"Skipped (n > {args.max_n}): {', '.join(skipped)}" if skipped else ""
        header = [
            self.title,
            "",
            f"Generated by `benchmarks/{self.name}.py` on {_now('%Y-%m-%d %H:%M UTC')} in "
            f"{_fmt_seconds(elapsed)} for {len(to_run)} sets; do not edit by hand.",
            "",
            f"Command: `{command}`",
        ]
        headline = f"{self.label}: {len(to_run)} sets run, {len(skipped)} skipped, {elapsed:.0f} s"
        self._publish(
            headline,
            frame,
            args.results_md,
            lambda: self.section(
                frame, [meta], header=header, skipped_line=skipped_line, notes=args.note or ()
            ),
        )
        if skipped:
            print(skipped_line)
        failed = frame["error"].ne("")
        if failed.any():
            print(f"Failed: {failed.sum()} (set, method) pairs; see the 'error' column of {out}")
        return 0 if not failed.any() else 1

    def read_csv(self, path: Path) -> pd.DataFrame:
        """Read a result CSV of an earlier run (for ``--merge``)."""
        text = [c for c in ("chosen_params", "test_acc_folds", "error") if c in self.columns]
        frame = pd.read_csv(
            path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text, object)
        )
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise SystemExit(
                f"--merge: expected the columns {list(self.columns)} in {path}, found none of "
                f"{missing}. Fix: pass CSVs written by benchmarks/{self.name}.py."
            )
        frame["error"] = frame["error"].fillna("").astype(str)
        return frame[list(self.columns)]

    def merge(
        self, args: argparse.Namespace, command: str, root: Path, summary: pd.DataFrame
    ) -> int:
        """``--merge``: regenerate the section (and print the summary) from existing CSVs."""
        paths = [Path(p.strip()) for p in args.merge.split(",") if p.strip()]
        frames: list[pd.DataFrame] = []
        runs: list[dict[str, Any]] = []
        for k, path in enumerate(paths, 1):
            meta = read_run_meta(path) or {}
            if path.exists():
                part = self.read_csv(path)
            elif meta:  # a run stopped before its first set finished
                part = pd.DataFrame(columns=list(self.columns))
            else:
                raise SystemExit(
                    f"--merge: expected a CSV at {path}, found none. Fix: check the path."
                )
            again = sorted(set().union(*(f["dataset"] for f in frames)) & set(part["dataset"]))
            if again:  # a set in several CSVs: the later CSV wins
                logger.warning("%s re-runs %s: keeping its rows", path, again)
                frames = [f[~f["dataset"].isin(again)] for f in frames]
            frames.append(part)
            runs.append({**meta, "csv": str(path), "run": k, "sets": part["dataset"].nunique()})
        names = list(summary.index)
        frame = self.order(pd.concat(frames, ignore_index=True), names)
        done = set(frame["dataset"])
        not_run = [
            (n, self._not_run_reason(n, runs, summary, root)) for n in names if n not in done
        ]
        total = sum(float(r.get("elapsed_s") or 0.0) for r in runs)
        spans = [
            (start, start + dt.timedelta(seconds=float(r["elapsed_s"])))
            for r in runs
            if r.get("started_utc") and r.get("elapsed_s")
            for start in [dt.datetime.strptime(r["started_utc"], "%Y-%m-%d %H:%M:%S UTC")]
        ]
        span = ""
        if spans:
            clock = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
            span = (
                f"; from the first start to the last end {_fmt_seconds(clock)} (runs may overlap)"
            )
        run_table = pd.DataFrame(
            [
                {
                    "run": r["run"],
                    "command": f"`{r.get('command', '(not recorded)')}`",
                    "finished": r.get("finished_utc") or r.get("stopped", ""),
                    "wall time": _fmt_seconds(float(r["elapsed_s"])) if r.get("elapsed_s") else "",
                    "sets": r["sets"],
                    "csv": r["csv"],
                }
                for r in runs
            ]
        ).set_index("run")
        header = [
            self.title,
            "",
            f"Generated by `{command}` on {_now('%Y-%m-%d %H:%M UTC')} from {len(paths)} run(s); "
            "do not edit by hand.",
            "",
            f"Total wall time of the runs (sum): {_fmt_seconds(total)}{span}; "
            f"{len(done)} sets with results, {len(not_run)} not run.",
            "",
            markdown_table(run_table),
        ]
        self._publish(
            f"{self.label} merged: {len(done)} sets, total {_fmt_seconds(total)}",
            frame,
            args.results_md,
            lambda: self.section(
                frame, runs, header=header, not_run=not_run, notes=args.note or ()
            ),
        )
        return 0

    def _not_run_reason(
        self, name: str, runs: Sequence[dict[str, Any]], summary: pd.DataFrame, root: Path
    ) -> str:
        rows = self.rows(name, summary, root)
        reason = "not requested by any merged run"
        for r in runs:
            if name in (r.get("skipped") or {}):
                reason = f"n = {rows} > --max-n {r.get('max_n')} in run {r['run']}"
            elif name in (r.get("sets_run") or []):
                why = f": {r['stopped']}" if r.get("stopped") else ""
                reason = f"n = {rows}; run {r['run']} stopped before reaching it{why}"
        return f"{reason} (d = {int(summary.loc[name, 'd'])})"
