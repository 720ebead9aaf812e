"""What a tabular benchmark collection tells the runner (:mod:`benchmarks.runner`).

A plug-in (``benchmarks/uci121.py``, ``benchmarks/grinsztajn.py``) subclasses :class:`Collection`:
its class attributes name its script, its CSV columns and its tables; its methods list the sets
(:meth:`Collection.read_summary`), load and split one (:meth:`Collection.prepare`, which returns a
:class:`SetRun`: how a chosen model is tested), add its own options, and give the words only it
says in its results section (:meth:`Collection.protocol`, ...). Nothing here runs anything:
:mod:`benchmarks.selection` fits and scores the methods, :mod:`benchmarks.report` writes the
results.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

__all__ = ["Collection", "Scores", "SetRun"]

Scores = dict[str, Any]
"""Test columns of a result row (e.g. ``{"test_score": 0.91}``)."""


@dataclass
class SetRun:
    """One set, loaded and split, ready for the methods.

    Attributes
    ----------
    base : dict
        The set's columns of every result row (``dataset``, ``n``, ``d``, ...).
    X, y : numpy.ndarray of shape (n, d), (n,)
        The rows the methods see.
    train, val : numpy.ndarray of int
        The hyper-parameter selection split (indices into ``X``).
    classification : bool
        Accuracy (else MSE) on validation; classifiers (else regressors).
    test : callable
        ``test(make, fitted)``: the test columns of the model ``make()`` (``fitted``: that model
        already fitted on ``train``, or None).
    defaults : callable
        ``defaults()``: ``(params, val_score, test columns)`` of the ``rfm_defaults`` row.
    """

    base: dict[str, Any]
    X: np.ndarray
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    classification: bool
    test: Callable[[Callable[[], Any], Any], Scores]
    defaults: Callable[[], tuple[dict[str, Any], float, Scores]]


class Collection(ABC):
    """What a benchmark collection plugs into the runner; see the module docstring.

    The class attributes name its script, its CSV and its tables; the methods load a set
    (:meth:`prepare`) and say what only this collection says (:meth:`protocol`, ...).
    """

    name: ClassVar[str]
    """Script ``benchmarks/<name>.py``, results section marker and ``runner`` in the metadata."""
    label: ClassVar[str]
    """Short name in the printed summary, e.g. ``"UCI-121"``."""
    title: ClassVar[str]
    """The section's heading (markdown)."""
    description: ClassVar[str]
    """The command line's description."""
    columns: ClassVar[tuple[str, ...]]
    """The CSV columns."""
    val_column: ClassVar[str]
    """The validation score column."""
    score: ClassVar[str]
    """The test score column (higher is better) of the summaries and the per-set table."""
    info_columns: ClassVar[tuple[str, ...]]
    """The set's columns shown in the per-set table."""
    per_set_title: ClassVar[str]
    """The heading of the per-set table."""
    set_examples: ClassVar[str]
    """Set names for the help and the errors, e.g. ``"'iris', 'fertility'"``."""
    not_in_copy: ClassVar[tuple[str, ...]] = ()
    """Sets of the original collection absent from the shared data."""
    scale: ClassVar[float] = 1.0
    """Factor of the score in the tables (100 for accuracy in %)."""
    unit: ClassVar[str] = ""
    mean_column: ClassVar[str] = "mean"
    floatfmt: ClassVar[str] = ".4f"
    positive_options: ClassVar[tuple[str, ...]] = ()
    """Extra options (:meth:`add_arguments`) that must be >= 1."""

    # -- what each collection says ------------------------------------------------------------

    @abstractmethod
    def read_summary(self, root: Path) -> pd.DataFrame:
        """The collection's ``SUMMARY.tsv``, indexed by set name (columns ``n`` and ``d``)."""

    @abstractmethod
    def prepare(self, name: str, root: Path, *, seed: int, **options: Any) -> SetRun:
        """Load and split one set (``options``: those of :meth:`options`)."""

    @abstractmethod
    def protocol(self, runs: Sequence[dict[str, Any]]) -> str:
        """The protocol paragraph of the section (``runs``: the runs' metadata)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the collection's own options (after ``--seed``; none by default)."""
        return None

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """The collection's own options passed to :meth:`prepare` (and kept in the metadata)."""
        return {}

    def set_name(self, text: str) -> str:
        """A name given to ``--sets`` as in ``SUMMARY.tsv``."""
        return text.strip()

    def rows(self, name: str, summary: pd.DataFrame, root: Path) -> int:
        """The rows of a set that ``--max-n`` compares."""
        return int(summary.loc[name, "n"])

    def groups(self, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        """The parts of ``frame`` summarised apart, with their labels (one part by default)."""
        return [("", frame)]

    def preamble(self, frame: pd.DataFrame, runs: Sequence[dict[str, Any]]) -> list[str]:
        """Lines of the section before the machine."""
        return []

    def appendix(self) -> list[str]:
        """Lines of the section before the per-set table."""
        return []

    def per_set_info(self, info: pd.DataFrame) -> pd.DataFrame:
        """Format the set columns of the per-set table (integers as text, NaN empty)."""
        for col in info.columns:
            if pd.api.types.is_numeric_dtype(info[col]):
                info[col] = info[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
        return info
