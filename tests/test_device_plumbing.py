"""Device selection, dtype defaults, GPU worker specs and memory budgets, checked without a GPU.

CuPy and the GPU are faked where needed (``backend._cupy``, ``backend.gpu_available``,
``backend.free_device_bytes``); the numerics on a real GPU are in ``tests/test_gpu.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import dask.array as da
import numpy as np
import psutil
import pytest

from rfmdist import RFMRegressor, backend, memory
from rfmdist.cli import cluster as cli_cluster
from rfmdist.cli.fit import _estimator_params
from rfmdist.data import on_device
from rfmdist.kernels import prepare_kernel
from rfmdist.operators import BlockedKernelOperator, rows_per_block
from rfmdist.training import RoundConfig, use_cache

GiB = 2**30
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "gpu_available", lambda: False)


@pytest.fixture
def no_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    monkeypatch.setattr(backend, "gpu_available", lambda: False)


def small_task(n: int = 60, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(0).normal(size=(n, d))
    return X, X[:, 0] * X[:, 1]


# --- device selection ------------------------------------------------------------------------------


def test_auto_falls_back_to_the_cpu_without_a_gpu(no_gpu):
    assert backend.resolve_device("auto") == "cpu"
    assert backend.resolve_device("cpu") == "cpu"
    X, y = small_task()
    model = RFMRegressor(iters=1, device="auto", random_state=0).fit(X, y)
    assert model.model_.dtype == np.float64
    assert isinstance(model.predict(X), np.ndarray)


def test_auto_picks_the_gpu_when_cupy_can_allocate(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    assert backend.resolve_device("auto") == "gpu"


def test_gpu_without_cupy_says_how_to_install_it(no_cupy):
    X, y = small_task()
    with pytest.raises(
        ImportError, match=r"pip install 'rfmdist\[cuda12\]' or 'rfmdist\[cuda13\]'"
    ):
        RFMRegressor(iters=0, device="gpu").fit(X, y)


def test_gpu_with_cupy_but_no_device_is_refused_with_the_fallback(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", lambda: SimpleNamespace())
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='auto'"):
        backend.resolve_device("gpu")


def test_unknown_device_is_refused_by_the_parameter_table():
    X, y = small_task()
    with pytest.raises(ValueError, match="Expected device of RFMRegressor to be one of 'cpu'"):
        RFMRegressor(device="cuda").fit(X, y)
    with pytest.raises(ValueError, match="Expected tf32 of RFMRegressor"):
        RFMRegressor(tf32="yes").fit(X, y)


def test_a_gpu_model_predicts_on_the_cpu_where_there_is_no_gpu(no_gpu):
    X, y = small_task()
    model = RFMRegressor(iters=1, random_state=0).fit(X, y)
    expected = model.predict(X)
    model.set_params(device="gpu")  # as loaded from a store written on a GPU machine
    assert model._predict_device() == "cpu"
    np.testing.assert_array_equal(model.predict(X), expected)


def test_on_device_cpu_keeps_host_arrays():
    X = np.ones((4, 2))
    assert on_device(X, "cpu") is X
    dX = da.ones((4, 2), chunks=2)
    assert on_device(dX, "cpu") is dX


def test_tf32_is_a_no_op_without_cupy(no_cupy):
    assert backend.set_tf32(True) is None
    with backend.tf32_matmul(True):
        pass


# --- dtype defaults ---------------------------------------------------------------------------------


H200_RATES = {"float32": 51e12, "float64": 50e12}  # float64 tensor cores
CONSUMER_RATES = {"float32": 80e12, "float64": 1.25e12}  # 1/64


@pytest.mark.parametrize(
    ("dtype", "device", "rates", "expected"),
    [
        (None, "cpu", None, np.float64),
        (None, "gpu", H200_RATES, np.float64),
        (None, "gpu", CONSUMER_RATES, np.float32),
        ("float64", "gpu", CONSUMER_RATES, np.float64),
        ("float32", "cpu", None, np.float32),
    ],
)
def test_dtype_default_follows_the_device(monkeypatch, dtype, device, rates, expected):
    """dtype=None: float64 on the CPU; on a GPU from its measured GEMM rates (the GPU is the one
    measured: its rates are given here)."""
    from rfmdist.solvers import costs

    measured = []
    monkeypatch.setattr(costs, "gemm_rates", lambda *key: measured.append(key) or rates)
    config = RFMRegressor(dtype=dtype)._round_config(0, device)
    assert config.dtype == expected and config.device == device
    assert config.tol == 1e-4
    assert bool(measured) == (dtype is None and device == "gpu")  # only then is anything measured
    if measured:
        share = rates["float64"] / rates["float32"]
        assert f"runs at {share:.2f} of its float32 rate" in config.dtype_reason


def test_default_fit_stays_float64_on_the_cpu():
    X, y = small_task()
    model = RFMRegressor(iters=0, random_state=0).fit(X, y)
    assert model.get_params()["dtype"] is None and model.get_params()["device"] == "cpu"
    assert model.model_.dtype == np.float64


# --- GPU workers and dask-cuda ---------------------------------------------------------------------


@pytest.fixture
def local_gpu() -> ModuleType:
    path = REPO / "cluster" / "local-gpu" / "run_local_gpu.py"
    spec = importlib.util.spec_from_file_location("run_local_gpu_plumbing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_worker_per_visible_gpu(local_gpu, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0,GPU-aa11")
    devices = local_gpu.devices_from_environment(device_count=lambda: 8)
    assert devices == [2, 0, "GPU-aa11"]
    kwargs = local_gpu.cluster_kwargs(devices)
    assert kwargs["n_workers"] == 3 and kwargs["CUDA_VISIBLE_DEVICES"] == "2,0,GPU-aa11"
    assert kwargs["rmm_managed_memory"] is False  # never CUDA managed memory


def test_missing_dask_cuda_says_how_to_install_it(local_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    with pytest.raises(local_gpu.DaskCudaMissingError, match="pip install 'rfmdist\\[cuda12\\]'"):
        local_gpu.require_dask_cuda()
    args = argparse.Namespace(
        scheduler=None,
        scheduler_file=None,
        connect_timeout=15.0,
        workers=None,
        threads_per_worker=1,
        memory_limit="auto",
        gpus=True,
    )
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dask_cuda" else real_find_spec(name, *a),
    )
    with pytest.raises(ValueError, match="pip install 'rfmdist\\[cuda12\\]'"):
        cli_cluster.check_cluster_arguments(args)


def test_cli_gpus_selects_the_gpu_device_and_its_dtype_default():
    args = argparse.Namespace(
        kernel="laplace",
        bandwidth=10.0,
        reg=1e-3,
        iters=1,
        diag=False,
        agop_samples=None,
        normalize_agop=None,
        n_iter_no_change=None,
        validation_fraction=None,
        time_budget=None,
        centers="auto",
        solver="auto",
        dtype=None,
        seed=0,
        chunk_rows=None,
        gpus=True,
        tf32=True,
    )
    params = _estimator_params(args)
    assert params["device"] == "gpu" and params["tf32"] is True and params["dtype"] is None
    args.gpus = False
    assert _estimator_params(args)["device"] == "cpu"


# --- memory budgets ---------------------------------------------------------------------------------


def test_cpu_budgets_follow_the_available_memory(monkeypatch):
    """Half of what the host has available; a 3.2 GB kernel is cached on a machine with 20 GB free;
    the fraction and the explicit cap override."""
    for key in ("RFMDIST_KERNEL_CACHE_BYTES", "RFMDIST_MEMORY_FRACTION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 20 * GiB)
    assert memory.block_bytes("cpu") == 8 * 2**20
    assert memory.available_bytes("cpu") == 10 * GiB
    assert memory.cache_bytes("cpu") == 10 * GiB
    assert 20_000**2 * 8 <= memory.cache_bytes("cpu")
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 4 * GiB)  # a busy machine
    assert memory.cache_bytes("cpu") == 2 * GiB
    monkeypatch.setenv("RFMDIST_MEMORY_FRACTION", "0.25")
    assert memory.cache_bytes("cpu") == GiB
    monkeypatch.setenv("RFMDIST_KERNEL_CACHE_BYTES", "1e8")
    assert memory.cache_bytes("cpu") == 10**8
    monkeypatch.setenv("RFMDIST_KERNEL_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="Expected RFMDIST_KERNEL_CACHE_BYTES to be a number"):
        memory.cache_bytes("cpu")


def test_host_memory_is_capped_by_the_container_limit(monkeypatch, tmp_path):
    """The cgroup's limit minus its usage caps psutil's available memory (v2 files, then v1)."""
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    monkeypatch.setattr(memory, "CGROUP_FILES", ((str(limit), str(usage)),))
    limit.write_text(f"{3 * GiB}\n")
    usage.write_text(f"{GiB}\n")
    assert memory.host_available_bytes() == min(2 * GiB, psutil.virtual_memory().available)
    limit.write_text("max\n")
    assert memory.host_available_bytes() >= psutil.virtual_memory().available // 2


def test_workers_budget_follows_their_memory_limits():
    """A real 2-process LocalCluster with 2 GiB per worker: each may keep half of what its process
    does not use yet, so the two together hold between 1 and 2 GiB of kernel."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit="2GiB",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        budget = memory.workers_cache_bytes(client)
    assert GiB < budget <= 2 * GiB, budget / GiB


def test_gpu_budgets_follow_free_device_memory(monkeypatch):
    monkeypatch.delenv("RFMDIST_KERNEL_CACHE_BYTES", raising=False)
    monkeypatch.delenv("RFMDIST_GPU_MEMORY_FRACTION", raising=False)
    monkeypatch.setattr(backend, "free_device_bytes", lambda: 8 * GiB)
    assert memory.available_bytes("gpu") == 4 * GiB  # half of what is free
    assert memory.block_bytes("gpu") == 4 * GiB // 16
    assert memory.cache_bytes("gpu") == 4 * GiB - 8 * (4 * GiB // 16)
    # The blocks and the cache together never exceed what was available.
    assert memory.cache_bytes("gpu") + 8 * memory.block_bytes("gpu") <= 4 * GiB
    monkeypatch.setattr(backend, "free_device_bytes", lambda: 140 * GiB)
    assert memory.block_bytes("gpu") == memory.GPU_MAX_BLOCK_BYTES
    monkeypatch.setenv("RFMDIST_KERNEL_CACHE_BYTES", str(GiB))
    assert memory.cache_bytes("gpu") == GiB
    monkeypatch.setenv("RFMDIST_GPU_MEMORY_FRACTION", "0.25")
    monkeypatch.delenv("RFMDIST_KERNEL_CACHE_BYTES")
    assert memory.available_bytes("gpu") == 35 * GiB


def test_bad_gpu_fraction_is_refused(monkeypatch):
    monkeypatch.setenv("RFMDIST_GPU_MEMORY_FRACTION", "2")
    with pytest.raises(ValueError, match=r"RFMDIST_GPU_MEMORY_FRACTION in \(0, 1\]"):
        memory.gpu_fraction()


def test_kernel_cache_decision_uses_the_gpu_budget(monkeypatch):
    monkeypatch.delenv("RFMDIST_KERNEL_CACHE_BYTES", raising=False)
    monkeypatch.setattr(backend, "free_device_bytes", lambda: 8 * GiB)
    base = dict(
        kernel="laplace",
        bandwidth=10.0,
        reg=1e-3,
        iters=0,
        diag=False,
        agop_samples=None,
        solver="pcg",
        tol=1e-4,
        max_iter=10,
        preconditioner_rank=10,
        cache_kernel="auto",
        split_every=8,
        dtype=np.dtype(np.float32),
        seed=0,
    )
    gpu = RoundConfig(**base, device="gpu")
    cpu = RoundConfig(**base)
    n, m = 200_000, 2_000  # 1.6 GB of float32 kernel: fits the 2 GiB left on the GPU
    assert use_cache(gpu, n, m) and use_cache(cpu, n, m)
    monkeypatch.setattr(backend, "free_device_bytes", lambda: 2 * GiB)  # 0.5 GiB left
    assert not use_cache(gpu, n, m)
    assert use_cache(cpu, n, m)  # the host budget does not depend on the GPU


def test_blocked_operator_sizes_blocks_from_free_gpu_memory(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    prepared = prepare_kernel(X[:10], np.eye(3))
    cpu_rows = BlockedKernelOperator(X, prepared).block_rows
    assert cpu_rows == rows_per_block(10, 8)  # the CPU default, as before
    monkeypatch.setattr(memory, "device_of", lambda like: "gpu")
    monkeypatch.setattr(backend, "free_device_bytes", lambda: 64 * 2**20)
    gpu_rows = BlockedKernelOperator(X, prepared).block_rows
    assert gpu_rows == rows_per_block(10, 8, 64 * 2**20 // 2 // 16)
    assert BlockedKernelOperator(X, prepared, block_rows=7).block_rows == 7


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lower_gram_matches_product(dtype):
    """LAPACK lauum's L^T L equals the dense product, both triangles."""
    from rfmdist.backend import lower_gram

    gen = np.random.default_rng(3)
    L = np.tril(gen.normal(size=(37, 37))).astype(dtype)
    got = lower_gram(L)
    assert got.dtype == dtype
    np.testing.assert_allclose(
        got,
        L.T.astype(np.float64) @ L,
        rtol=1e-5 if dtype == np.float32 else 1e-12,
        atol=1e-5 if dtype == np.float32 else 1e-12,
    )
