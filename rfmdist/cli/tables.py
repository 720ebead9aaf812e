"""Tabular data for the command line: read Zarr, .npy/.npz, CSV/TSV (optionally gzip) and Parquet into
row-chunked Dask arrays, check them, and write predictions.

Reading is lazy and, where the format allows, out of core: CSV through ``dask.dataframe.read_csv`` with a
block size (a gzip file cannot be split and becomes one partition), Parquet through
``dask.dataframe.read_parquet``, ``.npy`` through a memory map opened by each task (only the path travels
to the workers), Zarr through ``dask.array.from_zarr``. ``.npz`` members are loaded into memory.

:func:`open_table` opens a file and picks the target column; :func:`check_table` makes the one pass over
the data that finds its row count, missing values (counted per row) and the target values (kept on the
client). Every refusal says what was expected, what was found and how to fix it.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.npy"
>>> np.save(path, np.arange(12.0).reshape(4, 3))
>>> table = check_table(open_table(path))  # the last column is the target by default
>>> table.X.shape, table.feature_names, table.target_name, table.y.tolist()
((4, 2), ['x0', 'x1'], 'x2', [2.0, 5.0, 8.0, 11.0])
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rfmdist.data import check_numeric_columns, non_finite_error, open_zarr

logger = logging.getLogger(__name__)

#: ``target`` value meaning "the format's default target": the last column of a table or matrix, the
#: array ``y`` of a Zarr group or ``.npz`` file.
DEFAULT_TARGET = "__default__"

INPUT_FORMATS = ("zarr", "npy", "npz", "csv", "parquet")
OUTPUT_FORMATS = ("zarr", "npy", "csv", "parquet")
_SUFFIXES = {
    ".zarr": "zarr",
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
FORMAT_HELP = (
    "a Zarr group/array (.zarr), NumPy (.npy, .npz), CSV/TSV (.csv, .tsv, optionally .gz) "
    "or Parquet (.parquet)"
)


@dataclass(frozen=True)
class Table:
    """Features (lazy) and target of one data file.

    Attributes
    ----------
    X : dask.array.Array, shape (n, d)
        Numeric features, chunked by rows only.
    y : dask.array.Array or numpy.ndarray or None, shape (n,)
        The target column: lazy after :func:`open_table`, NumPy after :func:`check_table`.
    feature_names : list of str
    target_name : str or None
    path : str
    format : str
        One of :data:`INPUT_FORMATS`.
    named : bool
        True when the file names its columns (CSV, Parquet); array formats get ``x0, x1, ...``.
    """

    X: Any
    y: Any
    feature_names: list[str]
    target_name: str | None
    path: str
    format: str
    named: bool
    frame: Any = None  # the dask DataFrame of a CSV/Parquet source, until check_table

    @property
    def n_rows(self) -> int:
        """Number of rows (known after :func:`check_table`)."""
        return int(self.X.shape[0])


# --- formats and paths ---------------------------------------------------------------------------


def is_url(path: str | os.PathLike) -> bool:
    """True for fsspec URLs such as ``s3://bucket/x.parquet`` (not checked locally)."""
    return "://" in str(path)


def detect_format(path: str | os.PathLike, *, formats: tuple[str, ...] = INPUT_FORMATS) -> str:
    """The format of ``path`` from its extension (``.csv.gz`` counts as CSV; a folder holding a
    ``zarr.json`` as Zarr).

    Parameters
    ----------
    path : str or os.PathLike
    formats : tuple of str
        Formats accepted here.

    Returns
    -------
    str
        One of ``formats``.
    """
    name = str(path).rstrip("/")
    lower = name.lower()
    for comp in _COMPRESSIONS:
        if lower.endswith(comp):
            lower = lower[: -len(comp)]
            break
    fmt = _SUFFIXES.get(os.path.splitext(lower)[1])
    if fmt is None and not is_url(name) and (Path(name) / "zarr.json").is_file():
        fmt = "zarr"
    if fmt is None or fmt not in formats:
        shown = os.path.splitext(lower)[1] or "no extension"
        allowed = ", ".join(f".{f}" for f in formats)
        raise ValueError(
            f"Expected a file ending in one of {allowed} (found {shown} in {name!r}); "
            f"rename it or convert it to {FORMAT_HELP}."
        )
    if fmt in ("zarr", "npy", "npz", "parquet") and lower != name.lower():
        raise ValueError(
            f"Expected an uncompressed {fmt} path, found {name!r}; only CSV/TSV files may be "
            "compressed (.csv.gz), other formats compress internally."
        )
    return fmt


def check_input_path(path: str | os.PathLike) -> str:
    """Refuse a local input path that does not exist; return it as a string."""
    text = str(path)
    if not is_url(text) and not os.path.exists(text):
        raise FileNotFoundError(
            f"Expected a data file at {text!r}, found nothing there; check the path (relative paths "
            f"start in {os.getcwd()!r})."
        )
    return text


def check_output_path(
    path: str | os.PathLike,
    *,
    what: str,
    overwrite: bool = False,
    allow_existing: bool = False,
) -> str:
    """Refuse an output path that cannot be written, before any costly work.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What will be written, for messages ("predictions", "model", "report").
    overwrite : bool
        An existing file or folder there may be replaced.
    allow_existing : bool
        An existing file or folder is fine (e.g. a model store that will be resumed).

    Returns
    -------
    str
        The path.
    """
    text = str(path)
    if is_url(text):
        return text
    target = Path(text)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"Expected an existing folder for the {what} {text!r}, found no folder {str(parent)!r}; "
            f"create it first (mkdir -p {parent})."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Expected a writable folder for the {what} {text!r}, found {str(parent)!r} not "
            "writable; choose another output path or fix the permissions."
        )
    if target.exists() and not (overwrite or allow_existing):
        raise FileExistsError(
            f"Expected no file at the {what} path {text!r}, found one already; pass --overwrite "
            "to replace it or choose another path."
        )
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(
            f"Expected a writable {what} path {text!r}, found an existing read-only file; choose "
            "another output path or fix the permissions."
        )
    return text


# --- opening -------------------------------------------------------------------------------------


def open_table(
    path: str | os.PathLike,
    *,
    target: str | None = DEFAULT_TARGET,
    features: list[str] | None = None,
    blocksize: str | int = "64MiB",
) -> Table:
    """Open a data file lazily and split it into features and target.

    Parameters
    ----------
    path : str or os.PathLike
        A file of one of :data:`INPUT_FORMATS` (local path or fsspec URL).
    target : str or None, default :data:`DEFAULT_TARGET`
        The target column: a column name, or an index (``"-1"`` for the last), or the array name in a
        Zarr group/``.npz`` file. :data:`DEFAULT_TARGET`: the last column (the array ``y`` of a
        group/``.npz``). None: no target (prediction inputs).
    features : list of str, optional
        Names of the feature columns to select from a file that names its columns (predicting with a
        model fitted on named columns); by default every column but the target.
    blocksize : str or int
        Bytes per partition when reading uncompressed CSV/Parquet.

    Returns
    -------
    Table
        With lazy ``X`` (unknown row chunks for CSV/Parquet until :func:`check_table`) and lazy ``y``.
    """
    text = check_input_path(path)
    fmt = detect_format(text)
    opener = {
        "zarr": _open_zarr,
        "npy": _open_npy,
        "npz": _open_npz,
        "csv": _open_frame,
        "parquet": _open_frame,
    }[fmt]
    try:
        return opener(text, fmt, target, features, blocksize)
    except (ValueError, TypeError, FileNotFoundError, KeyError):
        raise
    except Exception as err:  # content that is not what the extension says
        raise ValueError(
            f"Expected {text!r} to be a readable {fmt} file (by its extension), found content that "
            f"could not be read as {fmt} ({type(err).__name__}: {err}); check the file or its extension."
        ) from err


def _open_frame(
    path: str, fmt: str, target: str | None, features: list[str] | None, blocksize: str | int
) -> Table:
    import dask.dataframe as dd

    if fmt == "csv":
        lower = path.lower()
        sep = "\t" if ".tsv" in lower else ","
        compressed = lower.endswith(_COMPRESSIONS)
        try:
            frame = dd.read_csv(path, sep=sep, blocksize=None if compressed else blocksize)
        except Exception as err:
            raise ValueError(
                f"Expected {path!r} to be a {'tab' if sep == chr(9) else 'comma'}-separated text "
                f"file with a header row, found content that could not be parsed ({type(err).__name__}: "
                f"{_short(err)}); check the file or its extension."
            ) from err
        if compressed:
            logger.debug("%s is compressed: read as one partition (it cannot be split)", path)
    else:
        try:
            frame = dd.read_parquet(path, blocksize=blocksize)
        except Exception as err:
            raise ValueError(
                f"Expected {path!r} to be a Parquet file or folder, found content that could not be "
                f"read as Parquet ({type(err).__name__}: {_short(err)}); check the file or its extension."
            ) from err
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise ValueError(
            f"Expected distinct column names in {path!r}, found duplicates {dup}; rename them."
        )
    frame = frame.rename(columns=dict(zip(frame.columns, columns, strict=True)))
    target_name = _pick_named_target(columns, target, path)
    if features is not None:
        missing = [f for f in features if f not in columns]
        if missing:
            raise ValueError(
                f"Expected the model's feature columns in {path!r}, found {len(missing)} missing: "
                f"{_listing(missing)} (file columns: {_listing(columns)}); pass data with the columns "
                "the model was fitted on."
            )
        feature_names = list(features)
    else:
        feature_names = [c for c in columns if c != target_name]
    if not feature_names:
        raise ValueError(
            f"Expected at least one feature column in {path!r}, found only {columns}; add features."
        )
    check_numeric_columns(
        {n: frame.dtypes[n] for n in feature_names},
        where=f" in {path!r}",
        fix=" (or make one the --target)",
    )
    y = frame[target_name] if target_name is not None else None
    return Table(
        X=None,
        y=y,
        feature_names=feature_names,
        target_name=target_name,
        path=path,
        format=fmt,
        named=True,
        frame=frame,
    )


def _pick_named_target(columns: list[str], target: str | None, path: str) -> str | None:
    if target is None:
        return None
    if target == DEFAULT_TARGET:
        return columns[-1]
    if target in columns:
        return target
    index = _as_index(target, len(columns))
    if index is not None:
        return columns[index]
    raise ValueError(
        f"Expected a target column {target!r} in {path!r}, found columns {_listing(columns)}; pass "
        "--target with one of these names (or a column index such as -1)."
    )


def _as_index(target: str, n: int) -> int | None:
    try:
        index = int(target)
    except ValueError:
        return None
    if not -n <= index < n:
        raise ValueError(
            f"Expected a target column index in [{-n}, {n - 1}], found {index}; pass a valid index "
            "or a column name."
        )
    return index % n


def _open_matrix(array: Any, path: str, fmt: str, target: str | None) -> Table:
    """Split a 2-D Dask matrix into features and a target column."""
    if array.ndim != 2:
        raise ValueError(
            f"Expected a 2-D array (rows x columns) in {path!r}, found shape {array.shape}; store "
            "a matrix, or a Zarr group / .npz file with arrays X and y."
        )
    d = array.shape[1]
    names = [f"x{j}" for j in range(d)]
    if target is None:
        column = None
    elif target == DEFAULT_TARGET:
        column = d - 1
    elif target in names:
        column = names.index(target)
    else:
        column = _as_index(target, d)
        if column is None:
            raise ValueError(
                f"Expected a target column index (e.g. -1) or name x0..x{d - 1} for the unnamed "
                f"columns of {path!r}, found {target!r}; pass --target with an index."
            )
    keep = [j for j in range(d) if j != column]
    if not keep:
        raise ValueError(
            f"Expected at least one feature column in {path!r}, found shape {array.shape}."
        )
    X = array[:, keep] if column is not None else array
    y = array[:, column] if column is not None else None
    return Table(
        X=X.rechunk({1: -1}),
        y=y,
        feature_names=[names[j] for j in keep],
        target_name=None if column is None else names[column],
        path=path,
        format=fmt,
        named=False,
    )


def _open_pair(X: Any, arrays: dict[str, Any], path: str, fmt: str, target: str | None) -> Table:
    """Features ``X`` and the target array named by ``target`` (default ``y``) of a group/npz."""
    name = "y" if target == DEFAULT_TARGET else target
    y = None
    if name is not None:
        if name not in arrays:
            raise ValueError(
                f"Expected a target array {name!r} in {path!r}, found arrays {_listing(sorted(arrays))}; "
                "pass --target with one of them or store the targets as 'y'."
            )
        y = arrays[name]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"Expected a 1-D target array {name!r} in {path!r}, found shape {y.shape}; store one "
                "target column."
            )
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2-D feature array 'X' in {path!r}, found shape {X.shape}; reshape it."
        )
    return Table(
        X=X.rechunk({1: -1}),
        y=y,
        feature_names=[f"x{j}" for j in range(X.shape[1])],
        target_name=name,
        path=path,
        format=fmt,
        named=False,
    )


def _open_zarr(
    path: str, fmt: str, target: str | None, features: list[str] | None, blocksize: Any
) -> Table:
    X, arrays = open_zarr(path)
    if not arrays:
        return _open_matrix(X, path, fmt, target)
    return _open_pair(X, arrays, path, fmt, target)


class NpyRows:
    """A ``.npy`` file as an array-like for ``dask.array.from_array``: each task opens a read-only
    memory map, so only the path is sent to the workers (never the data).

    Parameters
    ----------
    path : str
    """

    def __init__(self, path: str) -> None:
        self.path = path
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        self.shape = mapped.shape
        self.dtype = mapped.dtype
        self.ndim = mapped.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(np.load(self.path, mmap_mode="r", allow_pickle=False)[key])


def _open_npy(
    path: str, fmt: str, target: str | None, features: list[str] | None, blocksize: Any
) -> Table:
    import dask.array as da

    try:
        source = NpyRows(path)
    except Exception as err:
        raise ValueError(
            f"Expected {path!r} to be a NumPy .npy file, found content that is not "
            f"({type(err).__name__}: {_short(err)}); check the file or its extension."
        ) from err
    rows = max(1, int(64 * 2**20 // max(1, source.dtype.itemsize * int(np.prod(source.shape[1:])))))
    array = da.from_array(
        source, chunks=(rows, *source.shape[1:]), meta=np.empty((0,) * source.ndim, source.dtype)
    )
    return _open_matrix(array, path, fmt, target)


def _open_npz(
    path: str, fmt: str, target: str | None, features: list[str] | None, blocksize: Any
) -> Table:
    import dask.array as da

    try:
        with np.load(path, allow_pickle=False) as archive:
            loaded = {name: archive[name] for name in archive.files}
    except Exception as err:
        raise ValueError(
            f"Expected {path!r} to be a NumPy .npz archive, found content that is not "
            f"({type(err).__name__}: {_short(err)}); check the file or its extension."
        ) from err
    if "X" not in loaded:
        raise ValueError(
            f"Expected the .npz archive {path!r} to hold an array 'X' (and 'y'), found arrays "
            f"{sorted(loaded)}; save with np.savez(path, X=X, y=y)."
        )
    arrays = {
        n: da.from_array(a, chunks=(max(1, len(a) // 4 or 1), *a.shape[1:]))
        for n, a in loaded.items()
        if a.ndim >= 1
    }
    return _open_pair(arrays["X"], arrays, path, fmt, target)


# --- the checking pass ---------------------------------------------------------------------------


def check_table(table: Table, *, chunk_rows: int | None = None) -> Table:
    """One pass over the data: row count, non-finite values, the target on the client.

    Parameters
    ----------
    table : Table
        From :func:`open_table`.
    chunk_rows : int, optional
        Rows per chunk of the returned ``X`` (by default the source's partitions or stored chunks).

    Returns
    -------
    Table
        ``X`` with known row chunks, ``y`` as a NumPy array (or None).
    """
    import dask

    if table.frame is not None:
        table = _check_frame(table)
    else:
        checks = [(~da_isfinite(table.X)).any(axis=1).sum()]
        if table.y is not None:
            checks.append(table.y)
        results = dask.compute(*checks)
        _refuse_non_finite(table, int(results[0]), results[1] if table.y is not None else None)
        if table.y is not None:
            table = replace(table, y=np.asarray(results[1]))
    if chunk_rows is not None:
        table = replace(table, X=table.X.rechunk({0: int(chunk_rows), 1: -1}))
    return table


def da_isfinite(X: Any) -> Any:
    """``isfinite`` of a numeric (or bool) Dask array."""
    import dask.array as da

    if X.dtype.kind not in "fc":
        return da.ones(X.shape, dtype=bool, chunks=X.chunks)
    return da.isfinite(X)


def _frame_stats(frame: Any, features: list[str]) -> Any:
    import pandas as pd

    values = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = int((~np.isfinite(values)).any(axis=1).sum())
    return pd.DataFrame({"rows": [len(frame)], "bad": [bad]})


def _check_frame(table: Table) -> Table:
    import dask
    import pandas as pd

    frame = table.frame
    meta = pd.DataFrame({"rows": pd.Series([], dtype="int64"), "bad": pd.Series([], dtype="int64")})
    stats = frame.map_partitions(_frame_stats, table.feature_names, meta=meta)
    todo = [stats] + ([frame[table.target_name]] if table.target_name is not None else [])
    try:
        results = dask.compute(*todo)
    except (ValueError, TypeError) as err:
        raise _reword_parse_error(err, table) from err
    per_partition = results[0]
    lengths = tuple(int(r) for r in per_partition["rows"])
    y = None
    if table.target_name is not None:
        y = results[1].to_numpy()
        if isinstance(results[1].dtype, pd.CategoricalDtype) or y.dtype.kind == "O":
            y = np.asarray(results[1].astype(object).to_numpy())
    _refuse_non_finite(table, int(per_partition["bad"].sum()), y)
    X = frame[table.feature_names].to_dask_array(lengths=lengths)
    if X.dtype.kind not in "fc":
        X = X.astype(np.float64)
    return replace(table, X=X.rechunk({1: -1}), y=y, frame=None)


def _reword_parse_error(err: Exception, table: Table) -> Exception:
    text = str(err)
    if "Mismatched dtypes" in text or "could not convert" in text or "Unable to parse" in text:
        columns = re.findall(r"^\|\s*([^|]+?)\s*\|", text, flags=re.MULTILINE)
        columns = [c for c in columns if c not in ("Column", "") and not set(c) <= set("-")]
        named = f"column(s) {_listing(columns)}" if columns else "a column"
        return TypeError(
            f"Expected numeric feature columns in {table.path!r}, found non-numeric values in "
            f"{named} beyond the rows read to infer the types; clean or encode that column."
        )
    return ValueError(
        f"Expected {table.path!r} to be a readable {table.format} file, found an error while "
        f"reading it ({type(err).__name__}: {_short(err)}); check the file."
    )


def _refuse_non_finite(table: Table, bad_rows: int, y: Any) -> None:
    if bad_rows:
        raise non_finite_error(f"the features of {table.path!r}", bad_rows)
    if y is None:
        return
    y = np.asarray(y)
    if y.dtype.kind in "fc":
        missing = int((~np.isfinite(y)).sum())
    else:
        import pandas as pd

        missing = int(pd.isna(y).sum())
    if missing:
        raise ValueError(
            f"Expected a value in every row of the target {table.target_name!r} of {table.path!r}, "
            f"found {missing} row(s) with NaN or missing values; drop or fill those rows."
        )


def check_same_features(train: Table, other: Table, *, what: str = "validation") -> None:
    """Refuse ``other`` data whose features differ from the training features.

    Parameters
    ----------
    train, other : Table
    what : str
        The role of ``other``, for messages.
    """
    if train.named and other.named and train.feature_names != other.feature_names:
        missing = [f for f in train.feature_names if f not in other.feature_names]
        extra = [f for f in other.feature_names if f not in train.feature_names]
        detail = (
            f"missing {_listing(missing)}, extra {_listing(extra)}"
            if missing or extra
            else "the same columns in another order"
        )
        raise ValueError(
            f"Expected the {what} data {other.path!r} to have the training features of "
            f"{train.path!r}, found {detail}; pass data with the same feature columns."
        )
    if len(train.feature_names) != len(other.feature_names):
        raise ValueError(
            f"Expected {len(train.feature_names)} feature columns in the {what} data {other.path!r} "
            f"(as in {train.path!r}), found {len(other.feature_names)}; pass data with the same "
            "feature columns."
        )


# --- predictions ---------------------------------------------------------------------------------


def write_predictions(pred: Any, path: str, *, columns: list[str]) -> None:
    """Write predictions block by block (out of core for .zarr, .npy and .parquet; CSV in row order).

    Parameters
    ----------
    pred : dask.array.Array, shape (n,) or (n, c)
        Predictions (numeric, or class labels of any dtype).
    path : str
        Output path; the format follows the extension (:data:`OUTPUT_FORMATS`).
    columns : list of str
        Column names (one per output) for CSV/Parquet.
    """
    import dask.array as da

    fmt = detect_format(path, formats=OUTPUT_FORMATS)
    pred = _storable(pred)
    if fmt == "zarr":
        import zarr

        target = zarr.create_array(
            store=path,
            shape=pred.shape,
            chunks=tuple(c[0] for c in pred.chunks),
            dtype=pred.dtype,
            overwrite=True,
        )
        target.attrs["columns"] = columns
        da.store(pred, target, lock=False)
    elif fmt == "npy":
        created = np.lib.format.open_memmap(path, mode="w+", dtype=pred.dtype, shape=pred.shape)
        del created
        da.store(pred, NpyWriter(path), lock=False)
    else:
        import dask.dataframe as dd

        frame = dd.from_dask_array(pred, columns=columns[0] if pred.ndim == 1 else columns)
        if pred.ndim == 1:
            frame = frame.to_frame()
        if fmt == "csv":
            frame.to_csv(path, single_file=True, index=False)
        else:
            frame.to_parquet(path, write_index=False, overwrite=True)


def storable_labels(classes: np.ndarray) -> np.ndarray:
    """Class labels in a dtype every output format stores: object (string) labels become fixed-width
    unicode.

    Parameters
    ----------
    classes : numpy.ndarray, shape (k,)
    """
    classes = np.asarray(classes)
    return classes.astype(str) if classes.dtype.kind == "O" else classes


def _storable(pred: Any) -> Any:
    if pred.dtype.kind == "O":
        raise TypeError(
            f"Expected predictions of a fixed-size dtype, found {pred.dtype}; convert labels with "
            "rfmdist.cli.tables.storable_labels first."
        )
    return pred


class NpyWriter:
    """A ``.npy`` file as a ``dask.array.store`` target: each task writes its rows through its own
    memory map (only the path is sent to the workers).

    Parameters
    ----------
    path : str
        An existing ``.npy`` file of the full shape and dtype.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        mapped = np.load(self.path, mmap_mode="r+")
        mapped[key] = value
        mapped.flush()
        del mapped


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
