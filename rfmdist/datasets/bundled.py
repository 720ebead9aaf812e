"""The small real dataset shipped inside the package (see ``data/PROVENANCE.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class BundledSet:
    """A bundled regression set.

    Attributes
    ----------
    X : numpy.ndarray, shape (n, d)
    y : numpy.ndarray, shape (n,)
    feature_names : list of str
    target_name : str
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    target_name: str


def load_cpu_act() -> BundledSet:
    """DELVE Computer Activity (8,192 rows x 21 counters; target: % CPU time in user mode).

    Examples
    --------
    >>> data = load_cpu_act()
    >>> data.X.shape, data.target_name
    ((8192, 21), 'usr')
    """
    import pandas as pd

    path = resources.files("rfmdist.datasets").joinpath("data/cpu_act.csv.gz")
    with resources.as_file(path) as local:
        frame = pd.read_csv(local)
    target = "usr"
    features = [c for c in frame.columns if c != target]
    return BundledSet(
        X=frame[features].to_numpy(dtype=np.float64),
        y=frame[target].to_numpy(dtype=np.float64),
        feature_names=features,
        target_name=target,
    )
