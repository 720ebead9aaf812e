"""The Grinsztajn loader reads every file of the shared data; the split and scaling helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets.grinsztajn import (
    TabularSet,
    list_grinsztajn,
    load_grinsztajn,
    read_grinsztajn_summary,
    split_grinsztajn,
    standardize,
    standardize_target,
)


@pytest.fixture(scope="module")
def all_sets(root: Path) -> dict[str, TabularSet]:
    """Every set, parsed once for the module (the 39 gzip CSVs: the slow part of these
    tests)."""
    return {name: load_grinsztajn(name, root) for name in list_grinsztajn(root)}


def test_every_file_matches_summary(root: Path, all_sets: dict[str, TabularSet]) -> None:
    summary = read_grinsztajn_summary(root)
    assert len(all_sets) == len(summary) == 39
    for name, ds in all_sets.items():
        row = summary.loc[name]
        assert ds.X.dtype == np.float64 and ds.X.shape == (row["n"], row["d"]), name
        assert ds.y.shape == (row["n"],), name
        assert ds.target == row["target_col"], name
        assert ds.target not in ds.feature_names and len(ds.feature_names) == ds.d, name
        assert np.isfinite(ds.X).all(), name
        if name.startswith("clf_"):
            assert ds.task == "classification", name
            assert ds.y.dtype == np.int64, name
            k = len(ds.classes)
            assert k >= 2 and set(np.unique(ds.y)) == set(range(k)), name
        else:
            assert ds.task == "regression" and ds.classes is None, name
            assert ds.y.dtype == np.float64 and np.isfinite(ds.y).all(), name


def test_string_labels_are_encoded(all_sets: dict[str, TabularSet]) -> None:
    ds = all_sets["clf_num/electricity"]
    assert ds.classes.tolist() == ["DOWN", "UP"]
    assert ds.encoded_columns == ()


def test_name_suffix_accepted(root: Path) -> None:
    assert load_grinsztajn("reg_num/abalone.csv.gz", root).name == "reg_num/abalone"
    with pytest.raises(ValueError, match="reg_num/abalone"):
        load_grinsztajn("reg_num/abalon", root)


@pytest.mark.parametrize("n", [3, 10, 4177, 14_000, 53_940])
def test_split(n: int) -> None:
    tr, va, te = split_grinsztajn(n, seed=0)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(n))
    assert min(len(tr), len(va), len(te)) >= 1
    assert len(tr) <= 10_000
    if 100 < n <= 14_000:
        assert abs(len(tr) / n - 0.7) < 0.01
        assert abs(len(va) / n - 0.09) < 0.01
    again = split_grinsztajn(n, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    if n > 10:
        assert not np.array_equal(tr, split_grinsztajn(n, seed=1)[0])


def test_standardize_uses_train_only() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(50, 3))
    X[:, 2] = 1.0
    train = np.arange(30)
    Xs, _mean, scale = standardize(X, train)
    np.testing.assert_allclose(Xs[train].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Xs[train, :2].std(axis=0), 1)
    assert np.all(Xs[:, 2] == 0) and scale[2] == 1
    y = rng.normal(5, 3, size=50)
    ys, ym, ysd = standardize_target(y, train)
    assert ym == pytest.approx(y[:30].mean()) and ysd == pytest.approx(y[:30].std())
    np.testing.assert_allclose(ys * ysd + ym, y)
