"""Model selection of the tabular benchmarks: the methods, their grids, and their fits and scores
on one set (a :class:`benchmarks.collection.SetRun`).

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
scikit-learn's. :func:`run_methods` gives a set's result rows, one per method.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, mean_squared_error
from sklearn.model_selection import ParameterGrid

from benchmarks.collection import Scores, SetRun

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


def error_text(err: BaseException) -> str:
    """A one-line description of an exception for the CSV."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:500]


def result_row(
    base: dict[str, Any],
    method: str,
    val_column: str,
    params: dict[str, Any] | None = None,
    val: float = np.nan,
    test: Scores | None = None,
    seconds: float = 0.0,
    error: str = "",
) -> dict[str, Any]:
    """One row of the results: the set's ``base`` columns and what ``method`` chose and scored.

    ``val_column`` names the validation score; ``params`` (None: nothing chosen) is kept as JSON.
    """
    return {
        **base,
        "method": method,
        "chosen_params": json.dumps(params, sort_keys=True) if params is not None else "",
        val_column: val,
        **(test or {}),
        "seconds": round(seconds, 3),
        "error": error,
    }


Choose = Callable[[], tuple[dict[str, Any], float, Scores]]
"""A method's work on a set: ``() -> (chosen params, validation score, test columns)``."""


def _measure(
    name: str, base: dict[str, Any], val_column: str, method: str, run: Choose, spent: float = 0.0
) -> dict[str, Any]:
    """The row of ``run()``, timed (plus ``spent`` seconds); a failure becomes its ``error``."""
    start = time.perf_counter()
    try:
        params, val, test = run()
    except Exception as err:
        logger.error("%s: %s failed:\n%s", name, method, traceback.format_exc())
        return result_row(base, method, val_column, error=error_text(err))
    seconds = spent + time.perf_counter() - start
    return result_row(base, method, val_column, params, val, test, seconds)


def _rfm_rows(
    name: str, task: SetRun, make: Callable[..., Any], val_column: str
) -> list[dict[str, Any]]:
    """The ``rfm`` and ``laplace`` rows, from one :func:`select_rfm`."""
    X_tr, y_tr = task.X[task.train], task.y[task.train]
    X_va, y_va = task.X[task.val], task.y[task.val]
    try:
        sel = select_rfm(make, X_tr, y_tr, X_va, y_va, higher_is_better=task.classification)
    except Exception as err:
        logger.error("%s: RFM selection failed:\n%s", name, traceback.format_exc())
        return [result_row(task.base, m, val_column, error=error_text(err)) for m in METHODS[:2]]
    # the selection fit predicts with its best round: reuse it when that is the choice
    fitted = sel.rfm_estimator
    if getattr(fitted, "best_iter_", None) != sel.rfm.iters:
        fitted = None
    rows = []
    for method, choice, spent, est in (
        ("rfm", sel.rfm, sel.seconds, fitted),
        ("laplace", sel.laplace, sel.laplace_seconds, None),
    ):
        chosen = partial(make, reg=choice.reg, diag=choice.diag, iters=choice.iters)
        tested = partial(_tested, task, choice, chosen, est)
        rows.append(_measure(name, task.base, val_column, method, tested, spent))
    return rows


def _tested(
    task: SetRun, choice: RFMChoice, make: Callable[[], Any], fitted: Any
) -> tuple[dict[str, Any], float, Scores]:
    """An RFM choice, its validation score and its test columns."""
    return choice.params(), choice.val_score, task.test(make, fitted)


def _grid_choice(
    task: SetRun, make: Callable[..., Any], grid: ParameterGrid
) -> tuple[dict[str, Any], float, Scores]:
    """The best of ``grid`` on the validation split, and its test columns."""
    params, val, est = select_grid(
        make,
        grid,
        task.X[task.train],
        task.y[task.train],
        task.X[task.val],
        task.y[task.val],
        classification=task.classification,
    )
    return params, val, task.test(partial(make, **params), est)


def run_methods(
    name: str, task: SetRun, makers: dict[str, Callable[..., Any]], *, val_column: str
) -> list[dict[str, Any]]:
    """Select, fit and test every method on one set; a failure becomes the row's ``error``.

    Parameters
    ----------
    name : str
        The set (for the log).
    task : SetRun
        The set, loaded and split.
    makers : dict of str to callable
        The unfitted models (:func:`estimator_factories`).
    val_column : str
        The rows' validation score column.

    Returns
    -------
    list of dict
        The rows of ``rfm``, ``laplace``, ``rfm_defaults``, ``random_forest`` and ``hist_gb``.
    """
    rows = _rfm_rows(name, task, makers["rfm"], val_column)
    rows.append(_measure(name, task.base, val_column, DEFAULTS_METHOD, task.defaults))
    for method, grid in (("random_forest", RF_GRID), ("hist_gb", HGB_GRID)):
        choose = partial(_grid_choice, task, makers[method], grid)
        rows.append(_measure(name, task.base, val_column, method, choose))
    return rows
