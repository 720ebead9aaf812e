"""The shared benchmark runner through the Grinsztajn plug-in: one small real set, 100 training
rows, checked against a random forest fitted here on the same split and grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_squared_error

from benchmarks import grinsztajn
from benchmarks.datasets.grinsztajn import (
    load_grinsztajn,
    split_grinsztajn,
    standardize,
    standardize_target,
)
from benchmarks.runner import DEFAULTS_METHOD, METHODS, RF_GRID

SET = "reg_cat/analcatdata_supreme"  # 4,052 rows, 7 features
SKIPPED = "clf_cat/compas-two-years"  # 4,966 rows: above --max-n 4100


@pytest.fixture(scope="module")
def run(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    """One run of the Grinsztajn benchmark on SET (SKIPPED is skipped by --max-n)."""
    folder = tmp_path_factory.mktemp("grinsztajn")
    out, md = folder / "results.csv", folder / "RESULTS.md"
    argv = ["--sets", f"{SET},{SKIPPED}", "--max-n", "4100", "--max-train", "100"]
    argv += ["--rf-trees", "10", "--data-root", str(root), "--out", str(out)]
    return grinsztajn.main([*argv, "--results-md", str(md)]), out, md


def test_rows_columns_and_section(run: tuple[int, Path, Path]) -> None:
    status, out, md = run
    frame = pd.read_csv(out, keep_default_na=False)
    assert status == 0, frame[["method", "error"]]
    assert list(frame.columns) == list(grinsztajn.CSV_COLUMNS)
    assert frame["method"].tolist() == [*METHODS, DEFAULTS_METHOD]
    assert set(frame["dataset"]) == {SET} and set(frame["n_train"]) == {100}
    assert set(frame["val_metric"]) == {"mse"} and set(frame["test_metric"]) == {"r2"}
    for row in frame.itertuples():
        params = json.loads(row.chosen_params)
        assert float(row.val_score) >= 0 and float(row.test_score) <= 1, row
        if row.method == "laplace":
            assert params["iters"] == 0
        if row.method == DEFAULTS_METHOD:
            assert params == {}
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert "stopped" not in meta and meta["max_train"] == 100 and meta["skipped"] == {SKIPPED: 4966}
    text = md.read_text()
    assert text.count("<!-- grinsztajn:begin -->") == 1 and "<!-- grinsztajn:end -->" in text
    assert "regression, test R² (1 sets where every method ran)" in text
    assert f"Skipped (n > 4100): {SKIPPED}" in text and "--max-train 100" in text


def test_random_forest_row_matches_a_direct_fit(root: Path, run: tuple[int, Path, Path]) -> None:
    """The chosen max_features is the best of RF_GRID on validation MSE, and its test R² is that
    of the same forest fitted here (same split, scaling and seed)."""
    _, out, _ = run
    row = pd.read_csv(out).set_index("method").loc["random_forest"]
    ds = load_grinsztajn(SET, root)
    train, val, test = split_grinsztajn(ds.n, seed=0, max_train=100)
    X, _, _ = standardize(ds.X, train)
    y = standardize_target(ds.y, train)[0]
    fits = [
        RandomForestRegressor(n_estimators=10, n_jobs=1, random_state=0, **p).fit(
            X[train], y[train]
        )
        for p in RF_GRID
    ]
    mse = [mean_squared_error(y[val], est.predict(X[val])) for est in fits]
    best = int(np.argmin(mse))
    assert json.loads(row["chosen_params"]) == RF_GRID[best]
    assert row["val_score"] == pytest.approx(mse[best], rel=1e-12)
    assert row["test_score"] == pytest.approx(fits[best].score(X[test], y[test]), rel=1e-12)


def test_merge_regenerates_the_section(root: Path, run: tuple[int, Path, Path]) -> None:
    _, out, md = run
    merged = md.with_name("MERGED.md")
    argv = ["--merge", str(out), "--data-root", str(root), "--results-md", str(merged)]
    assert grinsztajn.main(argv) == 0
    text = merged.read_text()
    assert "from 1 run(s)" in text and f"| {SKIPPED} | n = 4966 > --max-n 4100 in run 1" in text
    per_set = md.read_text().split("### Test score per set")[1].split("Skipped")[0]
    assert per_set.strip() in text
