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
from rfmdist.dask_cluster import active_client, chunk_rows_for
from rfmdist.data import is_dask_array, on_device, take_rows
from rfmdist.fingerprint import column_statistics
from rfmdist.metric import Metric
from rfmdist.model import KernelMachine, Standardizer
from rfmdist.sizing import CentersChoice, auto_centers, fit_capacity
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
            seed=int(stored.attrs["seed"]),
            fingerprint=stored.attrs["data"],
            fingerprint_vectors=stored.data_vectors,
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


def held_out_rows(n: int, fraction: float | None, n_iter_no_change: int | None) -> int:
    """How many of ``n`` rows a fit without validation data holds out to choose the round: 0 when
    early stopping is off, ``fraction`` is None or too few rows would be left, else
    ``max(1, round(fraction * n))``.

    Examples
    --------
    >>> held_out_rows(1000, 0.1, 2), held_out_rows(1000, 0.1, None), held_out_rows(2, 0.1, 2)
    (100, 0, 0)
    """
    if n_iter_no_change is None or fraction is None:
        return 0
    n_val = max(1, round(fraction * n))
    return 0 if n - n_val < 2 else n_val


def internal_split(
    n: int,
    seed: int,
    fraction: float | None,
    n_iter_no_change: int | None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted (train, validation) row indices for early stopping without validation data, or None.

    The split holds out :func:`held_out_rows` rows (and at least one per class when ``labels`` are
    given and every class has two rows), seeded by the fit's seed; None when it holds out none.

    Examples
    --------
    >>> train, val = internal_split(10, 0, 0.2, 2)
    >>> len(train), len(val), sorted(set(train) | set(val)) == list(range(10))
    (8, 2, True)
    """
    n_val = held_out_rows(n, fraction, n_iter_no_change)
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


def centers_choice(settings: FitSettings, n_rows: int, n_features: int) -> CentersChoice:
    """What ``centers='auto'`` means for a new fit of ``n_rows`` rows on this machine or the active
    cluster (:func:`rfmdist.sizing.auto_centers`)."""
    client = active_client()
    return auto_centers(
        n_rows,
        n_features,
        fit_capacity(settings.rounds.device, settings.rounds.dtype, client),
        memory.available_bytes(settings.rounds.device),
        worker_bytes=None if client is None else memory.worker_bytes(client),
        split_every=settings.rounds.split_every,
    )


def planned_centers(settings: FitSettings, n_rows: int, n_features: int) -> int:
    """How many centers a new fit's rounds on ``n_rows`` rows will use (``n_rows``: exact)."""
    auto = (
        centers_choice(settings, n_rows, n_features).n_centers
        if isinstance(settings.centers, str)
        else None
    )
    return selector_for(settings.centers, n_rows, auto).count(n_rows)


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
        target_scaling = Standardizer.fit(targets.Y) if targets.scale else Standardizer()
        Y = target_scaling.transform(targets.Y, np.float64)
        seed = self._seed(previous)
        config = self._config(seed, previous)
        n = int(X.shape[0])
        split = (
            internal_split(
                n,
                seed,
                self.settings.validation_fraction,
                config.n_iter_no_change,
                targets.split_labels,
            )
            if validation is None
            else None
        )
        n_train = n if split is None else len(split[0])
        auto = self._auto_centers(n_train, int(X.shape[1]), previous)
        X, Y = self._device_rows(X, Y, config, selector_for(self.settings.centers, n, auto))
        preprocessing = (
            Standardizer.from_statistics(statistics)
            if self.settings.standardize
            else Standardizer()
        )
        selector = selector_for(self.settings.centers, n_train, auto)
        rows = slice(None) if split is None else split[0]
        data = self._training_data(X, Y, rows, targets, preprocessing, selector, config)
        data.target_scaling = target_scaling
        scored_validation = self._scored_validation(X, targets, validation, split, config)
        if self.checkpoint is not None:
            header = self.identity.header(
                seed, fingerprint, vectors, data.centers, preprocessing, target_scaling
            )
            M0 = Metric.identity(int(X.shape[1]), config.diag)
            self.checkpoint.start(header, M0, resuming=previous is not None)
        with compute_context(config.device, config.tf32):
            rounds = self._rounds(data, config, targets, scored_validation, previous)
            stopped = rounds.stop_reason == STOP_CALLBACK
            model, refit = rounds.best.machine, None
            if split is not None and not stopped:
                model, refit = self._refit(
                    X, Y, targets, preprocessing, data, split[0], config, rounds, previous
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
        )

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

    def _config(self, seed: int, previous: StoredRun | None) -> RoundConfig:
        """The rounds' settings with the fit's seed, and the kernel dtype of the run being resumed
        (its records say which it was: another device may choose another); logged."""
        config = dataclasses.replace(self.settings.rounds, seed=seed)
        stored = previous.history[0].get("dtype_choice") if previous and previous.history else None
        if stored is not None:
            config = dataclasses.replace(
                config,
                dtype=np.dtype(stored["dtype"]),
                dtype_reason=f"{stored['reason']} (the run being resumed)",
            )
        logger.info("kernel dtype %s: %s", config.dtype, config.dtype_reason)
        return config

    def _seed(self, previous: StoredRun | None) -> int:
        """The fit's seed: the resumed run's, else one draw from ``random_state``."""
        if previous is not None:
            return int(previous.attrs["seed"])
        return int(check_random_state(self.settings.random_state).randint(np.iinfo(np.int32).max))

    def _auto_centers(self, n_rows: int, n_features: int, previous: StoredRun | None) -> int | None:
        """What ``centers='auto'`` means for this fit (logged; only asked for 'auto'); a resumed fit
        keeps its stored count."""
        if not isinstance(self.settings.centers, str):
            return None
        if previous is not None:
            # Stores of format 1 have no count; their 'auto' was min(n, 20,000).
            m = int(previous.attrs.get("n_centers", min(n_rows, 20_000)))
            return None if m >= n_rows else m
        choice = centers_choice(self.settings, n_rows, n_features)
        logger.info("centers='auto': %s", choice.describe(n_rows))
        return choice.n_centers

    @staticmethod
    def _device_rows(
        X: Any, Y: Any, config: RoundConfig, selector: CenterSelector
    ) -> tuple[Any, Any]:
        """Rows and targets where the passes run: on the device, and as Dask arrays when a
        distributed client is active (so that the workers run the passes)."""
        import dask.array as da

        if not is_dask_array(X) and active_client() is not None:
            n = int(X.shape[0])
            rows = chunk_rows_for(n, selector.count(n), X.shape[1], config.dtype.itemsize, 2)
            X = da.from_array(to_numpy(X), chunks=(rows, X.shape[1]))
            Y = da.from_array(to_numpy(Y), chunks=(rows, Y.shape[1]))
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

        if previous is not None and previous.attrs.get("rates") is not None:
            data.rates = costs.Rates(**previous.attrs["rates"])
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
        data: TrainingData,
        train_rows: np.ndarray,
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
        if not data.exact and data.center_rows is not None:
            rows = data.center_rows
            selector = FixedSelector(
                data.centers,
                rows=train_rows[rows] if np.all(rows != NOT_A_ROW) else rows,
                preprocessed=True,
            )
        else:
            selector = selector_for(self.settings.centers, int(X.shape[0]), None)
        # The rounds' rows are not needed any more: let them go (on a cluster, their persisted
        # chunks) before the refit's rows are prepared, and let the refit reuse the rounds' arrays.
        data.X = data.Y = data.Y_client = None
        full = self._training_data(X, Y, slice(None), targets, preprocessing, selector, config)
        full.target_scaling = data.target_scaling
        full.rates = data.rates
        full.workspace = data.workspace
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
