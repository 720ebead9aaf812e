"""kddcup (494,020 x 41, 23 classes) through the ``rfmdist`` command line on a 2-worker local cluster.

One command::

    python benchmarks/kddcup_cli.py [--centers 2000] [--iters 2] [--workers 2] [--subset 100000]

Holds out a seeded 20% of the rows (train/test written as Parquet in a temporary folder), runs
``rfmdist fit`` (Nyström centers, direct solve, AGOP on 20,000 rows) and ``rfmdist evaluate`` as
subprocesses, polls the process tree with psutil for the peak RSS of the client (the ``rfmdist fit``
process) and of each worker process, and prints a table for the full training set and for a
``--subset``-row subset of it. The subset also gets a row fitted with ``rfmdist fit``'s defaults (no
model options; ``--defaults-on both`` for the full set too; ``benchmarks/large.py`` fits the full set
with the defaults against HistGradientBoosting and Nystroem + Ridge). Data root: env
``RFMDIST_DATA`` or ``../shared/data`` beside the repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*
from benchmarks.common import run_measured

logger = logging.getLogger("kddcup_cli")
REPO = Path(__file__).resolve().parents[1]
RFMDIST = [sys.executable, "-m", "rfmdist.cli"]


def data_file() -> Path:
    """The kddcup TSV in the shared data."""
    root = Path(os.environ.get("RFMDIST_DATA", REPO.parent / "shared" / "data"))
    path = root / "pmlb" / "kddcup.tsv.gz"
    if not path.exists():
        raise SystemExit(
            f"Expected {path}, found nothing; set RFMDIST_DATA to the shared data folder."
        )
    return path


def split(folder: Path, subset: int, seed: int) -> dict[str, Path]:
    """Seeded 80/20 split written as Parquet, plus a ``subset``-row training subset."""
    df = pd.read_csv(data_file(), sep="\t")
    order = np.random.default_rng(seed).permutation(len(df))
    cut = round(0.8 * len(df))
    paths = {
        "train": folder / "train.parquet",
        "test": folder / "test.parquet",
        "subset": folder / f"train_{subset}.parquet",
    }
    df.iloc[order[:cut]].to_parquet(paths["train"], index=False)
    df.iloc[order[cut:]].to_parquet(paths["test"], index=False)
    df.iloc[order[:subset]].to_parquet(paths["subset"], index=False)
    logger.info("split %d rows: %d train, %d test", len(df), cut, len(df) - cut)
    return paths


def one_fit(
    name: str, train: Path, test: Path, folder: Path, args: argparse.Namespace, defaults: bool
) -> dict:
    """Fit and evaluate one training set; the row of the table. ``defaults``: no model options
    (what ``rfmdist fit`` does as shipped), else the labelled settings of the options."""
    model = folder / f"{name}.zarr"
    settings = [
        "--centers", str(args.centers), "--iters", str(args.iters), "--agop-samples", "20000",
        "--solver", "direct", "--seed", str(args.seed), "--n-iter-no-change", "none",
    ]  # fmt: skip
    fit = [
        *RFMDIST, "fit", "--train", str(train), "--target", "target", "--out", str(model),
        "--task", "classification", *([] if defaults else settings),
        "--workers", str(args.workers), "--threads-per-worker", "1",
    ]  # fmt: skip
    logger.info("running: %s", " ".join(fit))
    run = run_measured(fit, folder / f"{name}_fit.log")
    code, seconds, peaks = run["code"], run["seconds"], run["peaks"]
    if code != 0:
        raise SystemExit(f"rfmdist fit failed ({code}); see {folder / f'{name}_fit.log'}")
    evaluate = subprocess.run(
        [*RFMDIST, "evaluate", "--model", str(model), "--data", str(test), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    scores = json.loads(evaluate.stdout)
    rows = int(pd.read_parquet(train, columns=["target"]).shape[0])
    workers = [int(mib * 2**20) for role, mib in peaks if role == "worker"]
    return {
        "name": name,
        "settings": "defaults" if defaults else "labelled",
        "rows": rows,
        "seconds": seconds,
        "client_rss": next(int(mib * 2**20) for role, mib in peaks if role == "main"),
        "worker_rss": workers[: args.workers],
        "accuracy": scores["accuracy"],
        "test_rows": scores["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--centers", type=int, default=2000)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="Work in DIR and keep the files.")
    parser.add_argument(
        "--defaults-on",
        choices=["subset", "both", "none"],
        default="subset",
        help="Training sets that also get a row fitted with rfmdist fit's defaults (subset).",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = split(folder, args.subset, args.seed)
        results = []
        for name, train in ((f"subset_{args.subset}", paths["subset"]), ("full", paths["train"])):
            if args.defaults_on == "both" or (args.defaults_on == "subset" and name != "full"):
                results.append(
                    one_fit(f"{name}_defaults", train, paths["test"], folder, args, True)
                )
            results.append(one_fit(name, train, paths["test"], folder, args, False))
    mib = 2**20
    print(
        f"\nkddcup via rfmdist CLI: {args.workers} workers x 1 thread; labelled rows: Nyström "
        f"m={args.centers}, iters={args.iters}, AGOP on 20,000 rows, direct solve, float64, seed "
        f"{args.seed}; defaults rows: no model options"
    )
    print(f"{'settings':>9}  {'train rows':>10}  {'fit wall s':>10}  {'client MiB':>10}  "
          f"{'worker MiB':>16}  {'test acc':>8}  {'test rows':>9}")  # fmt: skip
    for r in results:
        workers = "/".join(f"{w / mib:.0f}" for w in r["worker_rss"])
        print(
            f"{r['settings']:>9}  {r['rows']:>10}  {r['seconds']:>10.1f}  "
            f"{r['client_rss'] / mib:>10.0f}  {workers:>16}  {r['accuracy']:>8.4f}  "
            f"{r['test_rows']:>9}"
        )


if __name__ == "__main__":
    main()
