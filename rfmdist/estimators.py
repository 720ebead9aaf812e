"""scikit-learn estimators: :class:`RFMRegressor` and :class:`RFMClassifier`.

The estimators are thin: ``__init__`` stores parameters only; ``fit`` validates them against
:data:`PARAMETERS`, checks the data (:mod:`rfmdist.data`), encodes the targets, and hands the rest to
the fit pipeline (:class:`rfmdist.pipeline.FitPipeline`: preprocessing, centers, the rounds, the best
round, the refit and the store), whose result becomes the fitted attributes. With ``store=`` every
round is committed to a Zarr store (:mod:`rfmdist.store`) from which an interrupted fit resumes;
``save`` and :func:`load` write and read finished models.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from rfmdist import memory
from rfmdist.agop import normalized_diagonal
from rfmdist.backend import (
    DEVICES,
    get_namespace,
    gpu_available,
    is_cupy_array,
    resolve_device,
    to_numpy,
)
from rfmdist.data import (
    check_dask_features,
    check_finite,
    check_length_match,
    check_min_samples,
    check_numeric_columns,
    check_one_dimensional,
    is_dask_array,
    is_dataframe,
    is_store_path,
    on_device,
    open_zarr_xy,
    regression_targets,
)
from rfmdist.exceptions import NotFittedError, StoreError
from rfmdist.kernels import KERNELS
from rfmdist.locking import StoreLock
from rfmdist.metric import Metric, metric_policy
from rfmdist.model import KernelMachine
from rfmdist.params import ArrayLike, Interval, NoneValue, Options, RandomState, validate_params
from rfmdist.pipeline import (
    Checkpoint,
    FitPipeline,
    FitResult,
    FitSettings,
    RunIdentity,
    Targets,
    Validation,
    accuracy,
    compute_context,
    internal_split,
    mean_squared_error,
)
from rfmdist.plan import FitPlan, held_out_rows, plan_fit
from rfmdist.precision import choose_dtype
from rfmdist.store import RunAttributes, read_store, save_location, store_location
from rfmdist.training import SOLVERS, RoundConfig, RoundOutcome

logger = logging.getLogger(__name__)


DEFAULT_TOL = 1e-4
"""PCG relative residual of ``tol=None`` (see the ``tol`` parameter for the measurements)."""

PARAMETERS: dict[str, tuple[Any, ...]] = {
    "kernel": (Options(KERNELS),),
    "bandwidth": (Interval(float, 0, None, "neither"),),
    "reg": (Interval(float, 0, None, "neither"),),
    "iters": (Interval(int, 0, None),),
    "diag": (Options((True, False)),),
    "agop_samples": (Interval(int, 1, None), NoneValue()),
    "centers": (Options(("auto",)), NoneValue(), Interval(int, 1, None), ArrayLike()),
    "solver": (Options(SOLVERS),),
    "standardize": (Options((True, False)),),
    "tol": (Interval(float, 0, 1, "neither"), NoneValue()),
    "max_iter": (Interval(int, 1, None),),
    "preconditioner_rank": (Interval(int, 1, None),),
    "cache_kernel": (Options(("auto", True, False)),),
    "split_every": (Interval(int, 2, None),),
    "random_state": (RandomState(),),
    "dtype": (Options(("float32", "float64")), NoneValue()),
    "device": (Options(DEVICES),),
    "tf32": (Options((True, False)),),
    "normalize_agop": (Options(("max",)), NoneValue()),
    "n_iter_no_change": (Interval(int, 1, None), NoneValue()),
    "validation_fraction": (Interval(float, 0, 1, "neither"), NoneValue()),
    "time_budget": (Interval(float, 0, None, "neither"), NoneValue()),
}


class _RFMBase(BaseEstimator):
    """Shared parameters and the fit loop of the RFM estimators.

    Parameters
    ----------
    kernel : {'laplace', 'gaussian'}, default='laplace'
        ``exp(-||x - z||_M / L)`` or ``exp(-||x - z||_M^2 / (2 L^2))``.
    bandwidth : float, default=10.0
        ``L`` (the paper's default).
    reg : float, default=1e-3
        Ridge ``lambda`` of ``(K + lambda I) a = Y`` (the Nyström system uses the same scale).
    iters : int, default=5
        Number of feature-matrix updates; rounds ``0 .. iters`` are fitted (round 0 is the plain
        kernel, ``M = I``).
    diag : bool, default=False
        Learn a diagonal ``M`` (one weight per feature) instead of a full ``d x d`` matrix.
    agop_samples : int or None, default=5000
        Rows (drawn at random each round, seeded) on which the AGOP is estimated; None for all. The
        AGOP is an average, so its sampling error depends on the rows sampled, not on ``n``.
        Measured on six real sets (5 rounds, all rows against 5,000 and 2,000): with 5,000 the test
        scores moved by at most 0.07 accuracy points and 0.3 % MSE, and the AGOP took 1.2-3x less
        time where ``n`` exceeds 5,000; with 2,000 one set lost 3.7 % MSE.
    centers : 'auto', None, int or array of shape (m, d), default='auto'
        None: all rows (exact system). int: that many rows drawn uniformly as Nyström centers.
        array: explicit centers (raw feature space). 'auto': from the rows, the features, the cores
        the passes run on and the memory (:func:`rfmdist.sizing.auto_centers`): all rows while their
        exact system costs at most that of 20,000 rows on 2 cores (scaled with the cores; a GPU
        counts as the cores its measured GEMM rate is worth, :func:`rfmdist.sizing.fit_capacity`)
        and fits memory, beyond it the most Nyström centers within that work per round, and never
        fewer than ``sqrt(n)`` (on 2 cores: 9,400 centers of 30,000 rows, 3,600 of 200,000, 1,600
        of 1 million, 3,100 of 10 million). The choice is logged at the start of the fit.
    solver : {'auto', 'direct', 'mixed', 'pcg'}, default='auto'
        'direct': float64 Cholesky. 'mixed' (exact systems): float32 Cholesky refined to float64
        accuracy by a few CG iterations (half the factorisation time; Nyström systems take
        'direct'). 'pcg': preconditioned conjugate gradient. 'auto': each round, the one the cost
        model (:mod:`rfmdist.solvers.costs`) estimates fastest on this device within its memory
        budget (:mod:`rfmdist.memory`); ``history_[t]["solver_choice"]`` records the estimates.
    standardize : bool, default=True
        Center and scale the features (and regression targets) with training statistics.
    tol : float or None, default=None
        PCG relative residual target ``||Y - A x|| / ||Y||``; None: 1e-4. The training-set
        predictions then differ from the exact solution's by at most ``2 tol ||Y||``. Measured on
        six real sets and a planted task, exact and Nystrom systems (benchmarks/cg_tolerance.py),
        1e-4 needed 42-61% of the iterations of 1e-7 and moved test scores by at most 2.2e-5 in
        R^2 and 4.3e-4 in accuracy (two test rows).
    max_iter : int, default=300
        PCG iterations per round.
    preconditioner_rank : int, default=500
        Sketch rank of the Nyström preconditioner of the exact system.
    cache_kernel : 'auto' or bool, default='auto'
        Keep a round's ``n x m`` kernel for the solver passes ('auto': when it fits the memory
        budget where it would be kept: half the memory available in this process, on its GPU or on
        the Dask workers; see :mod:`rfmdist.memory`).
    split_every : int, default=8
        Fan-in of the tree reductions over Dask chunks.
    random_state : int, Generator, RandomState or None, default=None
        Seeds centers, AGOP subsets and sketches.
    dtype : {'float32', 'float64'} or None, default=None
        Precision of the kernel computations (solver state is float64 in both). None: float64 on the
        CPU; on a GPU float64 where its measured float64 GEMM rate is at least a quarter of its
        float32 rate (datacenter cards), else float32 (:mod:`rfmdist.precision`; the choice is in
        ``history_[t]["dtype_choice"]``). Float32 kernels are guarded for the direct solves (close
        pairs recomputed from their differences, a row at its own center exactly, the Nyström Gram
        matrix by float64 GEMMs), and a round whose float32 kernel is still too coarse for its
        system runs in float64 (``history_[t]["solve"]["float64_fallback"]``). Measured on the CPU
        (``benchmarks/float32_fits.py``): float32 fits scored as float64 ones to 4 digits on five
        sets, the first GPU run's two failing sets among them.
    device : {'cpu', 'gpu', 'auto'}, default='cpu'
        Where the kernel passes run. 'gpu': NumPy and Dask/Zarr inputs are copied to the GPU (Dask
        chunk by chunk, on the workers when a distributed client is active); needs CuPy
        (``pip install 'rfmdist[cuda12]'`` or ``'rfmdist[cuda13]'``) and a GPU it can allocate on.
        'auto': the GPU when one is usable, else the CPU (so the default dtype, too, then depends
        on the machine). 'cpu': CuPy inputs are copied to the host. The fitted model (``model_``,
        ``M_``, ``coef_``, the store) is always NumPy; ``predict`` returns the input's array type
        and, for a model fitted with 'gpu' or 'auto', runs on the GPU when one is usable.
    normalize_agop : {'max'} or None, default='max'
        Divide each round's AGOP by its largest entry before it becomes the next ``M`` (as xRFM
        does); None uses the raw AGOP (the RFM paper's code). Measured on 13 real sets (exact
        system, 5 rounds): equal within noise on 10, and better on 3 (test MSE of
        Brazilian_houses 0.0012 against 0.025, cpu_act 0.0174 against 0.0182) where the raw AGOP's
        scale shrinks the kernel's effective bandwidth round after round.
    n_iter_no_change : int or None, default=2
        Early stopping: stop once the validation score has not improved for this many rounds, and
        keep the best round. Validation is ``eval_set``, or without one a split of the training rows
        (``validation_fraction``). None: run all rounds (and without ``eval_set`` keep the last).
        Measured on 13 real sets (exact system, all 6 rounds run, then replayed): with 2 the kept
        round was the full run's on all 13 after 3-5 of the 6 rounds; with 1 on 12 of 13.
    validation_fraction : float or None, default=0.1
        With early stopping and no ``eval_set``: the fraction of the training rows held out
        (stratified for classifiers, seeded) to choose the round; the kept round's ``M`` is then fitted
        once more on all rows (``refit_``). None: no split (all rounds run, the last is kept).
    time_budget : float or None, default=None
        Wall-clock seconds for the rounds: after a round, the fit stops when one more round of the
        rounds' mean length would end past the budget (round 0 always runs).
    tf32 : bool, default=False
        On a GPU, let float32 GEMMs use TF32 tensor cores (CuPy's float32 compute type; for
        distributed workers it is set on each worker for the fit): several times the float32 GEMM
        rate on Ampere and later GPUs, but the GEMM inputs keep a 10-bit mantissa (relative error
        ~5e-4 instead of ~6e-8), and the kernel's squared distances come from one GEMM, so kernel
        values of close points change by ~1e-3 to 1e-2. Check the validation score before relying on
        it. Ignored on the CPU.

    Attributes
    ----------
    model_ : rfmdist.model.KernelMachine
        The fitted predictor: preprocessing, centers, coefficients, ``M``, kernel, bandwidth, dtype
        and target scaling (what :meth:`save` stores and :func:`rfmdist.load` reads back).
    metric_ : rfmdist.metric.Metric
        The feature matrix of the kept round (in the preprocessed feature space) in the form the
        fit kept it: dense (d, d), diagonal (d,), or, for wide data (AGOP rank bound below d), a
        factor ``A`` (r, d) with ``M = A^T A`` (:mod:`rfmdist.metric`).
    M_ : numpy.ndarray, shape (d, d), or (d,) with ``diag=True``
        ``metric_`` as an array (``8 d^2`` bytes; formed from a factor on request: 3.2 GB at
        d = 20,000).
    metric_history_ : list of rfmdist.metric.Metric, one per round
        The feature matrix each round was fitted with (round 0: the identity, or ones with
        ``diag=True``).
    M_history_ : list of numpy.ndarray
        ``metric_history_`` as arrays, shapes as ``M_`` (formed on request).
    feature_importances_ : numpy.ndarray, shape (d,)
        The diagonal of ``M_`` divided by its largest entry (from ``metric_``, no ``d x d`` array).
    coef_ : numpy.ndarray, shape (m, c)
        The kernel coefficients of ``model_`` (c outputs: targets, or one-hot classes).
    centers_ : numpy.ndarray, shape (m, d)
        The centers of ``model_`` in the preprocessed space (all training rows for an exact fit).
    best_iter_ : int
        The kept round (the best on validation, or the last without validation).
    n_iter_ : int
        Rounds run (``len(history_)``).
    history_ : list of dict, one per round
        Train and validation scores, the solver's choice and record, seconds (of the round and of its
        AGOP), centers, why the fit stopped.
    refit_ : dict or None
        The refit of the kept ``M`` on all rows when 10% were held out to choose the round (solver
        record, rows, seconds); None when the fit had an ``eval_set`` or no refit ran.
    plan_ : rfmdist.plan.FitPlan or None
        The plan the fit carried out (held-out rows, centers, row chunks, workers, device, dtype,
        solver policy, AGOP sample; :meth:`plan` gives it before a fit); stored with the run (None
        for a model stored before plans were).
    seed_ : int
        The seed the fit drew from ``random_state`` (centers, AGOP samples, validation rows; stored
        with the model so that a resumed fit draws the same).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : numpy.ndarray of str, shape (n_features_in_,)
        Column names of a pandas ``X`` (only when it had string column names).
    """

    def __init__(
        self,
        *,
        kernel: str = "laplace",
        bandwidth: float = 10.0,
        reg: float = 1e-3,
        iters: int = 5,
        diag: bool = False,
        agop_samples: int | None = 5_000,
        centers: Any = "auto",
        solver: str = "auto",
        standardize: bool = True,
        tol: float | None = None,
        max_iter: int = 300,
        preconditioner_rank: int = 500,
        cache_kernel: bool | str = "auto",
        split_every: int = 8,
        random_state: Any = None,
        dtype: str | None = None,
        device: str = "cpu",
        tf32: bool = False,
        normalize_agop: str | None = "max",
        n_iter_no_change: int | None = 2,
        validation_fraction: float | None = 0.1,
        time_budget: float | None = None,
    ) -> None:
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.reg = reg
        self.iters = iters
        self.diag = diag
        self.agop_samples = agop_samples
        self.centers = centers
        self.solver = solver
        self.standardize = standardize
        self.tol = tol
        self.max_iter = max_iter
        self.preconditioner_rank = preconditioner_rank
        self.cache_kernel = cache_kernel
        self.split_every = split_every
        self.random_state = random_state
        self.dtype = dtype
        self.device = device
        self.tf32 = tf32
        self.normalize_agop = normalize_agop
        self.n_iter_no_change = n_iter_no_change
        self.validation_fraction = validation_fraction
        self.time_budget = time_budget

    # --- hooks the two estimators fill in ----------------------------------------------------------

    def _targets(self, y: Any, n: int) -> Targets:
        """Check and encode the training targets (and keep what predictions need of them)."""
        raise NotImplementedError

    def _validation_truth(self, y: Any, n: int) -> np.ndarray:
        """What the validation rows' predictions are scored against."""
        raise NotImplementedError

    # --- fitting -----------------------------------------------------------------------------------

    def _round_config(self, seed: int, device: str = "cpu") -> RoundConfig:
        dtype = choose_dtype(self.dtype, device)
        tol = DEFAULT_TOL if self.tol is None else self.tol
        return RoundConfig(
            kernel=self.kernel,
            bandwidth=float(self.bandwidth),
            reg=float(self.reg),
            iters=int(self.iters),
            diag=bool(self.diag),
            agop_samples=None if self.agop_samples is None else int(self.agop_samples),
            solver=self.solver,
            tol=float(tol),
            max_iter=int(self.max_iter),
            preconditioner_rank=int(self.preconditioner_rank),
            cache_kernel=self.cache_kernel,
            split_every=int(self.split_every),
            dtype=dtype.dtype,
            dtype_reason=dtype.reason,
            metric_policy=metric_policy(),
            seed=seed,
            device=device,
            tf32=bool(self.tf32),
            normalize_agop=self.normalize_agop,
            n_iter_no_change=None if self.n_iter_no_change is None else int(self.n_iter_no_change),
            time_budget=None if self.time_budget is None else float(self.time_budget),
        )

    def fit_settings(self, device: str | None = None) -> FitSettings:
        """The settings a fit with these parameters runs with (:class:`rfmdist.pipeline.FitSettings`).

        Parameters
        ----------
        device : {'cpu', 'gpu'}, optional
            Where the passes run (default: ``device`` resolved on this machine).
        """
        device = resolve_device(self.device) if device is None else device
        return FitSettings(
            rounds=self._round_config(seed=0, device=device),  # the pipeline sets the fit's seed
            centers=self.centers,
            standardize=bool(self.standardize),
            validation_fraction=self.validation_fraction,
            random_state=self.random_state,
        )

    def _identity(self) -> RunIdentity:
        """What a store records of this estimator."""
        names = getattr(self, "feature_names_in_", None)
        return RunIdentity(
            estimator=type(self).__name__,
            params=self.get_params(deep=False),
            state={
                "y_1d": getattr(self, "_y_1d", None),
                "n_features_in": int(self.n_features_in_),
                "feature_names_in": None if names is None else [str(v) for v in names],
            },
            classes=getattr(self, "classes_", None),
        )

    def check_features(self, X: Any) -> Any:
        """Check features as :meth:`predict` does, against the fitted feature count and names.

        Parameters
        ----------
        X : array-like, dask array or str, shape (n, d)
            NumPy, pandas, CuPy, Dask, or the path of a Zarr group with an array ``X``.

        Returns
        -------
        array or dask.array.Array, shape (n, d)
            The raw (not preprocessed) features: NumPy or CuPy, or a row-chunked Dask array.
        """
        self._check_fitted()
        if is_store_path(X):
            X, _ = open_zarr_xy(X)
        return self._check_features(X, reset=False)

    def _check_features(self, X: Any, *, reset: bool, name: str = "X") -> Any:
        """Validate raw features (NumPy, pandas, CuPy or Dask; a store path is opened by the
        caller): with ``reset`` (fit) record their count and names, else check them against the
        fitted ones (prediction, and the validation rows, ``name='X_val'``, during a fit).

        Returns
        -------
        array or dask.array.Array, shape (n, d)
            NumPy or CuPy, or a row-chunked Dask array.
        """
        expected = None if reset else self.n_features_in_
        if is_dask_array(X):
            X = check_dask_features(X, n_features=expected, name=name)
        else:
            check_one_dimensional(X, name=name)
            shape = getattr(X, "shape", None)
            if expected is not None and shape is not None and len(shape) == 2:
                self._check_n_features(shape[1])
            if is_cupy_array(X):
                if X.ndim != 2:
                    raise ValueError(f"Expected a 2-D CuPy array {name}, found shape {X.shape}.")
            else:
                if is_dataframe(X):
                    check_numeric_columns(X.dtypes)
                X = validate_data(
                    self,
                    X,
                    reset=reset,
                    dtype=[np.float64, np.float32],
                    ensure_all_finite=False,
                    ensure_min_samples=1,
                )
            check_finite(X, name=name)
        if reset:
            self.n_features_in_ = int(X.shape[1])
        return X

    def _check_n_features(self, found: int) -> None:
        if found != self.n_features_in_:
            raise ValueError(
                f"X has {found} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (as in fit); pass the same columns in the "
                "same order."
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' with training "
                "data before using it."
            )

    def fit(
        self,
        X: Any,
        y: Any = None,
        eval_set: tuple[Any, Any] | None = None,
        *,
        callback: Callable[[RoundOutcome], bool | None] | None = None,
        store: str | os.PathLike[str] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: Any = None,
    ) -> _RFMBase:
        """Fit rounds ``0 .. iters`` and keep the best (on ``eval_set``) or the last.

        Parameters
        ----------
        X : array-like, dask array or str, shape (n, d)
            NumPy, pandas, CuPy, Dask, or the path of a Zarr group with arrays ``X`` and ``y``.
        y : array-like or dask array, shape (n,) or (n, c)
            Targets (taken from the Zarr group when ``X`` is a path and ``y`` is None).
        eval_set : (X_val, y_val), optional
            Validation data: every round is scored on it and the best round is kept.
        callback : callable, optional
            Called with each finished (and, with ``store``, committed) round's
            :class:`~rfmdist.training.RoundOutcome`; returning True stops the fit after that round
            (a stored run then stays resumable).
        store : str or os.PathLike, optional
            Local path or fsspec URL of a Zarr store (:mod:`rfmdist.store`) to which every round is
            committed; the store loads as a model once the last round is committed.
        resume : bool, default=False
            Continue the interrupted run at ``store`` (same data, parameters and ``eval_set``) after
            its last committed round; a complete store is loaded without refitting; with no run there
            a new one starts.
        overwrite : bool, default=False
            Replace a model or an interrupted run at ``store``: the new run is written beside it
            (``<store>.partial``) and moved over a model only when it completes, over an interrupted
            run once its first round is committed (:mod:`rfmdist.store.planning`); nothing at
            ``store`` is touched before the data is checked. Without it an existing store is
            refused.
        progress : FitProgress, optional
            Told of every round's start and end and of every CG iteration, with the iterations and
            seconds predicted to be left (:mod:`rfmdist.progress`; e.g. ``TerminalProgress()``).
            By default these go to logging (iterations at DEBUG).

        Returns
        -------
        self

        Raises
        ------
        FileExistsError
            ``store`` holds a model or a run and neither ``resume`` nor ``overwrite`` is given.
        rfmdist.exceptions.StoreError
            ``resume`` with another estimator class, other parameters or other data than the run's.
        rfmdist.locking.StoreLockedError
            Another fit is writing ``store`` (see :mod:`rfmdist.locking`).
        """
        validate_params(type(self).__name__, self.get_params(deep=False), PARAMETERS)
        # One writer per store, from before anything at the path is looked at to the end.
        lock = contextlib.nullcontext() if store is None else StoreLock(store_location(store).url)
        with lock:
            return self._fit(X, y, eval_set, callback, store, resume, overwrite, progress)

    def _fit(
        self,
        X: Any,
        y: Any,
        eval_set: tuple[Any, Any] | None,
        callback: Callable[[RoundOutcome], bool | None] | None,
        store: str | os.PathLike[str] | None,
        resume: bool,
        overwrite: bool,
        progress: Any = None,
    ) -> _RFMBase:
        """The body of :meth:`fit` (the store, if any, locked)."""
        settings = self.fit_settings()
        checkpoint = (
            None if store is None else Checkpoint.plan(store, resume=resume, overwrite=overwrite)
        )
        if is_store_path(X):
            X, y_store = open_zarr_xy(X)
            y = y_store if y is None else y
        if y is None:
            raise ValueError(
                f"Expected targets y: {type(self).__name__} requires y to be passed, but the target "
                "y is None; pass y (or a Zarr group that holds an array 'y')."
            )
        for attr in ("model_", "history_", "refit_"):
            self.__dict__.pop(attr, None)
        X = self._check_features(X, reset=True)
        n = int(X.shape[0])
        check_min_samples(n)
        targets = self._targets(y, n)
        validation = self._validation(eval_set)
        pipeline = FitPipeline(
            settings,
            self._identity(),
            checkpoint,
            callback=callback,
            progress=progress,
        )
        result = pipeline.run(X, targets, validation)
        if result.stored is not None:
            self._restore(result)
        else:
            self._set_result(result)
        return self

    def plan(
        self,
        X_shape: tuple[int, int],
        client: Any = None,
        *,
        has_validation: bool = False,
        chunk_rows: int | None = None,
        resume_from: RunAttributes | None = None,
    ) -> FitPlan:
        """The plan a fit of data of shape ``X_shape`` with these parameters carries out
        (:mod:`rfmdist.plan`): what the command line chunks its data by before it fits.

        Parameters
        ----------
        X_shape : (n, d)
        client : distributed.Client, optional
            The cluster the fit will run on.
        has_validation : bool
            An ``eval_set`` will be given (no rows held out).
        chunk_rows : int, optional
            Row chunks asked for; by default the plan's (on a cluster).
        resume_from : RunAttributes, optional
            The run the fit will resume (its attributes, :func:`rfmdist.store.read_run_attributes`,
            or the whole :class:`~rfmdist.store.StoredRun`): its stored plan.

        Returns
        -------
        FitPlan
        """
        validate_params(type(self).__name__, self.get_params(deep=False), PARAMETERS)
        return plan_fit(
            self.fit_settings(),
            int(X_shape[0]),
            int(X_shape[1]),
            has_validation=has_validation,
            client=client,
            chunk_rows=chunk_rows,
            previous=resume_from,
        )

    def _internal_split(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows a fit without ``eval_set`` holds out (:func:`rfmdist.pipeline.internal_split`)."""
        n_val = held_out_rows(n, self.validation_fraction, self.n_iter_no_change)
        return internal_split(n, seed, n_val, getattr(self, "_split_labels", None))

    def _validation(self, eval_set: tuple[Any, Any] | None) -> Validation | None:
        """Checked validation data and the truth its predictions are scored against."""
        if eval_set is None:
            return None
        X_val, y_val = eval_set
        X_val = self._check_features(X_val, reset=False, name="X_val")
        return Validation(X_val, self._validation_truth(y_val, int(X_val.shape[0])))

    def _set_result(self, result: FitResult) -> None:
        """The fitted attributes of a fit's (or a stored run's) result."""
        best = result.best
        self.seed_ = result.seed
        self._fingerprint = result.fingerprint
        self._fingerprint_vectors = result.fingerprint_vectors
        self.history_ = result.history
        self.metric_history_ = result.metric_history
        self.model_: KernelMachine = result.model
        self.best_iter_ = int(best.round)
        self.n_iter_ = len(self.history_)
        self.metric_: Metric = best.machine.metric
        self.feature_importances_ = normalized_diagonal(self.metric_.diagonal())
        self.coef_ = self.model_.coef
        self.centers_ = self.model_.centers
        self.refit_: dict[str, Any] | None = result.refit
        self.plan_: FitPlan | None = result.plan

    @property
    def M_(self) -> np.ndarray:
        """``metric_`` as an array, shape (d, d) or (d,) (see the class's Attributes)."""
        return self.metric_.dense()

    @property
    def M_history_(self) -> list[np.ndarray]:
        """``metric_history_`` as arrays (see the class's Attributes)."""
        return [metric.dense() for metric in self.metric_history_]

    # --- storage -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the fitted model as a complete Zarr store (layout in :mod:`rfmdist.store`).

        Parameters
        ----------
        path : str or os.PathLike
            Local path or fsspec URL.
        overwrite : bool, default=False
            Replace a store at ``path`` (the new one is written beside it and moved over it when done).

        Raises
        ------
        FileExistsError
            A store is at ``path`` and ``overwrite`` is False.
        """
        self._check_fitted()
        with StoreLock(store_location(path).url):
            self._save(path, overwrite)

    def _save(self, path: str | os.PathLike[str], overwrite: bool) -> None:
        plan = save_location(path, overwrite=overwrite)
        model = self.model_
        header = self._identity().header(
            self.seed_,
            self._fingerprint,
            getattr(self, "_fingerprint_vectors", {}),
            model.centers,
            model.preprocessing,
            model.target_scaling,
            getattr(self, "plan_", None),
        )
        plan.save_model(
            header,
            self.metric_history_,
            model.coef,
            self.best_iter_,
            self.history_,
            refit=self.refit_,
        )
        logger.info("saved %s to %s", type(self).__name__, plan.target.url)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, incomplete: bool = False) -> _RFMBase:
        """Load a fitted estimator of this class from a complete store.

        Parameters
        ----------
        path : str or os.PathLike
            Local path or fsspec URL written by :meth:`save` or ``fit(..., store=path)``.
        incomplete : bool, default False
            Also load a fit still running or interrupted: the estimator of its best committed
            round (``history_`` holds the committed rounds).

        Raises
        ------
        rfmdist.exceptions.StoreError
            No complete store at ``path`` (with ``incomplete``: no committed round), a damaged one,
            or one holding another estimator class.
        """
        stored = read_store(path, require_complete=not incomplete)
        if stored.best_iter is None:
            raise StoreError(
                f"Expected at least one committed round in the store at {str(path)!r}, found none "
                f"(status {stored.status!r}); wait for round 0 to finish, or resume the "
                "fit."
            )
        if stored.estimator != cls.__name__:
            raise StoreError(
                f"Expected a {cls.__name__} model at {str(path)!r}, found a "
                f"{stored.estimator}; load it with rfmdist.load(path) or "
                f"{stored.estimator}.load(path)."
            )
        estimator = cls(**stored.params)
        estimator._restore(FitResult.from_stored(stored))
        return estimator

    def _restore(self, result: FitResult) -> None:
        """Set the fitted attributes from a stored run's result."""
        stored = result.stored
        state = stored.estimator_state
        self.n_features_in_ = int(state["n_features_in"])
        if state["feature_names_in"] is not None:
            self.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
        if state["y_1d"] is not None:
            self._y_1d = bool(state["y_1d"])
        if stored.classes is not None:
            self.classes_ = stored.classes
        self._set_result(result)

    # --- prediction --------------------------------------------------------------------------------

    def _predict_device(self) -> str:
        """'gpu' for a model fitted with device 'gpu' or 'auto' where a GPU is usable, else 'cpu' (a
        stored GPU model still predicts on a machine without one)."""
        return "gpu" if self.device in ("gpu", "auto") and gpu_available() else "cpu"

    def _decision(self, X: Any) -> Any:
        X = self.check_features(X)
        device = self._predict_device()
        if device == "cpu" or memory.device_of(X) == "gpu":
            return self.model_.decision(X)
        # Host input, GPU model: compute on the device, return the input's array type.
        with compute_context(device, bool(self.tf32)):
            pred = self.model_.decision(on_device(X, device))
            return on_device(pred, "cpu")


def load(path: str | os.PathLike[str], *, incomplete: bool = False) -> _RFMBase:
    """Load the fitted estimator (RFMRegressor or RFMClassifier) stored at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL of a complete store.
    incomplete : bool, default False
        Also load a fit still running or interrupted (its best committed round so far); reading
        never changes the store.

    Returns
    -------
    RFMRegressor or RFMClassifier
        Fitted: its predictions equal those of the estimator that was saved.

    Raises
    ------
    rfmdist.exceptions.StoreError
        No complete store at ``path`` (an interrupted fit says how to resume), or a damaged one.

    Examples
    --------
    >>> import numpy as np, rfmdist
    >>> X = np.random.default_rng(0).normal(size=(50, 3))
    >>> model = rfmdist.RFMRegressor(iters=1, random_state=0).fit(X, X[:, 0])
    >>> model.save("memory://doctest-load.zarr", overwrite=True)
    >>> same = rfmdist.load("memory://doctest-load.zarr")
    >>> bool(np.array_equal(same.predict(X), model.predict(X)))
    True
    """
    stored = read_store(path, require_complete=not incomplete)
    name = stored.estimator
    classes = {cls.__name__: cls for cls in (RFMRegressor, RFMClassifier)}
    if name not in classes:
        raise StoreError(
            f"Expected a store of one of {sorted(classes)} at {str(path)!r}, found estimator "
            f"{name!r}; load it with the class that wrote it."
        )
    return classes[name].load(path, incomplete=incomplete)


class RFMRegressor(RegressorMixin, _RFMBase):
    """Recursive Feature Machine regressor (kernel ridge regression with a learned feature matrix).

    Multi-output targets of shape (n, c) are supported. ``score`` is R^2; the per-round history
    records the mean squared error.

    Parameters are those of the shared base; see the class docstring of ``_RFMBase`` printed below.

    Examples
    --------
    >>> import numpy as np
    >>> from rfmdist import RFMRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 5))
    >>> y = X[:, 0] * X[:, 1]
    >>> model = RFMRegressor(iters=2, random_state=0).fit(X, y)
    >>> int(np.argmax(model.feature_importances_)) in (0, 1)
    True
    """

    __doc__ += _RFMBase.__doc__.split("Parameters\n    ----------", 1)[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _targets(self, y: Any, n: int) -> Targets:
        """Float64 targets of shape (n, c), scored by mean squared error; with ``standardize`` they
        are standardised for the rounds: the raw AGOP then has the same scale whatever the targets'
        units, so one bandwidth and ridge fit all problems."""
        Y, self._y_1d = regression_targets(y, n)
        truth = to_numpy(Y.compute() if is_dask_array(Y) else Y).astype(np.float64)
        Y = (
            Y.astype(np.float64)
            if is_dask_array(Y)
            else get_namespace(Y).asarray(Y, dtype=np.float64)
        )
        return Targets(
            Y, truth, mean_squared_error, greater_is_better=False, scale=bool(self.standardize)
        )

    def _validation_truth(self, y: Any, n: int) -> np.ndarray:
        Y, _ = regression_targets(y, n)
        Y = Y.compute() if is_dask_array(Y) else Y
        return to_numpy(Y).astype(np.float64)

    def predict(self, X: Any) -> Any:
        """Predicted targets.

        Parameters
        ----------
        X : array-like, dask array or str, shape (n, d)

        Returns
        -------
        array, shape (n,) or (n, c)
            NumPy for NumPy/pandas input, CuPy for CuPy, a lazy Dask array for Dask/Zarr input.
        """
        pred = self._decision(X)
        return pred[:, 0] if self._y_1d else pred


class RFMClassifier(ClassifierMixin, _RFMBase):
    """Recursive Feature Machine classifier: kernel regression on one-hot targets, argmax to predict.

    ``score`` and the per-round history use accuracy.

    Examples
    --------
    >>> import numpy as np
    >>> from rfmdist import RFMClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4))
    >>> y = np.where(X[:, 2] > 0, "yes", "no")
    >>> clf = RFMClassifier(iters=1, random_state=0).fit(X, y)
    >>> clf.classes_.tolist(), clf.score(X, y) > 0.95
    (['no', 'yes'], True)
    """

    __doc__ += _RFMBase.__doc__.split("Parameters\n    ----------", 1)[1].replace(
        "    Attributes\n    ----------\n",
        "    Attributes\n    ----------\n    classes_ : numpy.ndarray, shape (n_classes,)\n"
        "        The class labels, sorted; ``coef_``'s columns follow their order.\n",
    )

    def _targets(self, y: Any, n: int) -> Targets:
        """One-hot float64 targets of the sorted classes, scored by accuracy."""
        if is_dask_array(y):
            y = y.compute()
        y = column_or_1d(to_numpy(y), warn=True)
        check_length_match(n, y.shape[0])
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"Expected at least 2 classes in y, found 1 class ({classes[0]!r}); a classifier "
                "needs examples of more than one class."
            )
        self.classes_ = classes
        self._split_labels = encoded
        onehot = np.eye(len(classes), dtype=np.float64)[encoded]
        return Targets(onehot, encoded, accuracy, greater_is_better=True, split_labels=encoded)

    def _validation_truth(self, y: Any, n: int) -> np.ndarray:
        if is_dask_array(y):
            y = y.compute()
        y = column_or_1d(to_numpy(y))
        check_length_match(n, y.shape[0])
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        return np.where(self.classes_[index] == y, index, -1)  # unseen labels never match

    def decision_function(self, X: Any) -> Any:
        """Class scores: (n, k) for k > 2 classes, the margin ``f_1 - f_0`` (n,) for two.

        Parameters
        ----------
        X : array-like, dask array or str, shape (n, d)
        """
        scores = self._decision(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X: Any) -> Any:
        """Predicted class labels, shape (n,) (NumPy, CuPy or lazy Dask like the input)."""
        scores = self._decision(X)
        if is_dask_array(scores):
            classes = self.classes_
            return scores.map_blocks(
                lambda s: classes[to_numpy(s).argmax(axis=1)],
                drop_axis=1,
                dtype=classes.dtype,
                meta=np.empty((0,), dtype=classes.dtype),
            )
        xp = get_namespace(scores)
        index = scores.argmax(axis=1)
        if xp is np:
            return self.classes_[index]
        return (
            xp.asarray(self.classes_)[index]
            if self.classes_.dtype.kind in "iufb"
            else self.classes_[to_numpy(index)]
        )
