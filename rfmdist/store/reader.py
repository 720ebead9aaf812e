"""Reading stores: the status of what is at a path, and a store's contents checked against its
attributes before anything is allocated (format: :mod:`rfmdist.store`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.exceptions import StoreError
from rfmdist.fingerprint import VECTORS
from rfmdist.metric import Metric
from rfmdist.model import KernelMachine, Standardizer
from rfmdist.store.codec import params_from_store
from rfmdist.store.layout import (
    FORMAT_NAME,
    MAX_ARRAY_PARAM_ELEMENTS,
    READABLE_VERSIONS,
    REQUIRED_ATTRS,
    RESUME_HINT,
    open_group,
    read_array,
)
from rfmdist.store.location import StoreLocation, store_location
from rfmdist.store.metrics import read_metric, read_round_metrics


def read_status(location: StoreLocation) -> str | None:
    """Status of the store at ``location``: None (nothing there), 'running' or 'complete'.

    Raises StoreError when something other than an rfmdist store is there.
    """
    if not location.exists():
        return None
    if not location.has_group():
        raise StoreError(
            f"Expected an rfmdist store (a Zarr group) or nothing at {location.url!r}, found "
            "something else; choose another path (rfmdist never deletes data it did not write)."
        )
    attrs = dict(open_group(location, "r").attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(
            f"Expected an rfmdist store (attribute format={FORMAT_NAME!r}) at {location.url!r}, "
            f"found a Zarr group with format={attrs.get('format')!r}; choose another path (rfmdist "
            "never deletes data it did not write)."
        )
    return str(attrs.get("status"))


def store_status(path: str | os.PathLike[str]) -> str | None:
    """Status of the store at ``path`` from its attributes alone (no array is read): None (nothing
    there), 'running' (a fit running or interrupted) or 'complete'.

    Raises StoreError when something other than an rfmdist store is there.
    """
    return read_status(store_location(path))


@dataclass
class RunAttributes:
    """A store's attributes, checked (its header), with typed accessors: what a plan or a status
    needs of a run, read without any of its arrays (:func:`read_run_attributes`).

    Attributes
    ----------
    attrs : dict
        All attributes (see :mod:`rfmdist.store`).
    """

    attrs: dict[str, Any]

    @property
    def refit(self) -> dict[str, Any] | None:
        """The record of the committed refit on all rows (None without one); ``machine`` is then
        the refitted model."""
        return self.attrs.get("refit")

    @property
    def completed_rounds(self) -> int:
        """Number of committed rounds ``R``."""
        return int(self.attrs["completed_rounds"])

    @property
    def best_iter(self) -> int | None:
        """The best committed round (None before the first)."""
        best = self.attrs["best_iter"]
        return None if best is None else int(best)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-round records (with their CG residuals read back)."""
        return list(self.attrs["history"])

    @property
    def estimator(self) -> str:
        """The class name of the estimator that fitted it."""
        return str(self.attrs["estimator"])

    @property
    def status(self) -> str:
        """``'running'`` or ``'complete'``."""
        return str(self.attrs["status"])

    @property
    def seed(self) -> int:
        """The seed the fit drew (and a resumed fit keeps)."""
        return int(self.attrs["seed"])

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The data's fingerprint (attribute ``data``: shape, hashes, the validation data's)."""
        return self.attrs["data"]

    @property
    def estimator_state(self) -> dict[str, Any]:
        """``{"y_1d", "n_features_in", "feature_names_in"}`` of the estimator."""
        return self.attrs["estimator_state"]

    @property
    def n_centers(self) -> int | None:
        """The rounds' count of centers (None: a format 1 store, which did not record it)."""
        count = self.attrs.get("n_centers")
        return None if count is None else int(count)

    @property
    def rates(self) -> dict[str, Any] | None:
        """The cost model's measured rates the run chose its solvers with (None: none measured)."""
        return self.attrs.get("rates")

    @property
    def plan(self) -> dict[str, Any] | None:
        """The run's plan (:class:`rfmdist.plan.FitPlan`'s record; None: stored before plans)."""
        return self.attrs.get("plan")

    @property
    def dtype_choice(self) -> dict[str, Any] | None:
        """The kernel dtype the run chose and why (round 0's record; None before it)."""
        history = self.attrs["history"]
        return history[0].get("dtype_choice") if history else None


@dataclass
class StoredRun(RunAttributes):
    """A store's contents, checked against its attributes (and their accessors,
    :class:`RunAttributes`).

    Attributes
    ----------
    params : dict
        ``set_params`` keywords.
    machine : KernelMachine or None
        The best round's machine (None for a run with no committed round).
    metric_history : list of Metric
        ``M_t`` of the committed rounds.
    next_metric : Metric or None
        ``M_R``, the next round's feature matrix (runs in progress; None when complete).
    classes : numpy.ndarray or None
    data_vectors : dict of str to numpy.ndarray
        The data fingerprint's per-column sums.
    preprocessing, target_scaling : Standardizer
        The run's (a resumed run keeps them: computed again from data in other chunks they could
        differ in their last bits).
    """

    params: dict[str, Any]
    machine: KernelMachine | None
    metric_history: list[Metric]
    next_metric: Metric | None
    classes: np.ndarray | None
    data_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    preprocessing: Standardizer = field(default_factory=Standardizer)
    target_scaling: Standardizer = field(default_factory=Standardizer)


def _check_header(location: StoreLocation, attrs: dict[str, Any]) -> None:
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(
            f"Expected an rfmdist store (format={FORMAT_NAME!r}) at {location.url!r}, found "
            f"format={attrs.get('format')!r}; pass the path of a store written by rfmdist."
        )
    if attrs.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(
            f"Expected store format version {' or '.join(map(str, READABLE_VERSIONS))} at "
            f"{location.url!r}, found "
            f"{attrs.get('format_version')!r}; load it with the rfmdist version that wrote it "
            f"({attrs.get('versions', {}).get('rfmdist', 'unknown')}) or refit."
        )
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise StoreError(
            f"Expected attributes {list(REQUIRED_ATTRS)} in the store at {location.url!r}, found "
            f"{missing} missing; the store is damaged: restore it from a copy or refit."
        )


def _max_centers(params: dict[str, Any], n: int, group: Any) -> int:
    """The most centers a store's attributes allow: the training rows, or an explicit centers array
    (bounded by :data:`MAX_ARRAY_PARAM_ELEMENTS`)."""
    spec = params.get("centers")
    if isinstance(spec, dict) and "array" in spec:
        return max(n, MAX_ARRAY_PARAM_ELEMENTS // max(1, int(group.attrs["data"]["d"])))
    return n


def _read_standardizer(group: Any, prefix: str, location: StoreLocation, size: int) -> Standardizer:
    if f"{prefix}/mean" not in group:
        return Standardizer()
    mean = read_array(group, f"{prefix}/mean", location, (size,))[...]
    scale = read_array(group, f"{prefix}/scale", location, (size,))[...]
    return Standardizer(mean=np.asarray(mean), scale=np.asarray(scale))


def _read_classes(group: Any, location: StoreLocation, classes_attr: list | None) -> Any:
    if classes_attr is None:
        return None
    values = read_array(group, "classes", location, (len(classes_attr),))[...]
    return np.asarray(values if values.dtype.kind in "biuf" else [str(v) for v in values.tolist()])


def read_run_attributes(path: str | os.PathLike[str]) -> RunAttributes | None:
    """The checked attributes of the store at ``path``, no array read (None: nothing there).

    Raises
    ------
    StoreError
        Something other than an rfmdist store there, or an unknown format or version.
    """
    location = store_location(path)
    if read_status(location) is None:
        return None
    attrs = dict(open_group(location, "r").attrs)
    _check_header(location, attrs)
    return RunAttributes(attrs)


def read_store(path: str | os.PathLike[str], *, require_complete: bool = True) -> StoredRun:
    """Open and check a store.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL.
    require_complete : bool
        Refuse runs in progress (loading a model); False to read one for resume.

    Raises
    ------
    StoreError
        No store at ``path``, an unknown format or version, a missing array or attribute, shapes that
        disagree with the attributes, or (with ``require_complete``) an interrupted fit.
    """
    location = store_location(path)
    if not location.has_group():
        raise StoreError(
            f"Expected an rfmdist store at {location.url!r}, found no Zarr group there; check the "
            "path (a store is written by est.save(path) or fit(..., store=path))."
        )
    group = open_group(location, "r")
    attrs = dict(group.attrs)
    _check_header(location, attrs)
    if require_complete and attrs["status"] != "complete":
        raise StoreError(
            f"Expected a finished model at {location.url!r}, found an interrupted fit (status "
            f"{attrs['status']!r}, {attrs['completed_rounds']} rounds committed); {RESUME_HINT}."
        )
    return _read_contents(group, location, attrs)


def _kernel_dtype(record: dict[str, Any], params: dict[str, Any]) -> np.dtype:
    """The kernel dtype of the model's round: its record's (the dtype the fit chose, or float64
    for a round that fell back to it), else the ``dtype`` parameter (stores written before the
    records kept it; None read as float64)."""
    return np.dtype(record.get("dtype") or params["dtype"])


def _read_contents(group: Any, location: StoreLocation, attrs: dict[str, Any]) -> StoredRun:
    data, params_json = attrs["data"], attrs["params"]
    d, c = int(data["d"]), int(data["n_outputs"])
    diag = bool(params_json.get("diag"))
    rounds, best = int(attrs["completed_rounds"]), attrs["best_iter"]
    complete = attrs["status"] == "complete"
    if len(attrs["history"]) != rounds or (
        rounds > 0 and (best is None or not 0 <= int(best) < rounds)
    ):
        raise StoreError(
            f"Expected {rounds} history records and best_iter in [0, {rounds}) in the store at "
            f"{location.url!r}, found {len(attrs['history'])} records and best_iter={best!r}; the "
            "attributes were edited or damaged: restore the store from a copy or refit."
        )
    n_rows, iters = int(data["n"]), int(params_json["iters"])
    m_expected = attrs.get("n_centers", -1)
    centers = read_array(
        group,
        "centers",
        location,
        (m_expected, d),
        max_rows=_max_centers(params_json, n_rows, group),
    )[...]
    m = centers.shape[0]
    # A run in progress also holds M_R, the next round's matrix, unless its rounds have ended (all
    # run, or the last record says they stopped: early stopping or the time budget).
    ended = rounds > int(params_json["iters"]) or (
        rounds > 0 and bool(attrs["history"][-1].get("stopped"))
    )
    needed = rounds + 1 if not complete and not ended else rounds
    # The AGOP's rank bound: its points (at most the rows) times the outputs, or d.
    shape = {"d": d, "diag": diag, "max_rank": max(n_rows * c, d)}
    metrics = read_round_metrics(group, location, needed, max_rounds=iters + 2, **shape)
    _restore_residuals(group, location, attrs, c)
    metric_history = metrics[:rounds]
    preprocessing = _read_standardizer(group, "preprocessing", location, d)
    target_scaling = _read_standardizer(group, "target_scaling", location, c)
    machine = None
    if rounds:
        if complete:
            metric = read_metric(group, "M", location, **shape)
            coef = read_array(group, "coef", location, (m, c))[...]
        else:
            metric = metric_history[int(best)]
            coef = read_array(group, "checkpoint/coef", location, (-1, m, c), max_rows=iters + 2)[
                int(best)
            ]
        record = attrs["history"][int(best)]
        if attrs.get("refit") is not None and "refit/coef" in group:
            centers = read_array(
                group, "refit/centers", location, (-1, d), max_rows=max(m, n_rows)
            )[...]
            coef = read_array(group, "refit/coef", location, (centers.shape[0], c))[...]
            record = attrs["refit"]
        machine = KernelMachine(
            centers=centers,
            coef=np.asarray(coef, dtype=np.float64),
            metric=metric,
            kernel=params_json["kernel"],
            bandwidth=float(params_json["bandwidth"]),
            preprocessing=preprocessing,
            dtype=_kernel_dtype(record, params_json),
            target_scaling=target_scaling,
        )
    return StoredRun(
        attrs=attrs,
        params=params_from_store(params_json, group, location, d),
        machine=machine,
        preprocessing=preprocessing,
        target_scaling=target_scaling,
        metric_history=metric_history,
        next_metric=metrics[rounds] if needed > rounds else None,
        classes=_read_classes(group, location, data.get("classes")),
        data_vectors=_read_vectors(group, location, d, c, attrs["data"].get("eval_set")),
    )


def _restore_residuals(group: Any, location: StoreLocation, attrs: dict[str, Any], c: int) -> None:
    """Put the CG residuals of every record (rounds and refit) back from their arrays, in place."""
    records = [*attrs["history"], attrs.get("refit")]
    for record in records:
        solve = (record or {}).get("solve", {})
        residuals = solve.get("residuals")
        if isinstance(residuals, dict) and "array" in residuals:
            rows = int(solve.get("iterations", -1)) + 1
            bound = int(attrs["params"].get("max_iter", 0)) + 1
            if not 0 < rows <= bound:
                raise StoreError(
                    f"Expected at most {bound} CG residual records per solve in the store at "
                    f"{location.url!r} (max_iter), found a record of {rows}; the store is damaged or "
                    "was edited: restore it from a copy or refit."
                )
            array = read_array(group, residuals["array"], location, (rows, c))
            solve["residuals"] = np.asarray(array[...]).tolist()


def _read_vectors(
    group: Any, location: StoreLocation, d: int, c: int, eval_set: dict[str, Any] | None
) -> dict[str, np.ndarray]:
    """The fingerprint's per-column sums (none in stores written before they existed)."""
    found = {}
    sizes = {name: d if name.startswith("x_") else c for name in VECTORS}
    if eval_set is not None:
        sizes |= {
            f"eval_{name}": (eval_set["d"] if name.startswith("x_") else eval_set["c"])
            for name in VECTORS
            if "d" in eval_set
        }
    for name, size in sizes.items():
        if f"fingerprint/{name}" in group:
            found[name] = np.asarray(
                read_array(group, f"fingerprint/{name}", location, (size,))[...]
            )
    return found


def completed_rounds_at(location: StoreLocation) -> int:
    """``completed_rounds`` of the store at ``location``, from its attributes."""
    return int(open_group(location, "r").attrs.get("completed_rounds", 0))
