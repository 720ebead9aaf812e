"""``rfmdist predict``: predictions of a fitted model for a data file, written block by block."""

from __future__ import annotations

import argparse
import logging
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

logger = logging.getLogger(__name__)


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command."""
    parser = sub.add_parser(
        "predict",
        help="Predict with a fitted model; write .zarr, .npy, .csv or .parquet.",
        description=(
            "Predict with a model written by 'rfmdist fit'. The data's feature columns are matched by "
            "name when the model and the file name them (other columns are ignored), else by "
            "position. Predictions are computed and written chunk by chunk; the output format "
            "follows the extension of --out."
        ),
    )
    parser.add_argument("--model", required=True, metavar="MODEL.zarr", help="Model store.")
    parser.add_argument("--data", required=True, metavar="PATH", help="Data file to predict.")
    parser.add_argument(
        "--target",
        metavar="COL",
        help="A target column in the data to leave out (not needed when columns are named).",
    )
    parser.add_argument(
        "--out", required=True, metavar="PRED.(zarr|npy|csv|parquet)", help="Predictions file."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    add_cluster_arguments(parser, local_default="Dask's threaded scheduler in this process")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check, predict and write; returns the exit code."""
    from rfmdist.cli import tables

    check_cluster_arguments(args)
    tables.detect_format(args.out, formats=tables.OUTPUT_FORMATS)
    tables.check_output_path(args.out, what="predictions", overwrite=args.overwrite)
    tables.check_input_path(args.data)
    estimator = load_model(args.model)
    table = open_for_model(args.data, estimator, target=args.target, need_target=False)
    with cluster_client(args, local=False) as client:
        X = chunked_for(estimator, table.X, n_workers(client))
        pred = predictions(estimator, X)
        columns = (
            ["prediction"] if pred.ndim == 1 else [f"prediction_{j}" for j in range(pred.shape[1])]
        )
        tables.write_predictions(pred, args.out, columns=columns)
    sys.stdout.write(f"wrote {table.n_rows} predictions to {args.out}\n")
    return 0


def predictions(estimator: Any, X: Any) -> Any:
    """Lazy predictions in a dtype every output format stores (class labels as fixed-width text).

    Parameters
    ----------
    estimator : fitted estimator
    X : dask.array.Array, shape (n, d)

    Returns
    -------
    dask.array.Array, shape (n,) or (n, c)
    """
    from rfmdist.cli import tables

    pred = estimator.predict(X)
    classes = getattr(estimator, "classes_", None)
    if classes is not None and np.asarray(classes).dtype.kind == "O":
        dtype = tables.storable_labels(classes).dtype
        pred = pred.map_blocks(lambda b: np.asarray(b).astype(dtype), dtype=dtype)
    return pred
