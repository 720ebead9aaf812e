"""Interpreting a fitted RFM: which features (and feature directions) the learned metric ``M`` uses.

Every function takes a fitted :class:`~rfmdist.RFMRegressor` / :class:`~rfmdist.RFMClassifier` or the
path (or URL) of a store (a finished model, or a run in progress: its committed rounds). ``M`` lives in
the preprocessed (standardised) feature space, and so do the importances and eigenvectors here.

- :func:`feature_importance_history` — normalised diagonal of each round's ``M``;
- :func:`top_features` — the ``k`` most important features of the kept round;
- :func:`top_eigenvectors`, :func:`eigen_history` — the dominant directions of ``M`` and how they settle
  from round to round (principal angles between consecutive top-``k`` eigenspaces);
- :func:`interpretation_table` — all of it as plain lists for tables and plots (``rfmdist inspect``);
- :func:`full_agop` — the AGOP of the fitted predictor over all rows of a data set.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from rfmdist.agop import normalized_diagonal
from rfmdist.backend import get_namespace, to_numpy
from rfmdist.data import is_dask_array
from rfmdist.metric import Metric
from rfmdist.operators import kernel_operator
from rfmdist.store import read_store


def _is_path(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike))


def _run_summary(obj: Any) -> dict[str, Any]:
    """``M`` history, kept round, history records and feature names of an estimator or a store."""
    if _is_path(obj):
        stored = read_store(obj, require_complete=False)
        if stored.completed_rounds == 0:
            raise ValueError(
                f"Expected at least one committed round in the store at {os.fspath(obj)!r}, found "
                "none; interpret it once a round has finished."
            )
        names = stored.estimator_state.get("feature_names_in")
        return {
            "metric_history": stored.metric_history,
            "best_iter": stored.best_iter,
            "history": stored.history,
            "feature_names": names,
        }
    if not hasattr(obj, "metric_history_"):
        raise TypeError(
            f"Expected a fitted RFMRegressor/RFMClassifier or a store path, found "
            f"{type(obj).__name__}; fit the estimator first or pass the path of a saved model."
        )
    names = getattr(obj, "feature_names_in_", None)
    return {
        "metric_history": list(obj.metric_history_),
        "best_iter": int(obj.best_iter_),
        "history": list(obj.history_),
        "feature_names": None if names is None else [str(v) for v in names],
    }


def _feature_names(given: Any, stored: list[str] | None, d: int) -> list[str]:
    names = given if given is not None else stored
    if names is None:
        return [f"x{i}" for i in range(d)]
    names = [str(v) for v in names]
    if len(names) != d:
        raise ValueError(
            f"Expected {d} feature names (one per column), found {len(names)}; pass names for all "
            "columns in training order."
        )
    return names


def feature_importance_history(obj: Any) -> np.ndarray:
    """Normalised diagonal of every round's ``M`` (largest entry 1 in each round).

    Parameters
    ----------
    obj : fitted estimator, or str / os.PathLike
        An estimator or the path of a store.

    Returns
    -------
    numpy.ndarray, shape (rounds, d)
        Row ``t`` is ``diag(M_t) / max diag(M_t)``; round 0 (``M = I``) is all ones.
    """
    metric_history = _run_summary(obj)["metric_history"]
    return np.stack([normalized_diagonal(metric.diagonal()) for metric in metric_history])


def top_features(
    obj: Any, k: int = 10, feature_names: list[str] | None = None
) -> list[tuple[str, float]]:
    """The ``k`` features with the largest normalised ``diag(M)`` in the kept (best) round.

    Parameters
    ----------
    obj : fitted estimator, or str / os.PathLike
    k : int
        Number of features (all when ``k >= d``).
    feature_names : list of str, optional
        Names of the ``d`` columns; by default the training frame's column names or ``x0 .. x{d-1}``.

    Returns
    -------
    list of (str, float)
        ``(name, importance)``, most important first.
    """
    summary = _run_summary(obj)
    importance = normalized_diagonal(summary["metric_history"][summary["best_iter"]].diagonal())
    names = _feature_names(feature_names, summary["feature_names"], importance.shape[0])
    order = np.argsort(-importance, kind="stable")[: max(0, int(k))]
    return [(names[i], float(importance[i])) for i in order]


def top_eigenvectors(M: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a (symmetric PSD) feature matrix and their eigenvectors.

    Parameters
    ----------
    M : array, shape (d, d) or (d,), or Metric
        Full matrix, or the diagonal of a diagonal one (eigenvectors are then coordinate axes), or a
        :class:`~rfmdist.metric.Metric` (a factored one by its factor's SVD, with no ``d x d``
        matrix).
    k : int
        ``1 <= k``; at most ``d`` are returned.

    Returns
    -------
    values : numpy.ndarray, shape (k,)
        Descending.
    vectors : numpy.ndarray, shape (d, k)
        Orthonormal columns, each with its largest-magnitude entry positive.

    Examples
    --------
    >>> values, vectors = top_eigenvectors(np.diag([1.0, 3.0, 2.0]), 2)
    >>> values.tolist(), vectors.argmax(axis=0).tolist()
    ([3.0, 2.0], [1, 2])
    """
    if k < 1:
        raise ValueError(f"Expected k >= 1 eigenvectors, found k={k}; pass a positive k.")
    if isinstance(M, Metric) and M.form == "factor":
        values, vectors = M.top_eigen(int(k))
        return values, _signed(vectors)
    if isinstance(M, Metric):
        M = M.diagonal() if M.form in ("identity", "diagonal") else M.dense()
    M = np.asarray(to_numpy(M), dtype=np.float64)
    d = M.shape[0]
    k = min(int(k), d)
    if M.ndim == 1:
        order = np.argsort(-M, kind="stable")[:k]
        return M[order], np.eye(d)[:, order]
    values, vectors = np.linalg.eigh((M + M.T) / 2)
    return values[::-1][:k], _signed(vectors[:, ::-1][:, :k])


def _signed(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) with their largest-magnitude entries positive."""
    rows = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1.0, signs)


def eigen_history(obj: Any, k: int = 5) -> dict[str, np.ndarray]:
    """Top-``k`` eigenvalues of every round's ``M`` and how the top-``k`` eigenspace moves.

    Parameters
    ----------
    obj : fitted estimator, or str / os.PathLike
    k : int

    Returns
    -------
    dict
        ``eigenvalues`` (rounds, k); ``cosines`` (rounds - 1, k): cosines of the principal angles
        between the top-``k`` eigenspaces of rounds ``t`` and ``t + 1`` (descending, 1 = shared
        direction); ``similarity`` (rounds - 1,): their mean squared cosine (1 = same subspace).
    """
    metric_history = _run_summary(obj)["metric_history"]
    pairs = [top_eigenvectors(metric, k) for metric in metric_history]
    cosines = np.array(
        [
            np.clip(np.linalg.svd(a.T @ b, compute_uv=False), 0.0, 1.0)
            for (_, a), (_, b) in itertools.pairwise(pairs)
        ]
    ).reshape(len(pairs) - 1, pairs[0][0].shape[0])
    return {
        "eigenvalues": np.stack([values for values, _ in pairs]),
        "cosines": cosines,
        "similarity": (cosines**2).mean(axis=1),
    }


def interpretation_table(
    obj: Any, k: int = 5, feature_names: list[str] | None = None
) -> dict[str, Any]:
    """Everything the inspect command shows, as plain (JSON-ready) Python lists.

    Parameters
    ----------
    obj : fitted estimator, or str / os.PathLike
    k : int
        Eigenvalues per round (and top features listed).
    feature_names : list of str, optional

    Returns
    -------
    dict
        ``round`` (R,), ``train_score`` (R,), ``val_score`` (R,; None without validation),
        ``best_iter``, ``feature_names`` (d,), ``importance`` (R x d), ``top_features``
        ([name, importance] of the kept round, k of them), ``eigenvalues`` (R x k) and
        ``subspace_similarity`` (R,; None for round 0).
    """
    summary = _run_summary(obj)
    importance = np.stack(
        [normalized_diagonal(metric.diagonal()) for metric in summary["metric_history"]]
    )
    names = _feature_names(feature_names, summary["feature_names"], importance.shape[1])
    eigen = eigen_history(obj, k)
    best = summary["best_iter"]
    order = np.argsort(-importance[best], kind="stable")[:k]
    return {
        "round": [int(r["round"]) for r in summary["history"]],
        "train_score": [r["train_score"] for r in summary["history"]],
        "val_score": [r["val_score"] for r in summary["history"]],
        "best_iter": best,
        "feature_names": names,
        "importance": importance.tolist(),
        "top_features": [[names[i], float(importance[best, i])] for i in order],
        "eigenvalues": eigen["eigenvalues"].tolist(),
        "subspace_similarity": [None, *eigen["similarity"].tolist()],
    }


def full_agop(
    estimator: Any, X: Any, *, batch_size: int = 4096, diag: bool | None = None
) -> np.ndarray:
    """AGOP ``(1/n) sum_x J(x)^T J(x)`` of the fitted predictor over all rows of ``X``.

    Gradients are taken with respect to the preprocessed (standardised) features, the space of ``M``,
    of the outputs in target units (a regressor's target standardisation is undone: output ``c``'s
    gradient is multiplied by its scale).

    Parameters
    ----------
    estimator : fitted estimator, or str / os.PathLike
        An RFM estimator or the path of a saved model.
    X : array or dask.array.Array, shape (n, d)
        Raw features (NumPy, CuPy, or row-chunked Dask: one pass over the chunks).
    batch_size : int
        Rows per kernel block for in-memory ``X`` (Dask uses its chunks).
    diag : bool, optional
        Return only the diagonal; by default when the model's ``M`` is diagonal.

    Returns
    -------
    numpy.ndarray, shape (d, d) or (d,); float64
    """
    if _is_path(estimator):
        from rfmdist.estimators import load

        estimator = load(estimator)
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, found {batch_size}; pass a positive int.")
    X = estimator.check_features(X)
    model = estimator.model_
    model_diag = np.ndim(model.M) == 1
    diag = model_diag if diag is None else diag
    Xp = model.preprocessing.transform(X, model.dtype)
    coef = np.asarray(model.coef, dtype=np.float64)
    if model.target_scaling.scale is not None:
        coef = coef * np.asarray(model.target_scaling.scale, dtype=np.float64)[None, :]
    like = Xp._meta if is_dask_array(Xp) else Xp
    prepared = model.prepared(None if isinstance(like, np.ndarray) else like)
    coef = get_namespace(like).asarray(coef)
    op = kernel_operator(Xp, prepared, split_every=estimator.split_every, block_rows=batch_size)
    # The operators' diagonal AGOP is that of a diagonal M: take a full M's diagonal from the matrix.
    total = to_numpy(op.agop_sum(coef, diag=diag and model_diag)) / int(X.shape[0])
    return np.diagonal(total).copy() if diag and not model_diag else total
