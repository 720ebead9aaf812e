"""The fused kernel passes (rfmdist/fused.py) against the reference path's NumPy array operations.

Tolerances (the issue's): rtol 1e-10 in float64 and 1e-5 in float32, relative to the size of each
entry of a kernel block, and for products relative to the product of the magnitudes
(``|K| |V|``), so that cancellation in a sum of mixed signs is not mistaken for an error. Below the
dtype's normal range the fused ``exp`` gives 0 where NumPy gives subnormal numbers, hence ``atol`` of
the smallest normal number for kernel entries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from benchmarks.datasets.uci121 import load_uci121
from rfmdist import fused
from rfmdist.agop import GradientOperand, agop_block_sum
from rfmdist.estimators import RFMClassifier
from rfmdist.kernels import BACKEND_ENV_VAR, kernel_backend, prepare_kernel
from rfmdist.operators import BlockedKernelOperator, DaskKernelOperator

RTOL = {np.float64: 1e-10, np.float32: 1e-5}
N_CENTERS = 150


@numba.njit
def _exp_neg_of(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = fused.exp_neg(x[i])
    return out


@pytest.mark.parametrize(
    ("dtype", "ulps", "cut"), [(np.float64, 1.5, -708.0), (np.float32, 2.5, -87.0)]
)
def test_exp_matches_numpy_to_a_few_ulps(dtype, ulps, cut):
    gen = np.random.default_rng(0)
    x = -np.concatenate(
        [gen.uniform(0, 1e-6, 20000), gen.uniform(0, 1, 20000), gen.uniform(0, -cut, 20000)]
    ).astype(dtype)
    x = np.concatenate([x, np.array([0.0, cut + 0.5], dtype=dtype)])
    got, want = _exp_neg_of(x), np.exp(x)
    assert got.dtype == dtype
    np.testing.assert_array_less(np.abs(got - want), ulps * np.finfo(dtype).eps * want)
    below = np.array([cut - 0.5, cut - 50.0, -1e4], dtype=dtype)
    np.testing.assert_array_equal(_exp_neg_of(below), 0.0)  # flushed, where NumPy is subnormal
    assert _exp_neg_of(np.array([0.0], dtype=dtype))[0] == 1.0


def clustered_problem(n_rows, d, dtype, seed=3, near=1e-7):
    """Rows and centers with coincident points, near-duplicates (``near`` apart: 1e-7 is inside the
    distance GEMM's resolution), an all-zero row and center, and ordinary points."""
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n_rows, d))
    X[0] = 0.0
    k = min(n_rows, 20)
    Z = np.vstack(
        [
            X[:k],  # coincident with rows
            X[:k] + near * gen.normal(size=(k, d)),  # near-duplicates
            gen.normal(size=(N_CENTERS - 2 * k, d)),
        ]
    )
    return X.astype(dtype), Z.astype(dtype)


def metric(form, d, dtype, seed=4):
    gen = np.random.default_rng(seed)
    if form == "diag":
        return gen.uniform(0.2, 2.0, size=d).astype(dtype)
    A = gen.normal(size=(d, d))
    return (A @ A.T / d).astype(dtype)


def assert_entries_close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=np.finfo(dtype).tiny)


def assert_product_close(got, want, magnitude, dtype):
    """|got - want| <= rtol (|want| + magnitude): ``magnitude`` is ``|K| |V|``."""
    assert got.shape == want.shape
    excess = np.abs(got - want) - RTOL[dtype] * (np.abs(want) + magnitude)
    assert excess.max() <= 0, f"worst relative excess {excess.max():.3g}"


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 KiB (8 rows x 64 centers in float64): several tiles in both directions."""
    monkeypatch.setattr(fused.memory, "tile_bytes", lambda: 4096)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["diag", "full"])
@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
@pytest.mark.parametrize("n_rows", [1, 7, 301])
def test_fused_block_operations_equal_the_reference(small_tiles, dtype, form, kernel, n_rows):
    d = 5
    X, Z = clustered_problem(n_rows, d, dtype)
    M = metric(form, d, dtype)
    ref = prepare_kernel(Z, M, kernel=kernel, bandwidth=1.3, backend="reference")
    fus = prepare_kernel(Z, M, kernel=kernel, bandwidth=1.3, backend="fused")
    K = ref.block(X)
    assert_entries_close(fus.block(X), K, dtype)
    # Written into a given array: straight into a C-contiguous one, copied into any other.
    for out in (np.empty_like(K), np.empty((n_rows, N_CENTERS + 3), dtype)[:, 1:-2]):
        assert fus.block(X, out=out) is out
        assert_entries_close(out, K, dtype)
    rows = ref.transform(X)
    assert_entries_close(fus.gradient_weights(rows), ref.gradient_weights(rows), dtype)
    if n_rows >= 20:  # the coincident pairs: exactly 1, and no gradient weight (x = z)
        coincident = fus.block(X[:20])[np.arange(20), np.arange(20)]
        np.testing.assert_array_equal(coincident, 1.0)
        if kernel == "laplace":
            weights = fus.gradient_weights(rows[:20])[np.arange(20), np.arange(20)]
            np.testing.assert_array_equal(weights, 0.0)
    gen = np.random.default_rng(5)
    # Loops and BLAS for the products; gradient weights per tile (c d <= 256) and per strip (60 x 5).
    for columns in (1, 3, fused.FEW_COLUMNS + 4, 60):
        V = gen.normal(size=(N_CENTERS, columns)).astype(dtype)
        U = gen.normal(size=(n_rows, columns)).astype(dtype)
        KV = K @ V
        assert_product_close(fused.matvec(fus, X, V), KV, np.abs(K) @ np.abs(V), dtype)
        assert_product_close(fused.rmatvec(fus, X, U), K.T @ U, np.abs(K.T) @ np.abs(U), dtype)
        want = K.T @ KV
        magnitude = np.abs(K.T) @ (np.abs(K) @ np.abs(V))
        assert_product_close(fused.normal_matvec(fus, X, V), want, magnitude, dtype)
        # The AGOP's two gradient GEMMs, in the kernel's dtype and in float32 (the fits' default).
        W = ref.gradient_weights(rows)
        for gemm_dtype in {dtype, np.float32}:
            operand = GradientOperand.build(fus, V, gemm_dtype)
            terms, row_weights = fused.gradient_terms(
                fus, rows, operand.weighted_centers, operand.coef
            )
            Wg = W.astype(gemm_dtype)
            for got, right in ((terms, operand.weighted_centers), (row_weights, operand.coef)):
                assert got.dtype == gemm_dtype
                want = Wg @ right
                assert_product_close(got, want, np.abs(Wg) @ np.abs(right), gemm_dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
def test_operators_agree_across_backends(monkeypatch, dtype, kernel):
    """Every pass of the in-memory operator (several blocks, two threads) and of the Dask operator,
    fused against reference, and the AGOP against the reference path's AGOP.

    In float32 the near-duplicates are 1e-3 apart, not 1e-7: a Laplace gradient at a center 1e-7
    away is a difference of terms ~1e7 (weights ``K / r``), which float32 cannot resolve in either
    path (they then differ by 1e-3 relative, and both from float64 by as much)."""
    import dask
    import dask.array as da

    d = 6
    X, Z = clustered_problem(900, d, dtype, near=1e-7 if dtype == np.float64 else 1e-3)
    M = metric("full", d, dtype)
    gen = np.random.default_rng(6)
    V = gen.normal(size=(N_CENTERS, 2))
    U = gen.normal(size=(900, 2))
    results = {}
    for backend in ("reference", "fused"):
        prepared = prepare_kernel(Z, M, kernel=kernel, bandwidth=2.0, backend=backend)
        blocked = BlockedKernelOperator(X, prepared, block_rows=128, workers=2)
        with dask.config.set(scheduler="threads"):
            lazy = DaskKernelOperator(da.from_array(X, chunks=(250, d)), prepared)
            dask_passes = (lazy.matvec(V), lazy.normal_matvec(V))
        results[backend] = (
            blocked.matvec(V),
            blocked.rmatvec(U),
            blocked.normal_matvec(V),
            blocked.gram(),
            blocked.agop_sum(V, diag=False),
            *dask_passes,
        )
    K = prepare_kernel(Z, M, kernel=kernel, bandwidth=2.0, backend="reference").block(X)
    K = K.astype(np.float64)
    magnitudes = (
        np.abs(K) @ np.abs(V),
        np.abs(K.T) @ np.abs(U),
        np.abs(K.T) @ (np.abs(K) @ np.abs(V)),
        np.abs(K.T) @ np.abs(K),
    )
    for got, want, magnitude in zip(
        results["fused"][:4], results["reference"][:4], magnitudes, strict=True
    ):
        assert_product_close(got, want, magnitude, dtype)
    for got, want, magnitude in zip(
        results["fused"][5:],
        results["reference"][5:],
        magnitudes[:1] + magnitudes[2:3],
        strict=True,
    ):
        assert_product_close(got, want, magnitude, dtype)
    agop_fused, agop_reference = results["fused"][4], results["reference"][4]
    np.testing.assert_allclose(
        agop_fused,
        agop_reference,
        rtol=RTOL[dtype] * 10,
        atol=RTOL[dtype] * 10 * agop_reference.max(),
    )
    # The float64 AGOP by the reference path's array operations: no code of the fused path in it.
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    independent = agop_block_sum(
        X.astype(np.float64),
        Z.astype(np.float64),
        V,
        M.astype(np.float64),
        kernel=kernel,
        bandwidth=2.0,
    )
    np.testing.assert_allclose(agop_fused, independent, rtol=1e-4 if dtype == np.float32 else 1e-9)


def test_backend_choice_and_its_errors(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert kernel_backend() == "fused"
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    assert kernel_backend() == "reference"
    assert prepare_kernel(np.eye(3), np.ones(3)).backend == "reference"
    assert kernel_backend("fused") == "fused"  # an explicit choice wins
    monkeypatch.setenv(BACKEND_ENV_VAR, "keops")
    with pytest.raises(
        ValueError, match=r"RFMDIST_KERNEL_BACKEND in \('fused', 'reference'\), found 'keops'"
    ):
        prepare_kernel(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match=r"backend in .*found 'numexpr'"):
        kernel_backend("numexpr")


IMPORT_FUSED_ALONE = textwrap.dedent(
    """
    import json, sys, types

    # The package without its __init__ (which imports the estimators, and with them every module).
    package = types.ModuleType("rfmdist")
    package.__path__ = [sys.argv[1]]
    sys.modules["rfmdist"] = package
    import rfmdist.fused

    print(json.dumps(sorted(name for name in sys.modules if name.startswith("rfmdist"))))
    """
)


def test_fused_imports_nothing_of_the_kernels_module():
    """rfmdist.fused depends on rfmdist.distances, not on rfmdist.kernels (which imports fused): in
    a fresh interpreter, importing it loads no rfmdist.kernels, and importing either first works."""
    package = Path(fused.__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_FUSED_ALONE, str(package)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert {"rfmdist.fused", "rfmdist.distances"} <= loaded
    assert "rfmdist.kernels" not in loaded, sorted(loaded)
    for first in ("rfmdist.fused", "rfmdist.kernels"):
        subprocess.run([sys.executable, "-c", f"import {first}"], cwd=package.parent, check=True)


def test_tiles_follow_the_cache(monkeypatch, tmp_path):
    size = tmp_path / "size"
    size.write_text("1024K\n")
    monkeypatch.setattr(fused.memory, "L2_CACHE_FILE", str(size))
    fused.memory.l2_cache_bytes.cache_clear()
    try:
        assert fused.memory.l2_cache_bytes() == 2**20
        assert fused.memory.tile_bytes() == 2**19
        assert fused.tile_shape(5000, 8) == (256, 256)
        monkeypatch.setattr(fused.memory, "L2_CACHE_FILE", str(tmp_path / "missing"))
        fused.memory.l2_cache_bytes.cache_clear()
        assert fused.memory.l2_cache_bytes() == fused.memory.DEFAULT_L2_BYTES
    finally:
        fused.memory.l2_cache_bytes.cache_clear()


@pytest.mark.parametrize("centers", [None, 120], ids=["exact", "nystrom"])
def test_whole_fit_equals_the_reference_fit(shared_data, monkeypatch, centers):
    """A fit on real data (UCI "steel-plates": 1,941 rows, 27 features, 7 classes) with the
    fused passes equals the reference-path fit: predictions' scores and the feature matrix to 1e-8."""
    data = load_uci121("steel-plates", shared_data)
    train, test = data.folds[0]
    fits = {}
    for backend in ("reference", "fused"):
        monkeypatch.setenv(BACKEND_ENV_VAR, backend)
        model = RFMClassifier(iters=3, centers=centers, solver="direct", random_state=0)
        model.fit(data.X[train], data.y[train])
        fits[backend] = (model.decision_function(data.X[test]), model.M_, model.best_iter_)
    (score_f, M_f, best_f), (score_r, M_r, best_r) = fits["fused"], fits["reference"]
    assert best_f == best_r
    np.testing.assert_allclose(M_f, M_r, rtol=1e-8, atol=1e-8 * np.abs(M_r).max())
    np.testing.assert_allclose(score_f, score_r, rtol=1e-8, atol=1e-8 * np.abs(score_r).max())
