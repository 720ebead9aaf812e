"""Progress of a fit: the library's progress object hears every round and CG iteration in order, and
the command line draws bars on a terminal and prints none into a pipe."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rfmdist import RFMRegressor
from rfmdist.progress import CGTracker, TerminalProgress


class Recorder:
    """A FitProgress that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def round_started(self, round_index: int, last_round: int, info: dict[str, Any]) -> None:
        self.events.append(("start", round_index, last_round, info))

    def cg_iteration(self, round_index: int, record: dict[str, Any]) -> None:
        self.events.append(("cg", round_index, record))

    def round_finished(self, outcome: Any) -> None:
        self.events.append(("end", outcome.round, outcome))


def test_progress_hears_every_round_and_cg_iteration_in_order(rng):
    X = rng.normal(size=(500, 5))
    y = X[:, 0] * X[:, 1] + 0.1 * rng.normal(size=500)
    recorder = Recorder()
    est = RFMRegressor(iters=2, solver="pcg", centers=None, random_state=0)
    est.fit(X, y, progress=recorder)

    rounds = [h["round"] for h in est.history_]
    assert rounds == [0, 1, 2]
    events = recorder.events
    position = 0
    for h in est.history_:
        start = events[position]
        assert start[:3] == ("start", h["round"], 2)
        assert start[3]["solver"] == "pcg" and start[3]["stage"] == "round"
        position += 1
        residuals = h["solve"]["residuals"]
        for iteration in range(1, h["solve"]["iterations"] + 1):
            kind, round_index, record = events[position]
            assert (kind, round_index, record["iteration"]) == ("cg", h["round"], iteration)
            # The reported residual is the round's stored residual after that iteration.
            assert record["residual"] == pytest.approx(max(residuals[iteration]), rel=1e-12)
            assert record["seconds_left"] is None or record["seconds_left"] >= 0
            position += 1
        assert events[position][:2] == ("end", h["round"])
        assert events[position][2].record is h
        position += 1
    # Then the refit of the kept round on all rows (the rounds held out a validation part).
    assert est.refit_ is not None
    start = events[position]
    assert start[0] == "start" and start[1] == est.best_iter_ and start[3]["stage"] == "refit"
    assert events[-1][:2] == ("end", est.best_iter_)
    assert all(event[0] == "cg" for event in events[position + 1 : -1])


def test_cg_tracker_predicts_iterations_left_from_the_decay():
    recorder = Recorder()
    tracker = CGTracker(round_index=3, tol=1e-4, max_iter=100, progress=recorder)
    for iteration in range(1, 5):  # residual 10^-iteration: 4 orders in 4 iterations
        assert tracker(iteration, None, [10.0**-iteration, 1e-9]) is False
    third, fourth = (event[2] for event in recorder.events[2:4])
    # After 3: a tenth per iteration, one more to 1e-4, at the mean seconds per iteration so far.
    assert third["iterations_left"] == pytest.approx(1.0)
    assert third["seconds_left"] == pytest.approx(third["seconds"] / 3)
    assert fourth["residual"] == pytest.approx(1e-4)
    assert fourth["iterations_left"] == pytest.approx(0.0, abs=1e-9)
    tracker(5, None, [2e-4])  # went back up: no decay to extrapolate, so no prediction
    assert recorder.events[-1][2]["iterations_left"] is None


def test_terminal_progress_draws_a_bar_and_a_line_per_round(tmp_path: Path, rng):
    stream = (tmp_path / "out.txt").open("w+")
    progress = TerminalProgress(stream)
    X = rng.normal(size=(300, 4))
    RFMRegressor(iters=1, solver="pcg", centers=None, random_state=0).fit(
        X, X[:, 0] * X[:, 1], progress=progress
    )
    stream.seek(0)
    text = stream.read()
    assert "round 0/1 pcg" in text and "residual" in text
    assert "round 0: pcg" in text and "round 1: pcg" in text
    assert "refit of round" in text


def _cli_fit(tmp_path: Path, rng, name: str) -> list[str]:
    X = rng.normal(size=(400, 4))
    data = tmp_path / "train.npz"
    if not data.exists():
        np.savez(data, X=X, y=X[:, 0] * X[:, 1])
    return [
        sys.executable, "-m", "rfmdist.cli", "fit", "--train", str(data), "--out",
        str(tmp_path / f"{name}.zarr"), "--iters", "1", "--solver", "pcg", "--centers", "all",
        "--workers", "1", "--threads-per-worker", "1",
    ]  # fmt: skip


def test_cli_shows_progress_on_a_terminal(tmp_path: Path, rng):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        _cli_fit(tmp_path, rng, "tty"),
        stdout=follower,
        stderr=subprocess.PIPE,
        env=os.environ | {"COLUMNS": "120"},
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(leader)
    _, err = proc.communicate(timeout=300)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err.decode()
    assert "round 0/1 pcg" in text and "residual" in text, text
    assert "round 1: pcg" in text  # a line per finished round
    assert "best round:" in text  # and the summary table


def test_cli_prints_no_progress_into_a_pipe(tmp_path: Path, rng):
    proc = subprocess.run(
        _cli_fit(tmp_path, rng, "pipe"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "best round:" in proc.stdout
    assert "residual" not in proc.stdout and "\r" not in proc.stdout
    assert "round 0/1" not in proc.stdout + proc.stderr


def test_demo_runs_the_fit_command_on_a_local_cluster(capsys, caplog):
    """`rfmdist demo` goes through `rfmdist fit` (cluster, dashboard line, store, per-round table)
    and scores the written model on the held-out rows."""
    import logging

    from rfmdist.cli.main import main

    with caplog.at_level(logging.INFO, logger="rfmdist"):
        code = main(["demo", "--iters", "2", "--workers", "2", "--progress", "off"])
    out = capsys.readouterr().out
    assert code == 0
    assert "started a local cluster: 2 worker processes" in caplog.text
    assert "dashboard: http://127.0.0.1:" in caplog.text
    assert "round       train MSE       val MSE" in out and "best round:" in out
    test_line = next(line for line in out.splitlines() if line.startswith("test MSE"))
    test_mse = float(test_line.split()[2])
    baseline = float(test_line.split("predicting the mean: ")[1].rstrip(")"))
    assert test_mse < 0.1 * baseline  # cpu_act is well predicted; the mean is not
    assert "learned feature importances" in out
