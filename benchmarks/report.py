"""Results of the tabular benchmarks: the CSV and its ``.meta.json``, the summaries, the markdown
tables, ``--merge`` and the collection's section of the results page.

Outputs
-------
- the CSV ``--out`` (the collection's columns), one row per (set, method), rewritten after every
  set, and ``<out>.meta.json`` beside it (command, start / end, wall time, machine, options, the
  sets run and skipped; ``"stopped"`` until the run ends, so an interrupted run says so);
- a summary printed at the end: per method the number of sets, the mean test score, the wins (every
  method reaching a set's best score wins it: ties count for each) and the mean rank (ties share
  the average rank), over the sets where every method ran;
- the section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` of ``--results-md``
  (the rest of the file is kept).

``--merge a.csv,b.csv`` runs nothing: it regenerates the section (and prints the summary) from the
CSVs and ``.meta.json`` of earlier runs, a set in several CSVs keeping the rows of the last, with
the table of runs and every set without results with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.collection import Collection
from benchmarks.common import machine_info, write_results_section
from benchmarks.selection import DEFAULTS_METHOD, METHODS

logger = logging.getLogger(__name__)

DEFAULT_RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
"""The default ``--results-md``."""
WINS = (
    "Wins: every method reaching a set's best score counts a win (ties count for each). "
    "Rank 1 = best; ties share the average rank. Only sets where every method ran."
)
"""How the summaries count, as the section says it."""


def summarize(
    table: pd.DataFrame, score: str, methods: Sequence[str], *, higher_is_better: bool = True
) -> pd.DataFrame:
    """Mean score, wins and mean rank per method over the sets where every method has a score.

    Parameters
    ----------
    table : pandas.DataFrame
        Long format, columns ``dataset``, ``method`` and ``score``.
    score : str
        The score column.
    methods : sequence of str
        The methods, in output order.
    higher_is_better : bool, default True
        Direction of the score.

    Returns
    -------
    pandas.DataFrame
        Indexed by method: ``sets`` (number compared), ``mean`` (mean score), ``wins`` (sets where
        the method reaches the best score; a tie counts as a win for each tied method) and
        ``mean_rank`` (1 = best, ties share the average rank).
    """
    wide = table.pivot_table(index="dataset", columns="method", values=score, aggfunc="first")
    wide = wide.reindex(columns=list(methods)).dropna(how="any")
    if wide.empty:
        return pd.DataFrame(
            {"sets": 0, "mean": np.nan, "wins": 0, "mean_rank": np.nan}, index=list(methods)
        )
    best = wide.max(axis=1) if higher_is_better else wide.min(axis=1)
    wins = wide.sub(best, axis=0).abs().le(1e-12).sum(axis=0)
    ranks = wide.rank(axis=1, ascending=not higher_is_better, method="average")
    out = pd.DataFrame(
        {
            "sets": len(wide),
            "mean": wide.mean(axis=0),
            "wins": wins.astype(int),
            "mean_rank": ranks.mean(axis=0),
        }
    )
    out.index.name = "method"
    return out


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """Render ``frame`` (its index as the first column) as a GitHub markdown table.

    ``DataFrame.to_markdown`` would need the optional ``tabulate`` package, which rfmdist does not
    depend on; this is the same table from pandas alone (floats as ``floatfmt``, NaN empty).
    """
    frame = frame.reset_index()

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "" if math.isnan(value) else format(float(value), floatfmt)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def run_values(runs: Sequence[dict[str, Any]], key: str, default: Any) -> str:
    """The distinct values of ``key`` over the runs' metadata, ``/``-joined (``default`` if none)."""
    found = list(dict.fromkeys(r[key] for r in runs if r.get(key) is not None))
    return "/".join(str(v) for v in found) if found else str(default)


def fmt_seconds(seconds: float) -> str:
    """``seconds`` as ``"N s (M min)"``."""
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def run_meta_path(csv: Path) -> Path:
    """The run-metadata file written next to a CSV: ``<csv>.meta.json``."""
    csv = Path(csv)
    return csv.with_name(csv.name + ".meta.json")


def write_run_meta(csv: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` (JSON) next to ``csv``."""
    run_meta_path(csv).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_run_meta(csv: Path) -> dict[str, Any] | None:
    """The metadata of the run that wrote ``csv`` (None if there is no ``<csv>.meta.json``)."""
    path = run_meta_path(csv)
    return json.loads(path.read_text()) if path.exists() else None


def now_utc(fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """The time now (UTC) as ``fmt``."""
    return dt.datetime.now(dt.UTC).strftime(fmt)


def write_progress(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    columns: Sequence[str],
    names: Sequence[str],
    meta: dict[str, Any],
    start: float,
) -> pd.DataFrame:
    """Write the rows so far to the CSV ``out`` and ``meta`` beside it, marked ``"stopped"``.

    Parameters
    ----------
    out : pathlib.Path
        The CSV.
    rows : sequence of dict
        The result rows so far.
    columns : sequence of str
        The CSV's columns.
    names : sequence of str
        The sets, in output order.
    meta : dict
        The run's metadata; its ``stopped`` and ``elapsed_s`` are updated.
    start : float
        ``time.perf_counter()`` at the run's start.

    Returns
    -------
    pandas.DataFrame
        The rows as written.
    """
    frame = order(pd.DataFrame(rows, columns=list(columns)), names)
    frame["error"] = frame["error"].fillna("")
    frame.to_csv(out, index=False)
    meta["stopped"] = (
        f"interrupted (the last progress record is {now_utc()}, "
        f"{len(rows) // len(METHODS)} sets done)"
    )
    meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_run_meta(out, meta)
    return frame


def order(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Rows in the order of ``names``, then of METHODS (the defaults row last)."""
    frame = frame.copy()
    frame["_s"] = frame["dataset"].map({n: i for i, n in enumerate(names)})
    frame["_m"] = frame["method"].map({m: i for i, m in enumerate(METHODS)})
    return frame.sort_values(["_s", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)


def summary_tables(collection: Collection, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The summary of each group (:meth:`Collection.groups`) by title, the mean scaled by ``scale``."""
    tables = {}
    for label, part in collection.groups(frame[frame["error"].eq("")]):
        table = summarize(part, collection.score, METHODS)
        sets = int(table["sets"].max()) if len(table) else 0
        title = "Summary" + (f": {label}" if label else "")
        tables[f"{title} ({sets} sets where every method ran)"] = table.assign(
            mean=table["mean"] * collection.scale
        ).rename(columns={"mean": collection.mean_column})
    return tables


def comparisons(collection: Collection, frame: pd.DataFrame) -> list[str]:
    """Per group: RFM against its round 0, and the defaults row against the tuned methods."""
    ok = frame[frame["error"].eq("")]
    fmt = f"+{collection.floatfmt}"
    lines = []
    for label, part in collection.groups(ok):
        wide = part.pivot_table(
            index="dataset", columns="method", values=collection.score, aggfunc="first"
        )
        wide = wide * collection.scale
        prefix = f"{label[:1].upper()}{label[1:]}: " if label else ""
        if {"rfm", "laplace"} <= set(wide.columns):
            pair = wide[["rfm", "laplace"]].dropna()
            diff = pair["rfm"] - pair["laplace"]
            better, worse = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
            if len(pair):
                lines += [
                    f"{prefix}RFM vs its own round 0 (laplace) on {len(pair)} sets: RFM higher "
                    f"on {better}, lower on {worse}, equal on {len(pair) - better - worse}; "
                    f"mean difference {diff.mean():{fmt}}{collection.unit} (median "
                    f"{diff.median():{fmt}}).",
                    "",
                ]
        if DEFAULTS_METHOD in wide.columns:
            own = wide[DEFAULTS_METHOD].dropna()
            parts = [
                f"{prefix}The estimators' defaults (`{DEFAULTS_METHOD}`: no grid, no "
                f"validation split given) on {len(own)} sets: mean {own.mean():{collection.floatfmt}}"
            ]
            for other in ("rfm", "laplace", "hist_gb"):
                if other in wide.columns:
                    diff = (own - wide[other]).dropna()
                    parts.append(
                        f"minus {other} {diff.mean():{fmt}}{collection.unit} (median "
                        f"{diff.median():{fmt}})"
                    )
            lines += ["; ".join(parts) + ".", ""]
    return lines


def per_set_table(collection: Collection, frame: pd.DataFrame) -> pd.DataFrame:
    """Test score per set and method (the defaults row where any set has it)."""
    ok = frame[frame["error"].eq("")]
    wide = ok.pivot_table(index="dataset", columns="method", values=collection.score)
    methods = [*METHODS, *([DEFAULTS_METHOD] if DEFAULTS_METHOD in wide.columns else [])]
    wide = wide.reindex(columns=methods) * collection.scale
    info = collection.per_set_info(frame.groupby("dataset")[list(collection.info_columns)].first())
    table = info.join(wide, how="left").reindex(frame["dataset"].drop_duplicates())
    for m in methods:
        table[m] = table[m].map(lambda v: "" if pd.isna(v) else f"{v:{collection.floatfmt}}")
    return table


def section(
    collection: Collection,
    frame: pd.DataFrame,
    runs: Sequence[dict[str, Any]],
    *,
    header: Sequence[str],
    not_run: Sequence[tuple[str, str]] = (),
    skipped_line: str = "",
    notes: Sequence[str] = (),
) -> str:
    """The markdown of the collection's section of the results page.

    Parameters
    ----------
    collection : Collection
        The collection.
    frame : pandas.DataFrame
        Result rows (:attr:`Collection.columns`), possibly from several runs.
    runs : sequence of dict
        The runs' metadata (``machine``, ``rf_trees``, ``seed``, ...).
    header : sequence of str
        The first lines (title, generation line, commands).
    not_run : sequence of (name, reason)
        The sets without results (merge mode).
    skipped_line : str
        One line listing the sets skipped by ``--max-n`` (single-run mode).
    notes : sequence of str
        Free-text notes (``--note``), printed under "Notes".
    """
    machines = list(dict.fromkeys(r["machine"] for r in runs if r.get("machine")))
    parts = [*header, "", *collection.preamble(frame, runs), *(machines[:1] or [machine_info()])]
    if len(machines) > 1:
        parts += ["", "(other runs on:)", *machines[1:]]
    parts += ["", f"Protocol: {collection.protocol(runs)}", "", WINS, ""]
    for title, table in summary_tables(collection, frame).items():
        parts += [f"### {title}", "", markdown_table(table, collection.floatfmt), ""]
    parts += comparisons(collection, frame)
    if notes:
        parts += ["### Notes", "", *[f"- {n}" for n in notes], ""]
    parts += [
        *collection.appendix(),
        f"### {collection.per_set_title}",
        "",
        markdown_table(per_set_table(collection, frame)) if not frame.empty else "(no set run)",
        "",
    ]
    if skipped_line:
        parts += [skipped_line, ""]
    if not_run:
        table = pd.DataFrame(not_run, columns=["dataset", "reason"]).set_index("dataset")
        parts += [f"### Sets not run ({len(not_run)})", "", markdown_table(table), ""]
    if collection.not_in_copy:
        parts += [
            f"Not in the shared data copy ({len(collection.not_in_copy)} of the original sets; see "
            f"the data README): {', '.join(collection.not_in_copy)}.",
            "",
        ]
    failed = frame.loc[frame["error"].ne(""), ["dataset", "method", "error"]]
    if not failed.empty:
        parts += ["Failed:", "", markdown_table(failed.set_index("dataset")), ""]
    return "\n".join(parts)


def publish(
    collection: Collection, headline: str, frame: pd.DataFrame, md: str, body: Callable[[], str]
) -> None:
    """Print the summary; write the section to ``md`` ('' or None: nowhere)."""
    print(f"\n{headline}")
    for title, table in summary_tables(collection, frame).items():
        print(f"\n{title}\n{markdown_table(table, collection.floatfmt)}")
    if md:
        write_results_section(Path(md), collection.name, body())
        logger.info("updated the %s section of %s", collection.name, md)


def publish_run(
    collection: Collection,
    frame: pd.DataFrame,
    meta: dict[str, Any],
    *,
    elapsed: float,
    results_md: str,
    notes: Sequence[str],
) -> None:
    """Print the summary of a finished run and write its section (``results_md``; '': nowhere).

    ``meta`` is the run's metadata (``command``, ``sets_run``, ``skipped``, ``max_n``), ``elapsed``
    its wall time in seconds, ``notes`` the ``--note`` texts.
    """
    run, skipped = meta["sets_run"], list(meta["skipped"])
    skipped_line = f"Skipped (n > {meta['max_n']}): {', '.join(skipped)}" if skipped else ""
    header = [
        collection.title,
        "",
        f"Generated by `benchmarks/{collection.name}.py` on {now_utc('%Y-%m-%d %H:%M UTC')} in "
        f"{fmt_seconds(elapsed)} for {len(run)} sets; do not edit by hand.",
        "",
        f"Command: `{meta['command']}`",
    ]
    headline = f"{collection.label}: {len(run)} sets run, {len(skipped)} skipped, {elapsed:.0f} s"
    publish(
        collection,
        headline,
        frame,
        results_md,
        lambda: section(
            collection, frame, [meta], header=header, skipped_line=skipped_line, notes=notes
        ),
    )
    if skipped:
        print(skipped_line)


def read_csv(collection: Collection, path: Path) -> pd.DataFrame:
    """Read a result CSV of an earlier run (for ``--merge``)."""
    text = [c for c in ("chosen_params", "test_acc_folds", "error") if c in collection.columns]
    frame = pd.read_csv(
        path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(text, object)
    )
    missing = [c for c in collection.columns if c not in frame.columns]
    if missing:
        raise SystemExit(
            f"--merge: expected the columns {list(collection.columns)} in {path}, found none of "
            f"{missing}. Fix: pass CSVs written by benchmarks/{collection.name}.py."
        )
    frame["error"] = frame["error"].fillna("").astype(str)
    return frame[list(collection.columns)]


def _read_runs(
    collection: Collection, paths: Sequence[Path]
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The rows of the CSVs (a set in several keeps the last CSV's rows) and the runs' metadata."""
    frames: list[pd.DataFrame] = []
    runs: list[dict[str, Any]] = []
    for k, path in enumerate(paths, 1):
        meta = read_run_meta(path) or {}
        if path.exists():
            part = read_csv(collection, path)
        elif meta:  # a run stopped before its first set finished
            part = pd.DataFrame(columns=list(collection.columns))
        else:
            raise SystemExit(f"--merge: expected a CSV at {path}, found none. Fix: check the path.")
        again = sorted(set().union(*(f["dataset"] for f in frames)) & set(part["dataset"]))
        if again:  # a set in several CSVs: the later CSV wins
            logger.warning("%s re-runs %s: keeping its rows", path, again)
            frames = [f[~f["dataset"].isin(again)] for f in frames]
        frames.append(part)
        runs.append({**meta, "csv": str(path), "run": k, "sets": part["dataset"].nunique()})
    return pd.concat(frames, ignore_index=True), runs


def _span_text(runs: Sequence[dict[str, Any]]) -> str:
    """The clock time from the first start to the last end of the runs ('' if not recorded)."""
    spans = [
        (start, start + dt.timedelta(seconds=float(r["elapsed_s"])))
        for r in runs
        if r.get("started_utc") and r.get("elapsed_s")
        for start in [dt.datetime.strptime(r["started_utc"], "%Y-%m-%d %H:%M:%S UTC")]
    ]
    if not spans:
        return ""
    clock = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
    return f"; from the first start to the last end {fmt_seconds(clock)} (runs may overlap)"


def _run_table(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One line per merged run: its command, end, wall time, sets and CSV."""
    return pd.DataFrame(
        [
            {
                "run": r["run"],
                "command": f"`{r.get('command', '(not recorded)')}`",
                "finished": r.get("finished_utc") or r.get("stopped", ""),
                "wall time": fmt_seconds(float(r["elapsed_s"])) if r.get("elapsed_s") else "",
                "sets": r["sets"],
                "csv": r["csv"],
            }
            for r in runs
        ]
    ).set_index("run")


def merge(
    collection: Collection,
    paths: Sequence[Path],
    *,
    command: str,
    root: Path,
    summary: pd.DataFrame,
    results_md: str,
    notes: Sequence[str],
) -> int:
    """``--merge``: regenerate the section (and print the summary) from existing CSVs.

    Parameters
    ----------
    collection : Collection
        The collection the CSVs are of.
    paths : sequence of pathlib.Path
        The CSVs, in run order (a set in several keeps the rows of the last).
    command : str
        The command line, for the section's header.
    root : pathlib.Path
        The data root.
    summary : pandas.DataFrame
        The collection's ``SUMMARY.tsv`` (:meth:`Collection.read_summary`).
    results_md : str
        The markdown file whose section is regenerated ('': none).
    notes : sequence of str
        The ``--note`` texts.

    Returns
    -------
    int
        The exit status (0).
    """
    rows, runs = _read_runs(collection, paths)
    names = list(summary.index)
    frame = order(rows, names)
    done = set(frame["dataset"])
    not_run = [
        (n, _not_run_reason(collection, n, runs, summary, root)) for n in names if n not in done
    ]
    total = sum(float(r.get("elapsed_s") or 0.0) for r in runs)
    header = [
        collection.title,
        "",
        f"Generated by `{command}` on {now_utc('%Y-%m-%d %H:%M UTC')} from {len(paths)} run(s); "
        "do not edit by hand.",
        "",
        f"Total wall time of the runs (sum): {fmt_seconds(total)}{_span_text(runs)}; "
        f"{len(done)} sets with results, {len(not_run)} not run.",
        "",
        markdown_table(_run_table(runs)),
    ]
    publish(
        collection,
        f"{collection.label} merged: {len(done)} sets, total {fmt_seconds(total)}",
        frame,
        results_md,
        lambda: section(collection, frame, runs, header=header, not_run=not_run, notes=notes),
    )
    return 0


def _not_run_reason(
    collection: Collection,
    name: str,
    runs: Sequence[dict[str, Any]],
    summary: pd.DataFrame,
    root: Path,
) -> str:
    """Why a set has no results: skipped by ``--max-n``, a run stopped first, or not asked for."""
    rows = collection.rows(name, summary, root)
    reason = "not requested by any merged run"
    for r in runs:
        if name in (r.get("skipped") or {}):
            reason = f"n = {rows} > --max-n {r.get('max_n')} in run {r['run']}"
        elif name in (r.get("sets_run") or []):
            why = f": {r['stopped']}" if r.get("stopped") else ""
            reason = f"n = {rows}; run {r['run']} stopped before reaching it{why}"
    return f"{reason} (d = {int(summary.loc[name, 'd'])})"
