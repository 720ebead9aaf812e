"""Run planning (rfmdist.store.planning): the pure decision for every combination of what is at the
path and at ``<path>.partial`` and of the flags, against a table written out here; planning touches no
file; and on real stores, nothing at the path is deleted or moved before the new run's first round."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import product_task

import rfmdist
from rfmdist import RFMRegressor
from rfmdist.exceptions import StoreError
from rfmdist.store import RunWriter, decide_run, decide_save, plan_run, save_location
from rfmdist.store.location import StoreLocation

# A location whose file system does not exist: any file-system access in the pure planner raises.
NOWHERE = StoreLocation("no-such-protocol://bucket/model.zarr")
ROUNDS_AT_TARGET = 3
REFUSE_COMPLETE = (
    FileExistsError,
    r"Expected no model at .*, found a complete rfmdist model; pass overwrite=True to replace it "
    r"when the new fit completes, resume=True to load it, or choose another path\.",
)
REFUSE_RUNNING = (
    FileExistsError,
    r"Expected no run at .*, found an interrupted fit \(3 rounds committed\); resume it with "
    r"fit\(X, y, store=path, resume=True\).*, or pass overwrite=True to start over\.",
)
REFUSE_PARTIAL_RUN = (
    FileExistsError,
    r"Expected nothing at .*\.partial' beside the new store, found an interrupted fit; pass "
    r"resume=True to continue \(or move into place\) that run, overwrite=True to discard it",
)
REFUSE_PARTIAL_MODEL = (
    FileExistsError,
    r"Expected nothing at .*\.partial' beside the new store, found a complete model left by a "
    r"replacement that did not finish; pass resume=True",
)
FIRST, DONE = "after_first_commit", "on_complete"

# (at path, at .partial, resume, overwrite) -> (mode, work, clear .partial, replace path) or refusal.
RUN_TABLE = [
    # resume=False, overwrite=False
    (None, None, False, False, ("fresh", "path", False, None)),
    (None, "running", False, False, REFUSE_PARTIAL_RUN),
    (None, "complete", False, False, REFUSE_PARTIAL_MODEL),
    ("running", None, False, False, REFUSE_RUNNING),
    ("running", "running", False, False, REFUSE_RUNNING),
    ("running", "complete", False, False, REFUSE_RUNNING),
    ("complete", None, False, False, REFUSE_COMPLETE),
    ("complete", "running", False, False, REFUSE_COMPLETE),
    ("complete", "complete", False, False, REFUSE_COMPLETE),
    # resume=False, overwrite=True
    (None, None, False, True, ("fresh", "path", False, None)),
    (None, "running", False, True, ("fresh", "path", True, None)),
    (None, "complete", False, True, ("fresh", "path", True, None)),
    ("running", None, False, True, ("fresh", "partial", False, FIRST)),
    ("running", "running", False, True, ("fresh", "partial", True, FIRST)),
    ("running", "complete", False, True, ("fresh", "partial", True, FIRST)),
    ("complete", None, False, True, ("fresh", "partial", False, DONE)),
    ("complete", "running", False, True, ("fresh", "partial", True, DONE)),
    ("complete", "complete", False, True, ("fresh", "partial", True, DONE)),
    # resume=True, overwrite=False
    (None, None, True, False, ("fresh", "path", False, None)),
    (None, "running", True, False, ("resume", "partial", False, FIRST)),
    (None, "complete", True, False, ("finished", "partial", False, DONE)),
    ("running", None, True, False, ("resume", "path", False, None)),
    ("running", "running", True, False, ("resume", "partial", False, FIRST)),
    ("running", "complete", True, False, ("finished", "partial", False, DONE)),
    ("complete", None, True, False, ("finished", "path", False, None)),
    ("complete", "running", True, False, ("resume", "partial", False, DONE)),
    ("complete", "complete", True, False, ("finished", "partial", False, DONE)),
    # resume=True, overwrite=True: resume wins
    (None, None, True, True, ("fresh", "path", False, None)),
    (None, "running", True, True, ("resume", "partial", False, FIRST)),
    (None, "complete", True, True, ("finished", "partial", False, DONE)),
    ("running", None, True, True, ("resume", "path", False, None)),
    ("running", "running", True, True, ("resume", "partial", False, FIRST)),
    ("running", "complete", True, True, ("finished", "partial", False, DONE)),
    ("complete", None, True, True, ("finished", "path", False, None)),
    ("complete", "running", True, True, ("resume", "partial", False, DONE)),
    ("complete", "complete", True, True, ("finished", "partial", False, DONE)),
]

SAVE_TABLE = [
    # (at path, anything at .partial, overwrite) -> (work, clear .partial, replace path) or refusal
    (None, False, False, ("path", False, None)),
    (None, True, False, ("path", True, None)),
    ("running", False, False, (FileExistsError, r"found a running rfmdist store; pass overwrite")),
    ("running", True, False, (FileExistsError, r"found a running rfmdist store; pass overwrite")),
    ("complete", False, False, (FileExistsError, r"found a complete rfmdist store; pass overwr")),
    ("complete", True, False, (FileExistsError, r"found a complete rfmdist store; pass overwr")),
    (None, False, True, ("path", False, None)),
    (None, True, True, ("path", True, None)),
    ("running", False, True, ("partial", False, DONE)),
    ("running", True, True, ("partial", True, DONE)),
    ("complete", False, True, ("partial", False, DONE)),
    ("complete", True, True, ("partial", True, DONE)),
]


def _ids(row: tuple) -> str:
    at_path, at_partial, *flags = row[:-1]
    return f"path={at_path}-partial={at_partial}-" + "-".join(str(int(f)) for f in flags)


def _where(name: str, target: StoreLocation) -> StoreLocation:
    return target if name == "path" else StoreLocation(target.url + ".partial")


# --- the pure planner --------------------------------------------------------------------------------


@pytest.mark.parametrize("row", RUN_TABLE, ids=[_ids(r) for r in RUN_TABLE])
def test_decide_run(row):
    at_path, at_partial, resume, overwrite, expected = row
    decide = lambda: decide_run(  # noqa: E731
        NOWHERE,
        at_path,
        at_partial,
        resume=resume,
        overwrite=overwrite,
        target_rounds=ROUNDS_AT_TARGET if at_path == "running" else 0,
    )
    if isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            decide()
        return
    mode, work, clear, replace = expected
    plan = decide()
    assert (plan.mode, plan.work, plan.clear_partial, plan.replace_target) == (
        mode,
        _where(work, NOWHERE),
        clear,
        replace,
    )
    assert plan.target == NOWHERE and plan.location == plan.work


def test_the_table_covers_every_combination():
    states = (None, "running", "complete")
    keys = {row[:4] for row in RUN_TABLE}
    assert len(RUN_TABLE) == len(keys) == 3 * 3 * 4
    assert keys == {(t, p, r, o) for t in states for p in states for r in (0, 1) for o in (0, 1)}


@pytest.mark.parametrize("row", SAVE_TABLE, ids=[_ids(r) for r in SAVE_TABLE])
def test_decide_save(row):
    at_path, partial_exists, overwrite, expected = row
    if isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            decide_save(NOWHERE, at_path, partial_exists, overwrite=overwrite)
        return
    plan = decide_save(NOWHERE, at_path, partial_exists, overwrite=overwrite)
    work, clear, replace = expected
    assert (plan.mode, plan.work, plan.clear_partial, plan.replace_target) == (
        "fresh",
        _where(work, NOWHERE),
        clear,
        replace,
    )


@pytest.mark.parametrize("where", ["path", "partial"])
def test_decide_run_refuses_an_edited_status(where):
    statuses = ("unknown", None) if where == "path" else (None, "unknown")
    with pytest.raises(
        StoreError, match=r"Expected status 'running' or 'complete'.*found 'unknown'"
    ):
        decide_run(NOWHERE, *statuses, resume=True, overwrite=False)


def test_a_plan_opens_only_the_writer_of_its_mode():
    plan = decide_run(NOWHERE, "running", None, resume=True, overwrite=False)
    with pytest.raises(ValueError, match=r"Expected a plan in mode 'fresh'.*found mode 'resume'"):
        plan.open_writer(None, np.eye(2))


# --- plan_run and save_location on stores that only have their attributes ------------------------------


def _fake_store(path: Path, status: str | None) -> None:
    """What the planner reads of a store: its attributes (or a foreign thing at ``path``)."""
    if status is None:
        return
    if status == "file":
        path.write_text("not a store")
        return
    group = zarr.open_group(str(path), mode="w")
    attrs = {"format": "other" if status == "foreign-group" else "rfmdist-model", "status": status}
    group.update_attributes(attrs | {"completed_rounds": ROUNDS_AT_TARGET})


def _listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("row", RUN_TABLE, ids=[_ids(r) for r in RUN_TABLE])
def test_plan_run_reads_and_touches_nothing(row, tmp_path):
    at_path, at_partial, resume, overwrite, expected = row
    path = tmp_path / "model.zarr"
    _fake_store(path, at_path)
    _fake_store(tmp_path / "model.zarr.partial", at_partial)
    before = _listing(tmp_path)
    if isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            plan_run(path, resume=resume, overwrite=overwrite)
    else:
        plan = plan_run(path, resume=resume, overwrite=overwrite)
        target = StoreLocation(str(path))
        assert (plan.mode, plan.work, plan.clear_partial, plan.replace_target) == (
            expected[0],
            _where(expected[1], target),
            *expected[2:],
        )
    assert _listing(tmp_path) == before


FOREIGN = [
    (thing, at_partial, resume, overwrite)
    for thing in ("file", "foreign-group")
    for at_partial in (None, "running", "complete")
    for resume in (False, True)
    for overwrite in (False, True)
]


@pytest.mark.parametrize("thing, at_partial, resume, overwrite", FOREIGN)
def test_plan_run_refuses_what_is_not_an_rfmdist_store(
    thing, at_partial, resume, overwrite, tmp_path
):
    path = tmp_path / "model.zarr"
    _fake_store(path, thing)
    _fake_store(tmp_path / "model.zarr.partial", at_partial)
    before = _listing(tmp_path)
    found = "something else" if thing == "file" else "a Zarr group with format='other'"
    with pytest.raises(
        StoreError, match=rf"Expected an rfmdist store.*found {found}.*another path"
    ):
        plan_run(path, resume=resume, overwrite=overwrite)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("row", SAVE_TABLE, ids=[_ids(r) for r in SAVE_TABLE])
def test_save_location_touches_nothing(row, tmp_path):
    at_path, partial_exists, overwrite, expected = row
    path = tmp_path / "model.zarr"
    _fake_store(path, at_path)
    _fake_store(tmp_path / "model.zarr.partial", "complete" if partial_exists else None)
    before = _listing(tmp_path)
    if isinstance(expected[0], type):
        with pytest.raises(expected[0], match=expected[1]):
            save_location(path, overwrite=overwrite)
    else:
        plan = save_location(path, overwrite=overwrite)
        assert (plan.work, plan.clear_partial) == (
            _where(expected[0], StoreLocation(str(path))),
            expected[1],
        )
    assert _listing(tmp_path) == before


# --- real stores: when the deferred operations happen ------------------------------------------------

PARAMS = {"iters": 2, "random_state": 0}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return product_task(200, 4, seed=0)


def _stop_after(round_index: int):
    return lambda outcome: outcome.round == round_index


def _attrs(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)


@pytest.mark.parametrize("at_path", ["complete", "running"])
def test_an_overwrite_fit_refused_by_validation_leaves_everything_untouched(
    at_path, data, tmp_path
):
    """Bad X (a NaN) fails in validation: the model or interrupted run at the path, and a stale
    ``.partial`` beside it, are as they were (today's planner deleted the latter two first)."""
    X, y = data
    path = tmp_path / "model.zarr"
    stop = None if at_path == "complete" else _stop_after(0)
    RFMRegressor(**PARAMS).fit(X, y, store=path, callback=stop)
    assert _attrs(path)["status"] == at_path
    shutil.copytree(path, tmp_path / "model.zarr.partial")  # a stale run beside it
    before = _listing(tmp_path)
    X_bad = X.copy()
    X_bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="Expected finite values"):
        RFMRegressor(bandwidth=5.0, **PARAMS).fit(X_bad, y, store=path, overwrite=True)
    assert _listing(tmp_path) == before


def test_an_overwrite_of_an_interrupted_run_replaces_it_after_round_0(data, tmp_path):
    X, y = data
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, store=path, callback=_stop_after(0))
    seen = []

    def look(outcome):
        seen.append((_attrs(path)["params"]["bandwidth"], _attrs(path)["completed_rounds"]))
        seen.append(Path(f"{path}.partial").exists())
        return outcome.round == 0

    new = RFMRegressor(bandwidth=5.0, **PARAMS)
    new.fit(X, y, store=path, overwrite=True, callback=look)
    assert seen == [(5.0, 1), False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]
    resumed = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y, store=path, resume=True)
    reference = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y)
    np.testing.assert_allclose(resumed.predict(X), reference.predict(X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rfmdist.load(path).predict(X), reference.predict(X), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]


def test_an_overwrite_that_fails_before_its_first_commit_keeps_the_old_run(
    data, tmp_path, monkeypatch
):
    """The new run waits at ``.partial`` until a round is committed; resume continues it there and
    moves it over the old run after its first commit."""
    X, y = data
    path = tmp_path / "run.zarr"
    RFMRegressor(**PARAMS).fit(X, y, store=path, callback=_stop_after(0))
    before = _listing(path)

    def crash(*args, **kwargs):
        raise RuntimeError("killed in round 0")

    with monkeypatch.context() as patch:
        patch.setattr(RunWriter, "commit_round", crash)
        with pytest.raises(RuntimeError, match="killed in round 0"):
            RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y, store=path, overwrite=True)
    assert _listing(path) == before
    partial = Path(f"{path}.partial")
    assert _attrs(partial)["completed_rounds"] == 0 and _attrs(partial)["status"] == "running"
    resumed = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y, store=path, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]
    assert _attrs(path)["params"]["bandwidth"] == 5.0 and _attrs(path)["status"] == "complete"
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), resumed.predict(X))


def test_a_complete_partial_moves_into_place_only_once_checked(data, tmp_path):
    """A finished overwrite run left at ``.partial`` (a crash before its move): resume with other
    parameters is refused and moves nothing; with its own it is loaded and moved over the old model."""
    X, y = data
    path = tmp_path / "model.zarr"
    old = RFMRegressor(**PARAMS).fit(X, y, store=path)
    new = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y, store=tmp_path / "elsewhere.zarr")
    (tmp_path / "elsewhere.zarr").rename(tmp_path / "model.zarr.partial")
    before = _listing(tmp_path)
    with pytest.raises(StoreError, match="parameter bandwidth"):
        RFMRegressor(**PARAMS).fit(X, y, store=path, resume=True)
    assert _listing(tmp_path) == before
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), old.predict(X))
    loaded = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y, store=path, resume=True)
    np.testing.assert_array_equal(loaded.predict(X), new.predict(X))
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), new.predict(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr"]


def test_save_over_a_store_clears_a_stale_partial_and_replaces_it(data, tmp_path):
    X, y = data
    path = tmp_path / "model.zarr"
    model = RFMRegressor(**PARAMS).fit(X, y)
    model.save(path)
    Path(f"{path}.partial").write_text("stale")
    other = RFMRegressor(bandwidth=5.0, **PARAMS).fit(X, y)
    other.save(path, overwrite=True)
    np.testing.assert_array_equal(rfmdist.load(path).predict(X), other.predict(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr"]
