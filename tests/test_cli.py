"""The command line in-process: readers and writers, predict/evaluate/inspect, and every bad input
exiting 2 with one clear line on stderr, no traceback and no model written."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from rfmdist import RFMClassifier, RFMRegressor
from rfmdist.cli import tables
from rfmdist.cli.fit import choose_task
from rfmdist.cli.main import main


@pytest.fixture
def frame(rng) -> pd.DataFrame:
    X = rng.normal(size=(120, 4))
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["y"] = X[:, 0] * X[:, 1] + 0.5 * X[:, 2]
    return df


@pytest.fixture
def files(tmp_path: Path, frame: pd.DataFrame) -> dict[str, Path]:
    """The same table in every input format."""
    paths = {
        "csv": tmp_path / "data.csv",
        "csv.gz": tmp_path / "data.csv.gz",
        "parquet": tmp_path / "data.parquet",
        "npy": tmp_path / "data.npy",
        "npz": tmp_path / "data.npz",
        "zarr": tmp_path / "data.zarr",
    }
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["csv.gz"], index=False)
    frame.to_parquet(paths["parquet"])
    values = frame.to_numpy()
    np.save(paths["npy"], values)
    np.savez(paths["npz"], X=values[:, :4], y=values[:, 4])
    group = zarr.open_group(str(paths["zarr"]), mode="w")
    group.create_array("X", data=values[:, :4], chunks=(50, 4))
    group.create_array("y", data=values[:, 4], chunks=(50,))
    return paths


@pytest.fixture
def model(tmp_path: Path, frame: pd.DataFrame) -> Path:
    """A small fitted regressor in a store, with the frame's feature names."""
    path = tmp_path / "model.zarr"
    est = RFMRegressor(iters=1, centers=60, random_state=0)
    est.fit(frame[["a", "b", "c", "d"]], frame["y"], store=str(path))
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(code: int, err: str, *fragments: str) -> None:
    """Exit 2, one line on stderr (beyond log lines), no traceback, the expected words."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- readers and writers -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet", "npy", "npz", "zarr"])
def test_readers_agree(files, frame, fmt):
    table = tables.check_table(tables.open_table(files[fmt]), chunk_rows=50)
    assert table.X.chunks == ((50, 50, 20), (4,))
    np.testing.assert_allclose(table.X.compute(), frame[["a", "b", "c", "d"]].to_numpy())
    np.testing.assert_allclose(table.y, frame["y"].to_numpy())
    if fmt in ("csv", "csv.gz", "parquet"):
        assert table.feature_names == ["a", "b", "c", "d"] and table.target_name == "y"


def test_target_by_name_and_index(files):
    by_name = tables.check_table(tables.open_table(files["csv"], target="b"))
    assert by_name.feature_names == ["a", "c", "d", "y"] and by_name.target_name == "b"
    by_index = tables.check_table(tables.open_table(files["npy"], target="0"))
    assert by_index.feature_names == ["x1", "x2", "x3", "x4"] and by_index.target_name == "x0"


@pytest.mark.parametrize("ext", ["zarr", "npy", "csv", "parquet"])
def test_writers_round_trip(tmp_path, ext):
    import dask.array as da

    pred = da.from_array(np.arange(10.0), chunks=4)
    path = tmp_path / f"pred.{ext}"
    tables.write_predictions(pred, str(path), columns=["prediction"])
    back = {
        "zarr": lambda: zarr.open_array(str(path), mode="r")[:],
        "npy": lambda: np.load(path),
        "csv": lambda: pd.read_csv(path)["prediction"].to_numpy(),
        "parquet": lambda: pd.read_parquet(path)["prediction"].to_numpy(),
    }[ext]()
    np.testing.assert_array_equal(back, np.arange(10.0))


@pytest.mark.parametrize(
    ("y", "task"),
    [
        (np.array(["a", "b"] * 5), "classification"),
        (np.array([True, False] * 5), "classification"),
        (np.arange(10) % 3, "classification"),
        (np.arange(100.0), "regression"),  # integer-valued but > 50 distinct values
        (np.linspace(0, 1, 10), "regression"),
    ],
)
def test_task_rule(y, task):
    assert choose_task(y)[0] == task


# --- commands that work --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "npy", "zarr", "parquet"])
def test_predict_writes_every_format(model, files, frame, tmp_path, capsys, ext):
    out = tmp_path / f"pred.{ext}"
    code, stdout, err = run_cli(
        ["predict", "--model", model, "--data", files["csv"], "--out", out], capsys
    )
    assert code == 0, err
    expected = RFMRegressor.load(str(model)).predict(frame[["a", "b", "c", "d"]])
    back = {
        "zarr": lambda: zarr.open_array(str(out), mode="r")[:],
        "npy": lambda: np.load(out),
        "csv": lambda: pd.read_csv(out)["prediction"].to_numpy(),
        "parquet": lambda: pd.read_parquet(out)["prediction"].to_numpy(),
    }[ext]()
    np.testing.assert_allclose(back, expected, rtol=1e-10)
    assert f"wrote {len(frame)} predictions" in stdout


def test_evaluate_and_inspect(model, files, frame, tmp_path, capsys):
    code, stdout, err = run_cli(
        ["evaluate", "--model", model, "--data", files["parquet"], "--json"], capsys
    )
    assert code == 0, err
    scores = json.loads(stdout)
    pred = RFMRegressor.load(str(model)).predict(frame[["a", "b", "c", "d"]])
    mse = float(np.mean((pred - frame["y"].to_numpy()) ** 2))
    assert scores["n"] == len(frame) and scores["target"] == "y"
    assert scores["mse"] == pytest.approx(mse, rel=1e-9)
    assert scores["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-9)
    code, stdout, err = run_cli(["inspect", model, "--json", "--top", "2"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert [r["round"] for r in info["rounds"]] == [0, 1]
    assert {f["name"] for f in info["top_features"]} <= {"a", "b", "c", "d"}
    plot = tmp_path / "imp.png"
    code, stdout, err = run_cli(["inspect", model, "--plot", plot], capsys)
    assert code == 0, err
    assert "best round" in stdout and "status: complete" in stdout and plot.stat().st_size > 1000


def test_inspect_an_unfinished_fit(frame, tmp_path, capsys):
    """A fit still running or interrupted: inspect shows its committed rounds and says how to
    continue, and 'predict' still refuses it."""
    store = tmp_path / "unfinished.zarr"
    X, y = frame[["a", "b", "c", "d"]], frame["y"]
    RFMRegressor(iters=4, random_state=0).fit(
        X, y, store=str(store), callback=lambda o: o.round == 1
    )
    code, stdout, err = run_cli(["inspect", store, "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert [r["round"] for r in info["rounds"]] == [0, 1]
    assert info["status"].startswith("not finished") and "--resume" in info["status"]
    code, stdout, err = run_cli(["inspect", store], capsys)
    assert code == 0 and "2 of 5 rounds committed" in stdout, err
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "p.npy"
    code, _, err = run_cli(["predict", "--model", store, "--data", data, "--out", out], capsys)
    assert code == 2 and "interrupted fit" in err and not out.exists()


def test_evaluate_classifier_with_string_labels(tmp_path, rng, capsys):
    X = rng.normal(size=(80, 3))
    labels = np.where(X[:, 0] > 0, "up", "down")
    df = pd.DataFrame(X, columns=["p", "q", "r"]).assign(label=labels)
    data = tmp_path / "c.parquet"
    df.to_parquet(data)
    store = tmp_path / "clf.zarr"
    RFMClassifier(iters=1, random_state=0).fit(df[["p", "q", "r"]], labels, store=str(store))
    code, stdout, err = run_cli(
        ["evaluate", "--model", store, "--data", data, "--target", "label", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] > 0.9
    out = tmp_path / "labels.npy"
    code, _, err = run_cli(["predict", "--model", store, "--data", data, "--out", out], capsys)
    assert code == 0, err
    assert set(np.load(out).tolist()) <= {"up", "down"}


# --- bad input: exit 2, one line, no model --------------------------------------------------------


def fit_args(train: Path, out: Path, *extra: object) -> list[object]:
    return ["fit", "--train", train, "--out", out, "--iters", "1", *extra]


def test_fit_missing_file(tmp_path, capsys):
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(tmp_path / "nope.csv", out), capsys)
    assert_bad_input(code, err, "Expected a data file", "nope.csv")
    assert not out.exists()


def test_fit_wrong_format(tmp_path, files, capsys):
    out = tmp_path / "m.zarr"
    other = tmp_path / "data.xlsx"
    other.write_bytes(b"PK\x03\x04")
    code, _, err = run_cli(fit_args(other, out), capsys)
    assert_bad_input(code, err, "Expected a file ending in one of", ".xlsx")
    fake = tmp_path / "fake.npy"
    fake.write_text("a,b\n1,2\n")
    code, _, err = run_cli(fit_args(fake, out), capsys)
    assert_bad_input(code, err, "Expected", "NumPy .npy file")
    fake_parquet = tmp_path / "fake.parquet"
    fake_parquet.write_text("a,b\n1,2\n")
    code, _, err = run_cli(fit_args(fake_parquet, out), capsys)
    assert_bad_input(code, err, "Parquet")
    assert not out.exists()


def test_fit_non_numeric_column(tmp_path, frame, capsys):
    bad = frame.assign(b=["x"] * len(frame))
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(path, out), capsys)
    assert_bad_input(code, err, "non-numeric", "'b'")
    assert not out.exists()


def test_fit_nan_rows_counted(tmp_path, frame, capsys):
    bad = frame.copy()
    bad.loc[[3, 7], "c"] = np.nan
    bad.loc[9, "a"] = np.inf
    path = tmp_path / "nan.parquet"
    bad.to_parquet(path)
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(path, out), capsys)
    assert_bad_input(code, err, "3 row(s)")
    bad_y = frame.copy()
    bad_y.loc[0, "y"] = np.nan
    bad_y.to_csv(tmp_path / "nan_y.csv", index=False)
    code, _, err = run_cli(fit_args(tmp_path / "nan_y.csv", out), capsys)
    assert_bad_input(code, err, "target 'y'", "1 row(s)")
    assert not out.exists()


def test_fit_target_absent(files, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(files["csv"], out, "--target", "price"), capsys)
    assert_bad_input(code, err, "'price'", "['a', 'b', 'c', 'd', 'y']")
    code, _, err = run_cli(fit_args(files["zarr"], out, "--target", "labels"), capsys)
    assert_bad_input(code, err, "'labels'", "['X', 'y']")
    assert not out.exists()


def test_fit_mismatched_validation(files, frame, tmp_path, capsys):
    val = tmp_path / "val.csv"
    frame.rename(columns={"c": "cc"}).to_csv(val, index=False)
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(files["csv"], out, "--val", val), capsys)
    assert_bad_input(code, err, "validation", "missing ['c']", "extra ['cc']")
    short = tmp_path / "val.npy"
    np.save(short, frame.to_numpy()[:, 1:])
    code, _, err = run_cli(fit_args(files["npy"], out, "--val", short), capsys)
    assert_bad_input(code, err, "Expected 4 feature columns", "found 3")
    assert not out.exists()


def test_unwritable_outputs(files, tmp_path, model, capsys):
    code, _, err = run_cli(fit_args(files["csv"], tmp_path / "no" / "such" / "m.zarr"), capsys)
    assert_bad_input(code, err, "Expected an existing folder")
    code, _, err = run_cli(fit_args(files["csv"], files["csv"] / "m.zarr"), capsys)
    assert_bad_input(code, err, "Expected an existing folder")
    code, _, err = run_cli(
        ["predict", "--model", model, "--data", files["csv"], "--out", tmp_path / "p.xlsx"], capsys
    )
    assert_bad_input(code, err, ".xlsx")
    existing = tmp_path / "p.csv"
    existing.write_text("keep me\n")
    code, _, err = run_cli(
        ["predict", "--model", model, "--data", files["csv"], "--out", existing], capsys
    )
    assert_bad_input(code, err, "--overwrite")
    assert existing.read_text() == "keep me\n"


def test_fit_refuses_existing_model(files, model, capsys):
    before = (model / "zarr.json").read_bytes()
    code, _, err = run_cli(fit_args(files["csv"], model), capsys)
    assert_bad_input(code, err, "--overwrite", "--resume")
    code, _, err = run_cli(fit_args(files["csv"], model, "--resume", "--overwrite"), capsys)
    assert_bad_input(code, err, "at most one of --resume and --overwrite")
    assert (model / "zarr.json").read_bytes() == before


def test_fit_bad_options(files, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(files["csv"], out, "--bandwidth", "-1"), capsys)
    assert_bad_input(code, err, "--bandwidth", "-1")
    code, _, err = run_cli(fit_args(files["csv"], out, "--centers", "many"), capsys)
    assert_bad_input(code, err, "--centers", "'many'")
    code, _, err = run_cli(fit_args(files["csv"], out, "--memory-limit", "lots"), capsys)
    assert_bad_input(code, err, "--memory-limit", "'lots'")
    code, _, err = run_cli(
        fit_args(files["csv"], out, "--scheduler-file", tmp_path / "s.json"), capsys
    )
    assert_bad_input(code, err, "scheduler file")
    assert not out.exists()


def test_gpus_without_dask_cuda(files, tmp_path, capsys):
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed here")
    except ImportError:
        pass
    out = tmp_path / "m.zarr"
    code, _, err = run_cli(fit_args(files["csv"], out, "--gpus"), capsys)
    assert_bad_input(code, err, "pip install 'rfmdist[cuda12]'")
    assert not out.exists()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_scheduler_address_times_out(files, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    address = f"tcp://127.0.0.1:{unused_port()}"
    started = time.monotonic()
    code, _, err = run_cli(
        fit_args(files["csv"], out, "--scheduler", address, "--connect-timeout", "3"), capsys
    )
    assert time.monotonic() - started < 30
    assert_bad_input(code, err, "Expected a Dask scheduler at", address)
    assert not out.exists()


def test_predict_and_evaluate_bad_model_and_columns(files, frame, tmp_path, model, capsys):
    code, _, err = run_cli(
        [
            "predict",
            "--model",
            tmp_path / "none.zarr",
            "--data",
            files["csv"],
            "--out",
            tmp_path / "p.npy",
        ],
        capsys,
    )
    assert_bad_input(code, err, "Expected a model store")
    missing = tmp_path / "missing_col.csv"
    frame.drop(columns=["d"]).to_csv(missing, index=False)
    code, _, err = run_cli(["evaluate", "--model", model, "--data", missing], capsys)
    assert_bad_input(code, err, "missing", "'d'")
