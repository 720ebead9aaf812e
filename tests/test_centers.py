"""Center selectors (rfmdist.centers) against direct NumPy references, and the fit's use of them."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from rfmdist import RFMRegressor
from rfmdist.centers import (
    NOT_A_ROW,
    AllRows,
    FixedSelector,
    UniformSelector,
    selector_for,
)
from rfmdist.model import Standardizer

N, D = 60, 4


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, D))


def test_all_rows_is_every_row(rows):
    got_rows, centers = AllRows().select(rows, 3, Standardizer(), np.float64)
    assert got_rows is None and centers is rows
    assert AllRows().count(N) == N


@pytest.mark.parametrize("dask_rows", [False, True])
def test_uniform_selector_draws_distinct_sorted_rows_from_the_seed(rows, dask_rows):
    Xp = da.from_array(rows, chunks=(16, D)) if dask_rows else rows
    got_rows, centers = UniformSelector(10).select(Xp, 7, Standardizer(), np.float64)
    want = np.sort(np.random.default_rng([7, 0]).choice(N, size=10, replace=False))
    np.testing.assert_array_equal(got_rows, want)
    assert isinstance(centers, np.ndarray)
    np.testing.assert_array_equal(centers, rows[want])
    other, _ = UniformSelector(10).select(Xp, 8, Standardizer(), np.float64)
    assert not np.array_equal(other, want)
    assert UniformSelector(10).count(N) == 10 and UniformSelector(10).count(5) == 5


def test_fixed_selector_preprocesses_raw_centers_like_the_rows(rows):
    given = rows[:5] * 3.0 + 1.0
    mean, scale = rows.mean(axis=0), rows.std(axis=0)
    pre = Standardizer(mean=mean, scale=scale)
    got_rows, centers = FixedSelector(given).select(rows, 0, pre, np.float32)
    np.testing.assert_array_equal(got_rows, np.full(5, NOT_A_ROW))
    assert centers.dtype == np.float32
    np.testing.assert_allclose(centers, (given - mean) / scale, rtol=1e-6)
    kept = np.array([4, 9])
    same_rows, same = FixedSelector(rows[kept], rows=kept, preprocessed=True).select(
        rows, 0, pre, np.float64
    )
    np.testing.assert_array_equal(same_rows, kept)
    assert same is not None and np.array_equal(same, rows[kept])


@pytest.mark.parametrize(
    ("centers", "message"),
    [
        (np.ones((3, D + 1)), r"Expected centers of shape \(m, 4\), found \(3, 5\)"),
        (np.full((2, D), np.nan), "Expected finite values in centers"),
    ],
)
def test_fixed_selector_refuses_bad_centers(rows, centers, message):
    with pytest.raises(ValueError, match=message):
        FixedSelector(centers).select(rows, 0, Standardizer(), np.float64)


def test_selector_for_maps_the_centers_parameter():
    assert selector_for("auto", 100, None) == AllRows()
    assert selector_for("auto", 100, 30) == UniformSelector(30)
    assert selector_for(None, 100) == AllRows()
    assert selector_for(100, 100) == AllRows()
    assert selector_for(99, 100) == UniformSelector(99)
    given = np.zeros((3, 2))
    chosen = selector_for(given, 100)
    assert isinstance(chosen, FixedSelector) and chosen.centers is given


def test_a_fit_expands_on_the_rows_the_uniform_selector_draws(rows):
    y = np.sin(rows[:, 0])
    model = RFMRegressor(
        iters=1, centers=20, n_iter_no_change=None, validation_fraction=None, random_state=5
    ).fit(rows, y)
    want = np.sort(np.random.default_rng([model.seed_, 0]).choice(N, size=20, replace=False))
    expected = model.model_.preprocessing.transform(rows[want], np.float64)
    np.testing.assert_array_equal(model.centers_, expected)
