"""Test score and fit time against the number of Nyström centers: the evidence for ``centers='auto'``.

One command, one table::

    python benchmarks/centers_curve.py [--sets planted:200000,p:1203_BNG_pwLinear,p:sleep,p:fars]
        [--centers 500,1000,2000,4000,auto] [--jsonl benchmarks/out/large_centers.jsonl]
    python benchmarks/centers_curve.py --from-jsonl benchmarks/out/large_centers.jsonl

Each set is fitted in this process by ``RFMRegressor`` / ``RFMClassifier`` with every default but
``centers`` (a count, or ``'auto'``: the rule of :mod:`rfmdist.sizing`), with the validation rows
as ``eval_set``, and scored once on its test rows (MSE or accuracy). Sets: ``planted:N`` (y = x0 x1
+ 0.1 noise on N x 20 normal features; N / 10 validation and 20,000 test rows from other seeds) and
``p:<name>``, a large PMLB set of ``../shared/data/pmlb`` split 70 / 9 / 21 % (seeded, uncapped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import product_task, table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pmlb"
DEFAULT_SETS = "planted:200000,p:1203_BNG_pwLinear,p:sleep,p:fars"
CLASSIFICATION = {"sleep", "fars", "kddcup"}


def load(name: str) -> tuple[Any, ...]:
    """(X, y, X_val, y_val, X_test, y_test, task) of set ``name``."""
    from benchmarks.datasets.grinsztajn import split_grinsztajn

    if name.startswith("planted:"):
        n = int(name.split(":")[1])
        X, y = product_task(n, 20, seed=0)
        X_val, y_val = product_task(n // 10, 20, seed=1)
        X_test, y_test = product_task(20_000, 20, seed=2)
        return X, y, X_val, y_val, X_test, y_test, "regression"
    frame = pd.read_csv(DATA / f"{name[2:]}.tsv.gz", sep="\t")
    X = frame.drop(columns="target").to_numpy(float)
    y = frame["target"].to_numpy()
    task = "classification" if name[2:] in CLASSIFICATION else "regression"
    train, val, test = split_grinsztajn(len(X), seed=0, max_train=10**9)
    return X[train], y[train], X[val], y[val], X[test], y[test], task


def one_fit(name: str, data: tuple[Any, ...], centers: int | str) -> dict[str, Any]:
    from rfmdist import RFMClassifier, RFMRegressor

    X, y, X_val, y_val, X_test, y_test, task = data
    cls = RFMClassifier if task == "classification" else RFMRegressor
    est = cls(centers=centers, random_state=0)
    started = time.perf_counter()
    est.fit(X, y, eval_set=(X_val, y_val))
    seconds = time.perf_counter() - started
    pred = est.predict(X_test)
    score = np.mean(pred == y_test) if task == "classification" else np.mean((pred - y_test) ** 2)
    return {
        "set": name, "n": len(X), "d": X.shape[1], "m": centers,
        "m_used": est.history_[0]["n_centers"], "seconds": round(seconds, 1),
        "test": float(score), "best": est.best_iter_, "rounds": len(est.history_),
        "solvers": [h["solver"] for h in est.history_],
        "round_s": [round(h["seconds"], 1) for h in est.history_],
    }  # fmt: skip


def curve_table(rows: list[dict[str, Any]]) -> str:
    columns = [*sorted({r["m"] for r in rows if r["m"] != "auto"}), "auto"]
    body = []
    for name in dict.fromkeys(r["set"] for r in rows):
        by_m = {r["m"]: r for r in rows if r["set"] == name}
        first = next(iter(by_m.values()))
        metric = "accuracy" if name[2:] in CLASSIFICATION else "MSE"
        cells = []
        for m in columns:
            r = by_m.get(m)
            text = "-" if r is None else f"{r['test']:.4g} in {r['seconds']:.0f} s"
            cells.append(text if m != "auto" or r is None else f"m = {r['m_used']:,}: {text}")
        body.append([f"{name} ({first['n']:,} × {first['d']})", f"test {metric}", *cells])
    header = [
        "set (train rows × features)",
        "score",
        *[f"m = {m:,}" for m in columns[:-1]],
        "'auto'",
    ]
    return table(header, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=DEFAULT_SETS)
    parser.add_argument("--centers", default="500,1000,2000,4000,auto")
    parser.add_argument("--jsonl", default=None, help="Append each fit's record here.")
    parser.add_argument("--from-jsonl", default=None, help="Print the table of a --jsonl file.")
    args = parser.parse_args(argv)
    if args.from_jsonl:
        rows = [json.loads(line) for line in Path(args.from_jsonl).read_text().splitlines()]
        print(curve_table(rows))
        return 0
    rows = []
    for name in args.sets.split(","):
        data = load(name)
        for text in args.centers.split(","):
            rows.append(one_fit(name, data, text if text == "auto" else int(text)))
            print(json.dumps(rows[-1]), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as out:
                    out.write(json.dumps(rows[-1]) + "\n")
    print(curve_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
