"""scikit-learn compatibility: check_estimator, clone, Pipeline and GridSearchCV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from rfmdist import RFMClassifier, RFMRegressor

# In float32 (the default) BLAS gives results that differ in the last bits with the batch size, so
# check_methods_subset_invariance (atol 1e-7) fails by design there; it is run in float64, where it
# passes, and float32 batch invariance is tested below at a float32 tolerance.
FLOAT32_ONLY_FAILURE = "check_methods_subset_invariance"


def failed_checks(estimator):
    return {
        r["check_name"]: str(r["exception"])
        for r in check_estimator(estimator, on_fail=None)
        if r["status"] == "failed"
    }


@pytest.mark.parametrize("cls", [RFMRegressor, RFMClassifier])
def test_check_estimator_float64(cls):
    failed = failed_checks(cls(iters=1, random_state=0, dtype="float64"))
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


@pytest.mark.parametrize("cls", [RFMRegressor, RFMClassifier])
def test_check_estimator_float32_default(cls):
    failed = failed_checks(cls(iters=1, random_state=0))
    assert set(failed) <= {FLOAT32_ONLY_FAILURE}, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_float32_predictions_batch_invariant_to_float32_precision(rng):
    X = rng.normal(size=(500, 6))
    y = np.sin(X[:, 0]) + X[:, 1]
    model = RFMRegressor(iters=1, random_state=0).fit(X, y)
    full = model.predict(X)
    parts = np.concatenate([model.predict(X[i : i + 37]) for i in range(0, 500, 37)])
    np.testing.assert_allclose(parts, full, rtol=1e-5, atol=1e-5)


def test_clone_get_set_params():
    est = RFMRegressor(bandwidth=3.0, diag=True, random_state=1)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    twin.set_params(reg=0.5)
    assert twin.reg == 0.5 and est.reg == 1e-3
    assert not hasattr(twin, "model_")


def test_pipeline_and_grid_search(rng):
    X = rng.normal(size=(240, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), RFMClassifier(iters=1, random_state=0))
    search = GridSearchCV(pipe, {"rfmclassifier__reg": [1e-3, 1.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["rfmclassifier__reg"] in (1e-3, 1.0)
    assert search.score(X, y) > 0.8
