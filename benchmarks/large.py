"""Large-dataset batch jobs end to end: ``rfmdist fit`` with its defaults on a 2-worker local cluster,
against HistGradientBoosting and scikit-learn's Nystroem + Ridge, on the same split in the same run.

One command, one table::

    python benchmarks/large.py [--sets planted,kddcup] [--rows 1000000] [--json out.json]
        [--results-md benchmarks/RESULTS.md]
    python benchmarks/large.py --stream-rows 10000000 [--json out10m.json]   # the 10M-row run

The sets:

``planted``
    ``y = x0 x1 + 0.1 noise`` on ``--rows`` x 20 standard normal features (a 2-dimensional structure
    in 20 dimensions), written to Zarr one 100,000-row chunk at a time (each chunk from its own
    seed, never the whole array in memory); 100,000 test rows from another seed. Score: test MSE
    (the noise alone gives 0.01).
``kddcup``
    The 494,020-row KDD Cup 1999 set of ``../shared/data/pmlb`` (41 features, 23 classes), 80 / 20
    split (seeded); written to Zarr as is. Score: test accuracy.

Methods, each in its own process, one after the other (wall seconds include reading the data):

``rfmdist fit defaults``
    ``rfmdist fit --train train.zarr --out model.zarr --workers 2 --progress off`` and nothing else:
    a local cluster of 2 worker processes (1 thread each), every default. Every ``RFMDIST_*``
    environment variable is removed. The test score is that of the written model.
``HistGradientBoosting``
    scikit-learn's ``HistGradientBoostingRegressor()`` / ``Classifier()`` with its defaults (early
    stopping on 10 % of the rows, as for n > 10,000), on the training rows in memory.
``Nystroem + Ridge``
    ``make_pipeline(StandardScaler(), Nystroem(n_components=m), Ridge())`` (``RidgeClassifier`` for
    classes) with ``m`` = the centers rfmdist chose, scikit-learn's defaults otherwise (RBF kernel,
    gamma = 1 / d, alpha = 1). The features are cast to float32 so that the n x m Nystroem
    features fit memory (in float64 they are 12.8 GB at 1M x 1,600).

Peak RSS: every process of a method (for rfmdist: the client, which also runs the scheduler and the
nannies, and each worker), polled twice a second from ``/proc/<pid>/status`` (``VmHWM``, the
kernel's own high-water mark). Targets (the large-batch issue): the 1M x 20 fit in at most 15
minutes, no process above 1.5 GB, a test MSE at most HistGradientBoosting's; on kddcup, accuracy
within 0.5 points of the better alternative.

``--stream-rows N``: the planted task at N rows (10 million) streamed from Zarr, fitted by the same
command with ``--validation-fraction none --time-budget 1``: exactly one full round (a solve and an
AGOP update) runs with the default centers, chunks and AGOP sample, and the fit stops. The table
gives its measured passes and projects a whole default fit from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import machine_line, run_measured, table, write_text_section

logger = logging.getLogger("benchmarks.large")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pmlb"
CHUNK_ROWS = 100_000
D_PLANTED = 20
TEST_ROWS = 100_000


# --- data ----------------------------------------------------------------------------------------


def planted_chunk(index: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``index`` of the planted task: (rows, 20) features and (rows,) targets."""
    gen = np.random.default_rng([seed, index])
    X = gen.normal(size=(rows, D_PLANTED))
    return X, X[:, 0] * X[:, 1] + 0.1 * gen.normal(size=rows)


def write_planted(path: Path, n: int, seed: int) -> None:
    """The planted task's ``n`` rows as a Zarr group (X, y), written chunk by chunk."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    X = group.create_array("X", shape=(n, D_PLANTED), chunks=(CHUNK_ROWS, D_PLANTED), dtype="f8")
    y = group.create_array("y", shape=(n,), chunks=(CHUNK_ROWS,), dtype="f8")
    for index, start in enumerate(range(0, n, CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, n - start)
        X_chunk, y_chunk = planted_chunk(index, rows, seed)
        X[start : start + rows] = X_chunk
        y[start : start + rows] = y_chunk


def write_kddcup(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """kddcup split 80 / 20: the training rows as Zarr, the test rows as .npz."""
    import pandas as pd
    import zarr

    frame = pd.read_csv(DATA / "kddcup.tsv.gz", sep="\t")
    X = frame.drop(columns="target").to_numpy(np.float64)
    y = frame["target"].to_numpy(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    group = zarr.open_group(str(folder / "train.zarr"), mode="w")
    group.create_array("X", data=X[train], chunks=(CHUNK_ROWS, X.shape[1]))
    group.create_array("y", data=y[train], chunks=(CHUNK_ROWS,))
    np.savez(folder / "test.npz", X=X[test], y=y[test])
    return folder / "train.zarr", folder / "test.npz"


def prepare(name: str, folder: Path, rows: int) -> dict[str, Any]:
    """Write set ``name`` under ``folder``; its paths and task."""
    if name == "planted":
        write_planted(folder / "train.zarr", rows, seed=0)
        X_test, y_test = planted_chunk(0, TEST_ROWS, seed=1)
        np.savez(folder / "test.npz", X=X_test, y=y_test)
        return {"train": folder / "train.zarr", "test": folder / "test.npz", "task": "regression"}
    if name == "kddcup":
        train, test = write_kddcup(folder)
        return {"train": train, "test": test, "task": "classification"}
    raise SystemExit(f"Expected a set among planted, kddcup; found {name!r}.")


def score(task: str, truth: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy (classification) or mean squared error (regression)."""
    if task == "classification":
        return float(np.mean(pred == truth))
    return float(np.mean((pred - truth) ** 2))


# --- the methods ---------------------------------------------------------------------------------


def run_rfmdist(paths: dict[str, Any], folder: Path, extra: list[str]) -> dict[str, Any]:
    """``rfmdist fit`` with its defaults; the written model's test score and record."""
    import rfmdist

    out = folder / "model.zarr"
    command = [
        sys.executable, "-m", "rfmdist.cli", "fit", "--train", str(paths["train"]),
        "--out", str(out), "--workers", "2", "--progress", "off", *extra,
    ]  # fmt: skip
    result = run_measured(command, folder / "rfmdist.log", cwd=REPO)
    if result["code"] != 0:
        tail = "\n".join((folder / "rfmdist.log").read_text().splitlines()[-20:])
        raise SystemExit(f"rfmdist fit failed:\n{tail}")
    model = rfmdist.load(out)
    test = np.load(paths["test"])
    history = model.history_
    result |= {
        "score": score(paths["task"], test["y"], model.predict(test["X"])),
        "centers": int(history[0]["n_centers"]),
        "rounds": len(history),
        "best_round": int(model.best_iter_),
        "round_seconds": [round(float(h["seconds"]), 1) for h in history],
        "solvers": [h["solver"] for h in history],
        "refit_seconds": None if model.refit_ is None else float(model.refit_["seconds"]),
        "history": history,
        "log_tail": (folder / "rfmdist.log").read_text().splitlines()[-40:],
    }
    return result


def run_baseline(method: str, paths: dict[str, Any], folder: Path, centers: int) -> dict[str, Any]:
    """A scikit-learn baseline in its own process (:func:`baseline_main`)."""
    out = folder / f"{method}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--baseline", method,
        "--train", str(paths["train"]), "--test", str(paths["test"]), "--task", paths["task"],
        "--components", str(centers), "--baseline-json", str(out),
    ]  # fmt: skip
    result = run_measured(command, folder / f"{method}.log", cwd=REPO)
    if result["code"] != 0:
        tail = "\n".join((folder / f"{method}.log").read_text().splitlines()[-20:])
        raise SystemExit(f"{method} failed:\n{tail}")
    return result | json.loads(out.read_text())


def baseline_main(args: argparse.Namespace) -> int:
    """The body of a baseline's process: read, fit, score, write JSON."""
    import zarr
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import Ridge, RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = args.task == "classification"
    group = zarr.open_group(args.train, mode="r")
    X, y = group["X"][...], group["y"][...]
    test = np.load(args.test)
    X_test = test["X"]
    if args.baseline == "hgb":
        model = (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)()
    else:
        X, X_test = X.astype(np.float32), X_test.astype(np.float32)
        linear = RidgeClassifier() if classify else Ridge()
        model = make_pipeline(
            StandardScaler(), Nystroem(n_components=args.components, random_state=0), linear
        )
    started = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - started
    Path(args.baseline_json).write_text(
        json.dumps(
            {"fit_seconds": seconds, "score": score(args.task, test["y"], model.predict(X_test))}
        )
    )
    return 0


# --- the tables ----------------------------------------------------------------------------------


def _peaks_text(peaks: list[tuple[str, float]]) -> str:
    return ", ".join(f"{role} {mib / 1024:.2f}" for role, mib in peaks[:4])


def results_table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results.items():
        metric = "accuracy" if entry["task"] == "classification" else "MSE"
        for label, method in (
            ("rfmdist fit defaults", "rfmdist"),
            ("HistGradientBoosting", "hgb"),
            (f"Nystroem + Ridge (m = {entry['rfmdist']['centers']:,})", "nystroem"),
        ):
            run = entry.get(method)
            if run is None:
                continue
            rows.append(
                [f"{name} ({entry['rows']:,} train rows)", label, f"{run['seconds']:.0f}",
                 f"{max(mib for _, mib in run['peaks']) / 1024:.2f}", _peaks_text(run["peaks"]),
                 f"{metric} {run['score']:.5g}"]
            )  # fmt: skip
    header = ["set", "method", "wall s", "peak GB", "peak GB by process", "test score"]
    lines = [table(header, rows), ""]
    for name, entry in results.items():
        run = entry["rfmdist"]
        lines.append(
            f"{name}: rfmdist chose {run['centers']:,} centers; rounds {run['rounds']} (best "
            f"{run['best_round']}), solvers {run['solvers']}, round seconds {run['round_seconds']}, "
            f"refit {run['refit_seconds'] or 0:.1f} s."
        )
    return "\n".join(lines)


def stream_table(entry: dict[str, Any]) -> str:
    run, record = entry["rfmdist"], entry["rfmdist"]["history"][0]
    solve = record["solve"]
    agop = record.get("agop_seconds")
    rows = [
        ["rows x features", f"{entry['rows']:,} x {D_PLANTED}"],
        ["written to Zarr (chunk by chunk)", f"{entry['write_seconds']:.0f} s"],
        ["centers (default rule)", f"{run['centers']:,}"],
        ["round 0: solver", record["solver"]],
        ["round 0: solve seconds", f"{solve.get('seconds', 0):.0f}"],
        ["round 0: AGOP seconds", "-" if agop is None else f"{agop:.0f}"],
        ["round 0: seconds in all", f"{record['seconds']:.0f}"],
        ["command wall seconds (reading, fingerprint pass, round 0)", f"{run['seconds']:.0f}"],
        ["peak GB by process", _peaks_text(run["peaks"])],
        ["test MSE after round 0", f"{run['score']:.5g}"],
    ]
    projected = entry["projected_default_seconds"]
    rows.append(
        ["projected default fit (4 rounds and a refit on all rows)", f"{projected / 3600:.1f} h"]
    )
    return table(["10M-row run", "measured"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="planted,kddcup")
    parser.add_argument("--rows", type=int, default=1_000_000, help="Planted training rows.")
    parser.add_argument("--stream-rows", type=int, default=None, help="The streamed run's rows.")
    parser.add_argument("--workdir", default=None, help="Keep the data and models here.")
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", default=None, help="Print the table of a --json file.")
    parser.add_argument("--results-md", default=None)
    parser.add_argument("--baseline", choices=["hgb", "nystroem"], help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--test", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--components", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.baseline:
        return baseline_main(args)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        print(
            stream_table(results)
            if "projected_default_seconds" in results
            else results_table(results)
        )
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = stream_run(args, Path(tmp)) if args.stream_rows else compare(args, Path(tmp))
    text = stream_table(results) if args.stream_rows else results_table(results)
    print(machine_line())
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    section = "large_stream" if args.stream_rows else "large"
    title = (
        "10M rows streamed from Zarr: one measured round" if args.stream_rows
        else "Large-dataset batch jobs: rfmdist fit defaults against HistGradientBoosting and Nystroem + Ridge"
    )  # fmt: skip
    write_text_section(args.results_md, section, title, "benchmarks/large.py", argv, text)
    return 0


def compare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.sets.split(","):
        folder = tmp / name
        folder.mkdir()
        paths = prepare(name, folder, args.rows)
        import zarr

        rows = int(zarr.open_group(str(paths["train"]), mode="r")["y"].shape[0])
        entry: dict[str, Any] = {"task": paths["task"], "rows": rows}
        logger.info("%s: %d training rows written; rfmdist fit", name, rows)
        entry["rfmdist"] = run_rfmdist(paths, folder, [])
        logger.info(
            "%s rfmdist: %.0f s, score %.5g",
            name,
            entry["rfmdist"]["seconds"],
            entry["rfmdist"]["score"],
        )
        for method in ("hgb", "nystroem"):
            entry[method] = run_baseline(method, paths, folder, entry["rfmdist"]["centers"])
            logger.info(
                "%s %s: %.0f s, score %.5g",
                name,
                method,
                entry[method]["seconds"],
                entry[method]["score"],
            )
        results[name] = entry
        if args.json:  # keep what is done
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


def stream_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    folder = tmp / "stream"
    folder.mkdir()
    started = time.perf_counter()
    write_planted(folder / "train.zarr", args.stream_rows, seed=0)
    X_test, y_test = planted_chunk(0, TEST_ROWS, seed=1)
    np.savez(folder / "test.npz", X=X_test, y=y_test)
    entry: dict[str, Any] = {
        "rows": args.stream_rows,
        "write_seconds": time.perf_counter() - started,
    }
    logger.info(
        "%d rows written in %.0f s; rfmdist fit, one round",
        args.stream_rows,
        entry["write_seconds"],
    )
    paths = {"train": folder / "train.zarr", "test": folder / "test.npz", "task": "regression"}
    extra = ["--validation-fraction", "none", "--time-budget", "1"]
    entry["rfmdist"] = run_rfmdist(paths, folder, extra)
    record = entry["rfmdist"]["history"][0]
    # A default fit: rounds 0..3 (the planted task's best round is 1, then 2 rounds of patience)
    # on 90 % of the rows, and the refit's solve on all of them.
    solve = float(record["solve"].get("seconds", record["seconds"]))
    entry["projected_default_seconds"] = 4 * 0.9 * float(record["seconds"]) + solve
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
