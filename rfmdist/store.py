"""Zarr v3 stores of fitted models and of runs in progress (checkpoints): layout, writing, reading.

A store is one Zarr group (a local path or an fsspec URL such as ``s3://bucket/model.zarr`` or
``memory://model.zarr``; ``file://`` URLs are treated as local paths). Nothing is pickled: arrays are
plain numeric (or variable-length UTF-8 string) Zarr arrays and everything else is JSON in the group's
attributes.

Layout (``d`` features, ``m`` centers, ``c`` outputs, ``R`` = ``completed_rounds``)::

    <store>/
      attrs                 format = "rfmdist-model", format_version = 2, status = "running" | "complete",
                            versions {rfmdist, numpy, zarr, dask}, estimator (class name),
                            params (get_params(); an array value is {"array": "<path>"}; a numpy random
                            generator is {"random_generator": "<type>"}), seed (the int seed used),
                            data {n, d, n_outputs, dtype, classes, hash, sample_hash, eval_set},
                            estimator_state {y_1d, n_features_in, feature_names_in},
                            completed_rounds (R), best_iter, n_centers (m), rates (the cost model's),
                            history (R per-round records: scores, solver choice and record, seconds;
                            CG residuals as {"array": "history/residuals/<t>", "first", "last"}),
                            refit (its record, when there is one)
      centers               (m, d)      kernel dtype, in the preprocessed feature space
      coef                  (m, c)      float64, the best round's coefficients   [complete stores]
      M                     (d, d)|(d,) float64, the best round's feature matrix [complete stores]
      history/M             (R, d, d)|(R, d) float64, M_t of every round, one chunk per round
      preprocessing/mean    (d,)        float64   [when standardize=True]
      preprocessing/scale   (d,)        float64   [when standardize=True]
      target_scaling/mean   (c,)        float64   [regressors with standardize=True]
      target_scaling/scale  (c,)        float64   [regressors with standardize=True]
      classes               (k,)        the classifier's labels (numbers, or vlen UTF-8 strings)
      params/<name>         array-valued parameters (e.g. explicit ``centers``)
      checkpoint/coef       (R, m, c)   float64, every round's coefficients   [runs in progress]
      refit/centers         (m', d)     kernel dtype   [fits refitted on all rows, see below]
      refit/coef            (m', c)     float64
      history/residuals/<t> (I+1, c)    float64, round t's relative CG residual per iteration [PCG]
      fingerprint/<name>    (d,)|(c,)   float64, per-column sums of the data (rfmdist.fingerprint);
                                        eval_<name> for eval_set's
    <store>.lock            JSON {host, pid, started, token} while a fit writes (rfmdist.locking)

Every array's shape is checked against what the attributes imply before it is read, so an edited or
hostile store that claims a huge array is refused without allocating it; nothing is ever evaluated or
unpickled. A commit rewrites the attributes, whose size grows with the rounds but not with CG
iterations or outputs (those go to ``history/residuals``). A write that fails (a full disk) raises
:class:`StoreWriteError`, saying what failed; the store keeps its last commit.

A fit that chose its round on an internal validation split fits the kept round's ``M`` once more on all
rows; that model is ``refit/centers`` and ``refit/coef`` (attribute ``refit``: its record), written and
committed after the last round, and is the store's model once committed (``centers`` and ``coef`` then
keep the rounds' own). A model written by ``save`` keeps its (refitted) model in ``centers`` and
``coef`` and only the record. Format version 2 added the refit, the per-column fingerprint and the
residual arrays; version 1 stores still load (and resume, fingerprinted by their first and last rows
as before).

Commit protocol of a run (``fit(..., store=path)``): after round ``t`` the run writes
``checkpoint/coef[t]`` and ``history/M[t + 1]`` (= ``M_{t+1}``, what round ``t + 1`` needs), then
rewrites the attributes with ``completed_rounds = t + 1`` and the new history. The attribute write is the
commit (the local store writes ``zarr.json`` to a temporary file and renames it): rows at or beyond an
uncommitted round are ignored and overwritten on resume, and committed chunks are never rewritten. When
the last round is committed the run writes ``M`` and ``coef`` of the best round, flips ``status`` to
``"complete"`` and drops ``checkpoint/``. Only complete stores load as models.

A run that would replace a finished model (``overwrite=True``) lives beside it at ``<path>.partial``
and is moved over ``<path>`` when it completes: by two renames for local paths (the old model is
renamed away first, then deleted), by delete-then-move for fsspec URLs (not atomic: a crash between the
two leaves the finished run at ``<path>.partial``, which ``resume=True`` moves into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.backend import to_numpy
from rfmdist.data import is_dask_array
from rfmdist.exceptions import StoreError
from rfmdist.fingerprint import VECTORS, ColumnStatistics, column_statistics, differences
from rfmdist.model import KernelMachine, Standardizer

logger = logging.getLogger(__name__)

FORMAT_NAME = "rfmdist-model"
FORMAT_VERSION = 2
# Versions this code reads (1: written before refits existed; the same layout without them).
READABLE_VERSIONS = (1, 2)
PARTIAL_SUFFIX = ".partial"
# Rows at each end of X and Y that the data fingerprint hashes.
FINGERPRINT_ROWS = 16
REQUIRED_ATTRS = (
    "format",
    "format_version",
    "status",
    "estimator",
    "params",
    "seed",
    "data",
    "estimator_state",
    "completed_rounds",
    "best_iter",
    "history",
)
RESUME_HINT = (
    "resume it with fit(X, y, store=path, resume=True) (or `rfmdist fit --resume`) using the same "
    "data and parameters"
)


# --- locations --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    """Where a store lives: a local directory or an fsspec URL.

    Attributes
    ----------
    url : str
        Absolute local path, or a URL with a protocol other than ``file``.
    """

    url: str

    @property
    def is_local(self) -> bool:
        """True for a local directory."""
        return "://" not in self.url

    def beside(self, suffix: str) -> StoreLocation:
        """The sibling location ``<url><suffix>``."""
        return StoreLocation(self.url + suffix)

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        return fsspec.core.url_to_fs(self.url)

    def exists(self) -> bool:
        """True when anything (a store or not) is at this location."""
        if self.is_local:
            return os.path.lexists(self.url)
        fs, path = self._fs()
        return bool(fs.exists(path))

    def has_group(self) -> bool:
        """True when a Zarr v3 group or array (``zarr.json``) is at this location."""
        if self.is_local:
            return os.path.isfile(os.path.join(self.url, "zarr.json"))
        fs, path = self._fs()
        return bool(fs.exists(path.rstrip("/") + "/zarr.json"))

    def remove(self) -> None:
        """Delete whatever is at this location (no error if nothing is)."""
        if not self.exists():
            return
        if self.is_local:
            if os.path.isdir(self.url) and not os.path.islink(self.url):
                shutil.rmtree(self.url)
            else:
                os.remove(self.url)
            return
        fs, path = self._fs()
        fs.rm(path, recursive=True)

    def replace_with(self, source: StoreLocation) -> None:
        """Move the store at ``source`` to this location, replacing what is here."""
        if self.is_local and source.is_local:
            old = self.beside(f".old-{uuid.uuid4().hex}")
            if self.exists():
                os.rename(self.url, old.url)
            os.rename(source.url, self.url)
            old.remove()
            return
        self.remove()
        fs, path = self._fs()
        _, source_path = source._fs()
        fs.mv(source_path, path, recursive=True)


def store_location(path: str | os.PathLike[str]) -> StoreLocation:
    """Normalise a local path or URL (``file://`` URLs become local paths).

    Examples
    --------
    >>> store_location("file:///tmp/model.zarr").url
    '/tmp/model.zarr'
    >>> store_location("memory://model.zarr/").url
    'memory://model.zarr'
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return StoreLocation(text.rstrip("/"))
    return StoreLocation(os.path.abspath(os.path.expanduser(text)))


def _open_group(location: StoreLocation, mode: str) -> Any:
    import zarr

    try:
        return zarr.open_group(location.url, mode=mode)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"Expected readable Zarr v3 metadata at {location.url!r}, found metadata that does not "
            f"parse ({type(err).__name__}: {err}); the store is damaged: restore it from a copy or "
            "fit again with overwrite=True."
        ) from err


def _status(location: StoreLocation) -> str | None:
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
    attrs = dict(_open_group(location, "r").attrs)
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
    return _status(store_location(path))


def committed_rounds(path: str | os.PathLike[str]) -> int:
    """Rounds committed by the run at ``path`` (0 when nothing is there), from its attributes."""
    location = store_location(path)
    for place in (location.beside(PARTIAL_SUFFIX), location):
        if place.has_group():
            return _completed_rounds(place)
    return 0


# --- planning a run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """Where a fit with ``store=`` reads and writes.

    Attributes
    ----------
    target : StoreLocation
        The path the user gave: the finished model ends up here.
    work : StoreLocation
        Where the run's rounds are committed (``target`` or ``<target>.partial``).
    mode : {'fresh', 'resume', 'finished'}
        Start a new run at ``work``, continue the one there, or load the finished model at ``target``.
    """

    target: StoreLocation
    work: StoreLocation
    mode: str

    def complete(self) -> None:
        """Move a finished run from ``work`` to ``target`` (no-op when they are the same)."""
        if self.work != self.target:
            self.target.replace_with(self.work)
            logger.info("moved the finished run %s to %s", self.work.url, self.target.url)


def plan_run(path: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> RunPlan:
    """Decide where a fit with ``store=path`` runs, refusing before any work when it must not.

    - ``resume``: continue ``<path>.partial`` if present, else a run in progress at ``path``; a complete
      model at ``path`` is returned as is; with nothing to resume a new run starts.
    - otherwise: a new run at ``path`` when nothing (or, with ``overwrite``, an unfinished run) is there;
      with a complete model there, ``overwrite`` runs at ``<path>.partial`` and replaces the model only
      when the run completes, and without ``overwrite`` the fit is refused (FileExistsError).

    Raises
    ------
    FileExistsError
        A model or run is at ``path`` and neither ``resume`` nor ``overwrite`` was given.
    StoreError
        Something other than an rfmdist store is at ``path``.
    """
    target = store_location(path)
    partial = target.beside(PARTIAL_SUFFIX)
    status = _status(target)
    partial_status = _status(partial)
    if resume:
        if partial_status == "complete":
            target.replace_with(partial)
            return RunPlan(target, target, "finished")
        if partial_status == "running":
            return RunPlan(target, partial, "resume")
        if status == "running":
            return RunPlan(target, target, "resume")
        if status == "complete":
            return RunPlan(target, target, "finished")
        logger.info("no run to resume at %s: starting a new one", target.url)
        return RunPlan(target, target, "fresh")
    if status == "complete" and not overwrite:
        raise FileExistsError(
            f"Expected no model at {target.url!r} (fit with store= does not replace a finished "
            "model), found a complete rfmdist model; pass overwrite=True to replace it when the new "
            "fit completes, resume=True to load it, or choose another path."
        )
    if status == "running" and not overwrite:
        raise FileExistsError(
            f"Expected no run at {target.url!r}, found an interrupted fit "
            f"({_completed_rounds(target)} rounds committed); {RESUME_HINT}, or pass overwrite=True "
            "to start over."
        )
    partial.remove()
    if status == "complete":
        return RunPlan(target, partial, "fresh")
    target.remove()
    return RunPlan(target, target, "fresh")


def _completed_rounds(location: StoreLocation) -> int:
    return int(_open_group(location, "r").attrs.get("completed_rounds", 0))


# --- JSON-safe values and the data fingerprint ---------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars and arrays to Python values, tuples to lists.

    Non-finite floats stay (Zarr writes them as ``NaN``/``Infinity``, which Python's json reads back).

    Examples
    --------
    >>> json_safe({"a": np.float32(0.5), "b": (1, 2), "c": np.arange(2)})
    {'a': 0.5, 'b': [1, 2], 'c': [0, 1]}
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def params_to_store(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split ``get_params()`` into JSON values and arrays (stored under ``params/<name>``).

    Returns
    -------
    values : dict
        JSON-ready; an array parameter becomes ``{"array": "params/<name>"}``, a numpy random generator
        ``{"random_generator": "<type name>"}`` (the seed it gave is stored as ``seed``).
    arrays : dict
        Store path -> array.
    """
    values: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if isinstance(value, (np.random.Generator, np.random.RandomState)):
            values[name] = {"random_generator": type(value).__name__}
        elif hasattr(value, "shape") and len(value.shape) > 0:
            key = f"params/{name}"
            arrays[key] = np.asarray(to_numpy(np.asarray(value)))
            values[name] = {"array": key}
        else:
            values[name] = json_safe(value)
    return values, arrays


def params_from_store(
    values: dict[str, Any], group: Any, location: StoreLocation, d: int
) -> dict[str, Any]:
    """Rebuild ``set_params`` keywords (a random generator parameter comes back as None). The one
    array parameter, explicit ``centers``, is checked to be (m, d) with m within bounds first."""
    params = {}
    for name, value in values.items():
        if isinstance(value, dict) and "array" in value:
            rows = MAX_ARRAY_PARAM_ELEMENTS // max(1, d)
            params[name] = _read_array(group, value["array"], location, (-1, d), max_rows=rows)[...]
        elif isinstance(value, dict) and "random_generator" in value:
            params[name] = None
        else:
            params[name] = value
    return params


def _edge_rows(A: Any, k: int = FINGERPRINT_ROWS) -> np.ndarray:
    """First and last ``k`` rows of a 2-D array as float64 NumPy (two small reads for Dask)."""
    head, tail = A[:k], A[max(0, A.shape[0] - k) :]
    if is_dask_array(A):
        import dask

        head, tail = dask.compute(head, tail)
    return np.concatenate([to_numpy(head), to_numpy(tail)]).astype(np.float64)


def data_fingerprint(
    X: Any,
    Y: Any,
    classes: np.ndarray | None = None,
    statistics: ColumnStatistics | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What identifies a training set (:mod:`rfmdist.fingerprint`): its shape, dtype, classes, a hash
    of rows at an even stride and of the first/last rows, and per-column sums over every row.

    Parameters
    ----------
    X : array or dask.array.Array, shape (n, d)
        Raw (checked, not preprocessed) features.
    Y : array or dask.array.Array, shape (n, c)
        Targets as fitted (one-hot for classifiers, before target scaling).
    classes : numpy.ndarray, optional
        The classifier's labels.
    statistics : ColumnStatistics, optional
        The pass's statistics when the caller has them (else one pass here).

    Returns
    -------
    fingerprint : dict
        ``{"n", "d", "n_outputs", "dtype", "classes", "hash", "sample_hash"}`` (JSON-ready).
    vectors : dict of str to numpy.ndarray
        The per-column sums (stored as arrays ``fingerprint/<name>``).
    """
    if statistics is None:
        statistics = column_statistics(X, Y)
    digest = hashlib.sha256()
    for part in (_edge_rows(X), _edge_rows(Y)):
        digest.update(str(part.shape).encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    stamp = {
        "n": int(X.shape[0]),
        "d": int(X.shape[1]),
        "n_outputs": int(Y.shape[1]),
        "dtype": str(np.dtype(X.dtype)),
        "classes": None if classes is None else json_safe(list(classes)),
        "hash": digest.hexdigest()[:32],
        "sample_hash": statistics.sample_hash,
    }
    return stamp, dict(statistics.vectors)


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


# --- writing ---------------------------------------------------------------------------------------


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


def _write_attributes(group: Any, values: dict[str, Any]) -> None:
    """Merge ``values`` into the group's attributes with ONE write of its ``zarr.json``.

    ``group.attrs.update(values)`` would not do: Zarr's attribute mapping writes the whole metadata
    document once per key, so a process killed between two of those writes left a commit half done
    (``completed_rounds`` advanced, ``history`` not), and the run could not be resumed.
    """
    group.update_attributes(values)


def _write_array(group: Any, name: str, data: np.ndarray, chunks: Any = None) -> Any:
    data = np.asarray(data)
    if data.dtype.kind in "OUS":
        data = data.astype(str).astype(object)
        array = group.create_array(name, shape=data.shape, dtype=str, overwrite=True)
        array[...] = data
        return array
    return group.create_array(name, data=data, chunks=chunks or "auto", overwrite=True)


def _write_standardizer(group: Any, prefix: str, scaling: Standardizer) -> None:
    if scaling.mean is not None:
        _write_array(group, f"{prefix}/mean", np.asarray(scaling.mean, dtype=np.float64))
        _write_array(group, f"{prefix}/scale", np.asarray(scaling.scale, dtype=np.float64))


# Where a round's CG residuals live (iterations + 1, c): an array per round, so that a commit writes a
# bounded amount of metadata whatever the iterations and outputs (the record keeps a summary).
REFIT_RESIDUALS = "refit/residuals"


def residuals_path(t: int) -> str:
    """The array of round ``t``'s per-iteration CG residuals."""
    return f"history/residuals/{t}"


def _write_residuals(group: Any, record: dict[str, Any] | None, path: str) -> None:
    residuals = None if record is None else record.get("solve", {}).get("residuals")
    if isinstance(residuals, list) and residuals:
        _write_array(group, path, np.asarray(residuals, dtype=np.float64))


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


def _history_chunks(M: np.ndarray) -> tuple[int, ...]:
    return (1, *M.shape)


class RunWriter:
    """Writes a run round by round with the commit protocol of the module docstring.

    Build it with :meth:`create` (a new run) or :meth:`reopen` (resume).
    """

    def __init__(self, group: Any, location: StoreLocation) -> None:
        self.group = group
        self.location = location

    @classmethod
    def create(cls, location: StoreLocation, header: RunHeader, M0: np.ndarray) -> RunWriter:
        """Start a run at ``location`` (which must be empty) with ``M_0`` as ``history/M[0]``.

        Parameters
        ----------
        location : StoreLocation
        header : RunHeader
        M0 : numpy.ndarray, shape (d, d) or (d,)
        """
        import zarr

        group = zarr.open_group(location.url, mode="w")
        params, param_arrays = params_to_store(header.params)
        for key, value in param_arrays.items():
            _write_array(group, key, value)
        _write_array(group, "centers", to_numpy(header.centers))
        _write_standardizer(group, "preprocessing", header.preprocessing)
        _write_standardizer(group, "target_scaling", header.target_scaling)
        if header.classes is not None:
            _write_array(group, "classes", header.classes)
        for name, vector in header.data_vectors.items():
            _write_array(group, f"fingerprint/{name}", np.asarray(vector, dtype=np.float64))
        M0 = np.asarray(M0, dtype=np.float64)
        _write_array(group, "history/M", M0[None], chunks=_history_chunks(M0))
        _write_attributes(
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
            },
        )
        return cls(group, location)

    @classmethod
    def reopen(cls, location: StoreLocation) -> RunWriter:
        """Continue writing the run in progress at ``location``."""
        return cls(_open_group(location, "r+"), location)

    def commit_round(
        self,
        t: int,
        coef: np.ndarray,
        next_M: np.ndarray | None,
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
        next_M : numpy.ndarray or None
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
            if next_M is not None:
                history_M = self.group["history/M"]
                history_M.resize((t + 2, *history_M.shape[1:]))
                history_M[t + 1] = np.asarray(next_M, dtype=np.float64)
            _write_residuals(self.group, history[t], residuals_path(t))
            _write_attributes(
                self.group,
                {
                    "completed_rounds": t + 1,
                    "best_iter": int(best_iter),
                    "history": stored_history(history),
                }
                | ({} if rates is None else {"rates": json_safe(rates)}),
            )

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
            _write_array(self.group, "refit/centers", np.asarray(centers))
            _write_array(self.group, "refit/coef", np.asarray(coef, dtype=np.float64))
            _write_residuals(self.group, record, REFIT_RESIDUALS)
            _write_attributes(self.group, {"refit": _stored_record(record, REFIT_RESIDUALS)})

    def finish(self) -> None:
        """Write the best round's ``M`` and ``coef``, mark the store complete, drop ``checkpoint/``."""
        with self._writing("mark the store complete"):
            attrs = self.group.attrs
            rounds, best = int(attrs["completed_rounds"]), int(attrs["best_iter"])
            history_M = self.group["history/M"]
            history_M.resize((rounds, *history_M.shape[1:]))
            _write_array(self.group, "M", history_M[best])
            _write_array(self.group, "coef", self.group["checkpoint/coef"][best])
            _write_attributes(self.group, {"status": "complete"})
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
    M_history: np.ndarray,
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
    M_history : numpy.ndarray, shape (R, d, d) or (R, d)
    coef : numpy.ndarray, shape (m, c)
        The best round's.
    best_iter : int
    history : list of dict
        ``R`` records.
    refit : dict, optional
        The record of a refit on all rows (the model written is then that refit).
    """
    writer = RunWriter.create(location, header, M_history[0])
    group = writer.group
    group["history/M"].resize(M_history.shape)
    group["history/M"][...] = np.asarray(M_history, dtype=np.float64)
    for t, record in enumerate(history):
        _write_residuals(group, record, residuals_path(t))
    if refit is not None:
        _write_residuals(group, refit, REFIT_RESIDUALS)
    _write_array(group, "M", M_history[best_iter])
    _write_array(group, "coef", np.asarray(coef, dtype=np.float64))
    _write_attributes(
        group,
        {
            "completed_rounds": len(history),
            "best_iter": int(best_iter),
            "history": stored_history(history),
            "status": "complete",
        }
        | ({} if refit is None else {"refit": _stored_record(refit, REFIT_RESIDUALS)}),
    )


def save_location(path: str | os.PathLike[str], *, overwrite: bool) -> RunPlan:
    """Where ``save(path)`` writes: ``path``, or ``<path>.partial`` then moved over an existing store.

    Raises
    ------
    FileExistsError
        A store is at ``path`` and ``overwrite`` is False.
    """
    target = store_location(path)
    status = _status(target)
    if status is not None and not overwrite:
        raise FileExistsError(
            f"Expected no store at {target.url!r}, found a {status} rfmdist store; pass "
            "overwrite=True to replace it, or choose another path."
        )
    partial = target.beside(PARTIAL_SUFFIX)
    partial.remove()
    return RunPlan(target, target if status is None else partial, "fresh")


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class StoredRun:
    """A store's contents, checked against its attributes.

    Attributes
    ----------
    attrs : dict
        All attributes (see the module docstring).
    params : dict
        ``set_params`` keywords.
    machine : KernelMachine or None
        The best round's machine (None for a run with no committed round).
    M_history : numpy.ndarray, shape (R, d, d) or (R, d)
        ``M_t`` of the committed rounds.
    next_M : numpy.ndarray or None
        ``M_R``, the next round's feature matrix (runs in progress; None when complete).
    classes : numpy.ndarray or None
    """

    attrs: dict[str, Any]
    params: dict[str, Any]
    machine: KernelMachine | None
    M_history: np.ndarray
    next_M: np.ndarray | None
    classes: np.ndarray | None
    data_vectors: dict[str, np.ndarray] = field(default_factory=dict)

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


def _read_array(
    group: Any,
    name: str,
    location: StoreLocation,
    shape: tuple[int, ...],
    *,
    max_rows: int | None = None,
) -> Any:
    """Open ``name`` and check its shape and dtype against what the attributes imply, from its
    metadata alone: nothing is read (or allocated) for an array that claims another shape.

    Parameters
    ----------
    shape : tuple of int
        The expected shape; ``-1`` matches any length up to ``max_rows`` (first axis only).
    max_rows : int, optional
        Bound of a ``-1`` first axis.
    """
    if name not in group:
        raise StoreError(
            f"Expected an array {name!r} in the store at {location.url!r}, found none (arrays: "
            f"{sorted(_array_paths(group))}); the store is damaged: restore it from a copy or refit."
        )
    array = group[name]
    found = tuple(array.shape)
    too_long = max_rows is not None and len(found) > 0 and found[0] > max_rows
    if (
        too_long
        or len(found) != len(shape)
        or any(e not in (-1, f) for e, f in zip(shape, found, strict=False))
    ):
        bound = "any" if max_rows is None else f"<= {max_rows}"
        expected = "(" + ", ".join(bound if e == -1 else str(e) for e in shape)
        expected += ",)" if len(shape) == 1 else ")"
        raise StoreError(
            f"Expected array {name!r} of shape {expected} in the store at {location.url!r} (from "
            f"its attributes), found {found}; the store is damaged or was edited: restore it from "
            "a copy or refit."
        )
    kind = np.dtype(array.dtype).kind if not isinstance(array.dtype, str) else "U"
    if kind not in "fiubUSOT":
        raise StoreError(
            f"Expected a numeric (or string) array {name!r} in the store at {location.url!r}, found "
            f"dtype {array.dtype}; the store is damaged or was edited: restore it from a copy or refit."
        )
    return array


# An explicit ``centers`` parameter read from a store is refused beyond this many elements (1.6 GB
# of float64), whatever its metadata claims.
MAX_ARRAY_PARAM_ELEMENTS = 2 * 10**8


def _max_centers(params: dict[str, Any], n: int, group: Any) -> int:
    """The most centers a store's attributes allow: the training rows, or an explicit centers array
    (bounded by :data:`MAX_ARRAY_PARAM_ELEMENTS`)."""
    spec = params.get("centers")
    if isinstance(spec, dict) and "array" in spec:
        return max(n, MAX_ARRAY_PARAM_ELEMENTS // max(1, int(group.attrs["data"]["d"])))
    return n


def _array_paths(group: Any, prefix: str = "") -> list[str]:
    paths = [prefix + name for name in group.array_keys()]
    for name, sub in group.groups():
        paths += _array_paths(sub, f"{prefix}{name}/")
    return paths


def _read_standardizer(group: Any, prefix: str, location: StoreLocation, size: int) -> Standardizer:
    if f"{prefix}/mean" not in group:
        return Standardizer()
    mean = _read_array(group, f"{prefix}/mean", location, (size,))[...]
    scale = _read_array(group, f"{prefix}/scale", location, (size,))[...]
    return Standardizer(mean=np.asarray(mean), scale=np.asarray(scale))


def _read_classes(group: Any, location: StoreLocation, classes_attr: list | None) -> Any:
    if classes_attr is None:
        return None
    values = _read_array(group, "classes", location, (len(classes_attr),))[...]
    return np.asarray(values if values.dtype.kind in "biuf" else [str(v) for v in values.tolist()])


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
    group = _open_group(location, "r")
    attrs = dict(group.attrs)
    _check_header(location, attrs)
    if require_complete and attrs["status"] != "complete":
        raise StoreError(
            f"Expected a finished model at {location.url!r}, found an interrupted fit (status "
            f"{attrs['status']!r}, {attrs['completed_rounds']} rounds committed); {RESUME_HINT}."
        )
    return _read_contents(group, location, attrs)


def _read_contents(group: Any, location: StoreLocation, attrs: dict[str, Any]) -> StoredRun:
    data, params_json = attrs["data"], attrs["params"]
    d, c = int(data["d"]), int(data["n_outputs"])
    diag = bool(params_json.get("diag"))
    m_shape = (d,) if diag else (d, d)
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
    centers = _read_array(
        group,
        "centers",
        location,
        (m_expected, d),
        max_rows=_max_centers(params_json, n_rows, group),
    )[...]
    m = centers.shape[0]
    history_M = _read_array(group, "history/M", location, (-1, *m_shape), max_rows=iters + 2)
    # A run in progress also holds M_R, the next round's matrix, unless its rounds have ended (all
    # run, or the last record says they stopped: early stopping or the time budget).
    ended = rounds > int(params_json["iters"]) or (
        rounds > 0 and bool(attrs["history"][-1].get("stopped"))
    )
    needed = rounds + 1 if not complete and not ended else rounds
    if history_M.shape[0] < needed or (complete and history_M.shape[0] != rounds):
        raise StoreError(
            f"Expected array 'history/M' with {needed} rows (completed_rounds={rounds}) in the "
            f"store at {location.url!r}, found {history_M.shape[0]}; the store is damaged or was "
            "edited: restore it from a copy or refit."
        )
    _restore_residuals(group, location, attrs, c)
    M_history = history_M[:rounds] if rounds else np.empty((0, *m_shape))
    preprocessing = _read_standardizer(group, "preprocessing", location, d)
    target_scaling = _read_standardizer(group, "target_scaling", location, c)
    machine = None
    if rounds:
        if complete:
            M = _read_array(group, "M", location, m_shape)[...]
            coef = _read_array(group, "coef", location, (m, c))[...]
        else:
            M = M_history[int(best)]
            coef = _read_array(group, "checkpoint/coef", location, (-1, m, c), max_rows=iters + 2)[
                int(best)
            ]
        if attrs.get("refit") is not None and "refit/coef" in group:
            centers = _read_array(
                group, "refit/centers", location, (-1, d), max_rows=max(m, n_rows)
            )[...]
            coef = _read_array(group, "refit/coef", location, (centers.shape[0], c))[...]
        machine = KernelMachine(
            centers=centers,
            coef=np.asarray(coef, dtype=np.float64),
            M=np.asarray(M, dtype=np.float64),
            kernel=params_json["kernel"],
            bandwidth=float(params_json["bandwidth"]),
            preprocessing=preprocessing,
            dtype=np.dtype(params_json["dtype"]),
            target_scaling=target_scaling,
        )
    return StoredRun(
        attrs=attrs,
        params=params_from_store(params_json, group, location, d),
        machine=machine,
        M_history=np.asarray(M_history, dtype=np.float64),
        next_M=np.asarray(history_M[rounds], dtype=np.float64) if needed > rounds else None,
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
            array = _read_array(group, residuals["array"], location, (rows, c))
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
                _read_array(group, f"fingerprint/{name}", location, (size,))[...]
            )
    return found


def check_same_run(
    stored: StoredRun,
    location: StoreLocation,
    *,
    estimator: str,
    params: dict[str, Any],
    fingerprint: dict[str, Any],
    vectors: dict[str, np.ndarray] | None = None,
) -> None:
    """Refuse to resume (or reuse) a stored run with another estimator class, parameters or data.

    The data are compared by their fingerprints (:func:`data_fingerprint`): exactly for shape, dtype,
    classes and the row hashes, to a relative 1e-9 for the per-column sums over every row (``vectors``;
    stores written before they existed compare the rest).

    Raises
    ------
    StoreError
        Naming every difference.
    """
    differences = []
    if stored.attrs["estimator"] != estimator:
        differences.append(f"estimator {stored.attrs['estimator']!r} vs {estimator!r}")
    values, arrays = params_to_store(params)
    for name in sorted(set(values) | set(stored.attrs["params"])):
        old, new = stored.attrs["params"].get(name), values.get(name)
        same = old == new
        if same and isinstance(new, dict) and "array" in new:
            old_array = stored.params[name]
            new_array = arrays[new["array"]]
            same = old_array.shape == new_array.shape and np.array_equal(old_array, new_array)
        if not same:
            differences.append(f"parameter {name}: {_short(old)} vs {_short(new)}")
    stored_data = stored.attrs["data"]
    for key in ("n", "d", "n_outputs", "dtype", "classes", "hash", "sample_hash", "eval_set"):
        if key == "sample_hash" and key not in stored_data:
            continue  # a store from before the full-data fingerprint
        if stored_data.get(key) != fingerprint.get(key):
            differences.append(
                f"data {key}: {_short(stored_data.get(key))} vs {_short(fingerprint.get(key))}"
                f"{FINGERPRINT_HINTS.get(key, '')}"
            )
    if stored.data_vectors and vectors is not None:
        for line in differences_of(stored.data_vectors, vectors):
            differences.append(f"data {line}")
    if differences:
        raise StoreError(
            f"Expected the same estimator, parameters and data as the run stored at "
            f"{location.url!r}, found differences (stored vs given): {'; '.join(differences)}; pass "
            "the run's data and parameters, or start a new run with overwrite=True or another path."
        )


# What a differing part of the fingerprint usually means, for the resume refusal.
FINGERPRINT_HINTS = {
    "hash": " (the first or last rows differ)",
    "sample_hash": " (the rows at an even stride differ: values changed or rows moved)",
}


def differences_of(stored: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> list[str]:
    """:func:`rfmdist.fingerprint.differences`, each with what it usually means."""
    hints = {
        "sum": "values changed or a column rescaled",
        "sumsq": "values changed or a column rescaled",
        "weighted": "rows moved or values changed",
    }
    found = []
    for line in differences(stored, given):
        kind = line.split(" ", 1)[0].rsplit("_", 1)[-1]
        found.append(f"{line}: {hints.get(kind, 'the data differ')}")
    return found


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
