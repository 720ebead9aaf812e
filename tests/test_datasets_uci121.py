"""The UCI-121 loader reads every set of the shared data with the documented shapes and splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import default_data_root, resolve_data_root
from benchmarks.datasets.uci121 import (
    UCISet,
    list_uci121,
    load_uci121,
    read_uci121_meta,
    read_uci121_summary,
)


@pytest.fixture(scope="module")
def all_sets(root: Path) -> dict[str, UCISet]:
    """Every set, parsed once for the module."""
    return {name: load_uci121(name, root) for name in list_uci121(root)}


def test_list_has_120_sets(root: Path) -> None:
    names = list_uci121(root)
    assert len(names) == 120
    assert len(set(names)) == 120
    assert "iris" in names and "miniboone" not in names


def test_every_set_matches_summary(root: Path, all_sets: dict[str, UCISet]) -> None:
    summary = read_uci121_summary(root)
    assert set(all_sets) == set(summary.index)
    for name, ds in all_sets.items():
        row = summary.loc[name]
        assert ds.X.dtype == np.float64 and ds.X.ndim == 2, name
        assert ds.y.dtype == np.int64 and ds.y.shape == (ds.n,), name
        assert ds.d == row["d"], name
        assert ds.n_classes == row["classes"], name
        assert ds.n_total == row["n"], name
        assert ds.has_test_file == row["has_test_file"], name
        if row["has_test_file"]:
            meta = read_uci121_meta(name, root)
            assert ds.n == int(meta["n_patrons1"]), name
            assert ds.n + int(meta["n_patrons2"]) == row["n"], name
        else:
            assert ds.n == row["n"], name
        assert ds.y.min() >= 0 and ds.y.max() < ds.n_classes, name
        assert np.isfinite(ds.X).all(), name


def test_every_split_and_fold(all_sets: dict[str, UCISet]) -> None:
    for name, ds in all_sets.items():
        for idx in (ds.train_idx, ds.val_idx):
            assert idx.dtype == np.int64 and idx.size > 0, name
            assert idx.min() >= 0 and idx.max() < ds.n, name
        assert np.intersect1d(ds.train_idx, ds.val_idx).size == 0, name
        assert len(ds.folds) == 4, name
        for k, (tr, te) in enumerate(ds.folds):
            assert tr.size > 0 and te.size > 0, (name, k)
            assert tr.min() >= 0 and tr.max() < ds.n, (name, k)
            assert te.min() >= 0 and te.max() < ds.n, (name, k)
            assert np.intersect1d(tr, te).size == 0, (name, k)
            assert np.unique(tr).size == tr.size and np.unique(te).size == te.size, (name, k)


def test_iris_values(all_sets: dict[str, UCISet]) -> None:
    iris = all_sets["iris"]
    assert (iris.n, iris.d, iris.n_classes) == (150, 4, 3)
    np.testing.assert_allclose(iris.X[0], [-0.897674, 1.02861, -1.33679, -1.30859])
    assert iris.y[0] == 0
    assert iris.train_idx[:3].tolist() == [46, 21, 13]
    assert [len(tr) for tr, _ in iris.folds] == [113] * 4


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Data root not found.*Fix"):
        resolve_data_root(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"uci121.*Fix"):
        list_uci121(tmp_path)


def test_unknown_set_is_a_clear_error(root: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean iris"):
        load_uci121("irsi", root)


def test_env_var_sets_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RFMDIST_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("RFMDIST_DATA")
    assert default_data_root().parts[-2:] == ("shared", "data")
