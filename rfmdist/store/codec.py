"""The parameter codec: ``get_params()`` to JSON attributes and arrays, and back."""

from __future__ import annotations

from typing import Any

import numpy as np

from rfmdist.backend import to_numpy
from rfmdist.store.layout import MAX_ARRAY_PARAM_ELEMENTS, read_array
from rfmdist.store.location import StoreLocation


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
    array parameter, explicit ``centers``, is checked to be (m, d) with m within bounds first.

    Parameters
    ----------
    values : dict
        The attribute ``params``.
    group : zarr.Group
        The store (its ``params/<name>`` arrays).
    location : StoreLocation
        The store's (for messages).
    d : int
        Features.
    """
    params = {}
    for name, value in values.items():
        if isinstance(value, dict) and "array" in value:
            rows = MAX_ARRAY_PARAM_ELEMENTS // max(1, d)
            params[name] = read_array(group, value["array"], location, (-1, d), max_rows=rows)[...]
        elif isinstance(value, dict) and "random_generator" in value:
            params[name] = None
        else:
            params[name] = value
    return params
