"""rfmdist: Recursive Feature Machines at scale on Dask, NumPy and CuPy."""

from __future__ import annotations

from rfmdist.estimators import RFMClassifier, RFMRegressor, load

__version__ = "0.1.0"

__all__ = ["RFMClassifier", "RFMRegressor", "__version__", "load"]
