"""Shared helpers of the benchmark scripts: the synthetic task, machine facts, tables, peak RSS."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def product_task(n: int, d: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The planted task ``y = x0 * x1 + noise`` on standard normal inputs, shapes (n, d) and (n,)."""
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, d))
    return X, X[:, 0] * X[:, 1] + noise * gen.normal(size=n)


def machine_line() -> str:
    """One line describing the machine and the BLAS threads in use."""
    from threadpoolctl import threadpool_info

    blas = ", ".join(
        f"{i['internal_api']} {i.get('version', '')} x{i['num_threads']}" for i in threadpool_info()
    )
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}, BLAS: {blas}"
    )


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The shell command that ran ``script`` (a repository-relative path) with ``argv``."""
    import shlex
    import sys

    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def write_text_section(
    path: str | None, section: str, title: str, script: str, argv: Sequence[str] | None, text: str
) -> None:
    """:func:`write_section` with ``text`` (a script's printed table) as a code block."""
    write_section(path, section, title, command_line(script, argv), f"```\n{text.strip()}\n```\n")


def write_section(path: str | None, section: str, title: str, command: str, body: str) -> None:
    """Regenerate this benchmark's section of ``benchmarks/RESULTS.md`` (marker-delimited).

    Uses the runner's own writer (``uci121.write_results_section``), so every section of the page is
    produced the same way; does nothing when ``path`` is None.
    """
    if path is None:
        return
    import datetime as dt

    from uci121 import machine_info, write_results_section

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"## {title}",
            "",
            f"Generated on {now} by `{command}`; do not edit by hand.",
            "",
            machine_info(),
            f"- {machine_line()}",
            "",
            body,
        ]
    )
    write_results_section(Path(path), section, text)
