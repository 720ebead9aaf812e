"""Check the Deep Neural Feature Ansatz (NFA) on a trained NumPy MLP.

The NFA (Radhakrishnan et al., arXiv:2212.13881) says that after training the first layer Gram
matrix ``W1^T W1`` of a fully connected network is proportional to ``AGOP^{1/2}``, the square root
of the network's average gradient outer product ``mean_x J(x)^T J(x)``. This script trains the
``d -> 256 -> 256 -> c`` ReLU network of :mod:`rfmdist.nfa` (Adam on the MSE, one-hot targets for
classification) and reports the Pearson correlation of the entries of ``W1^T W1`` with
``AGOP^{1/2}`` and with ``AGOP``, at initialisation and after training, with the test metric.
With ``d`` much smaller than the width both matrices are close to multiples of the identity at
initialisation, so the full-matrix correlation is already high there (about 0.9); the table
therefore also gives the correlation of the off-diagonal entries, which is free of that effect.

Datasets (``--dataset``, repeatable; default ``product``, ``lowrank`` and
``cardiotocography-3clases``):

* ``product``: synthetic regression ``y = x0 * x1``, ``x ~ N(0, I_20)``, 4000 train / 2000 test;
* ``lowrank``: synthetic regression ``y = relu(u.x) - (v.x)^2 / 2`` with orthonormal
  ``u, v`` in ``d = 20`` (a rank-2 target), 4000 train / 2000 test;
* any UCI-121 set name (e.g. ``cardiotocography-3clases``), read from the data root
  (``--data-root``, else ``$RFMDIST_DATA``, else ``../shared/data`` relative to the repository);
  trained on the train part of evaluation fold 0 of ``conxuntos_kfold.dat``, tested on its test
  part.

Each dataset is run once per ``--weight-decay`` value (default ``0`` and ``1``; decoupled,
AdamW-style, on the weight matrices): weight decay removes the part of the random initial weights
that training never touches, which is what makes ``W1^T W1`` follow the AGOP closely.

Usage::

    python examples/neural_feature_ansatz.py [--dataset NAME ...] [--data-root DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from rfmdist.nfa import MLP, fit_mlp, neural_feature_ansatz

logger = logging.getLogger("neural_feature_ansatz")

SYNTHETIC = ("product", "lowrank")
DEFAULT_DATASETS = ("product", "lowrank", "cardiotocography-3clases")


@dataclass
class Task:
    """A train/test split; ``n_classes`` is 0 for regression."""

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    n_classes: int


def default_data_root() -> Path:
    """``$RFMDIST_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("RFMDIST_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_task(name: str, *, d: int = 20, n_train: int = 4000, n_test: int = 2000) -> Task:
    """The synthetic regression tasks ``product`` and ``lowrank`` (see the module docstring)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_train + n_test, d))
    if name == "product":
        y = X[:, 0] * X[:, 1]
    elif name == "lowrank":
        Q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
        y = np.maximum(X @ Q[:, 0], 0.0) - 0.5 * (X @ Q[:, 1]) ** 2
    else:
        raise ValueError(f"unknown synthetic task {name!r}")
    Y = y[:, None]
    return Task(name, X[:n_train], Y[:n_train], X[n_train:], Y[n_train:], 0)


def _read_uci_local(name: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Minimal UCI-121 reader: ``X, y`` of ``fich1`` and fold 0 (train, test) indices."""
    folder = root / "uci121" / name
    meta = {}
    for line in (folder / f"{name}.txt").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    data = np.loadtxt(folder / meta["fich1"], skiprows=1)
    X, y = data[:, 1:-1], data[:, -1].astype(np.int64)
    lines = (folder / "conxuntos_kfold.dat").read_text().splitlines()
    train, test = (np.array(line.split(), dtype=np.int64) for line in lines[:2])
    return X, y, train, test


def uci_task(name: str, root: Path) -> Task:
    """Fold 0 of a UCI-121 set, with one-hot targets."""
    try:
        from benchmarks.datasets.uci121 import load_uci121

        ds = load_uci121(name, root)
        X, y = ds.X, ds.y
        train, test = ds.folds[0]
    except ImportError:
        X, y, train, test = _read_uci_local(name, root)
    n_classes = int(y.max()) + 1
    Y = np.eye(n_classes)[y]
    return Task(name, X[train], Y[train], X[test], Y[test], n_classes)


def load_task(name: str, root: Path) -> Task:
    """A synthetic task by name, else a UCI-121 set from ``root``."""
    return synthetic_task(name) if name in SYNTHETIC else uci_task(name, root)


def evaluate(mlp: MLP, task: Task) -> tuple[str, float]:
    """Test accuracy (classification) or test MSE (regression)."""
    pred = mlp.predict(task.X_test)
    if task.n_classes:
        return "acc", float(np.mean(pred.argmax(1) == task.Y_test.argmax(1)))
    return "mse", float(np.mean((pred - task.Y_test) ** 2))


def run(task: Task, *, weight_decay: float, args: argparse.Namespace) -> dict[str, object]:
    """Train one network and measure the NFA correlations before and after training."""
    d, c = task.X_train.shape[1], task.Y_train.shape[1]
    init = MLP.init(d, c, hidden=args.hidden, seed=args.seed)
    before = neural_feature_ansatz(init, task.X_train)
    start = time.perf_counter()
    mlp = fit_mlp(
        task.X_train,
        task.Y_train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        weight_decay=weight_decay,
        init=init,
    )
    seconds = time.perf_counter() - start
    after = neural_feature_ansatz(mlp, task.X_train)
    metric, value = evaluate(mlp, task)
    if task.n_classes:
        baseline = float(task.Y_test.mean(0).max())  # majority-class accuracy
    else:
        baseline = float(task.Y_test.var())  # MSE of the constant predictor
    logger.info(
        "%s wd=%g: %.1fs, init %.3f / %.3f, trained %.3f / %.3f, test %s %.4f",
        task.name,
        weight_decay,
        seconds,
        before["corr_sqrt"],
        before["corr_agop"],
        after["corr_sqrt"],
        after["corr_agop"],
        metric,
        value,
    )
    return {
        "dataset": task.name,
        "n_train": len(task.X_train),
        "d": d,
        "wd": weight_decay,
        "init_sqrt": before["corr_sqrt"],
        "init_agop": before["corr_agop"],
        "init_off": before["corr_sqrt_offdiag"],
        "trained_sqrt": after["corr_sqrt"],
        "trained_agop": after["corr_agop"],
        "trained_off": after["corr_sqrt_offdiag"],
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "seconds": seconds,
    }


def format_table(rows: list[dict[str, object]]) -> str:
    """Plain-text table of the results."""
    header = (
        f"{'dataset':<26}{'n':>6}{'d':>4}{'wd':>5}  {'init G~A^1/2':>12}{'G~A':>6}{'offdiag':>8}"
        f"  {'train G~A^1/2':>13}{'G~A':>6}{'offdiag':>8}  {'test':>12}{'baseline':>9}{'fit s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['dataset']:<26}{r['n_train']:>6}{r['d']:>4}{r['wd']:>5g}  {r['init_sqrt']:>12.3f}"
            f"{r['init_agop']:>6.3f}{r['init_off']:>8.3f}  {r['trained_sqrt']:>13.3f}"
            f"{r['trained_agop']:>6.3f}{r['trained_off']:>8.3f}  "
            f"{r['metric'] + ' ' + format(r['value'], '.4f'):>12}{r['baseline']:>9.4f}"
            f"{r['seconds']:>7.1f}"
        )
    lines.append(
        "G = W1^T W1, A = AGOP of the network on the training inputs; Pearson correlation of the "
        "matrix entries (offdiag: of G and A^1/2, off-diagonal entries only).\n"
        "baseline: majority-class accuracy / variance of the test targets."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        action="append",
        help=f"'product', 'lowrank' or a UCI-121 name; repeatable (default: {DEFAULT_DATASETS})",
    )
    p.add_argument("--data-root", type=Path, default=None, help="folder holding uci121/")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads (default 1: the matrices are small, more threads mostly add overhead)",
    )
    p.add_argument(
        "--results-md", default=None, help="also write the table into this RESULTS.md section"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Run the NFA check on every requested dataset and print the table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("rfmdist.nfa").setLevel(logging.WARNING)
    root = args.data_root if args.data_root is not None else default_data_root()
    rows = []
    start = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        for name in args.dataset or DEFAULT_DATASETS:
            task = load_task(name, root)
            logger.info("%s: train %s, test %s", name, task.X_train.shape, task.X_test.shape)
            for wd in args.weight_decay:
                rows.append(run(task, weight_decay=wd, args=args))
    text = f"{format_table(rows)}\ntotal {time.perf_counter() - start:.1f}s"
    print(text)
    if args.results_md:
        _write_results(args.results_md, text, argv)
    return rows


def _write_results(path: str, text: str, argv: list[str] | None) -> None:
    """Regenerate the ``nfa`` section of the results page with ``text``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import write_text_section

    write_text_section(
        path,
        "nfa",
        "Deep Neural Feature Ansatz: W1^T W1 against the AGOP",
        "examples/neural_feature_ansatz.py",
        argv,
        text,
    )


if __name__ == "__main__":
    main()
