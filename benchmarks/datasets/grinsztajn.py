"""Loader for the tabular benchmark of Grinsztajn et al. (NeurIPS 2022).

The files live under ``<data root>/grinsztajn/`` as ``{clf,reg}_{num,cat}/NAME.csv.gz`` (gzip CSV,
header row); ``SUMMARY.tsv`` gives, per file, ``n``, ``d`` (the number of feature columns) and the
target column. A set is named by its folder and stem, e.g. ``"reg_num/abalone"``: the ``clf_``
folders hold classification tasks, the ``reg_`` folders regression tasks, ``_num`` numeric features
only and ``_cat`` numeric plus categorical features (stored already integer-coded in this copy).

The data root is a function argument; its default is :func:`benchmarks.datasets.default_data_root`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from benchmarks.datasets import FeatureMatrix, PathLike, collection_dir, read_summary, summary_row

logger = logging.getLogger(__name__)

_COLLECTION = "grinsztajn"
_LISTER = "list_grinsztajn() (e.g. 'reg_num/abalone')"

Task = Literal["classification", "regression"]


def read_grinsztajn_summary(root: PathLike | None = None) -> pd.DataFrame:
    """The table ``grinsztajn/SUMMARY.tsv`` of the data root ``root`` (None: the default root),
    one row per set, indexed by name (``"reg_num/abalone"``), with columns ``file`` (the path
    relative to ``grinsztajn/``, without ``.gz``), ``n``, ``d``, ``target_col`` and ``task``."""
    table = read_summary(
        root, _COLLECTION, ["file", "n", "d", "target_col"], ["file", "target_col"]
    )
    table["name"] = table["file"].str.replace(r"\.csv(\.gz)?$", "", regex=True)
    table["task"] = np.where(table["name"].str.startswith("clf_"), "classification", "regression")
    for col in ("n", "d"):
        table[col] = table[col].astype(np.int64)
    return table.set_index("name")[["file", "n", "d", "target_col", "task"]]


def list_grinsztajn(root: PathLike | None = None) -> list[str]:
    """The names of the sets of :func:`read_grinsztajn_summary` (``"clf_num/credit"``,
    ``"reg_num/abalone"``, ...: 39 in the shared data), in the order of ``SUMMARY.tsv``."""
    return list(read_grinsztajn_summary(root).index)


@dataclass(frozen=True, eq=False)
class TabularSet(FeatureMatrix):
    """One tabular set of the Grinsztajn benchmark.

    Attributes
    ----------
    name : str
        The set name, e.g. ``"reg_num/abalone"``.
    X : numpy.ndarray of shape (n, d), float64
        The features, unscaled (see :func:`standardize`).
    y : numpy.ndarray of shape (n,)
        int64 class codes ``0 .. k-1`` for classification (``classes[y]`` gives the original
        labels), float64 values for regression.
    task : {"classification", "regression"}
        From the folder: ``clf_*`` or ``reg_*``.
    feature_names : tuple of str, length d
        The feature columns, in file order.
    target : str
        The target column (from ``SUMMARY.tsv``).
    classes : numpy.ndarray of shape (k,) or None
        The sorted original class labels (classification), None for regression.
    encoded_columns : tuple of str
        The feature columns that were not numeric in the file and were ordinal-encoded (empty for
        the shared data, whose categorical features are already integer-coded).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    task: Task
    feature_names: tuple[str, ...]
    target: str
    classes: np.ndarray | None
    encoded_columns: tuple[str, ...] = ()


def normalise_name(name: str) -> str:
    """A set name as in ``SUMMARY.tsv``: ``"reg_num/abalone.csv.gz"`` -> ``"reg_num/abalone"``."""
    name = name.strip().replace("\\", "/")
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return name


def load_grinsztajn(name: str, root: PathLike | None = None) -> TabularSet:
    """Load one Grinsztajn set.

    Every column but the target (``target_col`` of ``SUMMARY.tsv``) is a feature. Numeric and
    boolean columns are cast to float64; any other (string / categorical) feature column is
    ordinal-encoded as the integer code of its value among the column's sorted distinct values, and
    listed in ``TabularSet.encoded_columns``. The shared data have no such column: their categorical
    features are stored already integer-coded, and they are used as numbers. Classification targets
    are encoded as ``0 .. k-1`` in the order of the sorted original labels; regression targets are
    cast to float64.

    Parameters
    ----------
    name : str
        The set name from :func:`list_grinsztajn`, e.g. ``"reg_num/abalone"`` (a trailing
        ``.csv`` or ``.csv.gz`` is accepted).
    root : str or os.PathLike or None
        The data root (None: the default data root).

    Returns
    -------
    TabularSet
        ``X`` of shape (n, d) float64 and ``y`` of shape (n,).

    Raises
    ------
    FileNotFoundError
        If the data root or the file is missing.
    ValueError
        If the name is unknown, the target column is absent, the shape disagrees with
        ``SUMMARY.tsv`` or a value is missing / not finite.
    """
    summary = read_grinsztajn_summary(root)
    key = normalise_name(name)
    row = summary_row(summary, name, key=key, label="Grinsztajn set", lister=_LISTER)
    folder = collection_dir(root, _COLLECTION)
    candidates = [folder / f"{row['file']}.gz", folder / row["file"]]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"Grinsztajn set {key!r}: expected the file {candidates[0]}, found none. "
            "Fix: restore the grinsztajn folder of the shared data."
        )
    frame = pd.read_csv(path)
    target = str(row["target_col"])
    if target not in frame.columns:
        raise ValueError(
            f"{path}: expected the target column {target!r} (SUMMARY.tsv), found columns "
            f"{list(frame.columns)[:10]}... Fix: restore the file or SUMMARY.tsv."
        )
    features = [c for c in frame.columns if c != target]
    if frame.shape[0] != row["n"] or len(features) != row["d"]:
        raise ValueError(
            f"{path}: expected n={row['n']} rows and d={row['d']} features (SUMMARY.tsv), found "
            f"{frame.shape[0]} rows and {len(features)} features. Fix: restore the file."
        )
    if frame.isna().to_numpy().any():
        raise ValueError(
            f"{path}: expected no missing values, found {int(frame.isna().to_numpy().sum())}. "
            "Fix: restore the original file (the benchmark files have no missing values)."
        )

    encoded: list[str] = []
    columns: list[np.ndarray] = []
    for col in features:
        series = frame[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            columns.append(series.to_numpy(dtype=np.float64))
        else:
            codes = pd.Categorical(series.astype(str)).codes  # categories are sorted
            columns.append(codes.astype(np.float64))
            encoded.append(str(col))
    X = np.column_stack(columns) if columns else np.empty((frame.shape[0], 0))
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise ValueError(
            f"{path}: expected finite features, found {int((~np.isfinite(X)).sum())} non-finite "
            "values. Fix: restore the original file."
        )
    if encoded:
        logger.info("%s: ordinal-encoded non-numeric columns %s", key, encoded)

    task: Task = row["task"]
    classes: np.ndarray | None
    if task == "classification":
        classes, y = np.unique(frame[target].to_numpy(), return_inverse=True)
        y = y.astype(np.int64).reshape(-1)
    else:
        if not pd.api.types.is_numeric_dtype(frame[target]):
            raise ValueError(
                f"{path}: expected a numeric regression target {target!r}, found dtype "
                f"{frame[target].dtype}. Fix: check target_col in SUMMARY.tsv."
            )
        classes = None
        y = frame[target].to_numpy(dtype=np.float64)
    return TabularSet(
        name=key,
        X=X,
        y=y,
        task=task,
        feature_names=tuple(str(c) for c in features),
        target=target,
        classes=classes,
        encoded_columns=tuple(encoded),
    )


def split_grinsztajn(
    n: int, seed: int = 0, max_train: int = 10_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return a fixed, seeded train / validation / test split of ``n`` rows.

    The rows are shuffled with ``numpy.random.default_rng(seed).permutation(n)``. The first
    ``n_train = min(round(0.7 * n), max_train)`` shuffled rows are the training set; of the
    remaining ``r = n - n_train`` rows, the first ``round(0.3 * r)`` are the validation set and the
    rest the test set. Below the cap this is the 70 / 9 / 21 % split of the Grinsztajn benchmark;
    above it (n > ~14,300 with the default cap) the training set holds ``max_train`` rows, as in the
    benchmark's "medium-sized" regime, and validation / test share the rest 30 / 70.

    Parameters
    ----------
    n : int
        Number of rows (at least 3).
    seed : int, default 0
        Seed of the shuffle.
    max_train : int, default 10_000
        Cap on the training-set size (at least 1).

    Returns
    -------
    train_idx, val_idx, test_idx : numpy.ndarray of int64
        Disjoint row indices whose union is ``range(n)``; each is sorted.
    """
    if n < 3:
        raise ValueError(
            f"split_grinsztajn: expected n >= 3 (one row per part at least), found n={n}. "
            "Fix: pass the number of rows of a real data set."
        )
    if max_train < 1:
        raise ValueError(
            f"split_grinsztajn: expected max_train >= 1, found {max_train}. "
            "Fix: pass a positive cap."
        )
    perm = np.random.default_rng(seed).permutation(n)
    n_train = max(1, min(round(0.7 * n), max_train, n - 2))
    rest = n - n_train
    n_val = min(max(1, round(0.3 * rest)), rest - 1)
    train = np.sort(perm[:n_train]).astype(np.int64)
    val = np.sort(perm[n_train : n_train + n_val]).astype(np.int64)
    test = np.sort(perm[n_train + n_val :]).astype(np.int64)
    return train, val, test


def standardize(X: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score the columns of ``X`` with the mean and standard deviation of the training rows.

    Parameters
    ----------
    X : numpy.ndarray of shape (n, d)
        The features of all rows (train, validation and test).
    train_idx : numpy.ndarray of shape (n_train,)
        The training rows: the only rows whose statistics are used.

    Returns
    -------
    X_std : numpy.ndarray of shape (n, d), float64
        ``(X - mean) / scale``.
    mean, scale : numpy.ndarray of shape (d,), float64
        The training mean and standard deviation (a zero deviation is replaced by 1, so constant
        columns become 0).
    """
    X = np.asarray(X, dtype=np.float64)
    train = X[np.asarray(train_idx)]
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return (X - mean) / scale, mean, scale


def standardize_target(y: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Z-score a regression target with the mean and standard deviation of the training rows.

    Parameters
    ----------
    y : numpy.ndarray of shape (n,)
        The targets of all rows.
    train_idx : numpy.ndarray of shape (n_train,)
        The training rows.

    Returns
    -------
    y_std : numpy.ndarray of shape (n,), float64
        ``(y - mean) / scale``.
    mean, scale : float
        The training mean and standard deviation (1 if the deviation is zero).
    """
    y = np.asarray(y, dtype=np.float64)
    train = y[np.asarray(train_idx)]
    mean = float(train.mean())
    scale = float(train.std())
    if not scale > 0:
        scale = 1.0
    return (y - mean) / scale, mean, scale
