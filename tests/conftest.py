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


def as_format_2(path: Path | str, version: int = 2) -> None:
    """Rewrite a store in the layout of formats 1 and 2, as those versions wrote it: every round's
    ``M`` dense (identity included) in one ``history/M`` array of shape (R, d, d) or (R, d), one
    chunk per round, and ``M`` a plain (d, d) or (d,) array."""
    import zarr

    from rfmdist.store.metrics import read_metric

    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs)
    d, diag = int(attrs["data"]["d"]), bool(attrs["params"].get("diag"))
    names = sorted(group["history/M"].array_keys(), key=int)
    dense = [_dense(group, f"history/M/{name}", d, diag, read_metric) for name in names]
    best = _dense(group, "M", d, diag, read_metric) if "M" in group else None
    del group["history/M"]
    stacked = np.stack(dense)
    group.create_array("history/M", data=stacked, chunks=(1, *stacked.shape[1:]), overwrite=True)
    if best is not None:
        group.create_array("M", data=best, overwrite=True)
    group.update_attributes({"format_version": version})


def _dense(group, name, d, diag, read_metric) -> np.ndarray:
    from rfmdist.store.location import store_location

    metric = read_metric(group, name, store_location("old.zarr"), d=d, diag=diag, max_rank=10**6)
    return metric.dense()
