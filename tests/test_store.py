"""Zarr model stores: save -> load round trips, the documented layout, and refusals of bad stores."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import as_format_2, product_task

import rfmdist
from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.exceptions import StoreError
from rfmdist.store import FORMAT_NAME, FORMAT_VERSION, REQUIRED_ATTRS

SMALL = {"iters": 2, "random_state": 0}


def _regression(n: int = 200, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return product_task(n, d, seed)


def _fit_case(case: str) -> tuple[object, np.ndarray]:
    X, y = _regression()
    if case == "regressor":
        return RFMRegressor(**SMALL).fit(X, y), X
    if case == "multi_output":
        Y = np.column_stack([y, X[:, 2] - X[:, 3]])
        return RFMRegressor(**SMALL).fit(X, Y, eval_set=(X[:50], Y[:50])), X
    if case == "classifier_strings":
        X, labels = _classifier_data()
        return RFMClassifier(**SMALL).fit(X, labels, eval_set=(X[:50], labels[:50])), X
    if case == "diag":
        return RFMRegressor(diag=True, **SMALL).fit(X, y), X
    if case == "nystrom":
        return RFMRegressor(centers=60, **SMALL).fit(X, y), X
    if case == "explicit_centers":
        return RFMRegressor(centers=X[:40] + 0.1, **SMALL).fit(X, y), X
    raise AssertionError(case)


def _same_params(a: dict, b: dict) -> bool:
    return all(
        np.array_equal(a[k], b[k]) if hasattr(a[k], "shape") else a[k] == b[k] for k in a
    ) and set(a) == set(b)


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize(
    "case",
    ["regressor", "multi_output", "classifier_strings", "diag", "nystrom", "explicit_centers"],
)
def test_save_load_predicts_identically(case, tmp_path):
    model, X = _fit_case(case)
    path = tmp_path / "model.zarr"
    model.save(path)
    loaded = rfmdist.load(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert _same_params(loaded.get_params(), model.get_params())
    assert loaded.history_ == json.loads(json.dumps(model.history_))
    assert loaded.best_iter_ == model.best_iter_ and loaded.seed_ == model.seed_
    np.testing.assert_array_equal(loaded.M_, model.M_)
    np.testing.assert_array_equal(np.stack(loaded.M_history_), np.stack(model.M_history_))
    if isinstance(model, RFMClassifier):
        assert loaded.classes_.tolist() == model.classes_.tolist()
        np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))


@pytest.mark.parametrize("kind", ["memory", "file_url"])
def test_save_load_urls(kind, tmp_path):
    model, X = _fit_case("regressor")
    url = (
        f"memory://{tmp_path.name}/model.zarr" if kind == "memory" else f"file://{tmp_path}/m.zarr"
    )
    model.save(url)
    np.testing.assert_array_equal(RFMRegressor.load(url).predict(X), model.predict(X))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(url)
    model.save(url, overwrite=True)
    np.testing.assert_array_equal(rfmdist.load(url).predict(X), model.predict(X))


def test_fit_with_memory_store_loads():
    X, y = _regression()
    url = "memory://fit-store-test/model.zarr"
    model = RFMRegressor(**SMALL).fit(X, y, store=url, overwrite=True)
    np.testing.assert_array_equal(rfmdist.load(url).predict(X), model.predict(X))


def test_finished_store_has_documented_layout(tmp_path):
    X, labels = _classifier_data()
    path = tmp_path / "model.zarr"
    RFMClassifier(**SMALL).fit(X, labels, eval_set=(X[:50], labels[:50]), store=path)
    group = zarr.open_group(str(path), mode="r")
    d, m, c, rounds = 4, 200, 3, 3
    shapes = {
        "coef": (m, c),
        "centers": (m, d),
        "history/M/0": (d,),
        "history/M/1": (d, d),
        "history/M/2": (d, d),
        "preprocessing/mean": (d,),
        "preprocessing/scale": (d,),
        "classes": (3,),
    }
    for name, shape in shapes.items():
        assert group[name].shape == shape, name
    # M_0 = I is stored as its form and diagonal; the AGOPs of d = 4 features are dense.
    forms = [group[f"history/M/{t}"].attrs["form"] for t in range(rounds)]
    assert forms == ["identity", "dense", "dense"] and f"history/M/{rounds}" not in group
    best = dict(group.attrs)["best_iter"]
    assert group["M"].attrs["form"] == forms[best]
    np.testing.assert_array_equal(group["M"][...], group[f"history/M/{best}"][...])
    assert "checkpoint" not in group and "target_scaling" not in group
    assert group["coef"].dtype == np.float64 and group["history/M/1"].dtype == np.float64
    attrs = dict(group.attrs)
    assert set(REQUIRED_ATTRS) <= set(attrs) and "versions" in attrs
    assert (attrs["format"], attrs["format_version"]) == (FORMAT_NAME, FORMAT_VERSION)
    assert attrs["status"] == "complete" and attrs["completed_rounds"] == rounds
    assert attrs["estimator"] == "RFMClassifier" and attrs["params"]["iters"] == 2
    assert attrs["data"]["classes"] == ["neg-a", "neg-b", "positive"]
    assert {"n", "d", "n_outputs", "dtype", "hash", "eval_set"} <= set(attrs["data"])
    assert len(attrs["history"]) == rounds and "solve" in attrs["history"][0]
    assert set(attrs["versions"]) == {"rfmdist", "numpy", "zarr", "dask"}
    json.dumps(attrs, allow_nan=False)


def _classifier_data() -> tuple[np.ndarray, np.ndarray]:
    X, y = _regression()
    return X, np.where(y > 0, "positive", np.where(X[:, 2] > 0, "neg-a", "neg-b"))


def test_regressor_store_has_target_scaling_and_array_params(tmp_path):
    model, _ = _fit_case("explicit_centers")
    model.save(tmp_path / "m.zarr")
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert group["target_scaling/mean"].shape == (1,)
    assert group.attrs["params"]["centers"] == {"array": "params/centers"}
    assert group["params/centers"].shape == (40, 4)


@pytest.fixture
def saved(tmp_path) -> Path:
    model, _ = _fit_case("regressor")
    path = tmp_path / "model.zarr"
    model.save(path)
    return path


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="found no Zarr group"):
        rfmdist.load(tmp_path / "nothing.zarr")


def test_deleted_array(saved):
    group = zarr.open_group(str(saved), mode="r+")
    del group["coef"]
    with pytest.raises(StoreError, match=r"Expected an array 'coef'.*found none"):
        rfmdist.load(saved)


def test_wrong_shape(saved):
    group = zarr.open_group(str(saved), mode="r+")
    group.create_array("M", data=np.eye(3), overwrite=True)
    with pytest.raises(StoreError, match=r"Expected array 'M' of shape \(4, 4\).*found \(3, 3\)"):
        rfmdist.load(saved)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format_version": 99}, "Expected store format version 1 or 2 or 3.*found 99"),
        ({"format": "something-else"}, "Expected an rfmdist store"),
        ({"completed_rounds": 5}, "Expected 5 history records"),
        ({"best_iter": 7}, "best_iter=7"),
    ],
)
def test_edited_attributes(saved, edit, message):
    zarr.open_group(str(saved), mode="r+").attrs.update(edit)
    with pytest.raises(StoreError, match=message):
        rfmdist.load(saved)


def test_history_rows_disagree_with_attrs(saved):
    group = zarr.open_group(str(saved), mode="r+")
    del group["history/M/2"]
    with pytest.raises(StoreError, match="Expected an array 'history/M/2'"):
        rfmdist.load(saved)


def test_format_2_history_rows_disagree_with_attrs(saved):
    as_format_2(saved)
    group = zarr.open_group(str(saved), mode="r+")
    group["history/M"].resize((2, 4, 4))
    with pytest.raises(StoreError, match="'history/M' with 3 rows"):
        rfmdist.load(saved)


def test_missing_attribute(saved):
    group = zarr.open_group(str(saved), mode="r+")
    attrs = dict(group.attrs)
    del attrs["seed"]
    group.attrs.clear()
    group.attrs.update(attrs)
    with pytest.raises(StoreError, match=r"found \['seed'\] missing"):
        rfmdist.load(saved)


def test_unparsable_metadata(saved):
    (saved / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {')
    with pytest.raises(StoreError, match="does not parse"):
        rfmdist.load(saved)


def test_load_with_the_other_class(saved):
    with pytest.raises(StoreError, match=r"Expected a RFMClassifier model.*found a RFMRegressor"):
        RFMClassifier.load(saved)


def test_fit_refuses_existing_model_and_leaves_it_untouched(saved):
    before = _tree_digest(saved)
    X, y = _regression()
    calls = []
    with pytest.raises(FileExistsError, match=r"found a complete rfmdist model.*overwrite=True"):
        RFMRegressor(**SMALL).fit(X, y, store=saved, callback=calls.append)
    assert calls == [] and _tree_digest(saved) == before
    with pytest.raises(FileExistsError, match="found a complete"):
        rfmdist.load(saved).save(saved)
    assert _tree_digest(saved) == before


def test_overwrite_replaces_only_when_the_new_fit_completes(saved):
    X, y = _regression()
    old_pred = rfmdist.load(saved).predict(X)

    def fail_in_round_1(outcome):
        if outcome.round == 1:
            raise RuntimeError("simulated failure")

    new = RFMRegressor(iters=2, bandwidth=5.0, random_state=0)
    with pytest.raises(RuntimeError, match="simulated"):
        new.fit(X, y, store=saved, overwrite=True, callback=fail_in_round_1)
    np.testing.assert_array_equal(rfmdist.load(saved).predict(X), old_pred)
    assert Path(f"{saved}.partial").is_dir()
    new.fit(X, y, store=saved, overwrite=True)
    loaded = rfmdist.load(saved)
    assert loaded.bandwidth == 5.0
    np.testing.assert_array_equal(loaded.predict(X), new.predict(X))
    assert not Path(f"{saved}.partial").exists()
    assert [p.name for p in saved.parent.iterdir()] == ["model.zarr"]


def test_refuses_a_foreign_zarr_group(tmp_path):
    path = tmp_path / "data.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("X", data=np.ones((3, 2)))
    before = _tree_digest(path)
    X, y = _regression()
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="Expected an rfmdist store"):
            RFMRegressor(**SMALL).fit(X, y, store=path, overwrite=overwrite)
    assert _tree_digest(path) == before


def test_every_written_metadata_state_is_consistent(tmp_path, monkeypatch):
    """Each write of the store's root ``zarr.json`` during a fit is a whole commit: a process killed
    after any of them leaves attributes that agree (rounds, best round, history) and can resume."""
    original_set = zarr.storage.LocalStore.set
    states: list[dict] = []

    async def observing_set(self, key, value, *args, **kwargs):
        await original_set(self, key, value, *args, **kwargs)
        if key == "zarr.json":
            states.append(json.loads(value.to_bytes()).get("attributes", {}))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", observing_set)
    X, y = product_task(300, 4, seed=5)
    RFMRegressor(iters=2, random_state=0).fit(X, y, store=tmp_path / "model.zarr")
    run_states = [a for a in states if a]
    assert len(run_states) >= 4  # created, three rounds committed, completed
    for attrs in run_states:
        assert set(REQUIRED_ATTRS) <= set(attrs), sorted(attrs)
        rounds, best = attrs["completed_rounds"], attrs["best_iter"]
        assert len(attrs["history"]) == rounds, attrs
        assert (best is None) if rounds == 0 else (0 <= best < rounds), attrs
    assert [a["completed_rounds"] for a in run_states][-1] == 3
    assert run_states[-1]["status"] == "complete"


def _claim_shape(path: Path, array: str, shape: list[int]) -> None:
    """Edit an array's metadata (only: no chunk is touched) to claim another shape."""
    meta_path = path / array / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = shape
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("array", "shape"),
    [
        ("centers", [10**6, 10**6]),  # 10^12 elements
        ("history/M/1", [10**8, 4]),
        ("fingerprint/x_sum", [10**12]),
    ],
)
def test_hostile_array_shapes_are_refused_before_reading(saved, array, shape):
    """An array whose metadata claims 10^12 elements is refused from its metadata alone (the load
    would otherwise allocate terabytes), with the expected shape in the message."""
    _claim_shape(saved, array, shape)
    with pytest.raises(StoreError, match=rf"Expected array '{array}' of shape .*found"):
        rfmdist.load(saved)


def test_hostile_explicit_centers_parameter_is_refused(tmp_path):
    model, _ = _fit_case("explicit_centers")
    path = tmp_path / "m.zarr"
    model.save(path)
    _claim_shape(path, "params/centers", [10**11, 4])
    with pytest.raises(StoreError, match=r"Expected array 'params/centers' of shape \(<= "):
        rfmdist.load(path)


def test_cg_residuals_live_in_arrays_and_commits_stay_small(tmp_path):
    """Per-iteration CG residuals go to one array per round: the attributes hold a summary, a
    commit's metadata does not grow with iterations x outputs, and loading gives them back."""
    X, y = _regression(n=600, d=5)
    Y = np.column_stack([y, X[:, 0], X[:, 1] ** 2])
    path = tmp_path / "run.zarr"
    sizes = []
    model = RFMRegressor(iters=2, solver="pcg", tol=1e-10, random_state=0, n_iter_no_change=None)
    model.fit(
        X,
        Y,
        store=path,
        callback=lambda outcome: sizes.append((path / "zarr.json").stat().st_size),
    )
    group = zarr.open_group(str(path), mode="r")
    for t, record in enumerate(group.attrs["history"]):
        summary = record["solve"]["residuals"]
        assert summary["array"] == f"history/residuals/{t}"
        iterations = record["solve"]["iterations"]
        assert group[summary["array"]].shape == (iterations + 1, 3)
        assert iterations > 20  # enough iterations that the old inline lists were large
    assert max(b - a for a, b in itertools.pairwise(sizes)) < 8_000
    loaded = rfmdist.load(path)
    for got, want in zip(loaded.history_, model.history_, strict=True):
        np.testing.assert_allclose(got["solve"]["residuals"], want["solve"]["residuals"])
