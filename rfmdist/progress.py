"""Progress of a fit as it runs: rounds, CG iterations, and the passes over the data within them.

A fit reports to a *progress* object (``fit(..., progress=...)``), which receives, in order:

- :meth:`FitProgress.round_started` when a round begins (its solver and centers),
- :meth:`FitProgress.cg_iteration` after every conjugate-gradient iteration (the largest relative
  residual, and the iterations and seconds still predicted from its decay),
- :meth:`FitProgress.round_finished` with the round's :class:`~rfmdist.training.RoundOutcome`.

:class:`LogProgress` (what a fit uses when given none) logs iterations at DEBUG (rounds are logged at
INFO by the round loop); :class:`TerminalProgress` draws bars with tqdm, and, for passes that run on a
Dask cluster, Dask's own text progress bar of the pass's tasks (:func:`pass_progress`). The command
line uses the terminal display only when its output is a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

# Whether passes over Dask data show Dask's progress bar (see pass_progress).
_PASS_PROGRESS = {"on": False}


class FitProgress(Protocol):
    """What a fit reports as it runs (all methods optional to act on; none may raise)."""

    def round_started(self, round_index: int, last_round: int, info: dict[str, Any]) -> None:
        """Round ``round_index`` (of ``0 .. last_round``) begins; ``info``: solver, n_centers and stage
        ('round', or 'refit' for the final fit on all rows)."""

    def cg_iteration(self, round_index: int, record: dict[str, Any]) -> None:
        """A CG iteration ended: ``record`` holds iteration, residual, max_iter, seconds and the
        predicted iterations_left and seconds_left (None until they can be predicted)."""

    def round_finished(self, outcome: Any) -> None:
        """Round ``outcome.round`` ended (its :class:`~rfmdist.training.RoundOutcome`)."""


@dataclass
class LogProgress:
    """Progress as log records: CG iterations at DEBUG."""

    def round_started(self, round_index: int, last_round: int, info: dict[str, Any]) -> None:
        logger.debug("round %d of at most %d starts: %s", round_index, last_round, info)

    def cg_iteration(self, round_index: int, record: dict[str, Any]) -> None:
        logger.debug(
            "round %d, CG iteration %d: residual %.3g", round_index, record["iteration"],
            record["residual"],
        )  # fmt: skip

    def round_finished(self, outcome: Any) -> None:
        return None


@dataclass
class CGTracker:
    """Turns CG callbacks into progress records with a prediction of what is left.

    The prediction extrapolates the largest relative residual's geometric decay over the recent half
    of the iterations to ``tol``, priced at the mean seconds per iteration so far.

    Parameters
    ----------
    round_index : int
    tol : float
    max_iter : int
    progress : FitProgress
    """

    round_index: int
    tol: float
    max_iter: int
    progress: Any
    _start: float = field(default_factory=time.perf_counter)
    _history: list[float] = field(default_factory=list)

    def __call__(self, iteration: int, x: Any, residuals: list[float]) -> bool:
        residual = float(max(residuals))
        self._history.append(residual)
        seconds = time.perf_counter() - self._start
        left = None
        recent = self._history[-max(2, iteration // 2) :]
        if len(recent) >= 2 and recent[0] > 0 and residual > 0:
            rate = (recent[-1] / recent[0]) ** (1.0 / (len(recent) - 1))
            if rate < 1:
                left = max(0.0, float(np.log(self.tol / residual) / np.log(rate)))
        record = {
            "iteration": iteration,
            "residual": residual,
            "max_iter": self.max_iter,
            "seconds": seconds,
            "iterations_left": None if left is None else min(left, self.max_iter - iteration),
            "seconds_left": None if left is None else left * seconds / iteration,
        }
        self.progress.cg_iteration(self.round_index, record)
        return False


class TerminalProgress:
    """Progress bars on a terminal (tqdm): one line per round with its CG iterations, residual and
    the time left predicted for the round, and Dask's bar for each pass over cluster data.

    Parameters
    ----------
    stream : file, default sys.stderr
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        self._stage = "round"

    def round_started(self, round_index: int, last_round: int, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        self._close()
        size = shutil.get_terminal_size()
        self._stage = info.get("stage", "round")
        what = f"round {round_index}/{last_round}"
        if self._stage == "refit":
            what = f"refit of round {round_index} on all rows"
        self._bar = tqdm(
            total=None,
            desc=f"{what} {info.get('solver', '')}",
            unit="it",
            file=self.stream,
            leave=False,
            # The terminal's own size; COLUMNS/LINES or 80 x 24 where it reports none (a fresh
            # pseudo-terminal says 0 x 0, and tqdm would then draw nothing).
            ncols=size.columns,
            nrows=size.lines,
        )

    def cg_iteration(self, round_index: int, record: dict[str, Any]) -> None:
        if self._bar is None:
            return
        left = record["seconds_left"]
        self._bar.update(1)
        self._bar.set_postfix_str(
            f"residual {record['residual']:.2e}"
            + ("" if left is None else f", ~{left:.0f} s left in the solve"),
            refresh=True,
        )

    def round_finished(self, outcome: Any) -> None:
        record = outcome.record
        val = record.get("val_score")
        self._close()
        what = (
            f"refit of round {outcome.round}"
            if self._stage == "refit"
            else f"round {outcome.round}"
        )
        self.stream.write(
            f"{what}: {record['solver']}, {record['seconds']:.1f} s, train "
            f"{record['train_score']:.6g}, val {'-' if val is None else f'{val:.6g}'}\n"
        )
        self.stream.flush()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def passes(self) -> Iterator[None]:
        """Context in which passes over Dask data show Dask's progress bar."""
        with pass_progress(True):
            yield


@contextlib.contextmanager
def pass_progress(enabled: bool) -> Iterator[None]:
    """Context: passes over Dask data on a distributed client show ``distributed.progress``'s text
    bar of their tasks (see :func:`rfmdist.threads.compute_dask`)."""
    previous = _PASS_PROGRESS["on"]
    _PASS_PROGRESS["on"] = enabled
    try:
        yield
    finally:
        _PASS_PROGRESS["on"] = previous


def show_pass_progress() -> bool:
    """Whether a pass should show its progress bar now."""
    return _PASS_PROGRESS["on"]
