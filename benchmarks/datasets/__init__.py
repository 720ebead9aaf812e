"""Loaders of the benchmark collections (UCI-121, Grinsztajn) and the data root they read.

They belong to the benchmarks, not to the installed ``rfmdist`` package: the data root is a
function argument, and its default (:func:`default_data_root`) is the ``RFMDIST_DATA`` environment
variable, else ``<repo>/../shared/data`` beside this checkout.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DATA_ENV_VAR",
    "FeatureMatrix",
    "PathLike",
    "collection_dir",
    "default_data_root",
    "did_you_mean",
    "read_summary",
    "resolve_data_root",
    "summary_row",
]

DATA_ENV_VAR = "RFMDIST_DATA"
"""Environment variable that overrides the default data root."""

PathLike = str | os.PathLike[str]
"""A path given as a string or a path object."""


class FeatureMatrix:
    """``n`` and ``d`` of a loaded set, from its feature matrix ``X`` of shape (n, d)."""

    X: np.ndarray

    @property
    def n(self) -> int:
        """Number of rows of ``X``."""
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        """Number of features."""
        return int(self.X.shape[1])


def did_you_mean(name: str, names: Sequence[str]) -> str:
    """`` Did you mean a, b?`` with the names closest to ``name`` ("" when none is close)."""
    close = difflib.get_close_matches(name, list(names), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def default_data_root() -> Path:
    """Return the default data root.

    Returns
    -------
    pathlib.Path
        ``$RFMDIST_DATA`` when that environment variable is set and non-empty, else
        ``<repo>/../shared/data`` where ``<repo>`` is the checkout holding ``benchmarks/``. The
        path is not checked for existence (see :func:`resolve_data_root`).
    """
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_data_root(root: PathLike | None = None) -> Path:
    """Return ``root`` (or the default data root) after checking that it is a directory.

    Parameters
    ----------
    root : str or os.PathLike or None
        The data root (the folder holding ``uci121/``, ``grinsztajn/``, ...). None means
        :func:`default_data_root`.

    Returns
    -------
    pathlib.Path
        The existing data root.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist; the message says how to point the loaders at the data.
    """
    path = default_data_root() if root is None else Path(root).expanduser()
    if not path.is_dir():
        if root is not None:
            source = "the root argument"
        elif os.environ.get(DATA_ENV_VAR, "").strip():
            source = f"${DATA_ENV_VAR}"
        else:
            source = "the default <repo>/../shared/data"
        raise FileNotFoundError(
            f"Data root not found: expected a directory holding uci121/ and grinsztajn/, found no "
            f"directory at {path} (from {source}). Fix: set {DATA_ENV_VAR}=/path/to/data, pass "
            "root=... (--data-root on the command line), or place the data at "
            "<repo>/../shared/data."
        )
    return path


def collection_dir(root: PathLike | None, collection: str) -> Path:
    """Return the folder of ``collection`` under the data root (or ``root`` itself if it is it).

    Parameters
    ----------
    root : str or os.PathLike or None
        The data root, or the collection's own folder (None: :func:`default_data_root`).
    collection : str
        ``"uci121"`` or ``"grinsztajn"``.

    Returns
    -------
    pathlib.Path
        The folder holding the collection's ``SUMMARY.tsv``.
    """
    base = resolve_data_root(root)
    if (base / "SUMMARY.tsv").is_file() and base.name == collection:
        return base
    folder = base / collection
    if not (folder / "SUMMARY.tsv").is_file():
        raise FileNotFoundError(
            f"{collection} collection not found: expected {folder / 'SUMMARY.tsv'}, found no such "
            f"file. Fix: point the data root (root=..., --data-root or ${DATA_ENV_VAR}) at the "
            f"folder that contains {collection}/."
        )
    return folder


def read_summary(
    root: PathLike | None, collection: str, columns: Sequence[str], text: Sequence[str]
) -> pd.DataFrame:
    """Read a collection's ``SUMMARY.tsv`` and check that it has ``columns``.

    Parameters
    ----------
    root : str or os.PathLike or None
        The data root (None: :func:`default_data_root`).
    collection : str
        ``"uci121"`` or ``"grinsztajn"``.
    columns : sequence of str
        The columns the file must have.
    text : sequence of str
        The columns read as strings.

    Returns
    -------
    pandas.DataFrame
        The table as in the file, one row per set.
    """
    path = collection_dir(root, collection) / "SUMMARY.tsv"
    table = pd.read_csv(path, sep="\t", dtype=dict.fromkeys(text, str))
    if not set(columns) <= set(table.columns):
        raise ValueError(
            f"{path}: expected columns {list(columns)}, found {list(table.columns)}. "
            "Fix: restore the original SUMMARY.tsv of the data folder."
        )
    return table


def summary_row(
    summary: pd.DataFrame, name: str, *, key: str, label: str, lister: str
) -> pd.Series:
    """The ``SUMMARY.tsv`` row of one set; an unknown name raises with the closest names.

    Parameters
    ----------
    summary : pandas.DataFrame
        The collection's summary, indexed by set name.
    name : str
        The name as the caller gave it (for the message).
    key : str
        The name as in ``SUMMARY.tsv``.
    label : str
        What a set is called in the message, e.g. ``"UCI set"``.
    lister : str
        The function that lists the names, e.g. ``"list_uci121()"``.

    Returns
    -------
    pandas.Series
        The set's row.
    """
    if key not in summary.index:
        raise ValueError(
            f"{label} {name!r}: expected one of the {len(summary)} names of SUMMARY.tsv, found no "
            f"such name.{did_you_mean(key, summary.index)} Fix: use a name from {lister}."
        )
    return summary.loc[key]
