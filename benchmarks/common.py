"""Shared helpers of the benchmark scripts: the synthetic task, machine facts, tables, peak RSS of
a process and of a command's whole process tree."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def product_task(n: int, d: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The planted task ``y = x0 * x1 + noise`` on standard normal inputs, shapes (n, d) and (n,)."""
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, d))
    return X, X[:, 0] * X[:, 1] + noise * gen.normal(size=n)


def canvas_digits(
    copies: int = 5, size: int = 14, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits, ``copies`` times each at random offsets (seeded) on a
    ``size x size`` canvas, pixels / 16: real images whose border pixels are nearly constant.

    Returns
    -------
    X : numpy.ndarray, shape (copies * 1797, size * size)
    y : numpy.ndarray, shape (copies * 1797,)
    digit : numpy.ndarray, shape (copies * 1797,)
        Each row's index among the 1,797 digits (to split without a digit in two parts).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.zeros((copies * len(digits.images), size, size))
    for k in range(len(images)):
        row, col = rng.integers(0, size - 7, size=2)
        images[k, row : row + 8, col : col + 8] = digits.images[k % len(digits.images)]
    index = np.arange(len(images)) % len(digits.images)
    return images.reshape(len(images), -1) / 16.0, digits.target[index], index


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


def machine_info() -> str:
    """A markdown bullet list describing the machine and the software versions."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    versions = []
    for mod in ("numpy", "scipy", "sklearn", "dask", "rfmdist"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            versions.append(f"{mod} ?")
    return "\n".join(
        [
            f"- Machine: {platform.platform()}, {platform.machine()}, {cpu or 'unknown CPU'}",
            f"- CPUs (os.cpu_count): {os.cpu_count()}",
            f"- Python {platform.python_version()}; " + ", ".join(versions),
        ]
    )


def write_results_section(path: Path, section: str, body: str) -> None:
    """Create or replace the ``<!-- {section}:begin -->`` ... ``<!-- {section}:end -->`` block.

    Parameters
    ----------
    path : pathlib.Path
        The markdown file (created with a title if missing; other sections are kept verbatim).
    section : str
        The marker name, e.g. ``"uci121"``.
    body : str
        The generated markdown between the markers.
    """
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    i, j = text.find(begin), text.find(end)
    if (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise ValueError(
            f"{path}: expected the markers {begin} and {end} together and in order, found "
            f"begin at {i}, end at {j}. Fix: repair or delete the broken markers by hand."
        )
    if i >= 0:
        text = text[:i] + block + text[j + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_section(path: str | None, section: str, title: str, command: str, body: str) -> None:
    """Regenerate this benchmark's section of ``benchmarks/RESULTS.md`` (marker-delimited) with
    :func:`write_results_section`, as every section of the page is; nothing when ``path`` is None.
    """
    if path is None:
        return
    import datetime as dt

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


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _role(proc: Any, root: int) -> str:
    if proc.pid == root:
        return "main"
    try:
        cmdline = " ".join(proc.cmdline())
    except Exception:  # the process ended
        return "other"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return "worker" if "spawn_main" in cmdline or "forkserver" in cmdline else "other"


class PeakMemory(threading.Thread):
    """Polls the peak RSS (VmHWM) of a process and all its descendants until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                peak = _vm_hwm_mib(proc.pid)
                if peak is not None:
                    role = self.peaks.get(proc.pid, (None,))[0] or _role(proc, self.pid)
                    self.peaks[proc.pid] = (role, max(peak, self.peaks.get(proc.pid, ("", 0))[1]))
            self._done.wait(self.interval)

    def stop(self) -> list[tuple[str, float]]:
        """Stop polling; (role, peak MiB) of every process seen, largest first."""
        self._done.set()
        self.join()
        found = [peak for peak in self.peaks.values() if peak[0] != "resource tracker"]
        return sorted(found, key=lambda peak: -peak[1])


def run_measured(command: list[str], log: Path, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``command`` (output to ``log``, no ``RFMDIST_*`` variables); its wall seconds, exit code
    and the peak RSS of each of its processes (``peaks``: (role, MiB), largest first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFMDIST_")}
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        memory = PeakMemory(proc.pid)
        memory.start()
        code = proc.wait()
    peaks = memory.stop()
    return {"seconds": time.perf_counter() - started, "code": code, "peaks": peaks}
