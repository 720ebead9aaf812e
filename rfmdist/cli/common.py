"""Helpers shared by the commands that use a fitted model: loading it and reading data for it."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from rfmdist.cli.errors import UsageError

logger = logging.getLogger(__name__)


def load_model(path: str, *, incomplete: bool = False) -> Any:
    """Load a fitted estimator from a model store, with exit-2 errors for a wrong path.

    Parameters
    ----------
    path : str
        A store written by ``rfmdist fit`` (or ``fit(..., store=path)``).
    incomplete : bool, default False
        Also load an unfinished fit (its best committed round).

    Returns
    -------
    RFMRegressor or RFMClassifier
    """
    import rfmdist
    from rfmdist.cli import tables

    if not tables.is_url(path) and not os.path.exists(path):
        raise FileNotFoundError(
            f"Expected a model store at {path!r}, found nothing there; pass the --out path of "
            "'rfmdist fit'."
        )
    if not hasattr(rfmdist, "load"):
        raise RuntimeError(
            "Expected rfmdist.load (the model store) in this rfmdist build, found it missing; "
            "update rfmdist."
        )
    return rfmdist.load(path, incomplete=incomplete)


def feature_names(estimator: Any) -> list[str] | None:
    """The feature names the model was fitted with (None when fitted on unnamed arrays)."""
    names = getattr(estimator, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def open_for_model(path: str, estimator: Any, *, target: str | None, need_target: bool) -> Any:
    """Open and check a data file for a fitted model: its feature columns (by name when both the
    model and the file name them), the target if asked.

    Parameters
    ----------
    path : str
    estimator : fitted estimator
    target : str or None
        ``--target``; None: the default for the file (see below) or no target.
    need_target : bool
        The command needs targets (evaluate). Without ``--target``, a file with named columns uses the
        one column that is not a model feature, else its last column.

    Returns
    -------
    rfmdist.cli.tables.Table
        Checked (one pass), ``X`` row-chunked.
    """
    from rfmdist.cli import tables

    names = feature_names(estimator)
    by_name = names is not None and tables.detect_format(path) in ("csv", "parquet")
    if target is None and need_target:
        target = tables.DEFAULT_TARGET
        if by_name:
            columns = _columns(path)
            others = [c for c in columns if c not in names]
            if len(others) == 1:
                target = others[0]
    table = tables.open_table(path, target=target, features=names if by_name else None)
    expected = int(estimator.n_features_in_)
    found = len(table.feature_names)
    if found != expected:
        hint = (
            "; if one column is the target, pass --target COL"
            if found == expected + 1 and table.target_name is None
            else ""
        )
        raise ValueError(
            f"Expected {expected} feature columns in {path!r} (as in fit), found {found}{hint}; pass "
            "data with the columns the model was fitted on."
        )
    return tables.check_table(table)


def _columns(path: str) -> list[str]:
    from rfmdist.cli import tables

    table = tables.open_table(path, target=None)
    return list(table.feature_names)


def chunked_for(estimator: Any, X: Any, workers: int = 1) -> Any:
    """``X`` rechunked to about 100 ms of kernel work per chunk for this model (in its kernel
    dtype), at least one chunk per worker (:func:`rfmdist.plan.row_chunks`)."""
    from rfmdist.plan import row_chunks

    m = int(np.shape(estimator.centers_)[0])
    rows = row_chunks(int(X.shape[0]), m, int(X.shape[1]), estimator.model_.dtype, workers)
    return X.rechunk({0: rows, 1: -1})


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or an exit-2 error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "Expected matplotlib for --plot, found it missing; fix: pip install 'rfmdist[plot]' "
            "(or drop --plot)."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
