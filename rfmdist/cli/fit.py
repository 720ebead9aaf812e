"""``rfmdist fit``: fit an RFM on a data file, on a Dask cluster, into a resumable model store.

Everything that can be checked is checked before a cluster is started or contacted: the options, the
output paths, an existing model at ``--out``, the data files (format, columns, one pass for missing
values and the target) and that training and validation features agree. Then the fit runs on the
cluster and commits every round to ``--out`` (``--resume`` continues an interrupted fit).

Task choice (``--task auto``): classification when the target is not numeric (strings, booleans,
categories) or is integer-valued (integer dtype, or floats that are all whole numbers) with at most
:data:`MAX_AUTO_CLASSES` distinct values; regression otherwise. The choice and its reason are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from rfmdist.cli.cluster import (
    add_cluster_arguments,
    check_cluster_arguments,
    cluster_client,
    has_bokeh,
)
from rfmdist.cli.errors import UsageError
from rfmdist.cli.options import add_estimator_options, estimator_params

logger = logging.getLogger(__name__)

#: ``--task auto``: integer-valued targets with at most this many distinct values are classes.
MAX_AUTO_CLASSES = 50


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``fit`` sub-command."""
    parser = sub.add_parser(
        "fit",
        help="Fit an RFM on a data file (Zarr, .npy/.npz, CSV, Parquet) into a model store.",
        description=(
            "Fit a Recursive Feature Machine on a Dask cluster and write the model to a Zarr store, "
            "one committed round at a time (--resume continues an interrupted fit). "
            "--task auto picks classification for non-numeric targets and for integer-valued "
            f"targets with at most {MAX_AUTO_CLASSES} distinct values, regression otherwise."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train", required=True, metavar="PATH", help="Training data file.")
    data.add_argument(
        "--target",
        metavar="COL",
        default=None,
        help="Target column name or index (default: the last column; the array 'y' of a Zarr "
        "group or .npz file).",
    )
    data.add_argument("--val", metavar="PATH", help="Validation data: the best round is kept.")
    data.add_argument(
        "--chunk-rows",
        type=int,
        metavar="N",
        help="Rows per Dask chunk (default: about 100 ms of kernel work per chunk, at least one "
        "chunk per worker).",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="MODEL.zarr", help="Model store to write.")
    out.add_argument(
        "--resume",
        action="store_true",
        help="Continue the interrupted fit in --out (or load it if complete; start if absent).",
    )
    out.add_argument(
        "--overwrite", action="store_true", help="Replace a model at --out when the fit completes."
    )
    out.add_argument(
        "--report", metavar="FILE.html", help="Write a Dask performance report of the fit."
    )
    out.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="Progress bars (rounds, CG iterations with the time left, Dask's bar per pass); "
        "auto: when the output is a terminal.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--task",
        choices=["auto", "regression", "classification"],
        default="auto",
        help="Default: auto (see above).",
    )
    add_estimator_options(model)
    add_cluster_arguments(parser, local_default="a local cluster of worker processes on 127.0.0.1")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check everything, start or reach the cluster, fit; returns the exit code."""
    from rfmdist.cli import tables

    started = time.perf_counter()
    check_cluster_arguments(args)
    estimator_params = _estimator_params(args)
    _check_outputs(args)
    target = tables.DEFAULT_TARGET if args.target is None else args.target
    train = tables.open_table(args.train, target=target)
    val = None
    if args.val is not None:
        val_target = train.target_name if train.named or args.target is not None else target
        val = tables.open_table(args.val, target=val_target)
        tables.check_same_features(train, val)
    train = tables.check_table(train)
    if val is not None:
        val = tables.check_table(val)
    task, reason = choose_task(train.y) if args.task == "auto" else (args.task, "as requested")
    _check_target_for_task(train, task)
    sys.stdout.write(f"task: {task} ({reason})\n")
    sys.stdout.write(
        f"training data: {train.n_rows} rows x {len(train.feature_names)} features from "
        f"{train.path} (target {train.target_name!r})"
        + (f"; validation: {val.n_rows} rows from {val.path}" if val is not None else "")
        + "\n"
    )
    sys.stdout.flush()
    estimator = _make_estimator(task, estimator_params)
    if train.named:
        estimator.feature_names_in_ = np.asarray(train.feature_names, dtype=object)
    with cluster_client(args) as client:
        X = _chunked(train.X, estimator, client, args)
        X_val = None if val is None else val.X.rechunk({0: X.chunks[0][0]})
        progress = _progress(args.progress)
        try:
            with _performance_report(args.report), _passes(progress):
                estimator.fit(
                    X,
                    train.y,
                    eval_set=None if val is None else (X_val, val.y),
                    store=args.out,
                    resume=args.resume,
                    overwrite=args.overwrite,
                    progress=progress,
                )
        except Exception as err:
            if scheduler_lost(client):
                # Closing a client that is still trying to reconnect makes distributed log the
                # cancelled reconnection with its traceback: expected now, and not the user's news.
                logging.getLogger("distributed").setLevel(logging.CRITICAL)
                raise SchedulerLostError(_lost_message(client, args, err)) from err
            raise
    _summary(estimator, args, time.perf_counter() - started)
    return 0


def _progress(mode: str) -> Any:
    """The terminal progress display (on stdout) for ``--progress``, or None (logging only)."""
    from rfmdist.progress import TerminalProgress

    on = mode == "on" or (mode == "auto" and sys.stdout.isatty())
    return TerminalProgress(sys.stdout) if on else None


def _passes(progress: Any) -> Any:
    """With the terminal display, Dask's bar for every pass over the cluster's data."""
    return contextlib.nullcontext() if progress is None else progress.passes()


class SchedulerLostError(RuntimeError):
    """The Dask scheduler went away during the fit (exit 1; the store keeps its committed rounds)."""


def scheduler_lost(client: Any) -> bool:
    """True when ``client`` is no longer connected to its scheduler."""
    return getattr(client, "status", "running") not in ("running", "newly-created")


def _lost_message(client: Any, args: argparse.Namespace, err: BaseException) -> str:
    from rfmdist.store import committed_rounds

    try:
        rounds = f"its {committed_rounds(args.out)} committed rounds"
    except Exception:  # the store itself is unreadable: say so rather than fail again
        rounds = "what it committed"
    address = getattr(getattr(client, "scheduler", None), "address", None) or "its address"
    return (
        f"lost the Dask scheduler at {address} during the fit ({type(err).__name__}); the store "
        f"at {args.out} keeps {rounds}: start a scheduler and workers again and rerun the same "
        "command with --resume (the resumed fit equals an uninterrupted one)"
    )


def choose_task(y: np.ndarray) -> tuple[str, str]:
    """The ``--task auto`` rule.

    Parameters
    ----------
    y : numpy.ndarray, shape (n,)

    Returns
    -------
    task : {'classification', 'regression'}
    reason : str

    Examples
    --------
    >>> choose_task(np.array(["a", "b", "a"]))[0]
    'classification'
    >>> choose_task(np.array([0.0, 1.0, 1.0, 0.0]))
    ('classification', 'integer-valued target with 2 distinct values (<= 50)')
    >>> choose_task(np.array([0.5, 1.0, 2.25]))[0]
    'regression'
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iufc":
        return "classification", f"target values are not numbers (dtype {y.dtype})"
    if y.dtype.kind == "c":
        return "regression", "complex target"
    whole = y.dtype.kind in "iu" or bool(np.all(np.mod(y, 1) == 0))
    if not whole:
        return "regression", "target has non-integer values"
    distinct = len(np.unique(y))
    if distinct <= MAX_AUTO_CLASSES:
        return (
            "classification",
            f"integer-valued target with {distinct} distinct values (<= {MAX_AUTO_CLASSES})",
        )
    return (
        "regression",
        f"integer-valued target with {distinct} distinct values (> {MAX_AUTO_CLASSES}); "
        "pass --task classification to treat them as classes",
    )


def _check_target_for_task(train: Any, task: str) -> None:
    if task == "regression" and np.asarray(train.y).dtype.kind not in "iufb":
        raise UsageError(
            f"Expected a numeric target for --task regression, found target {train.target_name!r} "
            f"of dtype {np.asarray(train.y).dtype} in {train.path!r}; use --task classification "
            "or another --target."
        )


def _estimator_params(args: argparse.Namespace) -> dict[str, Any]:
    """Estimator parameters from the options (:mod:`rfmdist.cli.options`), validated against the
    estimators' rules."""
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise UsageError(f"Expected --chunk-rows >= 1, found {args.chunk_rows}.")
    return estimator_params(args)


def _check_outputs(args: argparse.Namespace) -> None:
    from rfmdist.cli import tables

    if args.resume and args.overwrite:
        raise UsageError(
            "Expected at most one of --resume and --overwrite, found both; --resume continues the "
            "fit in --out, --overwrite starts over and replaces it."
        )
    tables.check_output_path(args.out, what="model", allow_existing=True)
    _check_no_other_writer(args.out)
    if (
        not tables.is_url(args.out)
        and os.path.exists(args.out)
        and not (args.resume or args.overwrite)
    ):
        raise FileExistsError(
            f"Expected no model at --out {args.out!r}, found one already; pass --overwrite to "
            "replace it when the new fit completes, --resume to continue an interrupted fit, or "
            "choose another path."
        )
    if args.report is not None:
        tables.check_output_path(args.report, what="report", allow_existing=True)
        if not has_bokeh():
            raise UsageError(
                "Expected bokeh for --report (Dask draws its performance report with it), found it "
                "missing; fix: pip install bokeh (or drop --report)."
            )


def _check_no_other_writer(out: str) -> None:
    """Refuse at once (before any data is read or cluster started) when another fit holds the
    store's lock; the fit takes the lock itself later (:mod:`rfmdist.locking`)."""
    from rfmdist.locking import StoreLock, StoreLockedError
    from rfmdist.store import store_location

    lock = StoreLock(store_location(out).url)
    owner = lock.owner()
    if owner is not None and not lock.is_stale(owner):
        raise StoreLockedError(
            f"Expected no other fit writing --out {out!r}, found one running (host "
            f"{owner.get('host')}, pid {owner.get('pid')}; lock file {lock.path}); wait for it to "
            "finish or stop it (a fit whose process is gone is taken over by --resume)."
        )


def _make_estimator(task: str, params: dict[str, Any]) -> Any:
    from rfmdist import RFMClassifier, RFMRegressor

    cls = RFMClassifier if task == "classification" else RFMRegressor
    return cls(**params)


def _chunked(X: Any, estimator: Any, client: Any, args: argparse.Namespace) -> Any:
    """``X`` in the row chunks of the fit's plan (``estimator.plan``: ``--chunk-rows``, or about
    0.1 s of kernel work each for the centers the fit will use and at least one per worker; a
    resumed run's stored plan), logged. Without validation data the rounds see the training part
    of an internal split."""
    plan = estimator.plan(
        X.shape,
        client,
        has_validation=args.val is not None,
        chunk_rows=args.chunk_rows,
        resume_from=_run_to_resume(args),
    )
    chunked = X.rechunk({0: int(plan.chunk_rows), 1: -1})
    logger.info(
        "%d row chunks of %d rows (for about %s centers) over %d workers (%s); AGOP on %s rows a "
        "round",
        chunked.numblocks[0],
        chunked.chunks[0][0],
        f"{plan.centers:,}",
        plan.workers,
        plan.capacity,
        f"{plan.agop_rows:,}",
    )
    return chunked


def _run_to_resume(args: argparse.Namespace) -> Any:
    """The attributes of the run ``--resume`` continues, whose plan it keeps (None: none there,
    or not resuming); its arrays are read once, by the fit."""
    from rfmdist.exceptions import StoreError
    from rfmdist.store import read_run_attributes

    if not args.resume or args.out is None:
        return None
    try:
        return read_run_attributes(args.out)
    except StoreError:
        return None  # something the fit will refuse, saying why


@contextlib.contextmanager
def _performance_report(path: str | None) -> Any:
    if path is None:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=path):
        yield
    logger.info("performance report written to %s", path)


def _summary(estimator: Any, args: argparse.Namespace, seconds: float) -> None:
    out = sys.stdout
    metric = "accuracy" if hasattr(estimator, "classes_") else "MSE"
    out.write(f"\n{'round':>5}  {'train ' + metric:>14}  {'val ' + metric:>12}  {'seconds':>8}\n")
    for h in estimator.history_:
        val = "-" if h.get("val_score") is None else f"{h['val_score']:.6g}"
        out.write(
            f"{h['round']:>5}  {h['train_score']:>14.6g}  {val:>12}  {h.get('seconds', 0):>8.2f}\n"
        )
    stopped = estimator.history_[-1].get("stopped") if estimator.history_ else None
    refit = getattr(estimator, "refit_", None)
    out.write(
        f"best round: {estimator.best_iter_}"
        + (f" (rounds stopped: {stopped})" if stopped else "")
        + (f"; refitted on all {refit['rows']} rows" if refit else "")
        + f"; model written to {args.out}; {seconds:.1f} s in all\n"
    )
