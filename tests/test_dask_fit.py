"""Fits on Dask arrays (threaded scheduler and a distributed cluster) equal the in-memory fit."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import product_task
from distributed import Client, LocalCluster

from rfmdist import RFMClassifier, RFMRegressor

PARAMS = {"iters": 2, "random_state": 3, "solver": "pcg", "tol": 1e-9, "dtype": "float64"}


@pytest.fixture(scope="module")
def task():
    X, y = product_task(900, 6, seed=11)
    X_val, y_val = product_task(200, 6, seed=12)
    return X, y, X_val, y_val


@pytest.mark.parametrize("centers", [None, 250], ids=["exact", "nystrom"])
def test_dask_fit_equals_in_memory_fit_threaded(task, centers):
    X, y, X_val, y_val = task
    memory = RFMRegressor(centers=centers, **PARAMS).fit(X, y, eval_set=(X_val, y_val))
    Xd = da.from_array(X, chunks=(128, 6))
    yd = da.from_array(y, chunks=128)
    with dask.config.set(scheduler="threads"):
        lazy = RFMRegressor(centers=centers, **PARAMS).fit(Xd, yd, eval_set=(X_val, y_val))
        pred = lazy.predict(da.from_array(X_val, chunks=50))
        assert isinstance(pred, da.Array)
        pred = pred.compute()
    np.testing.assert_allclose(pred, memory.predict(X_val), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy.M_, memory.M_, rtol=1e-5, atol=1e-8)
    assert lazy.best_iter_ == memory.best_iter_
    for a, b in zip(lazy.history_, memory.history_, strict=True):
        assert a["val_score"] == pytest.approx(b["val_score"], rel=1e-5)


def test_dask_fit_on_distributed_cluster_equals_in_memory_fit(task):
    X, y, X_val, _ = task
    labels = (y > 0).astype(int)
    memory = RFMClassifier(centers=250, **PARAMS).fit(X, labels)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster),
    ):
        remote = RFMClassifier(centers=250, **PARAMS).fit(da.from_array(X, chunks=(300, 6)), labels)
        from_numpy = RFMClassifier(centers=250, **PARAMS).fit(X, labels)  # active client: Dask path
        pred = remote.decision_function(da.from_array(X_val, chunks=100)).compute()
    np.testing.assert_allclose(pred, memory.decision_function(X_val), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_numpy.M_, memory.M_, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(remote.predict(X_val), memory.predict(X_val))


def test_dask_input_errors_say_how_to_fix(task):
    X, y, *_ = task
    with pytest.raises(ValueError, match=r"chunked by rows only.*rechunk"):
        RFMRegressor().fit(da.from_array(X, chunks=(100, 3)), y)
    unknown = da.from_array(X, chunks=(100, 6))
    unknown = unknown[unknown[:, 0] > -10]  # boolean mask: unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        RFMRegressor().fit(unknown, y)
