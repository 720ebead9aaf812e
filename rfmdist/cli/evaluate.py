"""``rfmdist evaluate``: scores of a fitted model on labelled data (MSE, RMSE, R²; or accuracy)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from rfmdist.cli.cluster import (
    add_cluster_arguments,
    check_cluster_arguments,
    cluster_client,
)
from rfmdist.cli.common import chunked_for, load_model, open_for_model
from rfmdist.dask_cluster import n_workers


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command."""
    parser = sub.add_parser(
        "evaluate",
        help="Score a fitted model on labelled data (regression: MSE, RMSE, R2; classes: accuracy).",
        description=(
            "Score a model written by 'rfmdist fit' on a labelled data file. Without --target, a "
            "file with named columns uses the one column that is not a model feature, else its "
            "last column (the array 'y' of a Zarr group or .npz file)."
        ),
    )
    parser.add_argument("--model", required=True, metavar="MODEL.zarr", help="Model store.")
    parser.add_argument("--data", required=True, metavar="PATH", help="Labelled data file.")
    parser.add_argument("--target", metavar="COL", help="Target column name or index.")
    parser.add_argument("--json", action="store_true", help="Print the scores as one JSON object.")
    add_cluster_arguments(parser, local_default="Dask's threaded scheduler in this process")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check, predict, score and print; returns the exit code."""
    check_cluster_arguments(args)
    estimator = load_model(args.model)
    table = open_for_model(args.data, estimator, target=args.target, need_target=True)
    with cluster_client(args, local=False) as client:
        X = chunked_for(estimator, table.X, n_workers(client))
        pred = np.asarray(estimator.predict(X).compute())
    scores = score(estimator, pred, table.y)
    scores = {"model": args.model, "data": args.data, "target": table.target_name, **scores}
    if args.json:
        sys.stdout.write(json.dumps(scores) + "\n")
    else:
        for key, value in scores.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value
            sys.stdout.write(f"{key:>10}: {shown}\n")
    return 0


def score(estimator: Any, pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Scores of predictions against targets.

    Parameters
    ----------
    estimator : fitted estimator (a classifier has ``classes_``)
    pred, y : numpy.ndarray, shape (n,)

    Returns
    -------
    dict
        ``task``, ``n`` and ``accuracy`` (classification) or ``mse``, ``rmse``, ``r2``.

    Examples
    --------
    >>> s = score(object(), np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    >>> round(s["mse"], 4), round(s["r2"], 4)
    (0.3333, 0.7857)
    """
    n = len(y)
    if hasattr(estimator, "classes_"):
        truth = np.asarray(y)
        if truth.dtype.kind == "O" or np.asarray(estimator.classes_).dtype.kind == "O":
            truth, pred = truth.astype(str), np.asarray(pred).astype(str)
        return {"task": "classification", "n": n, "accuracy": float(np.mean(pred == truth))}
    truth = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64).reshape(truth.shape)
    mse = float(np.mean((pred - truth) ** 2))
    spread = float(np.mean((truth - truth.mean()) ** 2))
    r2 = 1.0 - mse / spread if spread > 0 else None  # constant targets: R² undefined
    return {"task": "regression", "n": n, "mse": mse, "rmse": float(np.sqrt(mse)), "r2": r2}
