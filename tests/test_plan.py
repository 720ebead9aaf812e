"""The plan of a fit (rfmdist.plan): what the estimator and the command line plan is what the fit
carries out and stores, and a resumed run keeps its stored plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import product_task

import rfmdist
from rfmdist import RFMClassifier, RFMRegressor, sizing
from rfmdist.cli.main import main
from rfmdist.estimators import _RFMBase
from rfmdist.plan import FitPlan, plan_fit
from rfmdist.store import read_store

# Every shape with each value of the other three settings (4 of their 8 combinations, each value
# of each twice): exact, and Nyström under the smaller reference below.
GRID = [
    (shape, *settings)
    for shape, settings in itertools.product(
        [(300, 5), (1_500, 6)],
        [
            (False, "float64", "auto"),
            (True, "float32", 120),
            (False, "float32", "auto"),
            (True, "float64", 120),
        ],
    )
]


@pytest.fixture
def small_reference(monkeypatch):
    """A smaller reference round, so that 1,500 rows take Nyström centers (the rule is the same)."""
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 400)


@pytest.mark.parametrize(("shape", "with_val", "dtype", "centers"), GRID)
def test_the_planned_fit_is_the_fit_carried_out_and_stored(
    small_reference, tmp_path, shape, with_val, dtype, centers
):
    """For a grid of shapes, dtypes, centers and validation: estimator.plan (what the command line
    asks for) equals the plan the fit logs, keeps (plan_) and stores, and the fit follows it: its
    centers, held-out rows and AGOP sample."""
    n, d = shape
    X, y = product_task(n, d, seed=0)
    est = RFMRegressor(iters=1, dtype=dtype, centers=centers, random_state=0)
    planned = est.plan(X.shape, has_validation=with_val)
    eval_set = product_task(100, d, seed=1) if with_val else None
    path = tmp_path / "m.zarr"
    est.fit(X, y, eval_set=eval_set, store=path)
    assert est.plan_ == planned
    assert read_store(path).plan == planned.record()
    assert rfmdist.load(path).plan_ == planned
    first = est.history_[0]
    assert first["n_centers"] == planned.centers
    assert first["dtype"] == planned.dtype == dtype
    assert first["agop"]["rows"] == planned.agop_rows == planned.rounds_rows
    assert planned.held_out_rows == (0 if with_val else n // 10)
    assert planned.exact == (n == 300 and centers == "auto")


def test_a_resumed_run_keeps_its_stored_plan(small_reference, tmp_path, monkeypatch):
    """Interrupted after round 0, then resumed where the rule would now plan otherwise: the plan
    asked for the resume and the plan carried out are the stored one."""
    X, y = product_task(1_500, 6, seed=2)
    params = {"iters": 2, "random_state": 0}
    path = tmp_path / "m.zarr"
    RFMRegressor(**params).fit(X, y, store=path, callback=lambda outcome: outcome.round == 0)
    stored = FitPlan.from_record(read_store(path, require_complete=False).plan)
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 500)
    fresh = RFMRegressor(**params).plan(X.shape)
    assert fresh.centers != stored.centers  # the rule now says otherwise
    previous = read_store(path, require_complete=False)
    assert RFMRegressor(**params).plan(X.shape, resume_from=previous) == stored
    resumed = RFMRegressor(**params).fit(X, y, store=path, resume=True)
    assert resumed.plan_ == stored and read_store(path).plan == stored.record()
    assert resumed.centers_.shape[0] == stored.centers


def test_plan_fit_keeps_a_dask_inputs_chunks_and_sizes_in_memory_rows_for_no_cluster():
    settings = RFMRegressor(iters=0).fit_settings()
    in_memory = plan_fit(settings, 1_000, 4, has_validation=False)
    assert in_memory.chunk_rows is None and in_memory.workers == 0
    given = plan_fit(settings, 1_000, 4, has_validation=False, chunk_rows=250)
    assert given.chunk_rows == 250


@pytest.mark.parametrize(("workers", "with_val"), [(1, False), (2, True)])
def test_cli_chunks_by_the_plan_the_fit_stores(
    small_reference, tmp_path, monkeypatch, workers, with_val
):
    """``rfmdist fit`` on a real local cluster: the plan it chunked the data by (asked of the
    estimator before the fit) is the plan the fit stored, with the cluster's workers."""
    asked = []
    original = _RFMBase.plan

    def spy(self, *args, **kwargs):
        plan = original(self, *args, **kwargs)
        asked.append(plan)
        return plan

    monkeypatch.setattr(_RFMBase, "plan", spy)
    X, y = product_task(1_200, 5, seed=3)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    argv = ["fit", "--train", str(tmp_path / "train.npz"), "--out", str(tmp_path / "m.zarr"),
            "--workers", str(workers), "--threads-per-worker", "1", "--iters", "1"]  # fmt: skip
    if with_val:
        X_val, y_val = product_task(200, 5, seed=4)
        np.savez(tmp_path / "val.npz", X=X_val, y=y_val)
        argv += ["--val", str(tmp_path / "val.npz")]
    assert main(argv) == 0
    (planned,) = asked
    assert planned.workers == workers and planned.chunk_rows is not None
    assert read_store(tmp_path / "m.zarr").plan == planned.record()
    assert planned.held_out_rows == (0 if with_val else 120)


def test_classifier_plans_like_the_regressor_for_the_same_shape():
    """The plan depends on the data's shape and the settings, not on the task."""
    shape = (800, 7)
    assert RFMClassifier(random_state=0).plan(shape) == RFMRegressor(random_state=0).plan(shape)


def test_a_resumed_dask_run_keeps_its_row_chunks(tmp_path):
    """A run fitted on Dask rows in chunks of 300, resumed with the same rows in chunks of 500,
    runs on its planned chunks (its AGOP's sums reduce over them) and equals the uninterrupted
    run."""
    import dask
    import dask.array as da

    X, y = product_task(900, 5, seed=5)
    params = {"iters": 2, "random_state": 0, "n_iter_no_change": None}
    path = tmp_path / "m.zarr"
    with dask.config.set(scheduler="threads"):
        reference = RFMRegressor(**params).fit(da.from_array(X, chunks=(300, 5)), y)
        RFMRegressor(**params).fit(
            da.from_array(X, chunks=(300, 5)), y, store=path, callback=lambda o: o.round == 0
        )
        resumed = RFMRegressor(**params).fit(
            da.from_array(X, chunks=(500, 5)), y, store=path, resume=True
        )
    assert reference.plan_.chunk_rows == resumed.plan_.chunk_rows == 300
    np.testing.assert_array_equal(resumed.M_, reference.M_)
    np.testing.assert_array_equal(resumed.predict(X), reference.predict(X))
