"""Loader for the 121 UCI classification sets of Fernández-Delgado et al. (2014).

This is the collection on which the RFM paper (arXiv:2212.13881) reports its tabular results, in the
layout of the public NTK-on-UCI (Arora et al. 2019) and RFM experiment code. The data live under
``<data root>/uci121/`` (120 of the 121 sets: miniboone is missing), one folder ``NAME/`` per set:

- ``NAME.txt``: ``key= value`` lines; ``fich1=`` names the data file, ``n_clases=`` the number of
  classes, ``n_entradas=`` the number of features, ``n_patrons1=`` the rows of ``fich1`` and, for
  sets with a separate test file, ``fich2=`` / ``n_patrons2=``.
- ``fich1`` (``*_R.dat``): one header line, then rows ``index x_1 ... x_d class`` (features
  already z-scored, class a 0-based integer).
- ``conxuntos.dat``: line 1 the train indices, line 2 the validation indices (0-based, into
  ``fich1``): used ONLY to choose hyper-parameters.
- ``conxuntos_kfold.dat``: 8 lines, 4 (train, test) index pairs into ``fich1``. The accuracy
  reported for a method is its mean test accuracy over the 4 folds.

Sets with ``fich2=`` (``has_test_file`` in ``SUMMARY.tsv``): all indices point into ``fich1`` and
``fich2`` is not used, so ``UCISet.n`` (rows of ``fich1``) is smaller than the ``n`` of
``SUMMARY.tsv``, which counts both files (kept as ``UCISet.n_total``).

The data root is a function argument; its default is :func:`benchmarks.datasets.default_data_root`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.datasets import (
    FeatureMatrix,
    PathLike,
    collection_dir,
    did_you_mean,
    read_summary,
    summary_row,
)

logger = logging.getLogger(__name__)

_COLLECTION = "uci121"


def read_uci121_summary(root: PathLike | None = None) -> pd.DataFrame:
    """Read ``uci121/SUMMARY.tsv``.

    Parameters
    ----------
    root : str or os.PathLike or None
        The data root (None: the default data root).

    Returns
    -------
    pandas.DataFrame
        One row per set, indexed by ``name``, with integer columns ``n`` (rows of ``fich1`` plus
        ``fich2`` if any), ``d``, ``classes`` and the boolean column ``has_test_file``.
    """
    expected = ["name", "n", "d", "classes", "has_test_file"]
    table = read_summary(root, _COLLECTION, expected, text=["name"])
    table["has_test_file"] = table["has_test_file"].astype(str).str.lower().eq("true")
    for col in ("n", "d", "classes"):
        table[col] = table[col].astype(np.int64)
    return table.set_index("name")[expected[1:]]


def list_uci121(root: PathLike | None = None) -> list[str]:
    """The names of the sets of :func:`read_uci121_summary` (120 in the shared data: miniboone
    is missing), in the order of ``SUMMARY.tsv``."""
    return list(read_uci121_summary(root).index)


def _set_dir(name: str, root: PathLike | None) -> Path:
    folder = collection_dir(root, _COLLECTION)
    set_dir = folder / name
    if not set_dir.is_dir():
        hint = did_you_mean(name, sorted(p.name for p in folder.iterdir() if p.is_dir()))
        raise FileNotFoundError(
            f"UCI set {name!r}: expected a folder {set_dir}, found none.{hint} "
            "Fix: use a name from list_uci121()."
        )
    return set_dir


def read_uci121_meta(name: str, root: PathLike | None = None) -> dict[str, str]:
    """Parse ``NAME/NAME.txt`` (the ``key= value`` description of a set).

    Parameters
    ----------
    name : str
        The set name, e.g. ``"iris"``.
    root : str or os.PathLike or None
        The data root (None: the default data root).

    Returns
    -------
    dict of str to str
        Keys without the ``=`` (``fich1``, ``n_clases``, ``n_entradas``, ``n_patrons1``, optional
        ``fich2`` and ``n_patrons2``, ...), values as strings.

    Raises
    ------
    FileNotFoundError
        If ``NAME.txt`` is missing.
    ValueError
        If ``fich1``, ``n_clases`` or ``n_entradas`` is absent.
    """
    path = _set_dir(name, root) / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"UCI set {name!r}: expected the description file {path}, found none. "
            "Fix: restore the set folder from the shared data."
        )
    meta = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\s*(\w+)\s*=\s*(.*?)\s*$", path.read_text(), flags=re.MULTILINE)
    }
    missing = [k for k in ("fich1", "n_clases", "n_entradas") if k not in meta]
    if missing:
        raise ValueError(
            f"{path}: expected keys fich1=, n_clases=, n_entradas=, found {sorted(meta)} "
            f"(missing {missing}). Fix: restore the original description file."
        )
    return meta


@dataclass(frozen=True, eq=False)
class UCISet(FeatureMatrix):
    """One UCI classification set with its validation split and its 4 folds.

    Attributes
    ----------
    name : str
        The set name.
    X : numpy.ndarray of shape (n, d), float64
        The features (already z-scored in the files).
    y : numpy.ndarray of shape (n,), int64
        The class labels, in ``0 .. n_classes - 1``.
    n_classes : int
        The number of classes (``n_clases=`` of ``NAME.txt``).
    train_idx, val_idx : numpy.ndarray of shape (n_train,), (n_val,), int64
        The hyper-parameter selection split (``conxuntos.dat``), disjoint, indices into ``X``.
    folds : tuple of 4 (train_idx, test_idx) pairs of numpy.ndarray, int64
        The evaluation folds (``conxuntos_kfold.dat``), train and test disjoint within a fold.
    n_total : int
        ``n`` of ``SUMMARY.tsv``: ``n`` plus the rows of the unused ``fich2`` if the set has one.
    has_test_file : bool
        Whether the set ships a separate ``fich2`` test file (never used here).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    n_classes: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    n_total: int
    has_test_file: bool


def _read_index_lines(path: Path, n_lines: int, n: int, name: str) -> list[np.ndarray]:
    """Read ``n_lines`` lines of whitespace-separated indices and check them against ``n``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"UCI set {name!r}: expected the index file {path}, found none. "
            "Fix: restore the set folder from the shared data."
        )
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != n_lines:
        raise ValueError(
            f"{path}: expected {n_lines} non-empty lines of indices, found {len(lines)}. "
            "Fix: restore the original file."
        )
    out = []
    for i, line in enumerate(lines):
        try:
            idx = np.array(line.split(), dtype=np.int64)
        except ValueError as err:
            raise ValueError(
                f"{path} line {i + 1}: expected integers, found {line[:60]!r}... ({err}). "
                "Fix: restore the original file."
            ) from None
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            found = "an empty line" if idx.size == 0 else f"range [{idx.min()}, {idx.max()}]"
            raise ValueError(
                f"{path} line {i + 1}: expected indices in [0, {n}) (the rows of the data file), "
                f"found {found}. Fix: check that the index file belongs to this data file."
            )
        n_dup = idx.size - np.unique(idx).size
        if n_dup:
            raise ValueError(
                f"{path} line {i + 1}: expected distinct indices, found {n_dup} duplicates. "
                "Fix: restore the original file."
            )
        out.append(idx)
    return out


def _check_disjoint(a: np.ndarray, b: np.ndarray, what: str, path: Path) -> None:
    common = np.intersect1d(a, b)
    if common.size:
        raise ValueError(
            f"{path}: expected disjoint {what} indices, found {common.size} shared "
            f"(e.g. {common[:5].tolist()}). Fix: restore the original file."
        )


def load_uci121(name: str, root: PathLike | None = None) -> UCISet:
    """Load one UCI set with its validation split and its 4 evaluation folds.

    Parameters
    ----------
    name : str
        The set name (see :func:`list_uci121`), e.g. ``"iris"``.
    root : str or os.PathLike or None
        The data root (None: the default data root).

    Returns
    -------
    UCISet
        ``X`` of shape (n, d) float64, ``y`` of shape (n,) int64, the split and the folds.

    Raises
    ------
    FileNotFoundError
        If the data root, the set folder or one of its files is missing.
    ValueError
        If shapes, classes or indices disagree with ``SUMMARY.tsv`` / ``NAME.txt``.
    """
    summary = read_uci121_summary(root)
    row = summary_row(summary, name, key=name, label="UCI set", lister="list_uci121()")
    set_dir = _set_dir(name, root)
    meta = read_uci121_meta(name, root)
    d = int(meta["n_entradas"])
    n_classes = int(meta["n_clases"])
    if d != row["d"] or n_classes != row["classes"]:
        raise ValueError(
            f"UCI set {name!r}: expected d={row['d']}, classes={row['classes']} (SUMMARY.tsv), "
            f"found n_entradas={d}, n_clases={n_classes} in {name}.txt. "
            "Fix: restore the data folder."
        )
    data_path = set_dir / meta["fich1"]
    if not data_path.is_file():
        raise FileNotFoundError(
            f"UCI set {name!r}: expected the data file {data_path} (fich1= of {name}.txt), "
            "found none. Fix: restore the set folder from the shared data."
        )
    data = np.loadtxt(data_path, skiprows=1, dtype=np.float64, ndmin=2)
    n = int(data.shape[0])
    if data.shape[1] != d + 2:
        raise ValueError(
            f"{data_path}: expected {d + 2} columns (index, {d} features, class), found "
            f"{data.shape[1]}. Fix: restore the original data file."
        )
    has_test_file = bool(row["has_test_file"])
    if has_test_file:
        n1 = int(meta.get("n_patrons1", n))
        n2 = int(meta.get("n_patrons2", -1))
        if n != n1 or n1 + n2 != row["n"]:
            raise ValueError(
                f"UCI set {name!r}: expected {n1} rows in {meta['fich1']} and n_patrons1 + "
                f"n_patrons2 = {row['n']} (SUMMARY.tsv), found {n} rows and {n1} + {n2}. "
                "Fix: restore the data folder."
            )
    elif n != row["n"]:
        raise ValueError(
            f"UCI set {name!r}: expected n={row['n']} rows (SUMMARY.tsv), found {n} in "
            f"{data_path}. Fix: restore the data file."
        )
    labels = data[:, -1]
    y = labels.astype(np.int64)
    if not np.array_equal(y, labels) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{data_path}: expected integer classes in [0, {n_classes}), found values in "
            f"[{labels.min()}, {labels.max()}]. Fix: restore the original data file."
        )
    X = np.ascontiguousarray(data[:, 1:-1])
    if not np.isfinite(X).all():
        raise ValueError(
            f"{data_path}: expected finite features, found {int((~np.isfinite(X)).sum())} "
            "non-finite values. Fix: restore the original data file."
        )

    split_path = set_dir / "conxuntos.dat"
    train_idx, val_idx = _read_index_lines(split_path, 2, n, name)
    _check_disjoint(train_idx, val_idx, "train/validation", split_path)
    fold_path = set_dir / "conxuntos_kfold.dat"
    lines = _read_index_lines(fold_path, 8, n, name)
    folds = tuple((lines[2 * k], lines[2 * k + 1]) for k in range(4))
    for k, (tr, te) in enumerate(folds):
        _check_disjoint(tr, te, f"fold {k} train/test", fold_path)
    logger.debug("loaded UCI set %s: n=%d d=%d classes=%d", name, n, d, n_classes)
    return UCISet(
        name=name,
        X=X,
        y=y,
        n_classes=n_classes,
        train_idx=train_idx,
        val_idx=val_idx,
        folds=folds,
        n_total=int(row["n"]),
        has_test_file=has_test_file,
    )
