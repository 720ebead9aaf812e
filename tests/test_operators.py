"""Kernel operators (in-memory blocks, Dask threaded, Dask distributed) against dense NumPy products."""

from __future__ import annotations

import dataclasses

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from rfmdist.agop import agop_block_sum
from rfmdist.kernels import PreparedKernel, prepare_kernel
from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator
from rfmdist.threads import blas_threads

N, D, M_CENTERS = 503, 6, 61


@pytest.fixture(scope="module")
def problem():
    gen = np.random.default_rng(7)
    X = gen.normal(size=(N, D))
    Z = np.vstack([X[:20], gen.normal(size=(M_CENTERS - 20, D))])
    A = gen.normal(size=(D, D))
    M = A @ A.T / D
    prepared = prepare_kernel(Z, M, kernel="laplace", bandwidth=3.0)
    # The dense reference by the reference path's array operations, not the operators' fused tiles.
    K = prepare_kernel(Z, M, kernel="laplace", bandwidth=3.0, backend="reference").block(X)
    V = gen.normal(size=(M_CENTERS, 3))
    U = gen.normal(size=(N, 3))
    return X, Z, M, prepared, K, V, U


def assert_operator_matches_dense(op, problem, U_arg):
    X, Z, M, _, K, V, U = problem
    np.testing.assert_allclose(op.matvec(V), K @ V, rtol=1e-6)
    np.testing.assert_allclose(op.rmatvec(U_arg), K.T @ U, rtol=1e-6)
    np.testing.assert_allclose(op.normal_matvec(V), K.T @ (K @ V), rtol=1e-6)
    np.testing.assert_allclose(op.gram(), K.T @ K, rtol=1e-6)
    gram, rhs = op.gram_and_rmatvec(U_arg)
    np.testing.assert_allclose(gram, K.T @ K, rtol=1e-6)
    np.testing.assert_allclose(rhs, K.T @ U, rtol=1e-6)
    assert gram.dtype == rhs.dtype == np.float64
    pred = op.predict(V)
    np.testing.assert_allclose(pred.compute() if hasattr(pred, "dask") else pred, K @ V, rtol=1e-6)
    for diag_m in (False, True):
        Mx = np.diagonal(M).copy() if diag_m else M
        local = prepare_kernel(Z, Mx, kernel="laplace", bandwidth=3.0)
        op_x = (
            type(op)(op.X, local)
            if isinstance(op, BlockedKernelOperator)
            else DaskKernelOperator(op.X, local, split_every=op.split_every)
        )
        for diag in (False, True):
            want = agop_block_sum(X, Z, V, Mx, kernel="laplace", bandwidth=3.0, diag=diag)
            np.testing.assert_allclose(op_x.agop_sum(V, diag=diag), want, rtol=1e-6)
        rows = np.arange(0, N, 3)
        want = agop_block_sum(X[rows], Z, V, Mx, kernel="laplace", bandwidth=3.0, diag=False)
        np.testing.assert_allclose(op_x.agop_sum(V, diag=False, rows=rows), want, rtol=1e-6)
        # float32 GEMMs summed in float64 (what the round loop uses): the same AGOP to 1e-5.
        fast = op_x.agop_sum(V, diag=False, rows=rows, gemm_dtype=np.float32)
        assert np.linalg.norm(fast - want) <= 1e-5 * np.linalg.norm(want)


@pytest.mark.parametrize("block_rows", [1, 64, 100, N, 10 * N])
@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("workers", [1, 3])
def test_blocked_operator(problem, block_rows, cache, workers):
    X, _, _, prepared, *_, U = problem
    op = BlockedKernelOperator(X, prepared, cache=cache, block_rows=block_rows, workers=workers)
    assert op.workers == workers
    assert_operator_matches_dense(op, problem, U)


@pytest.mark.parametrize(
    ("backend", "cache", "strategy"),
    [
        ("fused", False, "tiles"),
        ("reference", False, "blocks"),
        ("fused", True, "cached"),
        ("reference", True, "cached"),
    ],
)
def test_blocked_operator_chooses_its_strategy_once(problem, backend, cache, strategy):
    """The operator picks what its passes run when it is made: the cached kernel, the fused CPU
    tiles or kernel blocks; every pass matches the dense kernel whichever it is, and a cached
    operator's AGOP blocks are those of the strategy it would have without the cache."""
    X, Z, M, *_, U = problem
    kernel = prepare_kernel(Z, M, kernel="laplace", bandwidth=3.0, backend=backend)
    op = BlockedKernelOperator(X, kernel, cache=cache, block_rows=100, workers=2)
    assert op.strategy.name == strategy
    uncached = BlockedKernelOperator(X, kernel, block_rows=100)
    assert op.strategy.agop_rows(3) == uncached.strategy.agop_rows(3)
    assert_operator_matches_dense(op, problem, U)


def test_agop_operand_groups_outputs_to_bound_its_memory(problem, monkeypatch):
    """With room for one output's weighted centers, the AGOP runs output by output: same sum."""
    import rfmdist.operators as operators

    X, _, _, prepared, _, V, _ = problem
    whole = BlockedKernelOperator(X, prepared).agop_sum(V, diag=False)
    monkeypatch.setattr(operators, "AGOP_OPERAND_BYTES", M_CENTERS * D * 8)
    assert len(operators.output_groups(prepared, V.shape[1])) == V.shape[1]
    grouped = BlockedKernelOperator(X, prepared).agop_sum(V, diag=False)
    np.testing.assert_allclose(grouped, whole, rtol=1e-12)


def test_blocked_operator_threads_reproducible(problem):
    """Blocks on several threads give the same sums on every run, close to one thread's."""
    X, _, _, prepared, _, V, _ = problem
    threaded = BlockedKernelOperator(X, prepared, block_rows=50, workers=3)
    first = threaded.normal_matvec(V)
    for _ in range(3):
        np.testing.assert_array_equal(threaded.normal_matvec(V), first)
    single = BlockedKernelOperator(X, prepared, block_rows=50, workers=1).normal_matvec(V)
    np.testing.assert_allclose(first, single, rtol=1e-12)


def test_blocked_operator_workers_follow_blas_budget(problem):
    """The default pool is the BLAS thread budget: ``threadpool_limits(1)`` makes passes sequential."""
    from threadpoolctl import threadpool_limits

    from rfmdist.threads import available_cores

    X, _, _, prepared, *_ = problem
    with threadpool_limits(limits=1, user_api="blas"):
        assert BlockedKernelOperator(X, prepared).workers == 1
    assert 1 <= BlockedKernelOperator(X, prepared).workers <= available_cores()


# Chunkings: even, ragged last chunk, a single chunk, one-row chunks at the end.
CHUNKINGS = [(100,), (128,), (N,), ((250, 250, 1, 1, 1),)]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["even", "ragged", "single", "tiny-tail"])
@pytest.mark.parametrize("split_every", [2, 8])
@pytest.mark.parametrize("cache", [False, True])
def test_dask_operator_threaded(problem, chunks, split_every, cache):
    X, _, _, prepared, *_, U = problem
    Xd = da.from_array(X, chunks=(chunks[0], D))
    Ud = da.from_array(U, chunks=(chunks[0], 3))
    with dask.config.set(scheduler="threads"):
        op = DaskKernelOperator(Xd, prepared, cache=cache, split_every=split_every)
        assert_operator_matches_dense(op, problem, Ud)


BLAS_BUDGETS_SEEN: list[int] = []
"""The BLAS thread budget in force wherever a :class:`RecordingKernel` took a block of rows."""


@dataclasses.dataclass(frozen=True)
class RecordingKernel(PreparedKernel):
    """A prepared kernel recording the BLAS budget of the thread taking each block of rows (its
    transform: the kernel block and the fused tiles both start there; defined at module level: Dask
    may copy the graph's objects, and a module-level class is copied by reference, so its records
    land in :data:`BLAS_BUDGETS_SEEN`)."""

    def transform(self, X):
        BLAS_BUDGETS_SEEN.append(blas_threads())
        return super().transform(X)


@pytest.mark.parametrize("cache", [False, True])
def test_dask_threaded_passes_use_one_blas_thread(problem, cache):
    """Dask's thread pool runs one task per core, so its tasks' BLAS runs on one thread (the full
    budget in every task oversubscribed the cores, 1.8x slower passes measured on 2 cores); the
    synchronous scheduler runs one task at a time and keeps the budget."""
    from threadpoolctl import threadpool_limits

    X, _, _, prepared, K, V, _ = problem
    recording = RecordingKernel(
        **{f.name: getattr(prepared, f.name) for f in dataclasses.fields(prepared)}
    )
    Xd = da.from_array(X, chunks=(100, D))
    with threadpool_limits(limits=2, user_api="blas"):
        for scheduler, budget in (("threads", 1), ("sync", 2)):
            BLAS_BUDGETS_SEEN.clear()
            op = DaskKernelOperator(Xd, recording, cache=cache)
            with dask.config.set(scheduler=scheduler):
                np.testing.assert_allclose(op.normal_matvec(V), K.T @ (K @ V), rtol=1e-6)
                np.testing.assert_allclose(op.matvec(V), K @ V, rtol=1e-6)
            assert BLAS_BUDGETS_SEEN and set(BLAS_BUDGETS_SEEN) == {budget}, scheduler


@pytest.fixture(scope="module")
def cluster_client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("chunks", [(128,), (N,)], ids=["ragged", "single"])
def test_dask_operator_distributed(problem, cluster_client, chunks):
    X, _, _, prepared, *_, U = problem
    Xd = da.from_array(X, chunks=(chunks[0], D))
    Ud = da.from_array(U, chunks=(chunks[0], 3))
    for cache in (False, True):
        op = DaskKernelOperator(Xd, prepared, cache=cache, split_every=2)
        assert_operator_matches_dense(op, problem, Ud)


def test_dask_operator_when_the_scatter_fails(problem, cluster_client, monkeypatch):
    """A worker dying during the round's broadcast makes scatter fail or hang (then time out): the
    kernel then travels inside each pass's graph and every product is still right."""
    X, _, _, prepared, *_, U = problem

    def broken_scatter(*args, **kwargs):
        raise TimeoutError("simulated: a worker died during the broadcast")

    monkeypatch.setattr(cluster_client, "scatter", broken_scatter)
    Xd = da.from_array(X, chunks=(128, D))
    Ud = da.from_array(U, chunks=(128, 3))
    op = DaskKernelOperator(Xd, prepared, split_every=2)
    assert type(op._shared).__module__.startswith("dask.delayed")  # the graph carries it
    assert_operator_matches_dense(op, problem, Ud)


@pytest.mark.parametrize("cache", [False, True])
def test_dask_operator_recovers_when_the_broadcast_kernel_is_lost(
    problem, cluster_client, cache, caplog
):
    """When the cluster loses every copy of the round's broadcast kernel (its holders died), the
    scheduler cancels the next pass for lost dependencies; the pass is rebuilt with the kernel
    sent again and gives the right products (the e2e kill-a-worker test hit this race)."""
    X, _, _, prepared, K, V, _ = problem
    Xd = da.from_array(X, chunks=(128, D))
    op = DaskKernelOperator(Xd, prepared, cache=cache, split_every=2)
    np.testing.assert_allclose(op.normal_matvec(V), K.T @ (K @ V), rtol=1e-6)
    lost = op._shared
    cluster_client.cancel(lost, force=True)  # the scheduler forgets the data, as after the deaths
    with caplog.at_level("WARNING", logger="rfmdist.operators"):
        np.testing.assert_allclose(op.normal_matvec(V), K.T @ (K @ V), rtol=1e-6)
        np.testing.assert_allclose(op.matvec(V), K @ V, rtol=1e-6)
        np.testing.assert_allclose(op.predict(V), K @ V, rtol=1e-6)
    assert op._shared is not lost
    assert "sending the round's kernel to the workers again" in caplog.text


def test_dask_operator_when_the_broadcast_hangs(problem, cluster_client, monkeypatch):
    """A broadcast that never returns (a worker killed mid-replication) is abandoned after
    SCATTER_TIMEOUT_S: the kernel travels in the graph and the products are right."""
    import threading
    import time

    from rfmdist import operators

    X, _, _, prepared, *_, U = problem
    release = threading.Event()

    def hanging_scatter(*args, **kwargs):
        release.wait(60)
        raise OSError("simulated: the broadcast never finished")

    monkeypatch.setattr(cluster_client, "scatter", hanging_scatter)
    monkeypatch.setattr(operators, "SCATTER_TIMEOUT_S", 0.5)
    Xd = da.from_array(X, chunks=(128, D))
    Ud = da.from_array(U, chunks=(128, 3))
    start = time.perf_counter()
    op = DaskKernelOperator(Xd, prepared, split_every=2)
    waited = time.perf_counter() - start
    release.set()
    assert waited < 10, waited
    assert type(op._shared).__module__.startswith("dask.delayed")
    assert_operator_matches_dense(op, problem, Ud)
