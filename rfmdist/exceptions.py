"""Warnings and errors raised by rfmdist."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class RFMDistWarning(UserWarning):
    """Base class of the warnings rfmdist emits (tests turn them into errors)."""


class NumericalWarning(RFMDistWarning):
    """A numerical safeguard kicked in (a jittered Cholesky, a stalled solver)."""


class NotFittedError(_SklearnNotFittedError):
    """An estimator was used before ``fit`` (scikit-learn's error, so its tools recognise it)."""


class StoreError(ValueError):
    """A model or run store is missing, incomplete, tampered with or of an unknown format."""
