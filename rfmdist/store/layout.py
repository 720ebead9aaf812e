"""The store format's constants and the array and attribute I/O that the writer and reader share.

The format itself (every array and attribute, the commit protocol) is described in :mod:`rfmdist.store`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rfmdist.exceptions import StoreError
from rfmdist.store.location import StoreLocation

FORMAT_NAME = "rfmdist-model"
FORMAT_VERSION = 3
# Versions this code reads (1: written before refits existed; 2: M as one (R, d, d) array, before
# factored matrices; both load and resume in their own layout, :mod:`rfmdist.store.metrics`).
READABLE_VERSIONS = (1, 2, 3)
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
# An explicit ``centers`` parameter read from a store is refused beyond this many elements (1.6 GB
# of float64), whatever its metadata claims.
MAX_ARRAY_PARAM_ELEMENTS = 2 * 10**8
# Where a round's CG residuals live (iterations + 1, c): an array per round, so that a commit writes a
# bounded amount of metadata whatever the iterations and outputs (the record keeps a summary).
REFIT_RESIDUALS = "refit/residuals"


def residuals_path(t: int) -> str:
    """The array of round ``t``'s per-iteration CG residuals."""
    return f"history/residuals/{t}"


def open_group(location: StoreLocation, mode: str) -> Any:
    """Open the Zarr group at ``location``; metadata that does not parse raises StoreError."""
    import zarr

    try:
        return zarr.open_group(location.url, mode=mode)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise StoreError(
            f"Expected readable Zarr v3 metadata at {location.url!r}, found metadata that does not "
            f"parse ({type(err).__name__}: {err}); the store is damaged: restore it from a copy or "
            "fit again with overwrite=True."
        ) from err


def write_attributes(group: Any, values: dict[str, Any]) -> None:
    """Merge ``values`` into the group's attributes with ONE write of its ``zarr.json``.

    ``group.attrs.update(values)`` would not do: Zarr's attribute mapping writes the whole metadata
    document once per key, so a process killed between two of those writes left a commit half done
    (``completed_rounds`` advanced, ``history`` not), and the run could not be resumed.
    """
    group.update_attributes(values)


def write_array(group: Any, name: str, data: np.ndarray, chunks: Any = None) -> Any:
    """Write ``data`` as the array ``name`` (strings as variable-length UTF-8), replacing one there."""
    data = np.asarray(data)
    if data.dtype.kind in "OUS":
        data = data.astype(str).astype(object)
        array = group.create_array(name, shape=data.shape, dtype=str, overwrite=True)
        array[...] = data
        return array
    return group.create_array(name, data=data, chunks=chunks or "auto", overwrite=True)


def read_array(
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
    group : zarr.Group
    name : str
        The array's path in the group.
    location : StoreLocation
        The store's (for messages).
    shape : tuple of int
        The expected shape; ``-1`` matches any length up to ``max_rows`` (first axis only).
    max_rows : int, optional
        Bound of a ``-1`` first axis.

    Returns
    -------
    zarr.Array
        Unread.
    """
    if name not in group:
        raise StoreError(
            f"Expected an array {name!r} in the store at {location.url!r}, found none (arrays: "
            f"{sorted(array_paths(group))}); the store is damaged: restore it from a copy or refit."
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


def array_paths(group: Any, prefix: str = "") -> list[str]:
    """Paths of every array in ``group`` and its subgroups."""
    paths = [prefix + name for name in group.array_keys()]
    for name, sub in group.groups():
        paths += array_paths(sub, f"{prefix}{name}/")
    return paths
