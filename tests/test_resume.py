"""Checkpointed fits: a resumed run equals an uninterrupted one, and broken runs never load as models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO, as_format_2, product_task

import rfmdist
from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.exceptions import StoreError

# A round takes ~0.3-1 s here: large enough that a kill lands between rounds, small enough for CI.
N, D, ITERS = 1500, 10, 4
PARAMS = {"iters": ITERS, "random_state": 3}
TOL = 1e-6


@pytest.fixture(scope="module")
def task() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    X, y = product_task(N + 300, D, seed=7)
    return X[:N], y[:N], (X[N:], y[N:])


@pytest.fixture(scope="module")
def reference(task) -> RFMRegressor:
    X, y, eval_set = task
    return RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set)


def _assert_same_fit(model, reference, X) -> None:
    np.testing.assert_allclose(model.M_, reference.M_, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=TOL, atol=TOL)
    for key in ("train_score", "val_score"):
        np.testing.assert_allclose(
            [r[key] for r in model.history_], [r[key] for r in reference.history_], rtol=TOL
        )
    for M, M_ref in zip(model.M_history_, reference.M_history_, strict=True):
        np.testing.assert_allclose(M, M_ref, rtol=TOL, atol=TOL)
    assert model.best_iter_ == reference.best_iter_


def _stop_after(round_index: int):
    return lambda outcome: outcome.round == round_index


def test_resume_after_callback_stop_equals_uninterrupted(task, reference, tmp_path):
    X, y, eval_set = task
    path = tmp_path / "run.zarr"
    partial = RFMRegressor(**PARAMS).fit(
        X, y, eval_set=eval_set, store=path, callback=_stop_after(2)
    )
    assert len(partial.history_) == 3
    assert zarr.open_group(str(path), mode="r").attrs["completed_rounds"] == 3
    with pytest.raises(StoreError, match=r"interrupted fit.*resume=True"):
        rfmdist.load(path)
    ran = []
    resumed = RFMRegressor(**PARAMS).fit(
        X, y, eval_set=eval_set, store=path, resume=True, callback=lambda o: ran.append(o.round)
    )
    assert ran == [3, 4]
    _assert_same_fit(resumed, reference, X)
    _assert_same_fit(rfmdist.load(path), reference, X)


def test_uncommitted_round_data_is_ignored(task, reference, tmp_path):
    """A crash after a round's arrays were written but before the commit: extra rows are rewritten."""
    X, y, eval_set = task
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, callback=_stop_after(1))
    group = zarr.open_group(str(path), mode="r+")
    assert group.attrs["completed_rounds"] == 2 and "history/M/2" in group
    # What round 2 would have written before its commit: its coef and M_3.
    group["checkpoint/coef"].resize((3, N, 1))
    group["checkpoint/coef"][2] = -1.0
    group.create_array("history/M/3", data=np.full((D, D), 123.0)).attrs["form"] = "dense"
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    _assert_same_fit(resumed, reference, X)


def test_resume_after_sigkill_equals_uninterrupted(task, reference, tmp_path):
    X, y, eval_set = task
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "X_val.npy", eval_set[0])
    np.save(tmp_path / "y_val.npy", eval_set[1])
    path = tmp_path / "run.zarr"
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from rfmdist import RFMRegressor
        load = lambda name: np.load({str(tmp_path)!r} + "/" + name + ".npy")
        # From round 2 on, linger after each commit so that the kill lands between rounds.
        linger = lambda outcome: time.sleep(60) if outcome.round >= 2 else None
        RFMRegressor(**{PARAMS!r}).fit(
            load("X"), load("y"), eval_set=(load("X_val"), load("y_val")),
            store={str(path)!r}, callback=linger,
        )
        """
    )
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while _committed(path) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "round 2 was not committed within 180 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _committed(path) == 3
    with pytest.raises(StoreError, match="interrupted fit"):
        rfmdist.load(path)
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    _assert_same_fit(resumed, reference, X)
    _assert_same_fit(rfmdist.load(path), reference, X)


def _committed(path: Path) -> int:
    if not (path / "zarr.json").exists():
        return 0
    return int(zarr.open_group(str(path), mode="r").attrs.get("completed_rounds", 0))


def test_resume_of_complete_store_does_not_refit(task, tmp_path):
    X, y, _ = task
    X, y = X[:300], y[:300]
    path = tmp_path / "model.zarr"
    model = RFMRegressor(iters=1, random_state=0).fit(X, y, store=path)
    calls = []
    again = RFMRegressor(iters=1, random_state=0).fit(
        X, y, store=path, resume=True, callback=calls.append
    )
    assert calls == []
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_resume_with_nothing_there_starts_a_new_run(task, tmp_path):
    X, y, _ = task
    path = tmp_path / "model.zarr"
    model = RFMRegressor(iters=1, random_state=0).fit(X[:300], y[:300], store=path, resume=True)
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), model.predict(X))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"reg": 1e-2}}, r"parameter reg: 0\.001 vs 0\.01"),
        ({"rows": 299}, "data n: 300 vs 299"),
        ({"perturb": True}, "data hash"),
        ({"eval_set": True}, "data eval_set"),
        ({"classifier": True}, "estimator 'RFMRegressor' vs 'RFMClassifier'"),
    ],
)
def test_resume_refuses_other_data_or_params(task, tmp_path, change, message):
    X, y, _ = task
    X, y = X[:300].copy(), y[:300]
    path = tmp_path / "run.zarr"
    RFMRegressor(iters=2, random_state=0).fit(X, y, store=path, callback=_stop_after(0))
    params = {"iters": 2, "random_state": 0} | change.get("params", {})
    cls = RFMClassifier if change.get("classifier") else RFMRegressor
    target = (y > 0).astype(int) if change.get("classifier") else y
    n = change.get("rows", 300)
    if change.get("perturb"):
        X[0, 0] += 1e-9
    eval_set = (X[:20], y[:20]) if change.get("eval_set") else None
    with pytest.raises(StoreError, match=message):
        cls(**params).fit(X[:n], target[:n], eval_set=eval_set, store=path, resume=True)
    assert _committed(path) == 1


def test_interrupted_store_refused_without_resume(task, tmp_path):
    X, y, _ = task
    path = tmp_path / "run.zarr"
    RFMRegressor(iters=2, random_state=0).fit(X[:300], y[:300], store=path, callback=_stop_after(0))
    with pytest.raises(FileExistsError, match=r"interrupted fit.*resume=True"):
        RFMRegressor(iters=2, random_state=0).fit(X[:300], y[:300], store=path)
    model = RFMRegressor(iters=2, random_state=0).fit(X[:300], y[:300], store=path, overwrite=True)
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), model.predict(X))


def test_resume_of_an_overwrite_run(task, reference, tmp_path):
    X, y, eval_set = task
    path = tmp_path / "model.zarr"
    old = RFMRegressor(iters=1, random_state=0).fit(X[:300], y[:300], store=path)
    RFMRegressor(**PARAMS).fit(
        X, y, eval_set=eval_set, store=path, overwrite=True, callback=_stop_after(1)
    )
    assert Path(f"{path}.partial").is_dir()
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), old.predict(X))
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    _assert_same_fit(resumed, reference, X)
    _assert_same_fit(rfmdist.load(path), reference, X)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr"]


def test_stored_centers_equal_recomputed_ones(task, tmp_path):
    """Resume recomputes Nyström centers from the stored seed: they match the stored ones."""
    X, y, _ = task
    path = tmp_path / "run.zarr"
    params = {"iters": 2, "centers": 200, "random_state": None}
    first = RFMRegressor(**params).fit(X, y, store=path, callback=_stop_after(0))
    resumed = RFMRegressor(**params).fit(X, y, store=path, resume=True)
    stored = zarr.open_group(str(path), mode="r")["centers"][...]
    np.testing.assert_array_equal(resumed.centers_, stored)
    np.testing.assert_array_equal(first.centers_, stored)
    assert resumed.seed_ == first.seed_


def test_unfinished_store_loads_its_best_committed_round_read_only(task, tmp_path):
    """``load(path, incomplete=True)`` gives the best round committed so far, equal to a finished
    fit of as many rounds, and leaves the store as it was (the fit then resumes normally)."""
    X, y, eval_set = task
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, callback=_stop_after(2))
    before = {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    loaded = rfmdist.load(path, incomplete=True)
    finished_3_rounds = RFMRegressor(**{**PARAMS, "iters": 2}).fit(X, y, eval_set=eval_set)
    assert [r["round"] for r in loaded.history_] == [0, 1, 2]
    _assert_same_fit(loaded, finished_3_rounds, X)
    after = {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    assert after == before
    with pytest.raises(StoreError, match="interrupted fit"):
        rfmdist.load(path)
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    assert len(resumed.history_) == ITERS + 1


# --- early stopping, the internal split and its refit ----------------------------------------------


@pytest.fixture(scope="module")
def split_reference(task) -> RFMRegressor:
    """The default fit without eval_set: an internal split chooses the round, then a refit."""
    X, y, _ = task
    return RFMRegressor(**PARAMS).fit(X, y)


def test_resume_of_a_split_run_equals_uninterrupted_refit_included(task, split_reference, tmp_path):
    X, y, _ = task
    assert split_reference.refit_ is not None
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, store=path, callback=_stop_after(0))
    resumed = RFMRegressor(**PARAMS).fit(X, y, store=path, resume=True)
    for model in (resumed, rfmdist.load(path)):
        _assert_same_fit(model, split_reference, X)
        assert model.refit_["rows"] == N
        np.testing.assert_allclose(model.coef_, split_reference.coef_, rtol=TOL, atol=TOL)


def test_a_committed_refit_is_not_recomputed_on_resume(
    task, split_reference, tmp_path, monkeypatch
):
    """A crash after the refit was committed but before the store was marked complete: resume
    finishes the store with the committed refit and runs nothing."""
    from rfmdist.store import RunWriter

    X, y, _ = task
    path = tmp_path / "run.zarr"

    def crash(self):
        raise RuntimeError("killed before finish")

    with monkeypatch.context() as patch:
        patch.setattr(RunWriter, "finish", crash)
        with pytest.raises(RuntimeError, match="killed before finish"):
            RFMRegressor(**PARAMS).fit(X, y, store=path)
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert attrs["status"] == "running" and attrs["refit"]["rows"] == N
    ran = []
    resumed = RFMRegressor(**PARAMS).fit(X, y, store=path, resume=True, callback=ran.append)
    assert ran == []
    _assert_same_fit(resumed, split_reference, X)
    _assert_same_fit(rfmdist.load(path), split_reference, X)


@pytest.mark.parametrize("version", [1, 2])
def test_older_format_stores_still_load(task, tmp_path, version):
    """Stores of formats 1 (before refits existed) and 2 (every M dense in one (R, d, d) array)
    load as before."""
    X, y, eval_set = task
    model = RFMRegressor(iters=1, random_state=0).fit(X[:300], y[:300], eval_set=eval_set)
    path = tmp_path / "old.zarr"
    model.save(path)
    as_format_2(path, version=version)
    old = rfmdist.load(path)
    np.testing.assert_array_equal(old.predict(X), model.predict(X))
    for M, M_ref in zip(old.M_history_, model.M_history_, strict=True):
        np.testing.assert_array_equal(M, M_ref)


def test_format_2_run_resumes_in_its_own_layout(task, reference, tmp_path):
    """An interrupted run of format 2 resumes to the uninterrupted fit, writing the next rounds'
    M into its (R, d, d) history array as that format does."""
    X, y, eval_set = task
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, callback=_stop_after(1))
    as_format_2(path)
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    _assert_same_fit(resumed, reference, X)
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["format_version"] == 2
    assert group["history/M"].shape == (len(reference.history_), D, D)
    _assert_same_fit(rfmdist.load(path), reference, X)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("middle row", r"data sample_hash.*|data x_sum differs in columns \[3\]"),
        ("rows shuffled", r"x_weighted differs.*rows moved"),
        ("column rescaled", r"x_sum differs in columns \[2\].*rescaled"),
        ("validation row", r"eval_x_sum differs in columns \[1\]"),
    ],
)
def test_resume_refuses_data_changed_anywhere(task, tmp_path, change, message):
    """The fingerprint covers every row: a changed middle row (outside the first/last rows that the
    old fingerprint hashed), the same rows in another order, a rescaled column, a changed
    validation row: each refused, naming what differs."""
    X, y, (X_val, y_val) = task
    X, y, X_val = X[:400].copy(), y[:400].copy(), X_val.copy()
    path = tmp_path / "run.zarr"
    params = {"iters": 2, "random_state": 0}
    RFMRegressor(**params).fit(X, y, eval_set=(X_val, y_val), store=path, callback=_stop_after(0))
    if change == "middle row":
        X[201, 3] += 0.5
    elif change == "rows shuffled":
        order = np.r_[0:16, np.random.default_rng(1).permutation(np.arange(16, 384)), 384:400]
        X, y = X[order], y[order]  # the first and last 16 rows stay where they were
    elif change == "column rescaled":
        X[:, 2] *= 2.0
    else:
        X_val[77, 1] -= 0.25
    with pytest.raises(StoreError, match=message):
        RFMRegressor(**params).fit(X, y, eval_set=(X_val, y_val), store=path, resume=True)
    assert _committed(path) == 1


# --- a full disk during a commit ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["round arrays", "attributes"])
def test_disk_full_during_a_commit_keeps_the_previous_round(task, reference, tmp_path, what):
    """Writes fail with ENOSPC (injected into Zarr's local store, where every file write goes) while
    round 2 is committed: its arrays, or the attribute write that is the commit itself. The fit
    raises an error that says so; the store keeps rounds 0 and 1; resume completes the same fit."""
    import errno

    import zarr.storage._local as local

    X, y, eval_set = task
    path = tmp_path / "run.zarr"
    real_put = local._put
    armed = {"on": False}

    def full_disk(target, value, exclusive=False):
        is_attrs = str(target) == str(path / "zarr.json")
        if armed["on"] and (is_attrs if what == "attributes" else not is_attrs):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_put(target, value, exclusive=exclusive)

    def arm_after_round_1(outcome):
        armed["on"] = outcome.round == 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local, "_put", full_disk)
        with pytest.raises(OSError, match=r"could not commit round 2 .*No space left on device"):
            RFMRegressor(**PARAMS).fit(
                X, y, eval_set=eval_set, store=path, callback=arm_after_round_1
            )
    assert _committed(path) == 2
    partial = rfmdist.load(path, incomplete=True)
    assert len(partial.history_) == 2
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    _assert_same_fit(resumed, reference, X)
    _assert_same_fit(rfmdist.load(path), reference, X)


def test_a_resumed_run_keeps_the_dtype_its_device_chose(task, monkeypatch, tmp_path):
    """dtype=None is chosen per device (rfmdist.precision): a run started where float32 was
    chosen (a consumer GPU, here the rule's answer replaced) and resumed where float64 would be
    (this CPU) continues in float32, and equals the uninterrupted float32 run."""
    import rfmdist.estimators as estimators
    from rfmdist.precision import DtypeChoice

    X, y, eval_set = task
    chose_float32 = DtypeChoice(np.dtype(np.float32), "the float32 device")
    with monkeypatch.context() as patch:
        patch.setattr(estimators, "choose_dtype", lambda dtype, device: chose_float32)
        reference = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set)
        path = tmp_path / "run.zarr"
        RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, callback=_stop_after(1))
    resumed = RFMRegressor(**PARAMS).fit(X, y, eval_set=eval_set, store=path, resume=True)
    assert [h["dtype"] for h in resumed.history_] == ["float32"] * len(resumed.history_)
    assert resumed.history_[-1]["dtype_choice"] == {
        "dtype": "float32",
        "reason": "the float32 device (the run being resumed)",
    }
    assert resumed.model_.dtype == rfmdist.load(path).model_.dtype == np.float32
    _assert_same_fit(resumed, reference, X)
