"""Wide data (d >> n): the dense feature matrix M against its factored form, cell by cell.

M is either dense (d x d) or factored, ``M = A^T A`` with ``A`` of shape (r, d); each cell records
the form and rank its fit used, the fit seconds, the peak RSS and the test score.

One command, printing a table::

    python -m benchmarks.wide_data [--d 784 3072 20000 27648] [--n 200 2000 20000]
        [--kinds synthetic-iters1 synthetic-defaults digits] [--forms auto dense factored]
        [--timeout 600] [--skip-dense-above 3072] [--json benchmarks/out/wide_data.json]
        [--results-md benchmarks/RESULTS.md]

The kinds:

- ``synthetic-iters1`` and ``synthetic-defaults``: X ~ N(0, 1) float32 of shape (n, d), y = x0 (the
  first column); ``RFMRegressor(iters=1, random_state=0)`` and ``RFMRegressor(random_state=0)``.
  Test score: R^2 on 1,000 held-out rows drawn the same way (another seed).
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images) upscaled bilinearly
  (``scipy.ndimage.zoom``, order 1) to the square canvas nearest to d: grayscale when d is a
  square (28x28 = 784), else 3 identical channels (32x32x3 = 3,072, 82x82x3 = 20,172 for 20,000,
  96x96x3 = 27,648), pixels in [0, 1], float32. A seeded permutation holds out the same 397 test
  rows for every n; the fit trains on the first min(n, 1,400) others.
  ``RFMClassifier(random_state=0)``. Test score: accuracy. An n above 2,000 is recorded as
  skipped (the set has 1,797 rows).

The forms: ``auto`` runs with no ``RFMDIST_METRIC`` in the environment (what users get),
``dense`` and ``factored`` with ``RFMDIST_METRIC`` set to that form. Every cell runs in a fresh
child process (``--one``), so its peak RSS (``VmHWM``, :func:`own_peak_kib`) is its own; the parent stops a child
after ``--timeout`` seconds and records the last line of a failing child's error. A skipped cell
says why: dense M above ``--skip-dense-above`` features, X alone over 40% of the machine's memory,
or the same kind and form timed out (or was killed) on a cell no larger in n and d. Before the
cells, one small fit per kind and form (n = 100, d = 256, not recorded) compiles what the fits
need, so that the first cell's fit seconds do not include it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import PeakMemory, command_line, machine_line, table, write_section

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)

KINDS = ("synthetic-iters1", "synthetic-defaults", "digits")
FORMS = ("auto", "dense", "factored")
METRIC_ENV_VAR = "RFMDIST_METRIC"
TEST_ROWS = 1_000  # held-out rows of the synthetic kinds
DIGITS_ROWS = 1_797  # load_digits
DIGITS_TEST_ROWS = 397  # 1,797 - 1,400: the digits' held-out rows, the same for every n
DIGITS_MAX_N = 2_000  # a larger n would train on the same 1,400 rows again: skipped
MEMORY_FRACTION = 0.4  # a cell whose X alone needs more of the machine's memory is skipped
WARM_UP = (100, 256)  # n and d of the small fits (not recorded) run before the table
SECTION_TITLE = "Wide data (d >> n): dense against factored M"

Cell = dict[str, Any]


# --- the data -------------------------------------------------------------------------------------


def canvas_shape(d: int) -> tuple[int, int]:
    """The canvas nearest to ``d`` features: (side, 1) when ``d`` is a square, else (side, 3).

    Parameters
    ----------
    d : int
        The requested number of features.

    Returns
    -------
    side : int
        The canvas is ``side x side`` pixels.
    channels : int
        1 (grayscale) or 3 (RGB, the gray image replicated).
    """
    side = math.isqrt(d)
    if side * side == d:
        return side, 1
    return max(1, round(math.sqrt(d / 3))), 3


def synthetic(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal float32 rows and their first column as the target.

    Returns
    -------
    X : numpy.ndarray, shape (n, d), float32
    y : numpy.ndarray, shape (n,), float32
    """
    X = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return X, X[:, 0].copy()


def upscaled_digits(d: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upscaled bilinearly to the canvas :func:`canvas_shape` gives.

    Returns
    -------
    X : numpy.ndarray, shape (1797, side * side * channels), float32, in [0, 1]
        Rows in height, width, channel order.
    y : numpy.ndarray, shape (1797,)
    """
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    side, channels = canvas_shape(d)
    images = zoom(digits.images / 16.0, (1, side / 8, side / 8), order=1)
    if images.shape[1:] != (side, side):
        raise RuntimeError(
            f"Expected zoom to give {side}x{side} images, found {images.shape[1:]}; "
            "fix canvas_shape or the zoom factors."
        )
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
    X = np.repeat(images[..., None], channels, axis=3).reshape(len(images), -1)
    return X, digits.target


def digits_split(n: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of the digits: the same last rows of a seeded permutation are
    the test rows for every ``n``; the first ``min(n, total - DIGITS_TEST_ROWS)`` are trained on."""
    rows = np.random.default_rng(0).permutation(total)
    pool = total - DIGITS_TEST_ROWS
    return rows[: min(n, pool)], rows[pool:]


def features_used(kind: str, d: int) -> int:
    """The features a cell of ``kind`` has for the requested ``d`` (the digits' canvas size)."""
    if kind != "digits":
        return d
    side, channels = canvas_shape(d)
    return side * side * channels


def x_bytes(kind: str, n: int, d: int) -> int:
    """Bytes of the cell's float32 X (train and test rows)."""
    rows = DIGITS_ROWS if kind == "digits" else n + TEST_ROWS
    return rows * features_used(kind, d) * 4


# --- one cell, in its own process -----------------------------------------------------------------


def metric_summary(history: Sequence[dict[str, Any]]) -> str:
    """The metric forms of the rounds, neighbours of one form merged, with the factor's rank (first
    and last of the run when it changed): ``"r0: identity; r1-5: factor r=180..47"``.

    Parameters
    ----------
    history : sequence of dict
        The estimator's ``history_``; a round without a ``"metric"`` record reads ``"-"``. The
        rank is the record's ``"rank"`` (else its ``"dim"``), shown for forms other than
        ``'dense'`` and ``'identity'`` (whose dimension is d).
    """

    def form_rank(record: dict[str, Any]) -> tuple[str, Any]:
        metric = record.get("metric") or {}
        form = str(metric.get("form", "-"))
        rank = metric.get("rank", metric.get("dim"))
        return form, (None if form in ("-", "dense", "identity") else rank)

    rounds = [form_rank(record) for record in history]
    if all(form == "-" for form, _ in rounds):
        return "- (not recorded)"
    parts, start = [], 0
    for t in range(1, len(rounds) + 1):
        if t == len(rounds) or rounds[t][0] != rounds[start][0]:
            form, first = rounds[start]
            last = rounds[t - 1][1]
            label = f"r{start}" if t - 1 == start else f"r{start}-{t - 1}"
            rank = "" if first is None else f" r={first}" + ("" if last == first else f"..{last}")
            parts.append(f"{label}: {form}{rank}")
            start = t
    return "; ".join(parts)


def own_peak_kib() -> int:
    """This process's peak resident set size so far, KiB (``VmHWM``: its own memory since its
    ``exec``; ``ru_maxrss`` would count the parent's that it was forked from)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_one(kind: str, n: int, d: int) -> dict[str, Any]:
    """Fit one cell in this process (the form comes from the environment); its measurements.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    n, d : int
        Requested training rows and features.

    Returns
    -------
    dict
        ``fit_seconds`` (``fit`` only), ``fit_peak_rss_kib`` (:func:`own_peak_kib` after ``fit``: data
        and fit), ``peak_rss_kib`` (at the end, after the test predictions),
        ``data_rss_kib`` (before ``fit``), ``score`` and ``score_name``, ``n_train``, ``d_used``,
        ``rounds``, ``best_iter``, ``metric`` (summary of ``history_``) and ``metrics`` (the raw
        ``history_[t]["metric"]`` records).
    """
    from sklearn.metrics import mean_squared_error, r2_score

    from rfmdist import RFMClassifier, RFMRegressor

    if kind == "digits":
        X_all, y_all = upscaled_digits(d)
        train, test = digits_split(n, len(X_all))
        X, y, X_test, y_test = X_all[train], y_all[train], X_all[test], y_all[test]
        del X_all
        model = RFMClassifier(random_state=0)
    else:
        X, y = synthetic(n, d, seed=0)
        X_test, y_test = synthetic(TEST_ROWS, d, seed=1)
        params = {"iters": 1} if kind == "synthetic-iters1" else {}
        model = RFMRegressor(random_state=0, **params)
    data_rss = own_peak_kib()
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    fit_rss = own_peak_kib()
    pred = model.predict(X_test)
    result: dict[str, Any] = {"fit_seconds": seconds, "n_train": len(X), "d_used": X.shape[1]}
    if kind == "digits":
        result.update(score=float(np.mean(pred == y_test)), score_name="accuracy")
    else:
        result.update(
            score=float(r2_score(y_test, pred)),
            score_name="R^2",
            mse=float(mean_squared_error(y_test, pred)),
        )
    history = model.history_
    result.update(
        rounds=len(history),
        best_iter=int(model.best_iter_),
        metric=metric_summary(history),
        metrics=[record.get("metric") for record in history],
        data_rss_kib=data_rss,
        fit_peak_rss_kib=fit_rss,
        peak_rss_kib=own_peak_kib(),
    )
    return result


# --- the parent: plan, run, record ----------------------------------------------------------------


def machine_memory_bytes() -> int:
    """Physical memory of this machine, bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def skip_reason(
    kind: str, n: int, d: int, form: str, dense_above: int, done: Sequence[Cell]
) -> str | None:
    """Why the cell is not run, or None to run it.

    Parameters
    ----------
    kind, n, d, form : str, int, int, str
        The cell.
    dense_above : int
        Forced dense M is skipped above this many features.
    done : sequence of dict
        The cells recorded so far (a timed-out or killed one of the same kind and form, no larger
        in n and d, makes this one skipped too).
    """
    if kind == "digits" and n > DIGITS_MAX_N:
        return (
            f"skipped: digits has {DIGITS_ROWS:,} rows (n = {DIGITS_MAX_N:,} already trains on "
            f"all {DIGITS_ROWS - DIGITS_TEST_ROWS:,} non-test rows)"
        )
    d_used = features_used(kind, d)
    if form == "dense" and d_used > dense_above:
        return (
            f"skipped: dense M would be {d_used**2 * 8 / 1e9:.1f} GB (float64), eigh of "
            f"d^3 = {float(d_used) ** 3:.1e} flop (--skip-dense-above {dense_above})"
        )
    need, memory = x_bytes(kind, n, d), machine_memory_bytes()
    if need > MEMORY_FRACTION * memory:
        return (
            f"skipped: X alone would be {need / 1e9:.1f} GB, over {MEMORY_FRACTION:.0%} of the "
            f"machine's {memory / 1e9:.1f} GB"
        )
    for cell in done:
        if (
            cell["kind"] == kind
            and cell["form"] == form
            and cell["n"] <= n
            and cell["d"] <= d
            and cell.get("status") in ("timed out", "killed")
        ):
            return (
                f"skipped: {cell['status']} at n = {cell['n']:,}, d = {cell['d']:,} "
                "(no larger cell of this kind and form is run)"
            )
    return None


def child_env(form: str) -> dict[str, str]:
    """The environment of a cell's child: no ``RFMDIST_*`` override but ``RFMDIST_DATA``, and
    ``RFMDIST_METRIC`` set to ``form`` unless it is ``'auto'`` (then unset: the users' row)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RFMDIST_") or k == "RFMDIST_DATA"
    }
    if form != "auto":
        env[METRIC_ENV_VAR] = form
    return env


def run_cell(kind: str, n: int, d: int, form: str, timeout: float) -> Cell:
    """Run one cell in a child process (its own session, so that a timeout ends its whole group).

    Returns
    -------
    dict
        ``status``: ``'ok'``, ``'timed out'``, ``'killed'`` (by a signal, e.g. out of memory) or
        ``'failed'``; ``note`` says how; ``sampled_peak_rss_kib`` is the child's VmHWM as polled
        from here (the only peak known for a child that did not finish), with the child's report
        merged in when it finished.
    """
    command = [sys.executable, "-m", "benchmarks.wide_data", "--one", kind, str(n), str(d)]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(form),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    memory = PeakMemory(proc.pid, interval=0.2)
    memory.start()
    cell: Cell = {"kind": kind, "n": n, "d": d, "form": form, "load_before": os.getloadavg()[0]}
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
        stdout, stderr = proc.communicate()
    except BaseException:  # interrupted: the child's session would not hear Ctrl-C
        os.killpg(proc.pid, signal.SIGKILL)
        memory.stop()
        raise
    peaks = memory.stop()
    if peaks:
        cell["sampled_peak_rss_kib"] = max(peak for _, peak in peaks) * 1024
    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    if timed_out:
        cell.update(status="timed out", note=f"timed out (> {timeout:g} s)")
    elif proc.returncode == 0:
        cell.update(status="ok", note="", **json.loads(stdout.strip().splitlines()[-1]))
    elif proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        cell.update(status="killed", note=f"killed by {name}" + (f"; {last}" if last else ""))
    else:
        cell.update(status="failed", note=last or f"exit code {proc.returncode}")
    return cell


def table_row(cell: Cell) -> list[object]:
    """One markdown row of a recorded cell."""
    peak_kib = cell.get("peak_rss_kib", cell.get("sampled_peak_rss_kib"))
    notes = [cell["note"]] if cell.get("note") else []
    if cell.get("status") == "ok":
        if cell["kind"] == "digits":
            side, channels = canvas_shape(cell["d"])
            canvas = f"{side}x{side}" + (f"x{channels}" if channels > 1 else "")
            notes.append(f"{canvas} canvas; train {cell['n_train']:,}, test {DIGITS_TEST_ROWS}")
        notes.append(f"{cell['rounds']} rounds, kept r{cell['best_iter']}")
    elif peak_kib is not None:
        notes.append("peak RSS sampled")
    d_used = cell.get("d_used", features_used(cell["kind"], cell["d"]))
    return [
        cell["kind"],
        f"{cell['n']:,}",
        f"{d_used:,}",
        cell["form"],
        cell.get("metric", "-"),
        f"{cell['fit_seconds']:.1f}" if "fit_seconds" in cell else "-",
        f"{cell['fit_peak_rss_kib'] / 1024**2:.2f}" if "fit_peak_rss_kib" in cell else "-",
        f"{peak_kib / 1024**2:.2f}" if peak_kib is not None else "-",
        f"{cell['score']:.4f} ({cell['score_name']})" if "score" in cell else "-",
        "; ".join(notes),
    ]


HEADER = [
    "kind",
    "n",
    "d",
    "form",
    "metric form used & rank (history_)",
    "fit s",
    "peak RSS GB (data + fit)",
    "peak RSS GB (+ predict)",
    "test score",
    "note",
]


def write_json(path: Path, argv: Sequence[str] | None, cells: Sequence[Cell]) -> None:
    """Rewrite the whole results file: the command, the machine and every cell so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command_line("benchmarks/wide_data.py", argv),
        "machine": machine_line(),
        "cells": list(cells),
    }
    path.write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, nargs="+", default=[784, 3_072, 20_000, 27_648])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 2_000, 20_000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="Seconds per cell (default 600)."
    )
    parser.add_argument(
        "--skip-dense-above",
        type=int,
        default=3_072,
        help="Skip the forced dense form above this many features (default 3072).",
    )
    parser.add_argument("--json", default="benchmarks/out/wide_data.json", help="Results file.")
    parser.add_argument("--results-md", default=None, help="Update this RESULTS.md section.")
    parser.add_argument(
        "--one", nargs=3, metavar=("KIND", "N", "D"), default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("rfmdist").setLevel(logging.WARNING)
    if args.one:
        kind, n, d = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(run_one(kind, n, d)), flush=True)  # the parent reads this line
        return 0
    json_path = Path(args.json)
    load = os.getloadavg()[0]
    if load > 0.5:
        logger.warning(
            "load average %.1f on %d CPUs before the cells: other work will slow the fits "
            "(each cell's load_before is in the JSON)",
            load,
            os.cpu_count(),
        )
    for kind in args.kinds:  # so that no cell pays for compiling (numba caches to disk)
        for form in args.forms:
            status = run_cell(kind, *WARM_UP, form, args.timeout)["status"]
            logger.info("warm-up fit of %s, form %s: %s", kind, form, status)
    cells: list[Cell] = []
    for n in sorted(args.n):
        for d in sorted(args.d):
            for kind in args.kinds:
                for form in args.forms:
                    reason = skip_reason(kind, n, d, form, args.skip_dense_above, cells)
                    if reason is not None:
                        cell: Cell = {
                            "kind": kind,
                            "n": n,
                            "d": d,
                            "form": form,
                            "status": "skipped",
                            "note": reason,
                        }
                    else:
                        logger.info("running %s n=%d d=%d form=%s", kind, n, d, form)
                        cell = run_cell(kind, n, d, form, args.timeout)
                    cells.append(cell)
                    logger.info("%s", {k: v for k, v in cell.items() if k != "metrics"})
                    write_json(json_path, argv, cells)
    text = table(HEADER, [table_row(cell) for cell in cells])
    legend = (
        "Test score: R^2 on 1,000 held-out rows (synthetic, y = x0) or accuracy on 397 held-out "
        "images (digits). Peak RSS: the child process's VmHWM (data, fit and predict); "
        "'sampled' when the child did not finish (its VmHWM polled every 0.2 s). Form 'auto': no "
        f"{METRIC_ENV_VAR} set; 'dense' / 'factored': {METRIC_ENV_VAR} set to it."
    )
    print(f"\n{machine_line()}\n\n{text}\n\n{legend}")
    write_section(
        args.results_md,
        "wide_data",
        SECTION_TITLE,
        command_line("benchmarks/wide_data.py", argv),
        f"{text}\n\n{legend}\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
