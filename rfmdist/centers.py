"""Center selection: which points a round's kernel machine is expanded on.

A selector, in the manner of Falkon's ``CenterSelector``, turns the (preprocessed) training rows into
the centers of the rounds and says which rows they are:

- :class:`AllRows`: every row, the exact system ``(K + reg I) a = Y``;
- :class:`UniformSelector`: ``m`` rows drawn uniformly without replacement, seeded by the fit's seed
  (the Nyström system), so that a resumed fit draws the same;
- :class:`FixedSelector`: centers given as an array (the estimator's ``centers=array``, preprocessed
  like the rows; or the rounds' own, reused by the refit on all rows).

:func:`selector_for` maps the estimators' ``centers`` parameter (``'auto'``, None, an int, an array)
onto one of them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rfmdist.backend import get_namespace, to_numpy
from rfmdist.data import check_finite, is_dask_array
from rfmdist.model import Standardizer

#: The row index recorded for a center that is not a training row (a given array).
NOT_A_ROW = -1


class CenterSelector(Protocol):
    """Chooses the centers of a fit's rounds."""

    def count(self, n_rows: int) -> int:
        """How many centers there will be for ``n_rows`` training rows (``n_rows``: exact)."""
        ...

    def select(
        self, Xp: Any, seed: int, preprocessing: Standardizer, dtype: np.dtype
    ) -> tuple[np.ndarray | None, Any]:
        """The centers.

        Parameters
        ----------
        Xp : array or dask.array.Array, shape (n, d)
            Preprocessed training rows in the kernel dtype.
        seed : int
            The fit's seed.
        preprocessing : Standardizer
            The preprocessing already applied to ``Xp`` (for centers given in raw units).
        dtype : numpy.dtype
            The kernel dtype.

        Returns
        -------
        rows : numpy.ndarray of int, shape (m,), or None
            Which rows the centers are (:data:`NOT_A_ROW` for given points); None for all rows.
        centers : array, shape (m, d)
            In memory (NumPy or CuPy, like ``Xp``'s chunks), preprocessed, in ``dtype``.
        """
        ...


def _in_memory(x: Any) -> Any:
    return x.compute() if is_dask_array(x) else x


@dataclass(frozen=True)
class AllRows:
    """Every training row is a center: the exact system."""

    def count(self, n_rows: int) -> int:
        return n_rows

    def select(
        self, Xp: Any, seed: int, preprocessing: Standardizer, dtype: np.dtype
    ) -> tuple[None, Any]:
        return None, _in_memory(Xp)


@dataclass(frozen=True)
class UniformSelector:
    """``n_centers`` training rows drawn uniformly without replacement, sorted.

    The draw uses ``numpy.random.default_rng([seed, 0])``: the stream is the fit's seed and this
    purpose (0), apart from the AGOP samples' and the preconditioner's.

    Examples
    --------
    >>> import numpy as np
    >>> rows, centers = UniformSelector(3).select(np.arange(20.0).reshape(10, 2), 7, None, None)
    >>> rows.tolist() == sorted(rows.tolist()), centers.shape
    (True, (3, 2))
    """

    n_centers: int

    def count(self, n_rows: int) -> int:
        return min(n_rows, self.n_centers)

    def select(
        self, Xp: Any, seed: int, preprocessing: Standardizer, dtype: np.dtype
    ) -> tuple[np.ndarray, Any]:
        n = int(Xp.shape[0])
        rng = np.random.default_rng([seed, 0])
        rows = np.sort(rng.choice(n, size=self.n_centers, replace=False))
        return rows, _in_memory(Xp[rows])


@dataclass(frozen=True)
class FixedSelector:
    """Centers given as an array.

    Parameters
    ----------
    centers : array, shape (m, d)
        In raw feature units (``preprocessed=False``: transformed like the rows), or already in the
        rows' preprocessed space and dtype (``preprocessed=True``).
    rows : numpy.ndarray of int, shape (m,), optional
        Which training rows they are (default: :data:`NOT_A_ROW` for each).
    preprocessed : bool, default=False
    """

    centers: Any
    rows: np.ndarray | None = None
    preprocessed: bool = False

    def count(self, n_rows: int) -> int:
        return int(np.shape(self.centers)[0])

    def select(
        self, Xp: Any, seed: int, preprocessing: Standardizer, dtype: np.dtype
    ) -> tuple[np.ndarray, Any]:
        rows = np.full(self.count(0), NOT_A_ROW) if self.rows is None else self.rows
        if self.preprocessed:
            return rows, self.centers
        given = to_numpy(self.centers)
        d = int(Xp.shape[1])
        if given.ndim != 2 or given.shape[1] != d or given.shape[0] < 1:
            raise ValueError(
                f"Expected centers of shape (m, {d}), found {given.shape}; pass rows with the "
                "training features' columns."
            )
        check_finite(given, name="centers")
        like = Xp._meta if is_dask_array(Xp) else Xp
        return rows, preprocessing.transform(get_namespace(like).asarray(given), dtype)


def selector_for(spec: Any, n_rows: int, auto_count: int | None = None) -> CenterSelector:
    """The selector of the estimators' ``centers`` parameter.

    Parameters
    ----------
    spec : 'auto', None, int or array of shape (m, d)
        ``'auto'`` takes ``auto_count``; None, or a count of at least ``n_rows``, the exact system.
    n_rows : int
        Training rows.
    auto_count : int or None
        What ``'auto'`` chose (:func:`rfmdist.sizing.auto_centers`; None: the exact system).

    Examples
    --------
    >>> selector_for(100, 50), selector_for(10, 50)
    (AllRows(), UniformSelector(n_centers=10))
    """
    if isinstance(spec, str):  # 'auto'
        spec = auto_count
    if spec is None or (isinstance(spec, numbers.Integral) and spec >= n_rows):
        return AllRows()
    if isinstance(spec, numbers.Integral):
        return UniformSelector(int(spec))
    return FixedSelector(spec)
