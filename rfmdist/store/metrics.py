"""The feature matrices of a store: one array per round, in the form the fit held (format 3), or
the one ``(R, d, d)`` array of formats 1 and 2, which a resumed older run goes on writing.

Format 3 (:mod:`rfmdist.metric`)::

    history/M/<t>   M_t: identity (d,) ones | diagonal (d,) | dense (d, d) | factor (r, d)
    M               the best round's, as history/M/<t> [complete stores]

each float64 with the attribute ``form`` (``'identity'``, ``'diagonal'``, ``'dense'`` or
``'factor'``), so that a factored ``M`` of wide data is stored as its ``r x d`` factor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rfmdist.exceptions import StoreError
from rfmdist.metric import FORMS, Metric
from rfmdist.store.layout import read_array
from rfmdist.store.location import StoreLocation

HISTORY = "history/M"


def history_path(t: int) -> str:
    """The array of round ``t``'s ``M`` (format 3)."""
    return f"{HISTORY}/{t}"


def is_legacy(group: Any) -> bool:
    """True for a store of formats 1 and 2: ``history/M`` is one ``(R, ...)`` array."""
    import zarr

    return HISTORY in group and isinstance(group[HISTORY], zarr.Array)


def write_metric(group: Any, name: str, metric: Metric) -> None:
    """Write ``metric`` as the array ``name`` with its ``form`` attribute (replacing one there)."""
    values = np.ones(metric.d) if metric.values is None else metric.values
    array = group.create_array(
        name, shape=values.shape, dtype=np.float64, chunks="auto", overwrite=True
    )
    array[...] = values
    array.attrs["form"] = metric.form


def write_round_metric(group: Any, t: int, metric: Metric) -> None:
    """``M_t`` into the history: its own array (format 3), or row ``t`` of an older store's array
    (dense, as that format holds it)."""
    if not is_legacy(group):
        write_metric(group, history_path(t), metric)
        return
    history = group[HISTORY]
    history.resize((t + 1, *history.shape[1:]))
    history[t] = metric.dense()


def keep_rounds(group: Any, rounds: int) -> None:
    """Drop the history's matrices of rounds ``rounds`` and later (a finished run's unused one)."""
    if is_legacy(group):
        history = group[HISTORY]
        history.resize((rounds, *history.shape[1:]))
        return
    t = rounds
    while history_path(t) in group:
        del group[history_path(t)]
        t += 1


def copy_round_metric(group: Any, t: int, name: str) -> None:
    """Write round ``t``'s ``M`` again as ``name`` (the best round's, ``M``)."""
    if is_legacy(group):
        values = group[HISTORY][t]
        group.create_array(name, data=values, chunks="auto", overwrite=True)
        return
    source = group[history_path(t)]
    write_metric(group, name, _metric(source[...], source.attrs.get("form"), name, None))


def read_round_metrics(
    group: Any,
    location: StoreLocation,
    rounds: int,
    *,
    d: int,
    diag: bool,
    max_rank: int,
    max_rounds: int,
) -> list[Metric]:
    """``M_0 .. M_{rounds - 1}`` of the history, each checked against its form's shape.

    Parameters
    ----------
    group : zarr.Group
    location : StoreLocation
    rounds : int
        How many to read (the first ``rounds``).
    d : int
    diag : bool
        The fit's ``diag`` parameter.
    max_rank : int
        Bound of a factor's rows (the AGOP's rank bound).
    max_rounds : int
        Bound of an older store's history length.
    """
    if is_legacy(group):
        shape = (d,) if diag else (d, d)
        history = read_array(group, HISTORY, location, (-1, *shape), max_rows=max_rounds)
        if history.shape[0] < rounds:
            raise StoreError(
                f"Expected array {HISTORY!r} with {rounds} rows in the store at {location.url!r}, "
                f"found {history.shape[0]}; the store is damaged or was edited: restore it from a "
                "copy or refit."
            )
        return [Metric.from_array(history[t]) for t in range(rounds)]
    return [
        read_metric(group, history_path(t), location, d=d, diag=diag, max_rank=max_rank)
        for t in range(rounds)
    ]


def read_metric(
    group: Any, name: str, location: StoreLocation, *, d: int, diag: bool, max_rank: int
) -> Metric:
    """The matrix stored as ``name`` (format 3; for formats 1 and 2, ``M`` of shape (d, d)|(d,))."""
    if is_legacy(group):
        return Metric.from_array(read_array(group, name, location, (d,) if diag else (d, d))[...])
    form = group[name].attrs.get("form") if name in group else None
    allowed = ("diagonal",) if diag else ("identity", "dense", "factor")
    if form not in allowed:
        # The shape first: a replaced array is most often of another shape, the clearer message.
        read_array(group, name, location, (d,) if diag else (d, d))
        raise StoreError(
            f"Expected array {name!r} in the store at {location.url!r} to hold M in a form among "
            f"{allowed} (attribute 'form'), found {form!r}; the store is damaged or was edited: "
            "restore it from a copy or refit."
        )
    shape = {"identity": (d,), "diagonal": (d,), "dense": (d, d), "factor": (-1, d)}[form]
    array = read_array(group, name, location, shape, max_rows=max_rank)
    return _metric(array[...], form, name, location)


def _metric(values: np.ndarray, form: str | None, name: str, location: Any) -> Metric:
    if form not in FORMS:
        where = "" if location is None else f" in the store at {location.url!r}"
        raise StoreError(
            f"Expected array {name!r}{where} to have a 'form' among {FORMS}, found {form!r}; the "
            "store is damaged or was edited: restore it from a copy or refit."
        )
    values = np.asarray(values, dtype=np.float64)
    if form == "identity":
        return Metric.identity(values.shape[0], diag=False)
    if form == "factor":
        return Metric.from_factor(values)
    return Metric.from_array(values)
