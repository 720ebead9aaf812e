"""Early stopping across rounds, the internal validation split with its refit, and the time budget.

The planted task below (n = 1,200, d = 10, y = x0 x1 + 0.3 noise) has its best validation round at
1 and every later round worse (measured: validation MSE 0.172, 0.110, 0.112, 0.114, 0.115, ...), so
early stopping has something to stop.
"""

from __future__ import annotations

import numpy as np
import pytest

from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.kernels import kernel_block
from rfmdist.training import STOP_ITERS, STOP_NO_CHANGE, STOP_TIME, EarlyStopping

N, D, ITERS = 1200, 10, 6


@pytest.fixture(scope="module")
def task() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    gen = np.random.default_rng(0)
    X = gen.normal(size=(N + 600, D))
    y = X[:, 0] * X[:, 1] + 0.3 * gen.normal(size=N + 600)
    return X[:N], y[:N], (X[N:], y[N:])


@pytest.fixture(scope="module")
def full(task) -> RFMRegressor:
    X, y, eval_set = task
    return RFMRegressor(iters=ITERS, n_iter_no_change=None, random_state=0).fit(
        X, y, eval_set=eval_set
    )


def test_the_task_worsens_after_its_best_round(full):
    scores = [h["val_score"] for h in full.history_]
    k = int(np.argmin(scores))
    assert k + 2 < ITERS and all(s > scores[k] for s in scores[k + 1 :]), scores
    assert full.history_[-1]["stopped"] == STOP_ITERS


@pytest.mark.parametrize("patience", [1, 2])
def test_stops_at_best_plus_patience_and_keeps_the_best_round(task, full, patience):
    X, y, eval_set = task
    k = full.best_iter_
    model = RFMRegressor(iters=ITERS, n_iter_no_change=patience, random_state=0)
    model.fit(X, y, eval_set=eval_set)
    assert len(model.history_) == k + patience + 1
    assert model.best_iter_ == k
    assert model.history_[-1]["stopped"] == STOP_NO_CHANGE
    # The rounds run are those of the full fit: the same records and feature matrices.
    for got, want in zip(model.history_, full.history_, strict=False):
        assert got["val_score"] == pytest.approx(want["val_score"], rel=1e-12)
    for got, want in zip(model.M_history_, full.M_history_, strict=False):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.predict(eval_set[0]), full.predict(eval_set[0]))


def test_patience_of_iters_equals_the_full_fit_exactly(task, full):
    X, y, eval_set = task
    model = RFMRegressor(iters=ITERS, n_iter_no_change=ITERS, random_state=0)
    model.fit(X, y, eval_set=eval_set)
    assert len(model.history_) == ITERS + 1 and model.best_iter_ == full.best_iter_
    np.testing.assert_array_equal(model.M_, full.M_)
    np.testing.assert_array_equal(model.predict(X), full.predict(X))
    assert model.history_[-1]["stopped"] == STOP_ITERS


def test_early_stopping_rule_counts_rounds_since_the_best():
    stop = EarlyStopping(greater_is_better=True, n_iter_no_change=2)
    seen = [stop.observe(t, s) for t, s in enumerate([0.5, 0.7, 0.6, 0.7, 0.69])]
    # Ties do not improve: round 3 equals round 1, so rounds 2 and 3 are two without improvement.
    assert seen == [False, False, False, True, True] and stop.best_round == 1
    never = EarlyStopping(greater_is_better=False, n_iter_no_change=None)
    assert not any(never.observe(t, s) for t, s in enumerate([1.0, 2.0, 3.0]))
    no_scores = EarlyStopping(greater_is_better=False, n_iter_no_change=1)
    assert not any(no_scores.observe(t, None) for t in range(4)) and no_scores.best_round == 3


def test_internal_split_chooses_the_round_then_refits_on_all_rows(task):
    """Without eval_set, 10% of the rows choose the round; the kept round's M is then fitted on all
    rows: equal to kernel ridge regression with that M on all rows (dense NumPy solve, 1e-8)."""
    X, y, _ = task
    model = RFMRegressor(iters=ITERS, random_state=0, dtype="float64").fit(X, y)
    assert all(h["val_score"] is not None for h in model.history_)
    assert model.history_[-1]["stopped"] == STOP_NO_CHANGE
    assert model.refit_["rows"] == N and model.centers_.shape == (N, D)
    # The reference: the same preprocessing and target scaling, the kept M, every row.
    pre, scaling = model.model_.preprocessing, model.model_.target_scaling
    Z = (X - pre.mean) / pre.scale
    t = (y - scaling.mean[0]) / scaling.scale[0]
    K = kernel_block(Z, Z, model.M_, bandwidth=10.0)
    alpha = np.linalg.solve(K + 1e-3 * np.eye(N), t)
    X_new = np.random.default_rng(5).normal(size=(200, D))
    Z_new = (X_new - pre.mean) / pre.scale
    want = kernel_block(Z_new, Z, model.M_, bandwidth=10.0) @ alpha * scaling.scale[0]
    np.testing.assert_allclose(model.predict(X_new), want + scaling.mean[0], rtol=1e-8, atol=1e-8)


def test_internal_split_is_stratified_and_reproducible(rng):
    X = rng.normal(size=(600, 4))
    y = np.where(X[:, 0] > 1.0, "rare", "common")  # ~16% rare
    a = RFMClassifier(iters=1, random_state=3).fit(X, y)
    b = RFMClassifier(iters=1, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    train, val = a._internal_split(600, a.seed_)
    assert len(val) == 60 and len(np.intersect1d(train, val)) == 0
    labels = a._split_labels
    assert abs(np.mean(labels[val]) - np.mean(labels)) < 0.02  # stratified


def test_no_early_stopping_without_eval_set_keeps_the_last_round_on_all_rows(task):
    X, y, _ = task
    model = RFMRegressor(iters=2, n_iter_no_change=None, random_state=0).fit(X, y)
    assert model.best_iter_ == 2 and model.refit_ is None
    assert all(h["val_score"] is None for h in model.history_)
    same = RFMRegressor(iters=2, validation_fraction=None, random_state=0).fit(X, y)
    np.testing.assert_array_equal(same.predict(X), model.predict(X))


def test_time_budget_stops_after_the_round_that_would_overrun(task):
    X, y, eval_set = task
    model = RFMRegressor(iters=ITERS, time_budget=1e-6, random_state=0)
    model.fit(X, y, eval_set=eval_set)
    assert len(model.history_) == 1 and model.history_[-1]["stopped"] == STOP_TIME
    roomy = RFMRegressor(iters=2, time_budget=3600.0, n_iter_no_change=None, random_state=0)
    assert len(roomy.fit(X, y, eval_set=eval_set).history_) == 3
