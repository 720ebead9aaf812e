"""Feature recovery of a planted single-index target (the x0 * x1 case is in test_estimators.py)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from rfmdist import RFMRegressor


def test_top_eigenvector_recovers_single_index_direction():
    """y = (u . x)^3, random unit u, d = 20, n = 2000, 3 rounds: the top eigenvector of M_ has
    |cos| >= 0.95 with u, and M_ concentrates on u (top eigenvalue dominates the rest)."""
    gen = np.random.default_rng(0)
    d, n = 20, 2000
    u = gen.normal(size=d)
    u /= np.linalg.norm(u)
    X = gen.normal(size=(n, d))
    y = (X @ u) ** 3 + 0.01 * gen.normal(size=n)
    with threadpool_limits(limits=1):
        model = RFMRegressor(iters=3, random_state=0, dtype="float64").fit(X, y)
    evals, evecs = np.linalg.eigh(model.M_)
    cos = abs(float(evecs[:, -1] @ u))
    assert cos >= 0.95, cos
    assert evals[-1] >= 10 * evals[-2], evals[-3:]
    # round 0 is the plain kernel (M = I); later rounds move M towards u u^T
    assert np.allclose(model.M_history_[0], np.eye(d))
    assert len(model.M_history_) == 4
