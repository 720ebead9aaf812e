"""Every documented bad input raises an error that says what was expected, what was found, the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.exceptions import NotFittedError


@pytest.fixture
def Xy(rng):
    X = rng.normal(size=(40, 3))
    return X, X[:, 0] + 0.1 * rng.normal(size=40)


def test_nan_and_inf(Xy):
    X, y = Xy
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(
            ValueError, match="Expected finite values in X, found NaN or infinity in 1 row"
        ):
            RFMRegressor().fit(Xb, y)
    yb = y.copy()
    yb[0] = np.nan
    with pytest.raises(ValueError, match="Expected finite values in y"):
        RFMRegressor().fit(X, yb)


def test_length_mismatch(Xy):
    X, y = Xy
    with pytest.raises(ValueError, match="same number of samples, found 40 and 39"):
        RFMRegressor().fit(X, y[:-1])
    with pytest.raises(ValueError, match="same number of samples, found 40 and 39"):
        RFMClassifier().fit(X, (y > 0)[:-1])


def test_wrong_number_of_features_at_predict(Xy):
    X, y = Xy
    model = RFMRegressor(iters=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but RFMRegressor is expecting 3"):
        model.predict(X[:, :2])


def test_fewer_than_two_samples(Xy):
    X, y = Xy
    with pytest.raises(ValueError, match="Expected at least 2 samples to fit, found 1 sample"):
        RFMRegressor().fit(X[:1], y[:1])


def test_single_class(Xy):
    X, _ = Xy
    with pytest.raises(ValueError, match="Expected at least 2 classes in y, found 1 class"):
        RFMClassifier().fit(X, np.zeros(40))


def test_non_numeric_columns(Xy):
    X, y = Xy
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(city=["x", "y"] * 20)
    with pytest.raises(TypeError, match=r"non-numeric column\(s\) 'city'.*get_dummies"):
        RFMRegressor().fit(frame, y)


def test_one_dimensional_X(Xy):
    X, y = Xy
    with pytest.raises(ValueError, match="found a 1-D array of shape \\(40,\\); Reshape"):
        RFMRegressor().fit(X[:, 0], y)


@pytest.mark.parametrize(
    "params, pattern",
    [
        ({"bandwidth": -1.0}, "Expected bandwidth of RFMRegressor to be a float > 0, found -1.0"),
        ({"bandwidth": 0.0}, "Expected bandwidth of RFMRegressor to be a float > 0, found 0.0"),
        ({"reg": 0.0}, "Expected reg of RFMRegressor to be a float > 0, found 0.0"),
        ({"reg": -1e-3}, "Expected reg of RFMRegressor to be a float > 0"),
        ({"kernel": "rbf"}, "Expected kernel of RFMRegressor to be one of 'laplace', 'gaussian'"),
        ({"iters": -1}, "Expected iters of RFMRegressor to be an int >= 0"),
        ({"dtype": "float16"}, "Expected dtype of RFMRegressor to be one of 'float32', 'float64'"),
    ],
)
def test_bad_parameters(Xy, params, pattern):
    X, y = Xy
    with pytest.raises(ValueError, match=pattern):
        RFMRegressor(**params).fit(X, y)


def test_predict_before_fit(Xy):
    X, _ = Xy
    for est in (RFMRegressor(), RFMClassifier()):
        with pytest.raises(NotFittedError, match="not fitted yet; call 'fit'"):
            est.predict(X)
    with pytest.raises(NotFittedError):
        RFMClassifier().decision_function(X)
