"""Wide data (d >> n): M kept as a factor (rfmdist.metric) against the dense path and dense NumPy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.base import clone

import rfmdist
from rfmdist import RFMClassifier, RFMRegressor, training
from rfmdist.agop import agop_block_sum
from rfmdist.kernels import prepare_kernel
from rfmdist.metric import METRIC_ENV_VAR, Metric
from rfmdist.operators import kernel_operator

# The factored and the dense fit solve the same float64 systems through different roots of M
# (``A^T`` against ``(A^T A)^{1/2}``): their distances agree to ~1e-14 relative, which the solves
# (reg 1e-3 on standardized data) keep far below this, when the AGOP's gradient GEMMs run in float64
# too (the ``float64_agop`` fixture). By default those run in float32 (training.AGOP_GEMM_DTYPE, a
# measured speed choice): the gradients, taken in two different transformed coordinates, then
# round differently, and the two fits agree to float32's resolution instead (DEFAULT_TOL).
FACTORED_TOL = 1e-8
DEFAULT_TOL = 1e-5
WIDE = {"iters": 2, "random_state": 0, "agop_samples": None, "bandwidth": 10.0}


def _wide_task(n: int = 60, d: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A planted wide task: y depends on two of ``d`` coordinates."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X[:, 0] + 0.5 * X[:, 1] ** 2


@pytest.fixture
def float64_agop(monkeypatch):
    """The whole fit in float64: the AGOP's gradient GEMMs as well as the kernels and solves."""
    monkeypatch.setattr(training, "AGOP_GEMM_DTYPE", "float64")


def _fit(monkeypatch, policy: str, estimator, X, y, **fit_args):
    monkeypatch.setenv(METRIC_ENV_VAR, policy)
    return estimator.fit(X, y, **fit_args)


def test_factor_root_gives_the_kernel_of_its_dense_matrix(rng):
    """The kernel through a factor's root equals exp(-||A(x - z)|| / L), computed in dense NumPy."""
    A = rng.normal(size=(5, 40))
    X, Z = rng.normal(size=(30, 40)), rng.normal(size=(12, 40))
    got = prepare_kernel(Z, Metric.from_factor(A), bandwidth=3.0).block(X)
    diff = (X[:, None, :] - Z[None, :, :]) @ A.T
    want = np.exp(-np.sqrt((diff**2).sum(axis=2)) / 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("start", ["identity", "factor", "dense"])
@pytest.mark.parametrize("accumulate", ["stack", "gram"])
def test_factored_agop_equals_the_dense_agop(rng, start, accumulate):
    """The next M as a factor (from the stacked gradients, or the Gram matrix's eigenvectors)
    equals the dense AGOP of the same predictor (agop_block_sum, original coordinates) to 1e-10."""
    d, m, s = 30, 15, 8
    A = rng.normal(size=(6, d)) / np.sqrt(d)
    metric = {
        "identity": Metric.identity(d, diag=False),
        "factor": Metric.from_factor(A),
        "dense": Metric.from_array(A.T @ A + 0.1 * np.eye(d)),
    }[start]
    centers, coef, X = rng.normal(size=(m, d)), rng.normal(size=(m, 2)), rng.normal(size=(s, d))
    op = kernel_operator(X, prepare_kernel(centers, metric, bandwidth=2.0))
    total = op.gradient_sum(coef, accumulate=accumulate)
    factored = metric.next_from_gradients(total, accumulate, "factor", s)
    dense = agop_block_sum(X, centers, coef, metric.dense(), bandwidth=2.0) / s
    assert factored.form == "factor" and factored.dim <= s * 2
    np.testing.assert_allclose(
        factored.dense(), dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max()
    )
    np.testing.assert_allclose(factored.diagonal(), np.diagonal(dense), rtol=1e-10)


def test_agop_plan_follows_the_rank_bound():
    """A factor exactly when the AGOP's rank bound (points x outputs) is below d."""
    assert Metric.identity(20_000, False).agop_plan(200, 1, "auto") == ("stack", "factor")
    assert Metric.identity(784, False).agop_plan(5_000, 10, "auto") == ("gram", "dense")
    assert Metric.identity(784, False).agop_plan(5_000, 10, "factored") == ("gram", "factor")
    assert Metric.identity(20_000, False).agop_plan(200, 1, "dense") == ("gram", "dense")
    assert Metric.identity(50, True).agop_plan(10, 1, "factored") == ("diagonal", "diagonal")


@pytest.mark.parametrize(
    ("estimator", "task"),
    [
        (RFMRegressor(**WIDE), _wide_task()),
        (RFMClassifier(**WIDE), (_wide_task()[0], _wide_task()[1] > 0.5)),
    ],
    ids=["regressor", "classifier"],
)
def test_factored_fit_equals_dense_fit(monkeypatch, float64_agop, estimator, task):
    """On wide data the default ('auto') fit keeps M as a factor and equals the dense fit to 1e-8
    in float64: every round's M, the predictions, the scores."""
    X, y = task
    X_new = _wide_task(n=40, seed=1)[0]
    factored = _fit(monkeypatch, "auto", clone(estimator), X, y)
    dense = _fit(monkeypatch, "dense", clone(estimator), X, y)
    forms = [h["metric"]["form"] for h in factored.history_]
    assert forms == ["identity", "factor", "factor"]
    assert [h["metric"]["form"] for h in dense.history_] == ["identity", "dense", "dense"]
    outputs = factored.coef_.shape[1]  # the AGOP's rank bound is points x outputs
    assert factored.metric_history_[1].dim <= X.shape[0] * outputs < X.shape[1]
    for M, M_dense in zip(factored.M_history_, dense.M_history_, strict=True):
        np.testing.assert_allclose(M, M_dense, rtol=FACTORED_TOL, atol=FACTORED_TOL)
    for method in ("predict", "decision_function") if y.dtype == bool else ("predict",):
        np.testing.assert_allclose(
            getattr(factored, method)(X_new),
            getattr(dense, method)(X_new),
            rtol=FACTORED_TOL,
            atol=FACTORED_TOL,
        )
    np.testing.assert_allclose(
        factored.feature_importances_, dense.feature_importances_, rtol=FACTORED_TOL
    )


def test_forced_factor_on_narrow_data_equals_dense(monkeypatch, float64_agop):
    """RFMDIST_METRIC=factored on d = 6 (rank bound above d: the factor from the Gram matrix)
    equals the dense fit too."""
    X, y = _wide_task(n=200, d=6)
    params = {"iters": 2, "random_state": 0}
    factored = _fit(monkeypatch, "factored", RFMRegressor(**params), X, y)
    dense = _fit(monkeypatch, "dense", RFMRegressor(**params), X, y)
    assert factored.history_[1]["agop"]["accumulate"] == "gram"
    assert factored.metric_.form == "factor"
    np.testing.assert_allclose(factored.M_, dense.M_, rtol=FACTORED_TOL, atol=FACTORED_TOL)
    np.testing.assert_allclose(factored.predict(X), dense.predict(X), rtol=FACTORED_TOL, atol=1e-10)


def test_default_factored_fit_agrees_with_dense_to_float32_agop_resolution(monkeypatch):
    """With the default float32 AGOP GEMMs, factored and dense fits agree to their resolution."""
    X, y = _wide_task(n=200, d=6)
    params = {"iters": 2, "random_state": 0}
    factored = _fit(monkeypatch, "factored", RFMRegressor(**params), X, y)
    dense = _fit(monkeypatch, "dense", RFMRegressor(**params), X, y)
    np.testing.assert_allclose(factored.M_, dense.M_, rtol=DEFAULT_TOL, atol=DEFAULT_TOL)
    np.testing.assert_allclose(factored.predict(X), dense.predict(X), rtol=DEFAULT_TOL, atol=1e-7)


def test_factored_fit_on_dask_equals_in_memory(monkeypatch):
    """The same factored fit from a Dask array (the AGOP's stacked gradients gathered from its
    chunks) equals the in-memory one."""
    X, y = _wide_task(n=90, d=120)
    local = _fit(monkeypatch, "auto", RFMRegressor(**WIDE), X, y)
    lazy = _fit(monkeypatch, "auto", RFMRegressor(**WIDE), da.from_array(X, chunks=(40, 120)), y)
    assert lazy.metric_.form == "factor"
    np.testing.assert_allclose(lazy.M_, local.M_, rtol=FACTORED_TOL, atol=FACTORED_TOL)
    np.testing.assert_allclose(lazy.predict(X), local.predict(X), rtol=FACTORED_TOL, atol=1e-10)


def test_factored_store_round_trip_and_resume(monkeypatch, tmp_path):
    """A factored run stores each round's M as its factor; interrupted after round 1 and resumed,
    it equals the uninterrupted run; the saved model loads to the same predictions."""
    monkeypatch.setenv(METRIC_ENV_VAR, "auto")
    X, y = _wide_task(n=80, d=300)
    params = WIDE | {"iters": 3}
    reference = RFMRegressor(**params).fit(X, y)
    path = tmp_path / "run.zarr"
    RFMRegressor(**params).fit(X, y, store=path, callback=lambda o: o.round == 1)
    group = zarr.open_group(str(path), mode="r")
    assert group["history/M/1"].attrs["form"] == "factor"
    assert group["history/M/1"].shape[1] == 300 and group["history/M/1"].shape[0] <= 80
    assert group["history/M/0"].shape == (300,)  # the identity: no d x d array
    resumed = RFMRegressor(**params).fit(X, y, store=path, resume=True)
    for got, want in zip(resumed.metric_history_, reference.metric_history_, strict=True):
        assert got.form == want.form
        np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(resumed.predict(X), reference.predict(X))
    loaded = rfmdist.load(path)
    assert loaded.metric_.form == reference.metric_.form
    np.testing.assert_array_equal(loaded.predict(X), reference.predict(X))


def test_wide_fit_peak_memory_and_no_dense_matrix(tmp_path):
    """200 x 20,000 float32 rows (y = x0), iters=1: the fit holds no d x d array (3.2 GB in
    float64) and its process peaks below 1 GB (measured: ~0.65 GB, of which ~0.3 GB is the
    interpreter and its libraries)."""
    script = textwrap.dedent(
        """
        import json, numpy as np
        from rfmdist import RFMRegressor
        rng = np.random.default_rng(0)
        X = rng.normal(size=(200, 20_000)).astype(np.float32)
        model = RFMRegressor(iters=1, random_state=0).fit(X, X[:, 0].astype(np.float64))
        # VmHWM: this process's own peak (ru_maxrss would count the forking pytest's).
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        peak = int(status.split()[0]) * 1024
        print(json.dumps({"peak": peak, "forms": [h["metric"]["form"] for h in model.history_],
                          "dim": model.metric_history_[-1].dim}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["forms"] == ["identity", "factor"] and result["dim"] <= 200
    assert result["peak"] < 1e9, f"peak RSS {result['peak'] / 1e9:.2f} GB"


def test_agop_partial_sums_are_added_a_few_at_a_time():
    """The k x k partial AGOPs of wide data are a gigabyte each (k = 12,600 for 1,260 images of 10
    classes): they are added in order as they come, never all held at once (which ran a 24 GB
    machine out of memory), and the sum is the in-order sum whatever the threads."""
    import weakref

    from rfmdist.threads import ordered_sum, ordered_sum_blocks

    live: set[int] = set()
    most = [0]

    def part(i: int) -> np.ndarray:
        value = np.full(4, float(i)) / 3.0
        live.add(i)
        weakref.finalize(value, live.discard, i)
        most[0] = max(most[0], len(live))
        return value

    items = list(range(40))
    total = ordered_sum_blocks(part, items, workers=2)
    assert most[0] <= 4  # a window of 2 results (and the running total's last parts)
    np.testing.assert_array_equal(total, ordered_sum([np.full(4, float(i)) / 3.0 for i in items]))
    np.testing.assert_array_equal(total, ordered_sum_blocks(part, items, workers=1))


def test_numerically_low_rank_agop_is_kept_as_its_factor(monkeypatch, float64_agop):
    """Rows with constant columns (an image's border pixels): the AGOP is null along them, so the
    default keeps the dense AGOP's eigendecomposition as a factor of its numerical rank (no more
    than the varying columns) and fits as the dense form does, to 1e-8."""
    rng = np.random.default_rng(3)
    X = np.zeros((300, 24))
    X[:, 6:18] = rng.normal(size=(300, 12))  # 12 varying columns between constant borders
    y = X[:, 6] * X[:, 7]
    params = {"iters": 2, "random_state": 0}
    compact = _fit(monkeypatch, "auto", RFMRegressor(**params), X, y)
    dense = _fit(monkeypatch, "dense", RFMRegressor(**params), X, y)
    assert [h["metric"]["form"] for h in compact.history_] == ["identity", "factor", "factor"]
    assert max(h["metric"]["dim"] for h in compact.history_[1:]) <= 12
    np.testing.assert_allclose(compact.M_, dense.M_, rtol=FACTORED_TOL, atol=FACTORED_TOL)
    np.testing.assert_allclose(compact.predict(X), dense.predict(X), rtol=1e-8, atol=1e-10)
