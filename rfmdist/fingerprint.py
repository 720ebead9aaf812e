"""What identifies a data set for a resumed fit: statistics of every row, gathered in one pass.

A resumed fit must see the data of the run it continues; otherwise the model mixes two data sets. The
fingerprint covers every row at no extra pass over the data: the same pass (one ``dask.compute``, or
one sweep in memory) that gives the preprocessing its per-column mean, standard deviation, minimum and
maximum also gives, per column of ``X`` and of the targets,

- the sum and the sum of squares (any change of a value's size, a rescaled or shifted column);
- a position-weighted sum ``sum_i w_i x_i`` with the Weyl weights ``w_i = frac(i * golden ratio)``
  (rows moved, shuffled or swapped, a changed value anywhere);

and a hash of 64 rows taken at an even stride (exact values, wherever they are), beside the shape,
dtype and classes. Sums are compared to a relative tolerance of :data:`RELATIVE_TOLERANCE` (their
rounding depends on the chunking); the hash exactly.

What it cannot detect: changes smaller than that tolerance relative to a column's sums (e.g. one value
in a million-row column moved in its tenth significant digit), and a permutation that exchanges rows
with identical values, or rows whose weights agree to that tolerance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfmdist.backend import get_namespace, to_numpy
from rfmdist.data import is_dask_array

# Golden-ratio Weyl sequence: well spread weights in [0, 1) for the position-weighted sums.
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
SAMPLED_ROWS = 64
RELATIVE_TOLERANCE = 1e-9
# The statistics stored per column (arrays ``fingerprint/<name>`` of a store).
VECTORS = ("x_sum", "x_sumsq", "x_weighted", "y_sum", "y_weighted")


@dataclass(frozen=True)
class ColumnStatistics:
    """One pass over ``X`` (n, d) and ``Y`` (n, c): the preprocessing's and the fingerprint's inputs.

    Attributes
    ----------
    n : int
    mean, std, low, high : numpy.ndarray, shape (d,)
        Per-column statistics of ``X`` (float64).
    vectors : dict of str to numpy.ndarray
        :data:`VECTORS`: sums, sums of squares and position-weighted sums of ``X`` (d,) and ``Y`` (c,).
    sample_hash : str
        Hash of :data:`SAMPLED_ROWS` rows of ``X`` and ``Y`` at an even stride.
    """

    n: int
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    vectors: dict[str, np.ndarray]
    sample_hash: str


def weights(n: int, start: int = 0) -> np.ndarray:
    """The Weyl weights of rows ``start .. start + n - 1``.

    Examples
    --------
    >>> weights(3).round(4)
    array([0.    , 0.618 , 0.2361])
    """
    return np.mod((np.arange(start, start + n, dtype=np.float64)) * GOLDEN, 1.0)


def sampled_rows(n: int) -> np.ndarray:
    """Indices of the rows the hash covers: :data:`SAMPLED_ROWS` at an even stride (all if fewer)."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).round().astype(np.int64))


def _statistics(X: Any, Y: Any, w: Any, rows: Any) -> tuple[Any, ...]:
    """The statistics' expressions (NumPy, CuPy or lazy Dask): mean, std, min, max, the
    :data:`VECTORS` in their order, and the sampled rows of X and Y. ``w``: the rows' Weyl weights,
    shape (n, 1)."""
    X64, Y64 = X.astype(np.float64, copy=False), Y.astype(np.float64, copy=False)
    return (
        X64.mean(axis=0),
        X64.std(axis=0),
        X.min(axis=0),
        X.max(axis=0),
        X64.sum(axis=0),
        (X64 * X64).sum(axis=0),
        (X64 * w).sum(axis=0),
        Y64.sum(axis=0),
        (Y64 * w).sum(axis=0),
        X[rows],
        Y[rows],
    )


def column_statistics(X: Any, Y: Any) -> ColumnStatistics:
    """Every statistic of :class:`ColumnStatistics` in one pass over the data.

    Parameters
    ----------
    X : array or dask.array.Array, shape (n, d)
        Raw (checked) features: NumPy, CuPy or Dask.
    Y : array or dask.array.Array, shape (n, c)
        Targets as fitted.
    """
    n = int(X.shape[0])
    rows = sampled_rows(n)
    if is_dask_array(X):
        import dask
        import dask.array as da

        w = da.map_blocks(
            lambda block, block_info=None: weights(
                block.shape[0], block_info[0]["array-location"][0][0]
            ),
            da.zeros(n, chunks=(X.chunks[0],)),
            dtype=np.float64,
        )
        Yd = Y if is_dask_array(Y) else da.from_array(to_numpy(Y), chunks=(X.chunks[0], -1))
        Yd = Yd.rechunk({0: X.chunks[0]})
        parts = dask.compute(*_statistics(X, Yd, w[:, None], rows))
    else:
        xp = get_namespace(X)
        parts = _statistics(X, Y, xp.asarray(weights(n))[:, None], xp.asarray(rows))
    mean, std, low, high, *vectors, x_rows, y_rows = (to_numpy(p) for p in parts)
    digest = hashlib.sha256()
    for part in (x_rows, y_rows):
        part = np.ascontiguousarray(part, dtype=np.float64)
        digest.update(str(part.shape).encode())
        digest.update(part.tobytes())
    return ColumnStatistics(
        n=n,
        mean=mean.astype(np.float64),
        std=std.astype(np.float64),
        low=low.astype(np.float64),
        high=high.astype(np.float64),
        vectors={k: v.astype(np.float64) for k, v in zip(VECTORS, vectors, strict=True)},
        sample_hash=digest.hexdigest()[:32],
    )


def differences(
    stored: dict[str, np.ndarray], given: dict[str, np.ndarray], tol: float = RELATIVE_TOLERANCE
) -> list[str]:
    """The statistics that differ between a stored run's data and the data given now.

    Parameters
    ----------
    stored, given : dict of str to numpy.ndarray
        :attr:`ColumnStatistics.vectors` of each.

    Returns
    -------
    list of str
        One entry per statistic that differs, naming the first columns that do.

    Examples
    --------
    >>> a = {"x_sum": np.array([1.0, 2.0])}
    >>> differences(a, {"x_sum": np.array([1.0, 2.5])})
    ['x_sum differs in columns [1] (e.g. 2 vs 2.5)']
    """
    found = []
    for name in sorted(set(stored) | set(given)):
        old, new = stored.get(name), given.get(name)
        if old is None or new is None or old.shape != new.shape:
            found.append(f"{name} missing or of another shape")
            continue
        scale = np.maximum(np.abs(old), np.abs(new))
        off = np.nonzero(np.abs(old - new) > tol * np.maximum(scale, 1e-300))[0]
        if off.size:
            j = int(off[0])
            found.append(
                f"{name} differs in columns {off[:5].tolist()}"
                f"{' ...' if off.size > 5 else ''} (e.g. {old[j]:.10g} vs {new[j]:.10g})"
            )
    return found
