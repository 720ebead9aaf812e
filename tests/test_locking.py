"""One writer per store: a lock refuses a second fit while the first runs, and a dead owner's lock
is taken over (real processes and files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from conftest import REPO, product_task

import rfmdist
from rfmdist import RFMRegressor
from rfmdist.locking import STALE_AFTER_S, StoreLock, StoreLockedError


def test_a_held_lock_refuses_a_second_writer_until_released(tmp_path):
    url = str(tmp_path / "m.zarr")
    with StoreLock(url):
        assert os.path.exists(url + ".lock")
        with pytest.raises(
            StoreLockedError, match=rf"found one running \(host .*pid {os.getpid()}"
        ):
            StoreLock(url).acquire()
    assert not os.path.exists(url + ".lock")
    with StoreLock(url):  # free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    url = str(tmp_path / "m.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = {"host": os.uname().nodename, "pid": dead.pid, "started": time.time(), "token": "x"}
    (tmp_path / "m.zarr.lock").write_text(json.dumps(owner))
    with StoreLock(url) as lock:
        assert json.loads((tmp_path / "m.zarr.lock").read_text())["token"] == lock.token
    assert "taking over the stale lock" in caplog.text


def test_a_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    url = str(tmp_path / "m.zarr")
    path = tmp_path / "m.zarr.lock"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "token": "x"}))
    with pytest.raises(StoreLockedError, match="host elsewhere"):
        StoreLock(url).acquire()
    old = time.time() - STALE_AFTER_S - 60
    os.utime(path, (old, old))
    with StoreLock(url):
        pass


def test_a_second_fit_is_refused_while_the_first_runs_and_resumes_after_it_dies(tmp_path):
    """Two fits on one store: the second (resume=True) is refused while the first runs; after the
    first is killed (SIGKILL, its lock left behind), resume takes the stale lock over and gives the
    uninterrupted model."""
    X, y = product_task(1500, 8, seed=3)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    path = tmp_path / "run.zarr"
    params = {"iters": 4, "random_state": 3, "n_iter_no_change": None}
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from rfmdist import RFMRegressor
        X, y = np.load({str(tmp_path / "X.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        linger = lambda outcome: time.sleep(120) if outcome.round >= 1 else None
        RFMRegressor(**{params!r}).fit(X, y, store={str(path)!r}, callback=linger)
        """
    )
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (path / "zarr.json").exists() or _rounds(path) < 2:
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "round 1 was not committed within 180 s"
            time.sleep(0.1)
        with pytest.raises(StoreLockedError, match=rf"pid {first.pid}"):
            RFMRegressor(**params).fit(X, y, store=path, resume=True)
        assert _rounds(path) == 2  # the refused fit wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(f"{path}.lock")
    resumed = RFMRegressor(**params).fit(X, y, store=path, resume=True)
    reference = RFMRegressor(**params).fit(X, y)
    np.testing.assert_allclose(resumed.predict(X), reference.predict(X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        rfmdist.load(path).predict(X), reference.predict(X), rtol=1e-6, atol=1e-6
    )
    assert not os.path.exists(f"{path}.lock")


def _rounds(path) -> int:
    return int(zarr.open_group(str(path), mode="r").attrs.get("completed_rounds", 0))


def test_the_command_line_refuses_a_second_writer_at_once(tmp_path):
    """``rfmdist fit --resume`` on a store another fit is writing: exit 2 with one line, before
    any data is read or a cluster started."""
    url = str(tmp_path / "m.zarr")
    np.savez(tmp_path / "train.npz", X=np.ones((10, 2)), y=np.arange(10.0))
    with StoreLock(url):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "rfmdist.cli", "fit", "--train", str(tmp_path / "train.npz"),
             "--out", url, "--resume"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "found one running" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30
