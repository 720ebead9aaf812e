"""The fit pipeline: from checked rows and encoded targets to the kept model, top-down.

:class:`FitPipeline` runs every step of a fit after the estimator has checked its inputs
(:mod:`rfmdist.estimators` keeps parameters, validation and the fitted attributes):

1. **fingerprint** the data in one pass that also gives the preprocessing's statistics;
2. **resume**: with a store, read and check the run being continued (:class:`Checkpoint`); a finished
   one is returned as it is;
3. **targets**: scale regression targets; draw the fit's seed (or keep the resumed run's);
4. **split**: without validation data, hold out ``validation_fraction`` of the rows to choose the
   round (:func:`internal_split`);
5. **centers**: resolve ``centers='auto'`` (:func:`rfmdist.sizing.auto_centers`) and choose them
   (:mod:`rfmdist.centers`);
6. **rows**: move the rows where the passes run (the device; Dask chunks on a cluster), preprocess
   them (:class:`rfmdist.model.Standardizer`);
7. **rounds**: run them (:func:`rfmdist.training.run_rounds`: solve, score, AGOP, best round, early
   stopping), committing each to the store;
8. **refit**: fit the kept round's ``M`` once more on all rows when part of them chose the round;
9. **finish**: mark the store complete and move it into place.

The result is a :class:`FitResult`; nothing here knows scikit-learn or the estimator classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from rfmdist import memory
from rfmdist.backend import set_tf32, tf32_matmul, to_numpy
from rfmdist.centers import NOT_A_ROW, CenterSelector, FixedSelector, selector_for
from rfmdist.dask_cluster import active_client
from rfmdist.data import is_dask_array, on_device, take_rows
from rfmdist.fingerprint import column_statistics
from rfmdist.metric import Metric
from rfmdist.model import KernelMachine, Standardizer
from rfmdist.plan import FitPlan, plan_fit
from rfmdist.solvers import costs
from rfmdist.store import (
    RunHeader,
    RunPlan,
    RunWriter,
    StoredRun,
    check_same_run,
    data_fingerprint,
    plan_run,
    read_store,
)
from rfmdist.training import (
    STOP_CALLBACK,
    RoundConfig,
    RoundOutcome,
    RoundsResult,
    TrainingData,
    cache_budget,
    refit_round,
    run_rounds,
)

logger = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray, np.ndarray], float]
"""``scorer(predictions, truth) -> float``: predictions (n, c) in target units against the truth."""


def mean_squared_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """The regressors' round score: mean squared error over rows and outputs."""
    return float(np.mean((pred - truth) ** 2))


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """The classifiers' round score: the share of rows whose largest output is the true class index
    (``truth`` holds indices; -1 for a label not seen in training, which never matches)."""
    return float(np.mean(np.argmax(pred, axis=1) == truth))


@dataclass(frozen=True)
class Targets:
    """A fit's encoded targets and how predictions of them are scored.

    Attributes
    ----------
    Y : array or dask.array.Array, shape (n, c)
        Float64 targets (one-hot for classification), not yet scaled.
    truth : numpy.ndarray, shape (n,) or (n, c)
        What ``scorer`` compares the predictions of the training rows with.
    scorer : callable
        See :data:`Scorer`.
    greater_is_better : bool
        Accuracy (True) or a loss (False).
    scale : bool
        Standardise ``Y`` for the rounds (regression with ``standardize=True``).
    split_labels : numpy.ndarray of int, shape (n,), optional
        Class indices that the internal validation split stratifies on.
    """

    Y: Any
    truth: np.ndarray
    scorer: Scorer
    greater_is_better: bool
    scale: bool = False
    split_labels: np.ndarray | None = None


@dataclass(frozen=True)
class Validation:
    """Checked validation rows (``eval_set``) and the truth their predictions are scored against.

    Attributes
    ----------
    X : array or dask.array.Array, shape (n_val, d)
        Raw features.
    truth : numpy.ndarray, shape (n_val,) or (n_val, c)
    """

    X: Any
    truth: np.ndarray


@dataclass(frozen=True)
class FitSettings:
    """What the pipeline needs of the estimator's parameters besides the rounds' settings.

    Attributes
    ----------
    rounds : RoundConfig
        The rounds' settings; its ``seed`` is replaced by the fit's.
    centers : 'auto', None, int or array
        The estimators' ``centers`` parameter (:func:`rfmdist.centers.selector_for`).
    standardize : bool
        Preprocess the features with the training statistics.
    validation_fraction : float or None
        Rows held out to choose the round when there is no validation data.
    random_state : None, int or numpy.random.RandomState
        Where the fit's seed comes from.
    """

    rounds: RoundConfig
    centers: Any = "auto"
    standardize: bool = True
    validation_fraction: float | None = 0.1
    random_state: Any = None


@dataclass(frozen=True)
class RunIdentity:
    """What a store records of the estimator that fits: its class, parameters and state.

    Attributes
    ----------
    estimator : str
        The class name.
    params : dict
        ``get_params(deep=False)``.
    state : dict
        ``{"y_1d", "n_features_in", "feature_names_in"}``.
    classes : numpy.ndarray, optional
        The classifier's labels.
    """

    estimator: str
    params: dict[str, Any]
    state: dict[str, Any]
    classes: np.ndarray | None = None

    def header(
        self,
        seed: int,
        fingerprint: dict[str, Any],
        vectors: dict[str, np.ndarray],
        centers: Any,
        preprocessing: Standardizer,
        target_scaling: Standardizer,
        plan: FitPlan | None,
    ) -> RunHeader:
        """The store header of a run (or a saved model) of this estimator."""
        return RunHeader(
            estimator=self.estimator,
            params=self.params,
            seed=seed,
            data=fingerprint,
            estimator_state=self.state,
            centers=to_numpy(centers),
            preprocessing=preprocessing,
            target_scaling=target_scaling,
            classes=self.classes,
            data_vectors=vectors,
            plan=None if plan is None else plan.record(),
        )


@dataclass
class FitResult:
    """What a fit keeps.

    Attributes
    ----------
    best : RoundOutcome
        The kept round.
    model : KernelMachine
        The predictor: the kept round's, or its refit on all rows.
    history : list of dict
    metric_history : list of Metric
    refit : dict or None
        The refit's record.
    seed : int
    fingerprint : dict
        The data's (and the validation data's) fingerprint, as stored.
    fingerprint_vectors : dict of str to numpy.ndarray
    plan : FitPlan or None
        The plan the fit carried out (None: a stored run written before plans were stored).
    stored : StoredRun or None
        The finished run loaded from the store instead of fitting (``resume`` of a complete run).
    """

    best: RoundOutcome
    model: KernelMachine
    history: list[dict[str, Any]]
    metric_history: list[Metric]
    refit: dict[str, Any] | None
    seed: int
    fingerprint: dict[str, Any]
    fingerprint_vectors: dict[str, np.ndarray]
    plan: FitPlan | None = None
    stored: StoredRun | None = None

    @classmethod
    def from_stored(cls, stored: StoredRun) -> FitResult:
        """The result of a stored run (its best committed round; the refit when there is one)."""
        best = stored_best(stored)
        return cls(
            best=best,
            model=stored.machine,
            history=stored.history,
            metric_history=list(stored.metric_history),
            refit=stored.refit,
            seed=stored.seed,
            fingerprint=stored.fingerprint,
            fingerprint_vectors=stored.data_vectors,
            plan=None if stored.plan is None else FitPlan.from_record(stored.plan),
            stored=stored,
        )


def stored_best(stored: StoredRun) -> RoundOutcome | None:
    """The best committed round of a stored run (None before the first)."""
    if stored.best_iter is None:
        return None
    return RoundOutcome(
        round=stored.best_iter,
        machine=stored.machine,
        record=stored.history[stored.best_iter],
        next_metric=None,
    )


@contextlib.contextmanager
def targets_in_graphs() -> Iterator[None]:
    """Context for the graphs that carry the targets (in memory) to the workers: the fingerprint's
    pass and their persist, once each. A million rows of 23 one-hot classes are 180 MB, above
    distributed's large-graph warning (10 MB), which advises loading them with Dask: they are the
    caller's (encoded) targets, sent once on purpose."""
    import dask

    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "4GB"}):
        yield


@contextlib.contextmanager
def compute_context(device: str, tf32: bool) -> Iterator[None]:
    """On a GPU: TF32 GEMMs on or off in this process and on the distributed workers, restored
    afterwards. Nothing on the CPU."""
    if device != "gpu":
        yield
        return
    client = active_client()
    previous = {} if client is None else client.run(set_tf32, tf32)
    try:
        with tf32_matmul(tf32):
            yield
    finally:
        for address, value in previous.items():
            if value is not None:
                client.run(set_tf32, value, workers=[address])


def internal_split(
    n: int, seed: int, n_val: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted (train, validation) row indices for early stopping without validation data, or None.

    The split holds out ``n_val`` rows (the plan's, :func:`rfmdist.plan.held_out_rows`; at least
    one per class when ``labels`` are given and every class has two rows), seeded by the fit's
    seed; None when it holds out none.

    Examples
    --------
    >>> train, val = internal_split(10, 0, 2)
    >>> len(train), len(val), sorted(set(train) | set(val)) == list(range(10))
    (8, 2, True)
    """
    if n_val == 0:
        return None
    stratify = None
    if labels is not None:
        counts = np.bincount(labels)
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            stratify = labels
    train, val = train_test_split(
        np.arange(n), test_size=n_val, random_state=seed, stratify=stratify
    )
    return np.sort(train), np.sort(val)


@dataclass(frozen=True)
class RefitInputs:
    """What the refit on all rows keeps of the rounds' :class:`TrainingData` (not its rows).

    Attributes
    ----------
    centers : array, shape (m, d)
        The rounds' centers (preprocessed).
    center_rows : numpy.ndarray of int or None
        Their rows among the rounds' rows (None: the exact system).
    exact : bool
    train_rows : numpy.ndarray of int
        The rounds' rows among all rows.
    target_scaling : Standardizer
    rates : Rates or None
    workspace : Workspace
        The rounds' large arrays, for the refit to reuse.
    """

    centers: Any
    center_rows: np.ndarray | None
    exact: bool
    train_rows: np.ndarray
    target_scaling: Standardizer
    rates: costs.Rates | None
    workspace: memory.Workspace

    @classmethod
    def of(cls, data: TrainingData, train_rows: np.ndarray) -> RefitInputs:
        """From the rounds' data and their rows among all rows."""
        return cls(
            centers=data.centers,
            center_rows=data.center_rows,
            exact=data.exact,
            train_rows=train_rows,
            target_scaling=data.target_scaling,
            rates=data.rates,
            workspace=data.workspace,
        )

    def selector(self, spec: Any, n_rows: int) -> CenterSelector:
        """The refit's centers: the rounds' Nyström centers (at their rows among all rows), or
        the selector of the ``centers`` parameter for all ``n_rows`` rows (the exact system)."""
        if self.exact or self.center_rows is None:
            return selector_for(spec, n_rows, None)
        rows = self.center_rows
        return FixedSelector(
            self.centers,
            rows=self.train_rows[rows] if np.all(rows != NOT_A_ROW) else rows,
            preprocessed=True,
        )


class Checkpoint:
    """A fit's store: where it runs, the run it continues, its commits and its completion.

    The one place a fit calls :mod:`rfmdist.store`; build it with :meth:`plan` before the data is
    read (it refuses a store it must not touch).
    """

    def __init__(self, plan: RunPlan) -> None:
        self.run_plan = plan
        self.writer: RunWriter | None = None

    @classmethod
    def plan(cls, store: Any, *, resume: bool, overwrite: bool) -> Checkpoint:
        """Plan the run at ``store`` (see :func:`rfmdist.store.plan_run`)."""
        return cls(plan_run(store, resume=resume, overwrite=overwrite))

    @property
    def finished(self) -> bool:
        """True when the store holds the finished run (``resume`` of a complete one)."""
        return self.run_plan.mode == "finished"

    def previous_run(
        self, identity: RunIdentity, fingerprint: dict[str, Any], vectors: dict[str, np.ndarray]
    ) -> StoredRun | None:
        """The stored run to continue (or the finished one to load), checked against this fit."""
        plan = self.run_plan
        if plan.mode == "fresh":
            return None
        location = plan.work
        previous = read_store(location.url, require_complete=self.finished)
        check_same_run(
            previous,
            location,
            estimator=identity.estimator,
            params=identity.params,
            fingerprint=fingerprint,
            vectors=vectors,
        )
        if self.finished:
            plan.complete()  # a complete <path>.partial moves into place once checked
            logger.info("the run at %s is complete: loaded it without refitting", plan.target.url)
        else:
            logger.info(
                "resuming the run at %s after %d committed rounds",
                location.url,
                previous.completed_rounds,
            )
        return previous

    def start(self, header: RunHeader, M0: Metric, resuming: bool) -> None:
        """Open the run's writer: a new run with ``M_0`` (the header's centers and scalings), or
        the run being resumed."""
        plan = self.run_plan
        self.writer = plan.reopen_writer() if resuming else plan.open_writer(header, M0)

    def commit_round(
        self,
        outcome: RoundOutcome,
        best_round: int,
        history: list[dict[str, Any]],
        rates: costs.Rates | None,
    ) -> None:
        """Commit a finished round (its coefficients, the next ``M``, the history so far)."""
        self.writer.commit_round(
            outcome.round,
            outcome.machine.coef,
            outcome.next_metric,
            best_round,
            history,
            None if rates is None else dataclasses.asdict(rates),
        )

    def commit_refit(self, machine: KernelMachine, record: dict[str, Any]) -> None:
        """Commit the refit on all rows."""
        self.writer.commit_refit(machine.centers, machine.coef, record)

    def finish(self, rounds: RoundsResult, iters: int) -> None:
        """Mark the store complete and move it into place, unless the callback stopped the rounds
        before the last (the run then stays resumable)."""
        if rounds.stop_reason == STOP_CALLBACK and len(rounds.history) <= iters:
            logger.info(
                "stopped by the callback after round %d: the run at %s stays resumable "
                "(fit(..., resume=True)); save(path) stores this model as finished",
                len(rounds.history) - 1,
                self.run_plan.location.url,
            )
            return
        self.writer.finish()
        self.run_plan.complete()


class FitPipeline:
    """One fit, step by step (see the module docstring).

    Parameters
    ----------
    settings : FitSettings
    identity : RunIdentity
        What the store records of the estimator (and checks on resume).
    checkpoint : Checkpoint, optional
        The store the rounds are committed to.
    callback : callable, optional
        ``callback(outcome) -> bool | None`` after each (committed) round; True stops the rounds.
    progress : FitProgress, optional
        Told of every round and CG iteration (:mod:`rfmdist.progress`).
    """

    def __init__(
        self,
        settings: FitSettings,
        identity: RunIdentity,
        checkpoint: Checkpoint | None = None,
        *,
        callback: Callable[[RoundOutcome], bool | None] | None = None,
        progress: Any = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.checkpoint = checkpoint
        self.callback = callback
        self.progress = progress

    def run(self, X: Any, targets: Targets, validation: Validation | None = None) -> FitResult:
        """Fit.

        Parameters
        ----------
        X : array or dask.array.Array, shape (n, d)
            Checked raw features (NumPy, CuPy or Dask).
        targets : Targets
        validation : Validation, optional

        Returns
        -------
        FitResult
        """
        fingerprint, vectors, statistics = self._fingerprint(X, targets, validation)
        previous = (
            None
            if self.checkpoint is None
            else self.checkpoint.previous_run(self.identity, fingerprint, vectors)
        )
        if self.checkpoint is not None and self.checkpoint.finished:
            return FitResult.from_stored(previous)
        plan = self.plan(X, has_validation=validation is not None, previous=previous)
        preprocessing, target_scaling = self._scalings(statistics, targets, previous)
        Y = target_scaling.transform(targets.Y, np.float64)
        seed = self._seed(previous)
        config = dataclasses.replace(
            self.settings.rounds,
            seed=seed,
            dtype=np.dtype(plan.dtype),
            dtype_reason=plan.dtype_reason
            + ("" if previous is None else " (the run being resumed)"),
        )
        split = (
            internal_split(plan.n_rows, seed, plan.held_out_rows, targets.split_labels)
            if validation is None
            else None
        )
        X, Y = self._device_rows(X, Y, config, plan)
        rows = slice(None) if split is None else split[0]
        selector = selector_for(self.settings.centers, plan.rounds_rows, plan.selector_count())
        data = self._training_data(
            X,
            Y,
            rows,
            targets,
            preprocessing,
            selector,
            config,
            target_scaling=target_scaling,
            known_rates=None
            if previous is None or previous.rates is None
            else costs.Rates(**previous.rates),
        )
        scored_validation = self._scored_validation(X, targets, validation, split, config)
        if self.checkpoint is not None:
            header = self.identity.header(
                seed, fingerprint, vectors, data.centers, preprocessing, target_scaling, plan
            )
            M0 = Metric.identity(plan.n_features, config.diag)
            self.checkpoint.start(header, M0, resuming=previous is not None)
        with compute_context(config.device, config.tf32):
            rounds = self._rounds(data, config, targets, scored_validation, previous)
            stopped = rounds.stop_reason == STOP_CALLBACK
            model, refit = rounds.best.machine, None
            if split is not None and not stopped:
                kept = RefitInputs.of(data, split[0])
                del data  # the rounds' rows (on a cluster, their persisted chunks) go first
                model, refit = self._refit(
                    X, Y, targets, preprocessing, kept, config, rounds, previous
                )
        if self.checkpoint is not None:
            self.checkpoint.finish(rounds, config.iters)
        return FitResult(
            best=rounds.best,
            model=model,
            history=rounds.history,
            metric_history=rounds.metric_history,
            refit=refit,
            seed=seed,
            fingerprint=fingerprint,
            fingerprint_vectors=vectors,
            plan=plan,
        )

    def plan(self, X: Any, *, has_validation: bool, previous: StoredRun | None) -> FitPlan:
        """The fit's plan (:func:`rfmdist.plan.plan_fit`) for the rows ``X`` (a Dask input's row
        chunks are kept), logged."""
        plan = plan_fit(
            self.settings,
            int(X.shape[0]),
            int(X.shape[1]),
            has_validation=has_validation,
            client=active_client(),
            chunk_rows=int(X.chunks[0][0]) if is_dask_array(X) else None,
            previous=previous,
        )
        logger.info("kernel dtype %s: %s", plan.dtype, plan.dtype_reason)
        logger.info("%s", plan.describe())
        return plan

    # --- the steps ---------------------------------------------------------------------------------

    def _fingerprint(
        self, X: Any, targets: Targets, validation: Validation | None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
        """The data's fingerprint with the validation data's, and the preprocessing's statistics
        (from the fingerprint's one pass over every row)."""
        with targets_in_graphs():
            statistics = column_statistics(X, targets.Y)
        fingerprint, vectors = data_fingerprint(X, targets.Y, self.identity.classes, statistics)
        if validation is None:
            return fingerprint | {"eval_set": None}, vectors, statistics
        truth_2d = validation.truth.reshape(len(validation.truth), -1)
        stamp, eval_vectors = data_fingerprint(validation.X, truth_2d)
        summary = {
            "n": stamp["n"],
            "hash": stamp["hash"],
            "sample_hash": stamp["sample_hash"],
            "d": stamp["d"],
            "c": int(truth_2d.shape[1]),
        }
        vectors = vectors | {f"eval_{k}": v for k, v in eval_vectors.items()}
        return fingerprint | {"eval_set": summary}, vectors, statistics

    def _scalings(
        self, statistics: Any, targets: Targets, previous: StoredRun | None
    ) -> tuple[Standardizer, Standardizer]:
        """The features' preprocessing (from the fingerprint pass's statistics) and the targets'
        scaling; a resumed run's stored ones (computed again from rows in other chunks they could
        differ in their last bits)."""
        if previous is not None:
            return previous.preprocessing, previous.target_scaling
        preprocessing = (
            Standardizer.from_statistics(statistics)
            if self.settings.standardize
            else Standardizer()
        )
        return preprocessing, Standardizer.fit(targets.Y) if targets.scale else Standardizer()

    def _seed(self, previous: StoredRun | None) -> int:
        """The fit's seed: the resumed run's, else one draw from ``random_state``."""
        if previous is not None:
            return previous.seed
        return int(check_random_state(self.settings.random_state).randint(np.iinfo(np.int32).max))

    @staticmethod
    def _device_rows(X: Any, Y: Any, config: RoundConfig, plan: FitPlan) -> tuple[Any, Any]:
        """Rows and targets where the passes run: on the device, and as Dask arrays in the plan's
        row chunks when a distributed client is active (so that the workers run the passes); a
        Dask input in another chunking (a resumed run's data) is brought to the plan's, whose
        reductions the run's sums follow."""
        import dask.array as da

        if not is_dask_array(X) and plan.chunk_rows is not None:
            X = da.from_array(to_numpy(X), chunks=(plan.chunk_rows, X.shape[1]))
            Y = da.from_array(to_numpy(Y), chunks=(plan.chunk_rows, Y.shape[1]))
        elif is_dask_array(X) and plan.chunk_rows not in (None, X.chunks[0][0]):
            X = X.rechunk({0: plan.chunk_rows})
        return on_device(X, config.device), Y

    @staticmethod
    def _training_data(
        X: Any,
        Y: Any,
        rows: slice | np.ndarray,
        targets: Targets,
        preprocessing: Standardizer,
        selector: CenterSelector,
        config: RoundConfig,
        **carried: Any,
    ) -> TrainingData:
        """Preprocess the rows ``rows`` of ``X`` and ``Y``, choose their centers and wrap them for the
        round loop.

        Parameters
        ----------
        X : array or dask.array.Array, shape (n, d)
            Raw rows, on the device (:meth:`_device_rows`).
        Y : array or dask.array.Array, shape (n, c)
            Scaled float targets.
        rows : slice or numpy.ndarray of int
            The training rows (all, or the training part of the internal split).
        targets : Targets
        preprocessing : Standardizer
        selector : CenterSelector
        config : RoundConfig
        **carried
            ``target_scaling``, ``known_rates``, ``workspace`` (:class:`TrainingData`).
        """
        import dask.array as da

        truth = targets.truth
        if not isinstance(rows, slice):
            X, Y, truth = take_rows(X, rows), take_rows(Y, rows), truth[rows]
        Xp = preprocessing.transform(X, config.dtype)
        if is_dask_array(Xp):
            if Xp.nbytes <= cache_budget(config, on_workers=True):
                Xp = Xp.persist()
            if not is_dask_array(Y):
                Y = da.from_array(to_numpy(Y), chunks=(Xp.chunks[0], Y.shape[1]))
            # Persisted once, so that no pass carries the targets in its graph.
            with targets_in_graphs():
                Y = on_device(Y, config.device).rechunk({0: Xp.chunks[0]}).persist()
        else:
            Y = on_device(Y, config.device)
        center_rows, centers = selector.select(Xp, config.seed, preprocessing, config.dtype)
        return TrainingData(
            X=Xp,
            Y=Y,
            score=partial(_score_rows, targets.scorer, truth),
            center_rows=center_rows,
            centers=centers,
            preprocessing=preprocessing,
            **carried,
        )

    @staticmethod
    def _scored_validation(
        X: Any,
        targets: Targets,
        validation: Validation | None,
        split: tuple[np.ndarray, np.ndarray] | None,
        config: RoundConfig,
    ) -> tuple[Any, Callable[[np.ndarray], float]] | None:
        """The rows that choose the round, with their scorer: the validation data, or the held-out
        part of the training rows."""
        if validation is not None:
            return (
                on_device(validation.X, config.device),
                partial(targets.scorer, truth=validation.truth),
            )
        if split is None:
            return None
        val_rows = split[1]
        return take_rows(X, val_rows), partial(targets.scorer, truth=targets.truth[val_rows])

    def _rounds(
        self,
        data: TrainingData,
        config: RoundConfig,
        targets: Targets,
        validation: tuple[Any, Callable[[np.ndarray], float]] | None,
        previous: StoredRun | None,
    ) -> RoundsResult:
        """Run (the remaining) rounds, committing each to the store."""
        checkpoint, callback = self.checkpoint, self.callback

        def on_round(outcome: RoundOutcome, best_round: int, history: list[dict]) -> bool:
            if checkpoint is not None:
                checkpoint.commit_round(outcome, best_round, history, data.rates)
            return callback is not None and bool(callback(outcome))

        return run_rounds(
            data,
            config,
            greater_is_better=targets.greater_is_better,
            validation=validation,
            previous=None
            if previous is None
            else (
                previous.history,
                list(previous.metric_history),
                stored_best(previous),
                previous.next_metric,
            ),
            on_round=on_round,
            progress=self.progress,
        )

    def _refit(
        self,
        X: Any,
        Y: Any,
        targets: Targets,
        preprocessing: Standardizer,
        kept: RefitInputs,
        config: RoundConfig,
        rounds: RoundsResult,
        previous: StoredRun | None,
    ) -> tuple[KernelMachine, dict[str, Any]]:
        """Fit the kept round's ``M`` once more on all rows (the rounds saw the training part of an
        internal validation split); committed to the store when there is one.

        Returns
        -------
        model : KernelMachine
        record : dict
            The refit's solver record, rows and seconds.
        """
        if previous is not None and previous.refit is not None:
            return previous.machine, previous.refit
        full = self._training_data(
            X,
            Y,
            slice(None),
            targets,
            preprocessing,
            kept.selector(self.settings.centers, int(X.shape[0])),
            config,
            target_scaling=kept.target_scaling,
            known_rates=kept.rates,
            workspace=kept.workspace,
        )
        started = time.perf_counter()
        best = rounds.best
        outcome = refit_round(full, config, best.machine.metric, best.round, self.progress)
        record = outcome.record | {"rows": full.n_rows, "seconds": time.perf_counter() - started}
        logger.info(
            "refitted round %d's M on all %d rows (%s, %.2f s)",
            best.round,
            full.n_rows,
            outcome.record["solver"],
            record["seconds"],
        )
        if self.checkpoint is not None:
            self.checkpoint.commit_refit(outcome.machine, record)
        return outcome.machine, record


def _score_rows(scorer: Scorer, truth: np.ndarray, pred: np.ndarray, rows: Any = None) -> float:
    """``scorer`` of the training rows ``rows`` (None: all, in order)."""
    return scorer(pred, truth if rows is None else truth[rows])
