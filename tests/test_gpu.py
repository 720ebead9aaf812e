"""CuPy results equal the NumPy ones; a GPU fit equals the CPU fit; device memory stays in budget.

Every test here needs a CUDA GPU that CuPy can allocate on (``pytest -m gpu``; ``scripts/gpu-check.sh``
runs them on a lent GPU machine) and is skipped elsewhere. Tolerances: rtol 1e-4 for float32, 1e-10 for
float64, relative to the largest reference entry (cuBLAS and OpenBLAS add in different orders).
A fit's ``M`` after round 0 is an AGOP whose GEMMs run in float32 in every fit
(``rfmdist.training.AGOP_GEMM_DTYPE``, a measured choice), so float64 fits on two devices agree to
float32's resolution from round 1 on (measured on an H200: 4e-8 relative in ``M_``), not to 1e-10:
:data:`AGOP_RTOL` for ``M_``, and what the round-1 solve makes of that for its coefficients.
TF32 is switched off for every test but the TF32 ones.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import product_task

from rfmdist import RFMClassifier, RFMRegressor, backend, memory
from rfmdist.agop import agop_block_sum, predictor_gradients
from rfmdist.kernels import kernel_block, prepare_kernel
from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator
from rfmdist.precision import choose_dtype
from rfmdist.solvers.cg import conjugate_gradient
from rfmdist.solvers.preconditioners import CentersPreconditioner, NystromPreconditioner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not backend.gpu_available(),
        reason="needs a CUDA GPU that CuPy can allocate on (rfmdist.backend.gpu_available() is "
        "False: CuPy missing, or no device/driver)",
    ),
]

RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
DTYPES = [np.float32, np.float64]
# M after an AGOP: float32 GEMMs summed in float64 (relative to its largest entry).
AGOP_RTOL = 1e-6


@pytest.fixture(autouse=True)
def full_float32():
    with backend.tf32_matmul(False):
        yield


@pytest.fixture
def cp():
    return backend.cupy_module()


def assert_close(gpu, reference, dtype, *, scale=1.0, rtol=None):
    """``gpu`` (CuPy) equals ``reference`` (NumPy, or CuPy by another path) to the dtype's rtol (or
    ``rtol``), relative to the largest entry."""
    rtol = (RTOL[np.dtype(dtype)] if rtol is None else rtol) * scale
    got = backend.to_numpy(gpu)
    ref = backend.to_numpy(reference)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1e-30, np.abs(ref).max()))


def task(n=300, d=6, m=40, c=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Z = X[rng.choice(n, m, replace=False)]
    A = rng.normal(size=(d, d))
    M = A @ A.T / d + np.eye(d) * 0.1
    coef = rng.normal(size=(m, c))
    return X, Z, M, coef


# --- block functions -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("diag", [False, True])
def test_block_functions_match_numpy(cp, dtype, kernel, diag):
    X, Z, M, coef = task()
    M = np.diag(M).copy() if diag else M
    X, Z = X.astype(dtype), Z.astype(dtype)
    args = {"kernel": kernel, "bandwidth": 3.0}
    on = [cp.asarray(a) for a in (X, Z, M, coef)]
    assert_close(kernel_block(*on[:3], **args), kernel_block(X, Z, M, **args), dtype)
    assert_close(
        predictor_gradients(on[0], on[1], on[3], on[2], **args),
        predictor_gradients(X, Z, coef, M, **args),
        dtype,
    )
    for diag_sum in (False, True):
        gpu = agop_block_sum(on[0], on[1], on[3], on[2], diag=diag_sum, **args)
        assert gpu.dtype == np.float64
        assert_close(gpu, agop_block_sum(X, Z, coef, M, diag=diag_sum, **args), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
def test_fused_gpu_tail_equals_the_reference_path(cp, dtype, kernel):
    """The fused backend's elementwise CuPy kernel against the reference path's CuPy array
    operations, with coincident and near-duplicate centers (kernel values and AGOP weights)."""
    X, Z, M, _ = task()
    Z = np.vstack([Z, X[:10], X[10:20] + 1e-7]).astype(dtype)
    X = cp.asarray(X.astype(dtype))
    on_gpu = {
        backend_name: prepare_kernel(
            cp.asarray(Z),
            cp.asarray(M.astype(dtype)),
            kernel=kernel,
            bandwidth=2.0,
            backend=backend_name,
        )
        for backend_name in ("fused", "reference")
    }
    fused_kernel, reference = on_gpu["fused"], on_gpu["reference"]
    assert_close(fused_kernel.block(X), reference.block(X), dtype)
    rows = reference.transform(X)
    assert_close(fused_kernel.gradient_weights(rows), reference.gradient_weights(rows), dtype)


# --- operators -------------------------------------------------------------------------------------


def cupy_chunks(x, rows, cp):
    """A Dask array of CuPy chunks, converted per chunk as the estimators do."""
    return da.from_array(x, chunks=(rows, x.shape[1])).map_blocks(
        backend.to_device, dtype=x.dtype, meta=backend.device_meta(x.dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_operators_match_numpy(cp, dtype):
    X, Z, M, coef = task(n=500, m=60)
    X, Z = X.astype(dtype), Z.astype(dtype)
    rng = np.random.default_rng(1)
    V, U = rng.normal(size=(60, 2)), rng.normal(size=(500, 2))
    rows = np.sort(rng.choice(500, 200, replace=False))
    reference = BlockedKernelOperator(X, prepare_kernel(Z, M), block_rows=64)
    expected = {
        "matvec": reference.matvec(V),
        "rmatvec": reference.rmatvec(U),
        "normal": reference.normal_matvec(V),
        "agop": reference.agop_sum(coef, diag=False, rows=rows),
        "dense": reference.dense(),
    }
    prepared = prepare_kernel(cp.asarray(Z), cp.asarray(M))
    for cache in (False, True):
        op = BlockedKernelOperator(cp.asarray(X), prepared, cache=cache, block_rows=64)
        assert_close(op.matvec(cp.asarray(V)), expected["matvec"], dtype)
        assert_close(op.rmatvec(cp.asarray(U)), expected["rmatvec"], dtype)
        assert_close(op.normal_matvec(cp.asarray(V)), expected["normal"], dtype)
        assert_close(op.agop_sum(cp.asarray(coef), diag=False, rows=rows), expected["agop"], dtype)
        assert_close(op.dense(), expected["dense"], dtype)
    with dask.config.set(scheduler="threads"):
        op = DaskKernelOperator(cupy_chunks(X, 128, cp), prepared)
        assert_close(op.matvec(cp.asarray(V)), expected["matvec"], dtype)
        assert_close(op.rmatvec(cupy_chunks(U, 128, cp)), expected["rmatvec"], dtype)
        assert_close(op.normal_matvec(cp.asarray(V)), expected["normal"], dtype)
        assert_close(op.agop_sum(cp.asarray(coef), diag=False, rows=rows), expected["agop"], dtype)
        predicted = op.predict(cp.asarray(coef))  # computed: a CuPy array on the client
        assert backend.is_cupy_array(predicted)
        assert_close(predicted, reference.predict(coef), dtype)


# --- solvers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_pcg_with_nystrom_preconditioner_matches_numpy(cp, dtype):
    X, _, M, _ = task(n=400)
    X = X.astype(dtype)
    reg = 1.0  # well conditioned: the two solutions agree to the dtype's resolution
    B = np.random.default_rng(2).normal(size=(400, 2))

    def solve(xp):
        op = BlockedKernelOperator(xp.asarray(X), prepare_kernel(xp.asarray(X), xp.asarray(M)))
        rhs = xp.asarray(B)
        precond = NystromPreconditioner.from_matvec(
            op.matvec, 400, rank=50, shift=reg, rng=np.random.default_rng(3), like=rhs
        )
        tol = 1e-13 if dtype == np.float64 else 1e-6  # float32 kernels: no residual below ~1e-7
        return conjugate_gradient(
            lambda V: op.matvec(V) + reg * V, rhs, preconditioner=precond, tol=tol, max_iter=200
        )

    cpu, gpu = solve(np), solve(cp)
    assert gpu.converged and cpu.converged
    assert backend.is_cupy_array(gpu.x)
    assert_close(gpu.x, cpu.x, dtype)


def test_centers_preconditioner_matches_numpy(cp):
    _, Z, M, _ = task(n=400, m=50)
    K_mm = np.asarray(kernel_block(Z, Z, M, kernel="gaussian", bandwidth=0.5))  # well conditioned
    R = np.random.default_rng(4).normal(size=(50, 2))
    cpu = CentersPreconditioner(K_mm, 400, 0.1)(R)
    gpu = CentersPreconditioner(cp.asarray(K_mm), 400, 0.1)(cp.asarray(R))
    assert_close(gpu, cpu, np.float64, scale=100.0)  # triangular solves of a kernel matrix


# --- whole fits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "reg", "params", "scale"),
    [
        ("float64", 0.1, {"solver": "direct"}, 10.0),
        ("float32", 1.0, {"solver": "direct"}, 10.0),
        ("float64", 0.1, {"centers": 200, "solver": "direct"}, 10.0),
        # PCG stops at a residual, not at the solution: the two fits agree to about that residual.
        ("float64", 0.1, {"centers": 200, "solver": "pcg", "tol": 1e-10}, 1e3),
        ("float32", 1.0, {"centers": 200, "solver": "pcg", "tol": 1e-6}, 100.0),
    ],
)
def test_gpu_fit_equals_cpu_fit(dtype, reg, params, scale):
    """Float64 fits agree to the float32 AGOP's resolution (:data:`AGOP_RTOL`; measured on the CPU
    against float64 AGOP GEMMs: 4e-8 to 1.6e-7 in M_, 7e-8 in coef_, 3e-8 in the predictions)."""
    X, y = product_task(600, 5, seed=0)
    common = {"iters": 2, "reg": reg, "dtype": dtype, "random_state": 0, **params}
    cpu = RFMRegressor(device="cpu", **common).fit(X, y)
    gpu = RFMRegressor(device="gpu", **common).fit(X, y)
    for attr in ("M_", "coef_", "centers_"):
        assert isinstance(getattr(gpu, attr), np.ndarray), attr
    rtol = max(RTOL[np.dtype(dtype)] * scale, AGOP_RTOL)
    assert_close(gpu.M_, cpu.M_, dtype, rtol=rtol)
    assert_close(gpu.coef_, cpu.coef_, dtype, rtol=rtol)
    assert_close(gpu.predict(X), cpu.predict(X), dtype, rtol=rtol)


def test_factored_gpu_fit_equals_cpu_fit(cp):
    """Wide data (d = 400 > 120 rows): M kept as a factor on the GPU as on the CPU, and the two
    fits agree to the float32 AGOP's resolution, from CuPy input too."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 400))
    y = X[:, 0] + 0.5 * X[:, 1] ** 2
    common = {"iters": 2, "dtype": "float64", "random_state": 0, "agop_samples": None}
    cpu = RFMRegressor(device="cpu", **common).fit(X, y)
    gpu = RFMRegressor(device="gpu", **common).fit(cp.asarray(X), cp.asarray(y))
    assert [h["metric"]["form"] for h in gpu.history_] == ["identity", "factor", "factor"]
    assert isinstance(gpu.metric_.values, np.ndarray)
    assert_close(gpu.M_, cpu.M_, np.float64, rtol=AGOP_RTOL)
    assert_close(gpu.predict(X), cpu.predict(X), np.float64, rtol=AGOP_RTOL)


def test_the_gpu_plan_is_the_fit_carried_out(tmp_path):
    """On a GPU the plan (device, dtype from the measured rates, centers from the GPU's capacity)
    that estimator.plan gives is the one the fit stores and follows."""
    from rfmdist.store import read_store

    X, y = product_task(3_000, 6, seed=0)
    est = RFMRegressor(iters=1, device="gpu", random_state=0)
    planned = est.plan(X.shape)
    est.fit(X, y, store=tmp_path / "m.zarr")
    assert planned.device == "gpu" and est.plan_ == planned
    assert read_store(tmp_path / "m.zarr").plan == planned.record()
    assert est.history_[0]["n_centers"] == planned.centers
    assert est.history_[0]["dtype"] == planned.dtype


def test_predict_returns_the_input_array_type(cp):
    X, y = product_task(400, 4, seed=0)
    model = RFMRegressor(iters=1, device="gpu", random_state=0).fit(X, y)
    assert model.model_.dtype == choose_dtype(None, "gpu").dtype  # the GPU's default
    host = model.predict(X)
    assert isinstance(host, np.ndarray)
    on_gpu = model.predict(cp.asarray(X))
    assert backend.is_cupy_array(on_gpu)
    assert_close(on_gpu, host, np.float32)
    lazy = model.predict(da.from_array(X, chunks=(100, 4)))
    assert isinstance(lazy._meta, np.ndarray)
    assert_close(lazy.compute(), host, np.float32)
    clf = RFMClassifier(iters=1, device="gpu", random_state=0).fit(X, y > 0)
    assert isinstance(clf.predict(X), np.ndarray) and clf.score(X, y > 0) > 0.6


def test_cupy_and_dask_inputs_fit_like_numpy(cp):
    X, y = product_task(500, 4, seed=0)
    common = {"iters": 1, "device": "gpu", "dtype": "float64", "random_state": 0, "reg": 0.1}
    ref = RFMRegressor(**common).fit(X, y)
    from_cupy = RFMRegressor(**common).fit(cp.asarray(X), cp.asarray(y))
    assert_close(from_cupy.M_, ref.M_, np.float64, rtol=AGOP_RTOL)
    with dask.config.set(scheduler="threads"):
        from_dask = RFMRegressor(**common).fit(
            da.from_array(X, chunks=(128, 4)), da.from_array(y, chunks=128)
        )
    assert_close(from_dask.M_, ref.M_, np.float64, rtol=AGOP_RTOL)  # other blocks: other sums


def test_fit_through_a_distributed_client_on_the_gpu():
    from distributed import Client

    X, y = product_task(800, 4, seed=0)
    common = {"iters": 1, "dtype": "float64", "random_state": 0, "reg": 0.1, "centers": 100}
    common["solver"] = "direct"
    cpu = RFMRegressor(device="cpu", **common).fit(X, y)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        gpu = RFMRegressor(device="gpu", **common).fit(X, y)
    assert_close(gpu.M_, cpu.M_, np.float64, rtol=AGOP_RTOL)


# --- device memory ---------------------------------------------------------------------------------


def test_peak_device_memory_stays_under_the_configured_budget(cp, monkeypatch):
    """A Nyström fit whose n x m kernel (800 MB) is 3x the budget never holds it on the device."""
    n, d, m = 200_000, 20, 1_000
    free = 512 * 2**20
    monkeypatch.delenv("RFMDIST_KERNEL_CACHE_BYTES", raising=False)
    monkeypatch.delenv("RFMDIST_GPU_MEMORY_FRACTION", raising=False)
    monkeypatch.setattr(backend, "free_device_bytes", lambda: free)
    budget = memory.available_bytes("gpu")  # 256 MiB for kernel blocks and a cache
    X, y = product_task(n, d, seed=0)
    pool = cp.cuda.MemoryPool()
    peak = [0]

    def tracking_malloc(size):
        pointer = pool.malloc(size)
        peak[0] = max(peak[0], pool.used_bytes())
        return pointer

    cp.cuda.set_allocator(tracking_malloc)
    try:
        model = RFMRegressor(
            iters=1, centers=m, solver="pcg", max_iter=5, dtype="float32", device="gpu"
        ).fit(X, y)
    finally:
        cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
        pool.free_all_blocks()
    # Beyond the budget: the data (float64 as given, its float32 copy and the standardisation's
    # temporaries) and the solver's m x m matrices (K_mm, its factors and the preconditioner).
    bound = budget + 4 * X.nbytes + 8 * m * m * 8
    print(f"peak device memory {peak[0] / 2**20:.0f} MiB; bound {bound / 2**20:.0f} MiB")
    assert model.history_[0]["cached_kernel"] is False
    assert peak[0] < bound < n * m * 4


# --- TF32 ------------------------------------------------------------------------------------------


def test_tf32_switch_changes_float32_gemms_and_is_restored(cp):
    a = cp.full((256, 256), 1.0001, dtype=cp.float32)
    b = cp.ones((256, 256), dtype=cp.float32)
    full = float((a @ b)[0, 0])
    with backend.tf32_matmul(True):
        fast = float((a @ b)[0, 0])
    assert float((a @ b)[0, 0]) == full
    assert abs(full - 256.0256) < 1e-3
    if int(cp.cuda.Device().compute_capability) >= 80:
        assert fast == 256.0  # 1.0001 keeps a 10-bit mantissa: 1.0


def test_tf32_fit_error_is_bounded(cp):
    """float32 asked for: TF32 changes float32 GEMMs only (dtype=None is float64 on an H200). The
    Nyström system stays positive definite (its Gram matrix by float64 GEMMs, K_mm in float64)."""
    X, y = product_task(2_000, 10, seed=0)
    common = {"iters": 2, "device": "gpu", "random_state": 0, "centers": 500, "dtype": "float32"}
    exact = RFMRegressor(**common).fit(X, y)
    fast = RFMRegressor(tf32=True, **common).fit(X, y)
    err = np.abs(fast.predict(X) - exact.predict(X)).max() / np.abs(exact.predict(X)).max()
    print(f"TF32 relative prediction change: {err:.2e}")
    assert err < 5e-2
    assert backend.set_tf32(False) is False  # the fit restored full float32


def test_tf32_widens_the_near_pair_limits(cp):
    from rfmdist.kernels import gemm_epsilon

    eps32 = float(np.finfo(np.float32).eps)
    assert gemm_epsilon(np.float32, cp) == eps32
    with backend.tf32_matmul(True):
        assert gemm_epsilon(np.float32, cp) == backend.TF32_EPSILON
        assert gemm_epsilon(np.float64, cp) == float(np.finfo(np.float64).eps)
        assert gemm_epsilon(np.float32, np) == eps32  # NumPy GEMMs are never TF32


# --- float32 numerics, the device's dtype and sizing ------------------------------------------------


def planted(n, d, seed):
    """The issue's task: y = x0 x1 + 0.1 noise."""
    return product_task(n, d, seed, noise=0.1)


def fallbacks(model):
    return [h for h in model.history_ if "float64_fallback" in h["solve"]]


def test_float32_nystrom_direct_fit_on_the_gpu_scores_as_float64(cp):
    """The first GPU run's 300,000-row failure, at the issue's CPU reproduction's size: the float32
    Gram matrix is formed by float64 GEMMs; no jitter, no fallback, the float64 CPU fit's MSE."""
    X, y = planted(5_000, 20, seed=0)
    X_test, y_test = planted(2_000, 20, seed=1)
    params = {"iters": 2, "centers": 1000, "solver": "direct", "random_state": 0}
    gpu = RFMRegressor(device="gpu", dtype="float32", **params).fit(X, y)
    cpu = RFMRegressor(device="cpu", dtype="float64", **params).fit(X, y)
    assert not fallbacks(gpu) and all(h["solve"]["jitter"] == 0 for h in gpu.history_)
    mse = [np.mean((m.predict(X_test) - y_test) ** 2) for m in (gpu, cpu)]
    assert mse[0] == pytest.approx(mse[1], rel=0.02), mse


def test_float32_exact_fit_of_data_with_outliers_on_the_gpu_scores_as_float64(cp):
    """The first GPU run's 12,384-row housing failure, synthetic: one feature with outliers of 100
    standard deviations, so most rows sit close together once standardised."""
    gen = np.random.default_rng(5)
    X = gen.standard_normal((12_000, 8))
    X[gen.choice(12_000, 60, replace=False), 4] *= 100.0
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    train, test = slice(0, 10_000), slice(10_000, None)
    gpu = RFMClassifier(iters=1, device="gpu", dtype="float32", random_state=0)
    gpu.fit(X[train], y[train])
    cpu = RFMClassifier(iters=1, device="cpu", dtype="float64", random_state=0)
    cpu.fit(X[train], y[train])
    assert not fallbacks(gpu)
    assert gpu.score(X[test], y[test]) == pytest.approx(cpu.score(X[test], y[test]), abs=0.005)


def test_a_float32_round_too_coarse_for_its_system_runs_in_float64_on_the_gpu(cp):
    X, y = planted(2_000, 4, seed=2)
    X_test, y_test = planted(1_000, 4, seed=3)
    params = {"kernel": "gaussian", "reg": 1e-7, "iters": 1, "solver": "direct"}
    params |= {"random_state": 0, "validation_fraction": None, "n_iter_no_change": None}
    single = RFMRegressor(device="gpu", dtype="float32", **params).fit(X, y)
    double = RFMRegressor(device="cpu", dtype="float64", **params).fit(X, y)
    assert len(fallbacks(single)) == 2 and single.model_.dtype == np.float64
    mse = [np.mean((m.predict(X_test) - y_test) ** 2) for m in (single, double)]
    assert mse[0] == pytest.approx(mse[1], rel=0.02), mse


def test_the_default_dtype_and_centers_follow_the_gpus_measured_rates(cp):
    from rfmdist.plan import centers_choice
    from rfmdist.precision import dtype_for_rates
    from rfmdist.solvers.costs import gemm_rates
    from rfmdist.threads import blas_threads

    rates = gemm_rates("gpu", blas_threads())
    print(f"GEMM rates: { ({k: f'{v / 1e12:.1f} TFLOP/s' for k, v in rates.items()}) }")
    expected = dtype_for_rates(rates)
    X, y = planted(3_000, 10, seed=4)
    model = RFMRegressor(iters=1, device="gpu", random_state=0).fit(X, y)
    assert model.model_.dtype == expected.dtype
    assert model.history_[0]["dtype_choice"] == {
        "dtype": expected.dtype.name,
        "reason": expected.reason,
    }
    settings = RFMRegressor(device="gpu").fit_settings()
    choice = centers_choice(settings, 300_000, 20)
    print(choice.describe(300_000))
    assert choice.capacity.cores >= 100 and "GPU at" in choice.capacity.what
    assert choice.n_centers > 8_400  # the first GPU run counted the GPU as one host core


def test_cli_fit_with_gpus_on_a_gpu_worker(tmp_path, capsys):
    """`rfmdist fit --gpus` end to end (it exited 2 with the Nyström error on 50,000 x 20 rows): a
    worker process of a distributed cluster on this GPU (no dask-cuda needed with --scheduler),
    Nyström centers by a direct solve, the model stored and loadable, scoring as a CPU fit."""
    from distributed import LocalCluster

    import rfmdist
    from rfmdist.cli.main import main

    X, y = planted(20_000, 20, seed=6)
    X_test, y_test = planted(2_000, 20, seed=7)
    train = tmp_path / "train.npz"
    np.savez(train, X=X, y=y)
    out = tmp_path / "model.zarr"
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        args = ["fit", "--train", train, "--out", out, "--scheduler", cluster.scheduler_address]
        args += ["--gpus", "--iters", "2", "--centers", "2000", "--solver", "direct", "--seed", "0"]
        code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model = rfmdist.load(out)
    cpu = RFMRegressor(iters=2, centers=2000, solver="direct", random_state=0).fit(X, y)
    mse = [np.mean((m.predict(X_test) - y_test) ** 2) for m in (model, cpu)]
    assert mse[0] == pytest.approx(mse[1], rel=0.05), mse
