"""Writing stores: a run round by round (:class:`RunWriter`, the commit protocol of
:mod:`rfmdist.store`) and a fitted model at once (:func:`save_model`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.backend import to_numpy
from rfmdist.metric import Metric
from rfmdist.model import Standardizer
from rfmdist.store.codec import json_safe, params_to_store
from rfmdist.store.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    REFIT_RESIDUALS,
    RESUME_HINT,
    open_group,
    residuals_path,
    write_array,
    write_attributes,
)
from rfmdist.store.location import StoreLocation
from rfmdist.store.metrics import (
    copy_round_metric,
    keep_rounds,
    write_metric,
    write_round_metric,
)


def versions() -> dict[str, str]:
    """Versions of rfmdist and the libraries that wrote a store."""
    import dask
    import zarr

    from rfmdist import __version__

    return {
        "rfmdist": __version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "dask": dask.__version__,
    }


@dataclass(frozen=True)
class RunHeader:
    """What a store records about a run before its first round.

    Attributes
    ----------
    estimator : str
        Class name (``RFMRegressor`` or ``RFMClassifier``).
    params : dict
        ``get_params(deep=False)``.
    seed : int
    data : dict
        :func:`data_fingerprint`.
    estimator_state : dict
        JSON: ``y_1d``, ``n_features_in``, ``feature_names_in``.
    centers : numpy.ndarray, shape (m, d)
    preprocessing, target_scaling : Standardizer
    classes : numpy.ndarray or None
    data_vectors : dict of str to numpy.ndarray
        The fingerprint's per-column sums (``fingerprint/<name>``; ``eval_<name>`` for eval_set's).
    plan : dict or None
        The fit's plan (:meth:`rfmdist.plan.FitPlan.record`; attribute ``plan``).
    """

    estimator: str
    params: dict[str, Any]
    seed: int
    data: dict[str, Any]
    estimator_state: dict[str, Any]
    centers: np.ndarray
    preprocessing: Standardizer
    target_scaling: Standardizer
    classes: np.ndarray | None
    data_vectors: dict[str, np.ndarray] = field(default_factory=dict)
    plan: dict[str, Any] | None = None


def _write_standardizer(group: Any, prefix: str, scaling: Standardizer) -> None:
    if scaling.mean is not None:
        write_array(group, f"{prefix}/mean", np.asarray(scaling.mean, dtype=np.float64))
        write_array(group, f"{prefix}/scale", np.asarray(scaling.scale, dtype=np.float64))


def _write_residuals(group: Any, record: dict[str, Any] | None, path: str) -> None:
    residuals = None if record is None else record.get("solve", {}).get("residuals")
    if isinstance(residuals, list) and residuals:
        write_array(group, path, np.asarray(residuals, dtype=np.float64))


def _stored_record(record: dict[str, Any] | None, path: str) -> dict[str, Any] | None:
    """``record`` as the attributes hold it: CG residuals replaced by the path of their array, and
    a summary (first and last of the largest relative residual)."""
    if record is None:
        return None
    solve = record.get("solve", {})
    residuals = solve.get("residuals")
    if not (isinstance(residuals, list) and residuals):
        return json_safe(record)
    summary = {
        "array": path,
        "first": float(max(residuals[0])),
        "last": float(max(residuals[-1])),
    }
    return json_safe(record | {"solve": solve | {"residuals": summary}})


def stored_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-round records as the attributes hold them (see :func:`_stored_record`)."""
    return [_stored_record(h, residuals_path(t)) for t, h in enumerate(history)]


class RunWriter:
    """Writes a run round by round with the commit protocol of :mod:`rfmdist.store`.

    Build it with :meth:`create` (a new run) or :meth:`reopen` (resume), or through a
    :class:`rfmdist.store.planning.RunPlan`, which also moves the run into place when due.

    Parameters
    ----------
    group : zarr.Group
        The store, open for writing.
    location : StoreLocation
        Where it is.
    on_commit : callable, optional
        Called with the writer after every committed round (after the commit's attribute write).
    """

    def __init__(
        self,
        group: Any,
        location: StoreLocation,
        on_commit: Callable[[RunWriter], None] | None = None,
    ) -> None:
        self.group = group
        self.location = location
        self.on_commit = on_commit

    @classmethod
    def create(
        cls,
        location: StoreLocation,
        header: RunHeader,
        M0: Metric,
        on_commit: Callable[[RunWriter], None] | None = None,
    ) -> RunWriter:
        """Start a run at ``location`` (which must be empty) with ``M_0`` as ``history/M/0``.

        Parameters
        ----------
        location : StoreLocation
        header : RunHeader
        M0 : Metric
        on_commit : callable, optional
            See the class.
        """
        import zarr

        group = zarr.open_group(location.url, mode="w")
        params, param_arrays = params_to_store(header.params)
        for key, value in param_arrays.items():
            write_array(group, key, value)
        write_array(group, "centers", to_numpy(header.centers))
        _write_standardizer(group, "preprocessing", header.preprocessing)
        _write_standardizer(group, "target_scaling", header.target_scaling)
        if header.classes is not None:
            write_array(group, "classes", header.classes)
        for name, vector in header.data_vectors.items():
            write_array(group, f"fingerprint/{name}", np.asarray(vector, dtype=np.float64))
        write_round_metric(group, 0, M0)
        write_attributes(
            group,
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "status": "running",
                "versions": versions(),
                "estimator": header.estimator,
                "params": params,
                "seed": int(header.seed),
                "data": header.data,
                "estimator_state": json_safe(header.estimator_state),
                "completed_rounds": 0,
                "best_iter": None,
                "history": [],
                "n_centers": int(np.shape(header.centers)[0]),
            }
            | ({} if header.plan is None else {"plan": json_safe(header.plan)}),
        )
        return cls(group, location, on_commit)

    @classmethod
    def reopen(
        cls, location: StoreLocation, on_commit: Callable[[RunWriter], None] | None = None
    ) -> RunWriter:
        """Continue writing the run in progress at ``location`` (``on_commit``: see the class)."""
        return cls(open_group(location, "r+"), location, on_commit)

    def relocate(self, location: StoreLocation) -> None:
        """Go on writing at ``location``, where this writer's store has just been moved whole."""
        self.location = location
        self.group = open_group(location, "r+")

    def commit_round(
        self,
        t: int,
        coef: np.ndarray,
        next_metric: Metric | None,
        best_iter: int,
        history: list[dict[str, Any]],
        rates: dict[str, Any] | None = None,
    ) -> None:
        """Write round ``t``'s arrays, then commit it by rewriting the attributes.

        Parameters
        ----------
        t : int
            The round (``completed_rounds`` becomes ``t + 1``).
        coef : numpy.ndarray, shape (m, c)
        next_metric : Metric or None
            ``M_{t+1}`` (None after the last round).
        best_iter : int
            Best round so far (``<= t``).
        history : list of dict
            Records of rounds ``0 .. t``.
        rates : dict, optional
            The cost model's measured rates (attribute ``rates``), for a resume to choose solvers
            as this run does.

        Raises
        ------
        OSError
            A write failed (a full disk, a lost mount): the message says which round and that the
            store keeps its previous commit.
        """
        with self._writing(f"commit round {t}"):
            coef = np.asarray(coef, dtype=np.float64)
            if "checkpoint/coef" in self.group:
                coefs = self.group["checkpoint/coef"]
                coefs.resize((t + 1, *coef.shape))
            else:
                coefs = self.group.create_array(
                    "checkpoint/coef",
                    shape=(t + 1, *coef.shape),
                    chunks=(1, *coef.shape),
                    dtype=np.float64,
                )
            coefs[t] = coef
            if next_metric is not None:
                write_round_metric(self.group, t + 1, next_metric)
            _write_residuals(self.group, history[t], residuals_path(t))
            write_attributes(
                self.group,
                {
                    "completed_rounds": t + 1,
                    "best_iter": int(best_iter),
                    "history": stored_history(history),
                }
                | ({} if rates is None else {"rates": json_safe(rates)}),
            )
        if self.on_commit is not None:
            self.on_commit(self)

    def _writing(self, what: str) -> Any:
        """Context turning a write error into one that says what failed and what the store kept."""
        return _WriteGuard(self, what)

    def commit_refit(self, centers: np.ndarray, coef: np.ndarray, record: dict[str, Any]) -> None:
        """Write the refitted model's arrays, then commit them with its record (attribute ``refit``).

        Parameters
        ----------
        centers : numpy.ndarray, shape (m', d)
        coef : numpy.ndarray, shape (m', c)
        record : dict
        """
        with self._writing("commit the refit"):
            write_array(self.group, "refit/centers", np.asarray(centers))
            write_array(self.group, "refit/coef", np.asarray(coef, dtype=np.float64))
            _write_residuals(self.group, record, REFIT_RESIDUALS)
            write_attributes(self.group, {"refit": _stored_record(record, REFIT_RESIDUALS)})

    def finish(self) -> None:
        """Write the best round's ``M`` and ``coef``, mark the store complete, drop ``checkpoint/``."""
        with self._writing("mark the store complete"):
            attrs = self.group.attrs
            rounds, best = int(attrs["completed_rounds"]), int(attrs["best_iter"])
            keep_rounds(self.group, rounds)
            copy_round_metric(self.group, best, "M")
            write_array(self.group, "coef", self.group["checkpoint/coef"][best])
            write_attributes(self.group, {"status": "complete"})
            del self.group["checkpoint"]


@dataclass
class _WriteGuard:
    """See :meth:`RunWriter._writing`."""

    writer: RunWriter
    what: str

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> bool:
        if not isinstance(err, OSError) or isinstance(err, StoreWriteError):
            return False
        try:
            kept = int(self.writer.group.attrs.get("completed_rounds", 0))
        except Exception:  # the store cannot even be read back: say so
            kept = "its last committed"
        raise StoreWriteError(
            err.errno,
            f"could not {self.what} in the store at {self.writer.location.url!r}: "
            f"{err.strerror or err} ({type(err).__name__}); the store keeps {kept} committed "
            f"rounds (a commit is one atomic metadata write, so it is whole or absent): free the "
            f"space (or fix the file system) and {RESUME_HINT}",
        ) from err


class StoreWriteError(OSError):
    """A write to a run's store failed; the store keeps its last committed round."""


def save_model(
    location: StoreLocation,
    header: RunHeader,
    metric_history: list[Metric],
    coef: np.ndarray,
    best_iter: int,
    history: list[dict[str, Any]],
    refit: dict[str, Any] | None = None,
) -> None:
    """Write a complete store of a fitted model at ``location`` (which must be empty).

    Parameters
    ----------
    location : StoreLocation
    header : RunHeader
    metric_history : list of Metric
        ``M_t`` of the ``R`` rounds.
    coef : numpy.ndarray, shape (m, c)
        The best round's.
    best_iter : int
    history : list of dict
        ``R`` records.
    refit : dict, optional
        The record of a refit on all rows (the model written is then that refit).
    """
    writer = RunWriter.create(location, header, metric_history[0])
    group = writer.group
    for t, metric in enumerate(metric_history[1:], start=1):
        write_round_metric(group, t, metric)
    for t, record in enumerate(history):
        _write_residuals(group, record, residuals_path(t))
    if refit is not None:
        _write_residuals(group, refit, REFIT_RESIDUALS)
    write_metric(group, "M", metric_history[best_iter])
    write_array(group, "coef", np.asarray(coef, dtype=np.float64))
    write_attributes(
        group,
        {
            "completed_rounds": len(history),
            "best_iter": int(best_iter),
            "history": stored_history(history),
            "status": "complete",
        }
        | ({} if refit is None else {"refit": _stored_record(refit, REFIT_RESIDUALS)}),
    )
