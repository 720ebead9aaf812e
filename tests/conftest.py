"""Shared fixtures: random generators, the real-data root and small synthetic tasks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ (with its loaders) is a package of the checkout only
    sys.path.insert(0, str(REPO))


def data_root() -> Path:
    """The shared real data (``RFMDIST_DATA`` or ``../shared/data`` beside the repository)."""
    return Path(os.environ.get("RFMDIST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.fail(
            f"Expected the shared real data at {root}, found nothing; set RFMDIST_DATA to the "
            "folder that holds uci121/, grinsztajn/ and pmlb/."
        )
    return root


def product_task(n: int, d: int, seed: int, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The planted feature-learning task ``y = x0 * x1 + noise`` on standard normal inputs."""
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, d))
    y = X[:, 0] * X[:, 1] + noise * gen.normal(size=n)
    return X, y


@pytest.fixture(scope="session")
def root(shared_data: Path) -> Path:
    """``shared_data`` by the name the dataset and benchmark tests take it (fails, never skips)."""
    return shared_data
