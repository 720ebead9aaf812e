"""Estimator behaviour: planted feature learning, best-round selection, outputs and input types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import product_task
from scipy.linalg import subspace_angles

from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.kernels import kernel_block


def test_feature_learning_recovers_planted_directions():
    """y = x0 * x1 + noise, d = 20, n = 3000: M's top-2 eigenvectors span {e0, e1} (cosines >= 0.95)
    and the test MSE is at most a third of round 0's (the plain Laplace kernel)."""
    X, y = product_task(3000, 20, seed=0)
    X_test, y_test = product_task(2000, 20, seed=1)
    model = RFMRegressor(iters=5, random_state=0, dtype="float64", n_iter_no_change=None)
    model.fit(X, y)
    _, evecs = np.linalg.eigh(model.M_)
    top2 = evecs[:, -2:]
    cosines = np.cos(subspace_angles(top2, np.eye(20)[:, :2]))
    assert cosines.min() >= 0.95, cosines
    plain = RFMRegressor(iters=0, random_state=0, dtype="float64").fit(X, y)
    mse_plain = np.mean((plain.predict(X_test) - y_test) ** 2)
    mse_rfm = np.mean((model.predict(X_test) - y_test) ** 2)
    assert mse_rfm <= mse_plain / 3, (mse_rfm, mse_plain)
    assert model.best_iter_ == 5 and len(model.history_) == 6
    assert np.argsort(model.feature_importances_)[-2:].tolist() in ([0, 1], [1, 0])


def test_round_zero_is_kernel_ridge_regression(rng):
    """iters=0 with standardize=False is exactly (K + reg I)^{-1} y with the plain Laplace kernel."""
    X = rng.normal(size=(200, 4))
    y = rng.normal(size=200)
    model = RFMRegressor(iters=0, standardize=False, dtype="float64", reg=0.1, bandwidth=2.0)
    model.fit(X, y)
    K = kernel_block(X, X, np.eye(4), bandwidth=2.0)
    alpha = np.linalg.solve(K + 0.1 * np.eye(200), y)
    X_new = rng.normal(size=(30, 4))
    want = kernel_block(X_new, X, np.eye(4), bandwidth=2.0) @ alpha
    np.testing.assert_allclose(model.predict(X_new), want, rtol=1e-8, atol=1e-10)


def test_eval_set_keeps_best_round_and_records_history():
    X, y = product_task(800, 10, seed=2)
    X_val, y_val = product_task(300, 10, seed=3)
    model = RFMRegressor(iters=3, random_state=0).fit(X, y, eval_set=(X_val, y_val))
    scores = [h["val_score"] for h in model.history_]
    assert len(scores) == 4 and all(s is not None for s in scores)
    assert model.best_iter_ == int(np.argmin(scores))
    np.testing.assert_allclose(model.M_, model.M_history_[model.best_iter_])
    val_mse = np.mean((model.predict(X_val) - y_val) ** 2)
    np.testing.assert_allclose(val_mse, min(scores), rtol=1e-4)
    for h in model.history_:
        assert h["seconds"] > 0 and h["train_score"] >= 0


def test_multi_output_regression(rng):
    X = rng.normal(size=(400, 5))
    Y = np.column_stack([X[:, 0] * X[:, 1], np.sin(X[:, 2])])
    model = RFMRegressor(iters=2, random_state=0).fit(X, Y)
    pred = model.predict(X)
    assert pred.shape == (400, 2)
    assert model.score(X, Y) > 0.9


def test_classifier_labels_scores_and_decision_function(rng):
    X = rng.normal(size=(600, 6))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    clf = RFMClassifier(iters=2, random_state=0).fit(X[:450], y[:450], eval_set=(X[450:], y[450:]))
    assert clf.classes_.tolist() == ["a", "b", "c"]
    scores = clf.decision_function(X[450:])
    assert scores.shape == (150, 3)
    np.testing.assert_array_equal(clf.predict(X[450:]), clf.classes_[scores.argmax(axis=1)])
    assert clf.score(X[450:], y[450:]) == pytest.approx(clf.history_[clf.best_iter_]["val_score"])
    assert clf.score(X[450:], y[450:]) > 0.85
    binary = RFMClassifier(iters=1, random_state=0).fit(X, X[:, 2] > 0)
    assert binary.decision_function(X).shape == (600,)


def test_pandas_input_and_diag_and_gaussian(rng):
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["u", "v", "w"])
    y = pd.Series(X["u"] ** 2 + X["v"])
    model = RFMRegressor(iters=2, diag=True, kernel="gaussian", random_state=0).fit(X, y)
    assert model.M_.shape == (3,)
    assert list(model.feature_names_in_) == ["u", "v", "w"]
    assert model.feature_importances_.max() == 1.0
    assert model.predict(X).shape == (300,)


def test_same_seed_same_model_and_nystrom_centers(rng):
    X, y = product_task(1500, 8, seed=4)
    a = RFMRegressor(iters=2, centers=300, random_state=7).fit(X, y)
    b = RFMRegressor(iters=2, centers=300, random_state=7).fit(X, y)
    assert a.centers_.shape == (300, 8)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    choice = a.history_[0]["solver_choice"]
    assert a.history_[0]["solver"] == choice["chosen"] in ("direct", "pcg")
    assert set(choice["estimates"]) == {"direct", "pcg"}  # no float32 solve for Nystrom systems


def test_predict_reads_a_zarr_group_path(tmp_path):
    """predict takes the path of a Zarr group holding X, as fit does, and returns its lazy Dask
    predictions, equal to those of the rows in memory."""
    import zarr

    X, y = product_task(300, 4, seed=7)
    model = RFMRegressor(iters=1, random_state=0).fit(X, y)
    group = zarr.open_group(str(tmp_path / "rows.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(100, 4))
    lazy = model.predict(str(tmp_path / "rows.zarr"))
    np.testing.assert_allclose(np.asarray(lazy), model.predict(X), rtol=1e-12, atol=1e-12)
