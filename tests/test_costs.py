"""The solver cost model: it picks the solver its own estimates say is cheapest within the memory
budget, records the choice in ``history_``, and its calibration measures this machine."""

from __future__ import annotations

import numpy as np
import pytest

from rfmdist import RFMRegressor
from rfmdist.solvers import costs

RATES = costs.Rates(
    gemm={"float32": 2e11, "float64": 1e11},
    cholesky={"float32": 1.4e11, "float64": 7e10},
    entry={"float64": 5e-9, "float32": 2.5e-9},
    stream=3e10,
)


def problem(n: int, m: int | None = None, *, cache_bytes: int = 2**34, c: int = 1) -> costs.Problem:
    return costs.Problem(
        n=n,
        m=n if m is None else m,
        d=20,
        c=c,
        exact=m is None,
        dtype="float64",
        cache_bytes=cache_bytes,
    )


@pytest.mark.parametrize(
    ("size", "memory", "expected"),
    [
        # 8,000 rows: the float32 factor (0.9 s less than float64) beats ~60 CG passes
        (problem(8_000), 2**34, "mixed"),
        # 60,000 rows: an n^3 factorisation (1.5e13 flops) loses to 60 streamed passes
        (problem(60_000, cache_bytes=2**35), 2**36, "pcg"),
        # 8,000 rows but memory for neither n x n factorisation: PCG
        (problem(8_000), 2**29, "pcg"),
        # Nystrom, 300 centers: the m x m system costs nothing; direct needs no iterations
        (problem(50_000, 300), 2**34, "direct"),
        # Nystrom, 20,000 centers on 200,000 rows: the Gram pass (1.6e14 flops) loses to PCG
        (problem(200_000, 20_000, cache_bytes=0), 2**35, "pcg"),
    ],
)
def test_the_choice_is_the_cheapest_estimate_that_fits(size, memory, expected):
    choice = costs.choose(size, RATES, iterations=60, memory_bytes=memory)
    fitting = [e for e in choice.estimates if e.bytes <= memory]
    if fitting:
        assert choice.solver == min(fitting, key=lambda e: e.seconds).solver
    assert choice.solver == expected, choice.record()
    record = choice.record()
    assert record["chosen"] == expected and set(record["estimates"]) >= {"direct", "pcg"}


def test_more_iterations_make_pcg_lose():
    size = problem(20_000)
    few = costs.choose(size, RATES, iterations=10, memory_bytes=2**35)
    many = costs.choose(size, RATES, iterations=2_000, memory_bytes=2**35)
    assert few.solver == "pcg" and many.solver in ("mixed", "direct")


def test_calibration_measures_positive_rates():
    rates = costs.measured_rates("cpu", 1, "float64")
    for value in (
        *rates.gemm.values(),
        *rates.cholesky.values(),
        rates.entry["float64"],
        rates.stream,
    ):
        assert np.isfinite(value) and value > 0
    assert rates.gemm["float32"] > 0.5 * rates.gemm["float64"]


def test_fits_record_the_choice_and_follow_it(rng):
    X = rng.normal(size=(2_500, 6))
    y = X[:, 0] * X[:, 1]
    model = RFMRegressor(iters=1, random_state=0, n_iter_no_change=None).fit(X, y)
    for record in model.history_:
        choice = record["solver_choice"]
        assert record["solver"] == choice["chosen"]
        estimates = choice["estimates"]
        fitting = {
            k: v for k, v in estimates.items() if v["bytes"] <= choice["memory_budget_bytes"]
        }
        assert choice["chosen"] == min(fitting, key=lambda k: fitting[k]["seconds"])
        assert record["solve"]["solver"] == choice["chosen"]
    small = RFMRegressor(iters=0, random_state=0).fit(X[:500], y[:500])
    assert small.history_[0]["solver_choice"]["reason"].startswith("exact system of at most")
    asked = RFMRegressor(iters=0, solver="mixed", random_state=0).fit(X[:500], y[:500])
    assert asked.history_[0]["solver"] == "mixed"
    assert asked.history_[0]["solver_choice"] == {"chosen": "mixed", "reason": "as requested"}


def test_a_float32_fits_float64_passes_are_priced_from_its_measured_entry_cost():
    """A float32 fit measures float32 entries only; its float64 K_mm pass is priced at the float32
    entry cost times the itemsize ratio (this raised KeyError for float32 Nyström fits)."""
    rates = costs.Rates(
        gemm=RATES.gemm, cholesky=RATES.cholesky, entry={"float32": 1e-9}, stream=RATES.stream
    )
    assert rates.entry_seconds("float64") == pytest.approx(2e-9)
    one_pass = rates.pass_seconds(1e6, 4, 0, "float64", cached=False)
    assert one_pass == pytest.approx(1e6 * 2e-9)
