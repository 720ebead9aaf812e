"""Interpretation helpers: importance and eigen histories, top features, and the full AGOP."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from conftest import product_task

from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.agop import predictor_gradients
from rfmdist.interpret import (
    eigen_history,
    feature_importance_history,
    full_agop,
    interpretation_table,
    top_eigenvectors,
    top_features,
)


@pytest.fixture(scope="module")
def planted() -> tuple[RFMRegressor, np.ndarray]:
    X, y = product_task(800, 8, seed=0)
    return RFMRegressor(iters=3, random_state=0).fit(X, y, eval_set=(X[:100], y[:100])), X


def test_importance_history_shape_and_normalisation(planted, tmp_path):
    model, _ = planted
    history = feature_importance_history(model)
    assert history.shape == (4, 8)
    np.testing.assert_allclose(history.max(axis=1), 1.0)
    np.testing.assert_allclose(history[0], 1.0)  # M_0 = I
    model.save(tmp_path / "m.zarr")
    np.testing.assert_array_equal(feature_importance_history(tmp_path / "m.zarr"), history)


def test_top_features_of_the_planted_task(planted):
    model, _ = planted
    top = top_features(model, k=3)
    assert {name for name, _ in top[:2]} == {"x0", "x1"}
    assert top[0][1] == 1.0 and top[2][1] < 0.1
    named = top_features(model, k=2, feature_names=[f"f{i}" for i in range(8)])
    assert {name for name, _ in named} == {"f0", "f1"}
    with pytest.raises(ValueError, match="Expected 8 feature names"):
        top_features(model, feature_names=["a"])


def test_top_eigenvectors_full_and_diagonal(rng):
    A = rng.normal(size=(6, 6))
    M = A @ A.T
    values, vectors = top_eigenvectors(M, 3)
    np.testing.assert_allclose(M @ vectors, vectors * values, atol=1e-10)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-12)
    assert np.all(np.diff(values) <= 0)
    diag_values, axes = top_eigenvectors(np.array([0.5, 2.0, 1.0]), 5)
    assert diag_values.tolist() == [2.0, 1.0, 0.5] and axes.argmax(axis=0).tolist() == [1, 2, 0]


def test_eigen_history_settles_on_the_planted_subspace(planted):
    model, _ = planted
    eigen = eigen_history(model, k=2)
    assert eigen["eigenvalues"].shape == (4, 2) and eigen["cosines"].shape == (3, 2)
    assert eigen["similarity"][-1] > 0.99  # rounds 2 -> 3 share the span of e0, e1
    _, vectors = top_eigenvectors(model.M_, 2)
    assert np.linalg.norm(vectors[:2], axis=0).min() > 0.99


def test_interpretation_table_is_plain_data(planted):
    model, _ = planted
    table = interpretation_table(model, k=2)
    json.dumps(table)
    assert table["round"] == [0, 1, 2, 3] and table["subspace_similarity"][0] is None
    assert len(table["importance"]) == 4 and len(table["eigenvalues"][0]) == 2
    assert {name for name, _ in table["top_features"]} == {"x0", "x1"}
    assert table["best_iter"] == model.best_iter_


def test_interpreting_an_interrupted_run(tmp_path):
    X, y = product_task(300, 5, seed=1)
    path = tmp_path / "run.zarr"
    RFMRegressor(iters=3, random_state=0).fit(X, y, store=path, callback=lambda o: o.round == 1)
    assert feature_importance_history(path).shape == (2, 5)


def _finite_difference_agop(model, X: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Mean of J^T J with J from central differences of ``predict`` in the preprocessed space."""
    prep = model.model_.preprocessing
    Z = prep.transform(X, np.float64)
    d = X.shape[1]
    total = np.zeros((d, d))
    for z in Z:
        columns = []
        for j in range(d):
            e = np.zeros(d)
            e[j] = step
            up = model.model_.decision(prep.inverse((z + e)[None]))
            down = model.model_.decision(prep.inverse((z - e)[None]))
            columns.append((up - down)[0] / (2 * step))
        J = np.stack(columns, axis=1)  # (c, d)
        total += J.T @ J
    return total / len(X)


@pytest.mark.parametrize("case", ["regressor_scaled", "multi_output", "classifier", "diag"])
def test_full_agop_matches_finite_differences(case):
    X, y = product_task(120, 3, seed=2)
    y = 5.0 * y + 3.0  # target scaling must be undone
    if case == "classifier":
        model = RFMClassifier(iters=1, random_state=0).fit(X, np.digitize(y, [0.0, 4.0]))
    elif case == "multi_output":
        model = RFMRegressor(iters=1, random_state=0).fit(X, np.column_stack([y, 10 * X[:, 2]]))
    else:
        model = RFMRegressor(iters=1, diag=case == "diag", random_state=0).fit(X, y)
    # Off the training rows: at a center the Laplace kernel has a kink that differences cannot see.
    points = np.random.default_rng(3).normal(size=(15, 3))
    expected = _finite_difference_agop(model, points)
    found = full_agop(model, points, batch_size=4)
    if case == "diag":
        np.testing.assert_allclose(found, np.diagonal(expected), rtol=1e-5, atol=1e-8)
    else:
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-8)


def test_full_agop_equals_exact_gradients_in_memory_and_dask(planted, tmp_path):
    model, X = planted
    machine = model.model_
    Z = machine.preprocessing.transform(X, np.float64)
    coef = machine.coef * machine.target_scaling.scale
    J = predictor_gradients(Z, machine.centers, coef, machine.M, bandwidth=machine.bandwidth)
    expected = np.einsum("nci,ncj->ij", J, J) / len(X)
    np.testing.assert_allclose(full_agop(model, X), expected, rtol=1e-9)
    dask_X = da.from_array(X, chunks=(300, X.shape[1]))
    np.testing.assert_allclose(full_agop(model, dask_X), expected, rtol=1e-9)
    model.save(tmp_path / "m.zarr")
    np.testing.assert_allclose(full_agop(tmp_path / "m.zarr", X), expected, rtol=1e-9)
    np.testing.assert_allclose(full_agop(model, X, diag=True), np.diagonal(expected), rtol=1e-9)
