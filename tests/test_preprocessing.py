"""Default preprocessing: columns in one shared range keep it, columns in different units are standardised.

Reference fits use ``standardize=False`` on features prepared by hand, so what is compared is the
estimator's own preprocessing against the preprocessing it should amount to.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import canvas_digits as benchmark_canvas_digits
from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.model import Standardizer, feature_scales


def canvas_digits(copies: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digit canvas of the vs_xrfm benchmark (``benchmarks/common.py``; 14 x 14, seed 0),
    ``copies`` placements of each digit."""
    return benchmark_canvas_digits(copies=copies, size=14, seed=0)


def test_pixels_keep_their_range_and_the_plain_kernel_keeps_its_accuracy():
    """On near-constant border pixels the default preprocessing is the identity up to centering, so
    the plain kernel (round 0) scores what it scores on the raw pixels (within 0.5 points); per-column
    standardisation amplifies the near-constant pixels and scores lower."""
    X, y, digit = canvas_digits()
    train = digit < 1200
    scaling = Standardizer.fit(X[train])
    np.testing.assert_array_equal(scaling.scale, np.ones(X.shape[1]))
    plain = {"iters": 0, "random_state": 0, "n_iter_no_change": None}
    default = RFMClassifier(**plain).fit(X[train], y[train]).score(X[~train], y[~train])
    raw = RFMClassifier(**plain, standardize=False).fit(X[train], y[train])
    raw_score = raw.score(X[~train], y[~train])
    std = X[train].std(axis=0)
    std[std == 0] = 1.0
    zscored = RFMClassifier(**plain, standardize=False).fit(X[train] / std, y[train])
    z_score = zscored.score(X[~train] / std, y[~train])
    print(
        f"plain kernel accuracy: default {default:.4f}, raw {raw_score:.4f}, z-scored {z_score:.4f}"
    )
    assert abs(default - raw_score) <= 0.005
    assert z_score < raw_score


def test_pixels_in_0_255_are_scaled_to_unit_range():
    X, _, _ = canvas_digits(copies=1)
    scaling = Standardizer.fit(np.round(X * 255))
    np.testing.assert_array_equal(scaling.scale, np.full(X.shape[1], 255.0))


def test_columns_in_different_units_are_standardised(rng):
    """Unequal units: the plain kernel equals the fit on z-scored features with standardize=False
    (1e-8); after feature-learning rounds, whose AGOP GEMMs run in float32, to 1e-4."""
    Z = rng.normal(size=(500, 4))
    units = np.array([1.0, 1e3, 1e-3, 50.0])
    X = Z * units + np.array([0.0, 5e3, -1.0, 10.0])
    y = Z[:, 0] * Z[:, 1] + np.sin(Z[:, 2])
    scaling = Standardizer.fit(X)
    np.testing.assert_allclose(scaling.scale, X.std(axis=0))
    z = (X - X.mean(axis=0)) / X.std(axis=0)
    t = (y - y.mean()) / y.std()  # standardize=True also standardises regression targets
    for iters, tol in ((0, 1e-8), (2, 1e-4)):
        params = {"iters": iters, "random_state": 0, "n_iter_no_change": None}
        model = RFMRegressor(**params).fit(X, y)
        reference = RFMRegressor(**params, standardize=False).fit(z, t)
        want = reference.predict(z) * y.std() + y.mean()
        np.testing.assert_allclose(model.predict(X), want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("low", "high", "std", "shared"),
    [
        # one-hot columns, one of them a rare level: all share [0, 1]
        ([0, 0, 0, 0], [1, 1, 1, 1], [0.5, 0.4, 0.1, 0.05], True),
        # min-max scaled features
        ([0, 0, 0], [1, 1, 1], [0.3, 0.2, 0.25], True),
        # mixed units: no column spans the data's whole range
        ([0, 17, -3], [1e5, 90, 3], [3e4, 12, 1], False),
        # one column spanning everything is not a shared range
        ([0, 2, 3], [100, 5, 9], [30, 1, 2], False),
        # indicators beside continuous columns (a quarter is not reached)
        ([0, 0, -4, -3, -5, -2, -3, -4, -3], [1, 1, 4, 3, 5, 2, 3, 4, 3], [0.5] * 9, False),
    ],
)
def test_shared_range_rule(low, high, std, shared):
    scales = feature_scales(np.array(std, float), np.array(low, float), np.array(high, float))
    expected = np.full(len(std), max(high) - min(low)) if shared else np.array(std, float)
    np.testing.assert_array_equal(scales, expected)


def test_constant_columns_are_left_unscaled():
    scales = feature_scales(np.array([0.0, 2.0]), np.array([3.0, -9.0]), np.array([3.0, 9.0]))
    np.testing.assert_array_equal(scales, [1.0, 2.0])
