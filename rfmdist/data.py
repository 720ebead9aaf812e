"""Input checking and ingestion: NumPy, pandas, CuPy, Dask arrays and Zarr stores.

The one ingestion layer of the estimators and the command line: both open Zarr stores with
:func:`open_zarr`, refuse non-numeric columns with :func:`check_numeric_columns` and non-finite rows
with :func:`non_finite_error` (the command line's file formats are read by
:mod:`rfmdist.cli.tables`, which calls these). Every check raises an error that says what was
expected, what was found and how to fix it. In-memory inputs go through scikit-learn's ``validate_data`` (feature names,
``n_features_in_``); Dask inputs are checked on their metadata (row chunks only, known chunk sizes,
numeric dtype) and for finiteness in the same pass that computes the standardisation statistics.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rfmdist.backend import device_meta, get_namespace, is_cupy_array, to_device, to_numpy

FIX_NON_FINITE = (
    "remove or impute those rows (empty cells of a file read as NaN), e.g. with "
    "sklearn.impute.SimpleImputer, before fitting"
)


def is_dask_array(x: Any) -> bool:
    """True for a ``dask.array.Array`` (without importing Dask for other inputs)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def on_device(x: Any, device: str) -> Any:
    """``x`` with its data where the kernel passes run: host for 'cpu', the current GPU for 'gpu'.

    In-memory arrays are copied (``cupy.asarray`` / ``.get()``) unless already there; Dask arrays are
    converted chunk by chunk, lazily (``map_blocks`` with a CuPy or NumPy ``meta``), so Zarr-backed
    chunks go straight from the store to the device of the worker that reads them.

    Parameters
    ----------
    x : array or dask.array.Array
    device : {'cpu', 'gpu'}
    """
    if is_dask_array(x):
        on_gpu = is_cupy_array(x._meta)
        if device == "gpu" and not on_gpu:
            return x.map_blocks(to_device, dtype=x.dtype, meta=device_meta(x.dtype, x.ndim))
        if device == "cpu" and on_gpu:
            return x.map_blocks(
                to_numpy, dtype=x.dtype, meta=np.empty((0,) * x.ndim, dtype=x.dtype)
            )
        return x
    if device == "gpu":
        return x if is_cupy_array(x) else to_device(x)
    return to_numpy(x) if is_cupy_array(x) else x


def is_store_path(x: Any) -> bool:
    """True for a string or path that names a Zarr array or group (local path or fsspec URL)."""
    return isinstance(x, (str, os.PathLike))


def open_zarr(path: Any) -> tuple[Any, dict[str, Any]]:
    """Open a Zarr array, or a group with an array ``X`` (and usually ``y``), lazily.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL of a Zarr v3 group or array.

    Returns
    -------
    X : dask.array.Array
        The array, or the group's ``X`` (chunked as stored).
    arrays : dict of str to dask.array.Array
        Every array of a group by name (``X`` among them); empty for a single array.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        Something zarr cannot open, or a group without ``X``.
    """
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as err:
        raise FileNotFoundError(
            f"Expected a Zarr group with arrays 'X' and 'y' at {str(path)!r}, found nothing there; "
            "check the path (write one with zarr.create_array or rfmdist's CLI)."
        ) from err
    except Exception as err:
        raise ValueError(
            f"Expected a Zarr group or array at {str(path)!r}, found content that zarr cannot open "
            f"({type(err).__name__}: {err}); check the path."
        ) from err
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), {}
    names = sorted(node.array_keys())
    if "X" not in names:
        raise ValueError(
            f"Expected the Zarr group {str(path)!r} to hold an array 'X' (and 'y'), found arrays "
            f"{names}; store the features as 'X' and the targets as 'y'."
        )
    arrays = {name: da.from_zarr(node[name]) for name in names}
    return arrays["X"], arrays


def open_zarr_xy(path: Any) -> tuple[Any, Any]:
    """Open a Zarr group with arrays ``X`` (n, d) and ``y`` (n,) or (n, c), or a single array ``X``.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL of a Zarr v3 group or array.

    Returns
    -------
    X : dask.array.Array, shape (n, d)
        Chunked by rows as stored (a group's ``X`` with its columns in one chunk).
    y : dask.array.Array or None
    """
    X, arrays = open_zarr(path)
    if arrays and X.ndim == 2:
        X = X.rechunk({1: X.shape[1]})
    return X, arrays.get("y")


def check_dask_features(X: Any, *, n_features: int | None = None, name: str = "X") -> Any:
    """Check a Dask feature array's metadata; return it (row-chunked, numeric).

    Parameters
    ----------
    X : dask.array.Array
    n_features : int, optional
        Expected number of columns (at predict time).
    name : str
    """
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2-D {name} (samples x features), found a {X.ndim}-D array of shape "
            f"{X.shape}; reshape it, e.g. {name}.reshape(-1, 1) for a single feature."
        )
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"Expected {name} with known chunk sizes, found unknown (NaN) row chunks; call "
            f"{name}.compute_chunk_sizes() first."
        )
    if len(X.chunks[1]) != 1:
        raise ValueError(
            f"Expected {name} chunked by rows only, found {len(X.chunks[1])} column chunks; use "
            f"{name}.rechunk({{1: {name}.shape[1]}})."
        )
    if X.dtype.kind not in "fiub":
        raise TypeError(
            f"Expected numeric features in {name}, found dtype {X.dtype}; convert or encode the "
            "columns to numbers first."
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"X has {X.shape[1]} features, but the model is expecting {n_features} features as "
            "input (as in fit); pass the same columns in the same order."
        )
    if X.shape[0] < 1:
        raise ValueError(f"Expected at least 1 sample in {name}, found 0 rows.")
    return X


def check_numeric_columns(dtypes: Any, *, where: str = "", fix: str = "") -> None:
    """Refuse non-numeric feature columns, naming them.

    Parameters
    ----------
    dtypes : mapping of column name to dtype
        E.g. a pandas or Dask DataFrame's ``dtypes`` (of the feature columns).
    where : str
        Where the columns are (``" in 'train.csv'"``), for the message.
    fix : str
        More advice for the message (``" or make one the --target"``).
    """
    import pandas as pd

    bad = [str(c) for c, dtype in dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise TypeError(
            f"Expected numeric feature columns{where}, found non-numeric column(s) {shown} (dtype "
            f"{dtypes[bad[0]]}); encode them first, e.g. with pandas.get_dummies or "
            f"sklearn.preprocessing.OrdinalEncoder{fix}."
        )


def non_finite_error(where: str, bad_rows: int) -> ValueError:
    """The refusal of features with ``bad_rows`` rows holding NaN or infinity."""
    return ValueError(
        f"Expected finite values in {where}, found NaN or infinity in {bad_rows} row(s); "
        f"{FIX_NON_FINITE}."
    )


def check_finite(X: Any, *, name: str = "X") -> None:
    """Raise if an in-memory array holds NaN or infinity, saying how many and where."""
    xp = get_namespace(X)
    finite = xp.isfinite(X)
    if not bool(finite.all()):
        bad_rows = (
            int((~finite).any(axis=tuple(range(1, X.ndim))).sum())
            if X.ndim > 1
            else int((~finite).sum())
        )
        raise non_finite_error(name, bad_rows)


def check_min_samples(n: int, minimum: int = 2) -> None:
    """Refuse fits on fewer than ``minimum`` samples."""
    if n < minimum:
        raise ValueError(
            f"Expected at least {minimum} samples to fit, found {n} sample(s) (n_samples = {n}); "
            "pass more rows."
        )


def check_one_dimensional(X: Any, *, name: str = "X") -> None:
    """Refuse 1-D feature arrays with the reshape that fixes them."""
    if getattr(X, "ndim", None) == 1:
        raise ValueError(
            f"Expected a 2-D array {name} (samples x features), found a 1-D array of shape "
            f"{X.shape}; Reshape your data with {name}.reshape(-1, 1) for a single feature or "
            f"{name}.reshape(1, -1) for a single sample."
        )


def check_length_match(n_x: int, n_y: int) -> None:
    """Refuse X and y of different lengths."""
    if n_x != n_y:
        raise ValueError(
            f"Expected X and y with the same number of samples, found {n_x} and {n_y}; pass rows "
            "that correspond one to one."
        )


def regression_targets(y: Any, n: int) -> tuple[Any, bool]:
    """Check regression targets; return them as (n, c) and whether they were 1-D.

    Parameters
    ----------
    y : array-like or dask array, shape (n,) or (n, c)
    n : int
        Number of rows of X.
    """
    if is_dask_array(y):
        if y.dtype.kind not in "fiub":
            raise TypeError(f"Expected numeric targets y, found dtype {y.dtype}; encode them.")
        check_length_match(n, y.shape[0])
        return (y[:, None] if y.ndim == 1 else y), y.ndim == 1
    if is_cupy_array(y):
        arr = y
    else:
        arr = np.asarray(y)
        if arr.dtype.kind not in "fiub":
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"Expected numeric targets y, found dtype {arr.dtype}; convert them to numbers "
                    "(use RFMClassifier for class labels)."
                ) from err
    if arr.ndim not in (1, 2):
        raise ValueError(f"Expected y of shape (n,) or (n, c), found shape {arr.shape}.")
    check_length_match(n, arr.shape[0])
    check_finite(arr, name="y")
    return (arr[:, None] if arr.ndim == 1 else arr), arr.ndim == 1


def is_dataframe(X: Any) -> bool:
    """True for pandas DataFrames and similar frames with ``columns`` and ``dtypes``."""
    return hasattr(X, "columns") and hasattr(X, "dtypes") and not is_dask_array(X)


def take_rows(x: Any, rows: np.ndarray) -> Any:
    """``x[rows]`` for sorted row indices: NumPy, CuPy (indices moved to the device) or Dask (known
    chunk sizes, lazily)."""
    if is_dask_array(x):
        return x[rows]
    return x[get_namespace(x).asarray(rows)]
