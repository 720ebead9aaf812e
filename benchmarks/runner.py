"""The runner of the tabular benchmarks: RFM against a Laplace kernel, a random forest and gradient
boosting, on every set of a collection. ``benchmarks/uci121.py`` and ``benchmarks/grinsztajn.py``
plug into it with a :class:`benchmarks.collection.Collection` (which sets there are, how one set is
loaded and split, how a chosen model is tested, what their results section says) and call
:func:`main`. The runner does the rest, the same way for both:

- :func:`main` parses the command line, picks the sets (``--sets``, ``--max-n``), runs them
  (:func:`run_set`, ``--jobs J`` sets at a time in joblib worker processes) and publishes;
- :mod:`benchmarks.selection` chooses, fits and tests the methods on one set;
- :mod:`benchmarks.report` writes the CSV, its ``.meta.json``, the summaries and the results
  section, and regenerates them from earlier runs (``--merge a.csv,b.csv`` runs nothing).

Every set runs under ``--threads`` BLAS / OpenMP threads (threadpoolctl; 0 leaves the libraries'
defaults). The exit status is 0 when every method ran on every set, 1 when some failed (their rows
carry the error; the outputs are written anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from benchmarks import report
from benchmarks.collection import Collection
from benchmarks.common import machine_info
from benchmarks.datasets import resolve_data_root
from benchmarks.report import DEFAULT_RESULTS_MD
from benchmarks.selection import (
    DEFAULTS_METHOD,
    METHODS,
    RF_GRID,
    RF_N_ESTIMATORS,
    error_text,
    estimator_factories,
    result_row,
    run_methods,
)

__all__ = [
    "DEFAULTS_METHOD",
    "METHODS",
    "RF_GRID",
    "configure_logging",
    "main",
    "parse_args",
    "run_set",
]
"""The runner, and the method names and grid that its tests check rows against."""

logger = logging.getLogger(__name__)


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


def run_set(
    collection: Collection,
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
    collection : Collection
        The set's collection.
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
        The collection's own options (:meth:`Collection.options`).

    Returns
    -------
    list of dict
        One row per method with the keys of :attr:`Collection.columns`.
    """
    from threadpoolctl import threadpool_limits

    configure_logging(log_level)
    val_column = collection.val_column
    limits = threadpool_limits(limits=threads) if threads > 0 else contextlib.nullcontext()
    with limits:
        try:
            task = collection.prepare(name, root, seed=seed, **options)
        except Exception as err:
            logger.exception("%s: loading failed", name)
            failed = error_text(err)
            return [result_row({"dataset": name}, m, val_column, error=failed) for m in METHODS]
        makers = estimator_factories(
            task.classification, seed=seed, rf_trees=rf_trees, max_centers=max_centers
        )
        rows = run_methods(name, task, makers, val_column=val_column)
    for r in rows:
        logger.info(
            "%s %-13s val %.4f test %.4f (%.1fs)%s",
            name,
            r["method"],
            r[val_column],
            r.get(collection.score, np.nan),
            r["seconds"],
            " ERROR " + r["error"] if r["error"] else "",
        )
    return rows


def parse_args(collection: Collection, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of ``collection`` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog=f"python benchmarks/{collection.name}.py", description=collection.description
    )
    parser.add_argument(
        "--sets", help=f"comma-separated names, e.g. {collection.set_examples} (default: all)"
    )
    parser.add_argument("--max-n", type=int, help="skip sets with more rows (default: none)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="sets run in parallel (joblib worker processes)"
    )
    parser.add_argument("--out", default=f"{collection.name}_results.csv", help="per-set CSV")
    parser.add_argument(
        "--data-root",
        help=f"folder holding {collection.name}/ (default: $RFMDIST_DATA, else "
        "<repo>/../shared/data)",
    )
    parser.add_argument(
        "--results-md",
        default=str(DEFAULT_RESULTS_MD),
        help=f"markdown file whose {collection.name} section is (re)generated; '' to skip",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random_state of every method (and split seed)"
    )
    collection.add_arguments(parser)
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
    for opt in ("jobs", "rf_trees", *collection.positive_options):
        if getattr(args, opt) < 1:
            parser.error(
                f"--{opt.replace('_', '-')}: expected an integer >= 1, found {getattr(args, opt)}."
            )
    return args


def _requested(
    collection: Collection, sets: str | None, summary: pd.DataFrame, root: Path
) -> list[str]:
    """The names given to ``--sets`` (None: every set of ``summary``), checked against it."""
    if not sets:
        return list(summary.index)
    names = [collection.set_name(s) for s in sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in summary.index]
    if unknown:
        raise SystemExit(
            f"--sets: expected names from {root / collection.name / 'SUMMARY.tsv'} such as "
            f"{collection.set_examples}, found unknown {unknown}. Fix: check the spelling."
        )
    return names


def _run_sets(
    run: Callable[[str], list[dict[str, Any]]],
    to_run: Sequence[str],
    *,
    jobs: int,
    progress: Callable[[list[dict[str, Any]]], pd.DataFrame],
) -> pd.DataFrame:
    """``run`` every set (``jobs`` at a time), recording ``progress`` after each; the rows."""
    rows: list[dict[str, Any]] = []
    progress(rows)
    results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
        delayed(run)(name) for name in to_run
    )
    for i, set_rows in enumerate(results, 1):
        logger.info("[%d/%d] done %s", i, len(to_run), set_rows[0]["dataset"])
        rows.extend(set_rows)
        progress(rows)
    return progress(rows)


def _run(
    collection: Collection,
    args: argparse.Namespace,
    *,
    command: str,
    root: Path,
    names: Sequence[str],
    skipped: dict[str, int],
) -> int:
    """Run the sets of ``names`` not in ``skipped`` (name: rows) and publish; the exit status."""
    to_run = [n for n in names if n not in skipped]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = collection.options(args)
    common = {"seed": args.seed, "rf_trees": args.rf_trees, "max_centers": args.max_centers}
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "runner": collection.name,
        "command": command,
        "started_utc": report.now_utc(),
        "machine": machine_info(),
        "max_n": args.max_n,
        **common,
        **options,
        "jobs": args.jobs,
        "threads": args.threads,
        "sets_run": to_run,
        "skipped": skipped,
    }
    run = partial(
        run_set,
        collection,
        root=root,
        threads=args.threads,
        log_level=args.log_level,
        **common,
        **options,
    )
    progress = partial(
        report.write_progress, out, columns=collection.columns, names=names, meta=meta, start=start
    )
    frame = _run_sets(run, to_run, jobs=args.jobs, progress=progress)
    elapsed = time.perf_counter() - start
    logger.info("wrote %s (%d rows) in %.1f s", out, len(frame), elapsed)
    meta.pop("stopped")
    meta["finished_utc"] = report.now_utc()
    meta["elapsed_s"] = round(elapsed, 1)
    report.write_run_meta(out, meta)
    notes = args.note or ()
    report.publish_run(
        collection, frame, meta, elapsed=elapsed, results_md=args.results_md, notes=notes
    )
    failed = frame["error"].ne("")
    if failed.any():
        print(f"Failed: {failed.sum()} (set, method) pairs; see the 'error' column of {out}")
    return 0 if not failed.any() else 1


def main(collection: Collection, argv: Sequence[str] | None = None) -> int:
    """Run the benchmark of ``collection`` (or ``--merge``); see the module docstring.

    Parameters
    ----------
    collection : Collection
        The plug-in (e.g. :class:`benchmarks.uci121.UCI121`).
    argv : sequence of str, optional
        The command line's arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 when every method ran on every set, 1 when some failed.
    """
    args = parse_args(collection, argv)
    configure_logging(args.log_level)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", f"benchmarks/{collection.name}.py", *argv_list])
    root = resolve_data_root(args.data_root)
    summary = collection.read_summary(root)
    if args.merge:
        paths = [Path(p.strip()) for p in args.merge.split(",") if p.strip()]
        return report.merge(
            collection,
            paths,
            command=command,
            root=root,
            summary=summary,
            results_md=args.results_md,
            notes=args.note or (),
        )
    names = _requested(collection, args.sets, summary, root)
    rows = {name: collection.rows(name, summary, root) for name in names}
    skipped = [n for n in names if args.max_n is not None and rows[n] > args.max_n]
    if skipped:
        logger.info("skipping %d sets with n > %d: %s", len(skipped), args.max_n, skipped)
    skipped_rows = {n: rows[n] for n in skipped}
    return _run(collection, args, command=command, root=root, names=names, skipped=skipped_rows)
