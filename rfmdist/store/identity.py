"""What identifies a run: the data fingerprint it records, and the check that a resumed (or reused)
run has the same estimator, parameters and data (:mod:`rfmdist.fingerprint` gathers the statistics)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from rfmdist.backend import to_numpy
from rfmdist.data import is_dask_array
from rfmdist.exceptions import StoreError
from rfmdist.fingerprint import ColumnStatistics, column_statistics, differences
from rfmdist.store.codec import json_safe, params_to_store
from rfmdist.store.location import StoreLocation

if TYPE_CHECKING:
    from rfmdist.store.reader import StoredRun

# Rows at each end of X and Y that the data fingerprint hashes.
FINGERPRINT_ROWS = 16


def _edge_rows(A: Any, k: int = FINGERPRINT_ROWS) -> np.ndarray:
    """First and last ``k`` rows of a 2-D array as float64 NumPy (two small reads for Dask)."""
    head, tail = A[:k], A[max(0, A.shape[0] - k) :]
    if is_dask_array(A):
        import dask

        head, tail = dask.compute(head, tail)
    return np.concatenate([to_numpy(head), to_numpy(tail)]).astype(np.float64)


def data_fingerprint(
    X: Any,
    Y: Any,
    classes: np.ndarray | None = None,
    statistics: ColumnStatistics | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What identifies a training set (:mod:`rfmdist.fingerprint`): its shape, dtype, classes, a hash
    of rows at an even stride and of the first/last rows, and per-column sums over every row.

    Parameters
    ----------
    X : array or dask.array.Array, shape (n, d)
        Raw (checked, not preprocessed) features.
    Y : array or dask.array.Array, shape (n, c)
        Targets as fitted (one-hot for classifiers, before target scaling).
    classes : numpy.ndarray, optional
        The classifier's labels.
    statistics : ColumnStatistics, optional
        The pass's statistics when the caller has them (else one pass here).

    Returns
    -------
    fingerprint : dict
        ``{"n", "d", "n_outputs", "dtype", "classes", "hash", "sample_hash"}`` (JSON-ready).
    vectors : dict of str to numpy.ndarray
        The per-column sums (stored as arrays ``fingerprint/<name>``).
    """
    if statistics is None:
        statistics = column_statistics(X, Y)
    digest = hashlib.sha256()
    for part in (_edge_rows(X), _edge_rows(Y)):
        digest.update(str(part.shape).encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    stamp = {
        "n": int(X.shape[0]),
        "d": int(X.shape[1]),
        "n_outputs": int(Y.shape[1]),
        "dtype": str(np.dtype(X.dtype)),
        "classes": None if classes is None else json_safe(list(classes)),
        "hash": digest.hexdigest()[:32],
        "sample_hash": statistics.sample_hash,
    }
    return stamp, dict(statistics.vectors)


def check_same_run(
    stored: StoredRun,
    location: StoreLocation,
    *,
    estimator: str,
    params: dict[str, Any],
    fingerprint: dict[str, Any],
    vectors: dict[str, np.ndarray] | None = None,
) -> None:
    """Refuse to resume (or reuse) a stored run with another estimator class, parameters or data.

    The data are compared by their fingerprints (:func:`data_fingerprint`): exactly for shape, dtype,
    classes and the row hashes, to a relative 1e-9 for the per-column sums over every row (``vectors``;
    stores written before they existed compare the rest).

    Raises
    ------
    StoreError
        Naming every difference.
    """
    differences = []
    if stored.attrs["estimator"] != estimator:
        differences.append(f"estimator {stored.attrs['estimator']!r} vs {estimator!r}")
    values, arrays = params_to_store(params)
    for name in sorted(set(values) | set(stored.attrs["params"])):
        old, new = stored.attrs["params"].get(name), values.get(name)
        same = old == new
        if same and isinstance(new, dict) and "array" in new:
            old_array = stored.params[name]
            new_array = arrays[new["array"]]
            same = old_array.shape == new_array.shape and np.array_equal(old_array, new_array)
        if not same:
            differences.append(f"parameter {name}: {_short(old)} vs {_short(new)}")
    stored_data = stored.attrs["data"]
    for key in ("n", "d", "n_outputs", "dtype", "classes", "hash", "sample_hash", "eval_set"):
        if key == "sample_hash" and key not in stored_data:
            continue  # a store from before the full-data fingerprint
        if stored_data.get(key) != fingerprint.get(key):
            differences.append(
                f"data {key}: {_short(stored_data.get(key))} vs {_short(fingerprint.get(key))}"
                f"{FINGERPRINT_HINTS.get(key, '')}"
            )
    if stored.data_vectors and vectors is not None:
        for line in differences_of(stored.data_vectors, vectors):
            differences.append(f"data {line}")
    if differences:
        raise StoreError(
            f"Expected the same estimator, parameters and data as the run stored at "
            f"{location.url!r}, found differences (stored vs given): {'; '.join(differences)}; pass "
            "the run's data and parameters, or start a new run with overwrite=True or another path."
        )


# What a differing part of the fingerprint usually means, for the resume refusal.
FINGERPRINT_HINTS = {
    "hash": " (the first or last rows differ)",
    "sample_hash": " (the rows at an even stride differ: values changed or rows moved)",
}


def differences_of(stored: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> list[str]:
    """:func:`rfmdist.fingerprint.differences`, each with what it usually means."""
    hints = {
        "sum": "values changed or a column rescaled",
        "sumsq": "values changed or a column rescaled",
        "weighted": "rows moved or values changed",
    }
    found = []
    for line in differences(stored, given):
        kind = line.split(" ", 1)[0].rsplit("_", 1)[-1]
        found.append(f"{line}: {hints.get(kind, 'the data differ')}")
    return found


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
