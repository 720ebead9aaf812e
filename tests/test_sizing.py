"""The large-n defaults: the 'auto' centers rule against a brute-force reading of its definition, its
use by fits (logged, stored, kept on resume) and a small end-to-end fit through the CLI with it."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import product_task

import rfmdist
from rfmdist import RFMRegressor, sizing
from rfmdist.cli.main import main
from rfmdist.sizing import auto_centers, work_budget

GIB = 2**30


def _largest_within_budget(n: int, d: int, cores: int) -> int:
    """The definition read literally: the most centers whose passes, n m (m + d), fit the budget."""
    budget = work_budget(cores)
    m = 1
    step = 2**20
    while step:  # binary search on the monotone cost
        if n * (m + step) * (m + step + d) <= budget:
            m += step
        step //= 2
    return m


def _two_digits_down(m: int) -> int:
    digits = max(0, int(math.log10(m)) - 1)
    return m // 10**digits * 10**digits


@pytest.mark.parametrize("n", [20_001, 30_000, 200_000, 494_020, 1_000_000])
@pytest.mark.parametrize("cores", [2, 16])
def test_work_bound_is_the_most_centers_within_the_budget(n, cores):
    choice = auto_centers(n, 20, cores, client_bytes=10**15)
    if n**3 / 3 <= work_budget(cores):
        assert choice.n_centers is None and choice.bound == "exact"
        return
    expected = _largest_within_budget(n, 20, cores)
    assert expected >= math.sqrt(n)  # these sizes are left of the sqrt(n) crossing
    assert choice.bound == "work"
    assert choice.n_centers == _two_digits_down(expected)
    assert n * choice.n_centers * (choice.n_centers + 20) <= work_budget(cores)


def test_exact_up_to_the_reference_rows_on_the_reference_cores():
    assert auto_centers(20_000, 20, 2, client_bytes=16 * GIB).n_centers is None
    assert auto_centers(20_001, 20, 2, client_bytes=16 * GIB).n_centers == 11_000
    # More cores, a larger exact system (while its two n x n arrays fit memory) ...
    assert auto_centers(30_000, 20, 16, client_bytes=16 * GIB).n_centers is None
    # ... and without the memory for them, the most centers the client's memory allows.
    small = auto_centers(30_000, 20, 16, client_bytes=2 * GIB)
    assert small.bound == "memory"
    assert sizing.CLIENT_SQUARES * small.n_centers**2 * 8 <= 2 * GIB


def test_never_fewer_than_sqrt_n_centers():
    for n in (2 * 10**6, 10**7, 10**8):
        choice = auto_centers(n, 20, 2, client_bytes=10**15)
        assert choice.bound == "sqrt(n)"
        assert choice.n_centers == _two_digits_down(math.isqrt(n - 1) + 1)
        assert choice.n_centers >= 0.9 * math.sqrt(n)


def test_centers_never_shrink_with_more_cores_or_memory():
    for n in (50_000, 500_000, 5_000_000):
        counts = [auto_centers(n, 30, cores, 8 * GIB).n_centers for cores in (1, 2, 4, 8, 64)]
        assert counts == sorted(counts)
        by_memory = [auto_centers(n, 30, 8, b * GIB).n_centers for b in (0.1, 1, 8)]
        assert by_memory == sorted(by_memory)


def test_a_gpu_counts_as_the_reference_cores_its_measured_rate_is_worth():
    """An H200's float64 GEMM (~51 TFLOP/s against the reference machine's 90 GFLOP/s on 2 cores)
    counts as ~1,100 cores: a round costs what it costs on the reference machine. On 300,000 rows
    that buys all the centers the GPU's memory holds (the first GPU run's 'auto' counted the GPU as
    one host core: 8,400 centers), and the exact system up to the rows whose two n x n arrays fit."""
    h200 = sizing.gpu_capacity(1, 51e12, "float64")
    assert (
        h200.cores == 1100 and "51.0 TFLOP/s" in h200.what and "1,100 reference cores" in h200.what
    )
    assert sizing.gpu_capacity(4, 51e12, "float64").cores == 4500  # 4,533 to two digits
    gpu_memory = 70 * 10**9  # half of an H200's 141 GB
    choice = auto_centers(300_000, 20, h200, client_bytes=gpu_memory)
    assert choice.bound == "memory" and choice.n_centers > 8_400
    assert sizing.CLIENT_SQUARES * choice.n_centers**2 * 8 <= gpu_memory
    assert h200.what in choice.describe(300_000)
    exact = auto_centers(60_000, 20, h200, client_bytes=gpu_memory)
    assert exact.n_centers is None and h200.what in exact.describe(60_000)
    assert auto_centers(70_000, 20, h200, client_bytes=gpu_memory).n_centers is not None
    # Counted as cores, the GPU gets what that many CPU cores would.
    as_cores = auto_centers(300_000, 20, 1100, client_bytes=gpu_memory)
    assert (as_cores.n_centers, as_cores.bound) == (choice.n_centers, choice.bound)
    assert sizing.fit_capacity("cpu", np.float64) == sizing.cpu_capacity(sizing.local_cores())


def test_a_fit_uses_logs_and_stores_the_rule(monkeypatch, caplog, tmp_path):
    # A smaller reference so that 2,000 rows take Nyström centers (the rule is the same).
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 300)
    X, y = product_task(2_000, 6, seed=1)
    with caplog.at_level(logging.INFO, logger="rfmdist"):
        est = RFMRegressor(iters=1, random_state=0).fit(X, y, store=str(tmp_path / "m.zarr"))
    rounds_rows = 2_000 - 200  # the internal validation split holds out 10 %
    choice = auto_centers(rounds_rows, 6, sizing.local_cores(), 10**15)
    assert choice.bound == "work"
    assert est.history_[0]["n_centers"] == choice.n_centers
    assert f"centers='auto': {choice.n_centers:,} Nyström centers" in caplog.text
    assert rfmdist.load(tmp_path / "m.zarr").centers_.shape[0] == choice.n_centers


def test_a_resumed_fit_keeps_its_stored_centers(monkeypatch, tmp_path):
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 300)
    X, y = product_task(1_500, 6, seed=2)
    params = {"iters": 2, "random_state": 0, "n_iter_no_change": None}
    reference = RFMRegressor(**params).fit(X, y)
    path = str(tmp_path / "m.zarr")
    RFMRegressor(**params).fit(X, y, store=path, callback=lambda outcome: outcome.round == 0)
    # The rule would now give other centers: the resumed run keeps the stored ones.
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 400)
    assert (
        auto_centers(1_500, 6, sizing.local_cores(), 10**15).n_centers
        != reference.centers_.shape[0]
    )
    resumed = RFMRegressor(**params).fit(X, y, store=path, resume=True)
    assert resumed.centers_.shape == reference.centers_.shape
    np.testing.assert_allclose(resumed.M_, reference.M_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(resumed.predict(X), reference.predict(X), rtol=1e-6, atol=1e-9)


def test_cli_fit_with_the_large_n_defaults(monkeypatch, tmp_path: Path, caplog, capsys):
    """The whole command with its defaults on a real local cluster: chunks and centers from the
    rule, logged at the start, and a model that learned the planted task."""
    monkeypatch.setattr(sizing, "REFERENCE_EXACT_ROWS", 400)
    X, y = product_task(4_000, 8, seed=3)
    X_test, y_test = product_task(1_000, 8, seed=4)
    np.savez(tmp_path / "train.npz", X=X, y=y)
    out = tmp_path / "model.zarr"
    with caplog.at_level(logging.INFO, logger="rfmdist"):
        code = main(["fit", "--train", str(tmp_path / "train.npz"), "--out", str(out),
                     "--workers", "2", "--threads-per-worker", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    choice = auto_centers(3_600, 8, 2, 10**15)  # 2 workers x 1 thread; 10 % held out
    assert choice.bound == "work"
    assert f"centers='auto': {choice.n_centers:,} Nyström centers of 3,600 rows" in caplog.text
    assert (
        "row chunks of" in caplog.text and "AGOP on 3,600 rows a round" in caplog.text
    )  # all of them: fewer than 5,000
    model = rfmdist.load(out)
    assert model.history_[0]["n_centers"] == choice.n_centers
    mse = float(np.mean((model.predict(X_test) - y_test) ** 2))
    assert mse < 0.25 * float(np.var(y_test))  # learned x0 * x1, not the mean


def test_nystrom_training_score_on_an_even_stride_of_rows(monkeypatch):
    """A Nyström round scores training rows at an even stride instead of a pass over all of them:
    the recorded score is the metric of the model's own predictions on exactly those rows."""
    from rfmdist import training

    monkeypatch.setattr(training, "TRAIN_SCORE_ROWS", 100)
    X, y = product_task(1_000, 5, seed=5)
    est = RFMRegressor(iters=0, centers=50, n_iter_no_change=None, random_state=0).fit(X, y)
    record = est.history_[0]
    rows = np.unique(np.linspace(0, 999, 100).astype(np.int64))
    assert record["train_score_rows"] == len(rows) == 100
    mse = float(np.mean((est.predict(X[rows]) - y[rows]) ** 2))
    assert record["train_score"] == pytest.approx(mse, rel=1e-8)
