"""Zarr v3 stores of fitted models and of runs in progress (checkpoints): layout, writing, reading.

A store is one Zarr group (a local path or an fsspec URL such as ``s3://bucket/model.zarr`` or
``memory://model.zarr``; ``file://`` URLs are treated as local paths). Nothing is pickled: arrays are
plain numeric (or variable-length UTF-8 string) Zarr arrays and everything else is JSON in the group's
attributes.

Layout (``d`` features, ``m`` centers, ``c`` outputs, ``R`` = ``completed_rounds``)::

    <store>/
      attrs                 format = "rfmdist-model", format_version = 3, status = "running" | "complete",
                            versions {rfmdist, numpy, zarr, dask}, estimator (class name),
                            params (get_params(); an array value is {"array": "<path>"}; a numpy random
                            generator is {"random_generator": "<type>"}), seed (the int seed used),
                            data {n, d, n_outputs, dtype, classes, hash, sample_hash, eval_set},
                            estimator_state {y_1d, n_features_in, feature_names_in},
                            completed_rounds (R), best_iter, n_centers (m), rates (the cost model's),
                            plan (the fit's plan, rfmdist.plan.FitPlan.record: kept on resume),
                            history (R per-round records: scores, solver choice and record, seconds;
                            CG residuals as {"array": "history/residuals/<t>", "first", "last"}),
                            refit (its record, when there is one)
      centers               (m, d)      kernel dtype, in the preprocessed feature space
      coef                  (m, c)      float64, the best round's coefficients   [complete stores]
      M                     float64, the best round's feature matrix, as history/M/<t> [complete]
      history/M/<t>         float64, M_t of round t in the form the fit held it (attribute "form",
                            rfmdist.store.metrics): identity (d,) ones | diagonal (d,) | dense (d, d)
                            | factor (r, d), M = A^T A (wide data: rank r below d)
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
residual arrays; version 3 one array per round's ``M`` in its own form (a factored ``M`` of wide data
as its factor; versions 1 and 2 held every ``M`` dense in one ``(R, d, d)`` array ``history/M``).
Stores of versions 1 and 2 still load, and resume in their own layout (version 1 fingerprinted by
their first and last rows as before).

Commit protocol of a run (``fit(..., store=path)``): after round ``t`` the run writes
``checkpoint/coef[t]`` and ``history/M/<t + 1>`` (= ``M_{t+1}``, what round ``t + 1`` needs), then
rewrites the attributes with ``completed_rounds = t + 1`` and the new history. The attribute write is the
commit (the local store writes ``zarr.json`` to a temporary file and renames it): rows at or beyond an
uncommitted round are ignored and overwritten on resume, and committed chunks are never rewritten. When
the last round is committed the run writes ``M`` and ``coef`` of the best round, flips ``status`` to
``"complete"`` and drops ``checkpoint/``. Only complete stores load as models.

Runs and saves that replace a store (``overwrite=True``) are written beside it at ``<path>.partial``
and moved over ``<path>``: a complete model is replaced only when the new run completes, an
interrupted run once the new run has committed its first round; nothing at ``<path>`` is deleted or
moved before that (:mod:`rfmdist.store.planning` says exactly when each file operation happens). A
move is two renames for local paths (the old store is renamed away first, then deleted) and
delete-then-move for fsspec URLs (not atomic: a crash between the two leaves the run at
``<path>.partial``, which ``resume=True`` continues, or moves into place when it is complete).

Modules: :mod:`~rfmdist.store.location` (where a store lives, on fsspec),
:mod:`~rfmdist.store.layout` (the format's constants and shared array I/O),
:mod:`~rfmdist.store.codec` (parameters to attributes and back), :mod:`~rfmdist.store.identity`
(the data fingerprint and the same-run check), :mod:`~rfmdist.store.writer`,
:mod:`~rfmdist.store.reader`, and :mod:`~rfmdist.store.planning` (pure run planning).
"""

from rfmdist.store.codec import json_safe, params_from_store, params_to_store
from rfmdist.store.identity import (
    FINGERPRINT_HINTS,
    FINGERPRINT_ROWS,
    check_same_run,
    data_fingerprint,
    differences_of,
)
from rfmdist.store.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_ARRAY_PARAM_ELEMENTS,
    READABLE_VERSIONS,
    REFIT_RESIDUALS,
    REQUIRED_ATTRS,
    RESUME_HINT,
    residuals_path,
)
from rfmdist.store.location import StoreLocation, store_location
from rfmdist.store.planning import (
    PARTIAL_SUFFIX,
    RunPlan,
    committed_rounds,
    decide_run,
    decide_save,
    plan_run,
    save_location,
)
from rfmdist.store.reader import (
    RunAttributes,
    StoredRun,
    read_run_attributes,
    read_status,
    read_store,
    store_status,
)
from rfmdist.store.writer import (
    RunHeader,
    RunWriter,
    StoreWriteError,
    save_model,
    stored_history,
    versions,
)

__all__ = [
    "FINGERPRINT_HINTS",
    "FINGERPRINT_ROWS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_ARRAY_PARAM_ELEMENTS",
    "PARTIAL_SUFFIX",
    "READABLE_VERSIONS",
    "REFIT_RESIDUALS",
    "REQUIRED_ATTRS",
    "RESUME_HINT",
    "RunAttributes",
    "RunHeader",
    "RunPlan",
    "RunWriter",
    "StoreLocation",
    "StoreWriteError",
    "StoredRun",
    "check_same_run",
    "committed_rounds",
    "data_fingerprint",
    "decide_run",
    "decide_save",
    "differences_of",
    "json_safe",
    "params_from_store",
    "params_to_store",
    "plan_run",
    "read_run_attributes",
    "read_status",
    "read_store",
    "residuals_path",
    "save_location",
    "save_model",
    "store_location",
    "store_status",
    "stored_history",
    "versions",
]
