"""End to end: the UCI-121 runner on 3 tiny sets writes its CSV and its RESULTS.md section."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import uci121 as runner

SETS = ["acute-inflammation", "iris", "fertility"]


def test_runner_three_small_sets(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n<!-- other:begin -->\nkeep me\n<!-- other:end -->\n")
    start = time.perf_counter()
    status = runner.main(
        [
            "--sets",
            ",".join(SETS),
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--results-md",
            str(md),
            "--rf-trees",
            "50",
        ]
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"the 3-set run took {elapsed:.0f} s"
    frame = pd.read_csv(out, keep_default_na=False)
    for col in runner.CSV_COLUMNS:
        assert col in frame.columns, col
    assert status == 0, frame[["dataset", "method", "error"]]
    assert frame["dataset"].drop_duplicates().tolist() == SETS
    methods = (*runner.METHODS, runner.DEFAULTS_METHOD)
    assert len(frame) == len(SETS) * len(methods)
    assert set(frame["method"]) == set(methods)
    for row in frame.itertuples():
        params = json.loads(row.chosen_params)
        folds = json.loads(row.test_acc_folds)
        assert len(folds) == 4 and all(0 <= a <= 1 for a in folds)
        assert abs(sum(folds) / 4 - float(row.test_acc_mean)) < 1e-5
        assert float(row.seconds) >= 0
        if row.method == runner.DEFAULTS_METHOD:  # no grid: nothing chosen on validation
            assert params == {} and row.val_acc == ""
            continue
        assert 0 <= float(row.val_acc) <= 1
        if row.method in ("rfm", "laplace"):
            assert params["reg"] in runner.REGS
            assert 0 <= params["iters"] <= runner.MAX_ROUNDS
        if row.method == "laplace":
            assert params["iters"] == 0
    acute = frame[frame["dataset"].eq("acute-inflammation")]
    assert acute["test_acc_mean"].astype(float).max() > 0.9
    text = md.read_text()
    assert "keep me" in text
    assert text.count("<!-- uci121:begin -->") == 1 and "<!-- uci121:end -->" in text
    assert "os.cpu_count" in text and "benchmarks/uci121.py --sets" in text
    assert "The estimators' defaults (`rfm_defaults`" in text
    assert "Skipped" not in text
    # a second run replaces the section; iris (n = 150) is above --max-n: skipped and listed
    argv = [
        "--sets",
        "fertility,iris",
        "--max-n",
        "140",
        "--data-root",
        str(root),
        "--rf-trees",
        "50",
    ]
    assert runner.main([*argv, "--out", str(out), "--results-md", str(md)]) == 0
    assert set(pd.read_csv(out)["dataset"]) == {"fertility"}
    text = md.read_text()
    assert text.count("<!-- uci121:begin -->") == 1 and "keep me" in text
    assert "Skipped (n > 140): iris" in text


def test_summary_counts_ties_for_each() -> None:
    table = pd.DataFrame(
        {
            "dataset": ["a", "a", "b", "b"],
            "method": ["x", "y", "x", "y"],
            "acc": [0.9, 0.9, 0.5, 0.7],
        }
    )
    out = runner.summarize(table, "acc", ["x", "y"])
    assert out.loc["x", "wins"] == 1 and out.loc["y", "wins"] == 2
    assert out.loc["x", "mean_rank"] == pytest.approx(1.75)
    assert out.loc["y", "mean_rank"] == pytest.approx(1.25)
    assert out.loc["y", "mean"] == pytest.approx(0.8)
