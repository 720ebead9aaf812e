"""Run planning: where a fit with ``store=path`` (or ``save(path)``) writes, and when it may delete or
move what is already at ``path``.

Deciding is pure: :func:`decide_run` and :func:`decide_save` take what is at ``path`` and at
``<path>.partial`` (statuses None, ``'running'`` or ``'complete'``) and return a :class:`RunPlan`, or
refuse; they touch no file. :func:`plan_run` and :func:`save_location` read those statuses and call
them. A plan's file operations happen later, through the plan, at these moments only:

- a stale ``<path>.partial`` (left by an earlier run, not the one resumed) is deleted when the new
  run's writer is created (:meth:`RunPlan.open_writer`), i.e. after the estimator has validated the
  data, never while planning;
- a run that replaces an *unfinished* run at ``path`` (``overwrite=True`` over an interrupted fit, or
  resuming such a run's ``.partial``) is written at ``<path>.partial`` and moved over ``path`` right
  after its first round committed in this fit; it then goes on writing at ``path``. So a fit that
  fails before its first round (bad ``X``, a crash in round 0) leaves the interrupted run at ``path``
  as it was, and from the first round on ``path`` holds the new run, as it would have without the
  detour; a ``.partial`` that is present is always the newer run, and ``resume=True`` continues it.
  (Writing at ``.partial`` until the run completes would instead keep two runs at the path for the
  whole fit, the old one being what ``path`` shows to ``rfmdist inspect`` and to a fit without
  flags, though it is not what ``resume=True`` continues.)
- a run that replaces a *complete* model (``overwrite=True``) stays at ``<path>.partial`` until it
  completes, and is moved over the model by :meth:`RunPlan.complete` (an interrupted one stays there,
  and ``resume=True`` continues it);
- a complete ``<path>.partial`` found by ``resume=True`` (a crash between the two steps of a move) is
  read there and moved into place by :meth:`RunPlan.complete`, which the caller calls once it has
  checked that it is the run it asked for (same estimator, parameters and data).

Moves are :meth:`rfmdist.store.location.StoreLocation.replace_with`: two renames on a local disk,
delete-then-move on other file systems.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfmdist.exceptions import StoreError
from rfmdist.metric import Metric
from rfmdist.store.layout import RESUME_HINT
from rfmdist.store.location import StoreLocation, store_location
from rfmdist.store.reader import completed_rounds_at, read_status
from rfmdist.store.writer import RunHeader, RunWriter, StoreWriteError, save_model

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
# Modes of a plan.
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"
# When a plan's work (``<path>.partial``) replaces what is at its target.
AFTER_FIRST_COMMIT, ON_COMPLETE = "after_first_commit", "on_complete"
STATUSES = (None, "running", "complete")


@dataclass
class RunPlan:
    """Where a fit with ``store=`` reads and writes, and the file operations it defers.

    Attributes
    ----------
    target : StoreLocation
        The path the user gave: the finished model ends up here.
    work : StoreLocation
        Where the run starts (or continues) committing rounds (``target`` or ``<target>.partial``),
        or where the finished model to load is (mode ``'finished'``).
    mode : {'fresh', 'resume', 'finished'}
        Start a new run at ``work``, continue the one there, or load the finished model at ``work``.
    clear_partial : bool
        Delete what is at ``<target>.partial`` when the new run's writer is created.
    replace_target : {None, 'after_first_commit', 'on_complete'}
        When ``work`` is moved over ``target``: after this fit's first committed round (the writer
        then goes on at ``target``), at :meth:`complete`, or never (``work`` is ``target``).
    """

    target: StoreLocation
    work: StoreLocation
    mode: str
    clear_partial: bool = False
    replace_target: str | None = None
    _replaced: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def partial(self) -> StoreLocation:
        """``<target>.partial``."""
        return self.target.beside(PARTIAL_SUFFIX)

    @property
    def location(self) -> StoreLocation:
        """Where the run is now: ``target`` once ``work`` has been moved there, else ``work``."""
        return self.target if self._replaced else self.work

    def open_writer(self, header: RunHeader, M0: Metric) -> RunWriter:
        """Start the new run (mode ``'fresh'``) at ``work``, first deleting a stale ``.partial``.

        Parameters
        ----------
        header : RunHeader
        M0 : Metric
            ``M_0``, written as ``history/M[0]``.

        Returns
        -------
        RunWriter
            Moves the run over ``target`` after its first commit when the plan says so.
        """
        self._expect_mode(FRESH, "start a run")
        self._clear_stale_partial()
        return RunWriter.create(self.work, header, M0, on_commit=self._committed)

    def reopen_writer(self) -> RunWriter:
        """Continue the run at ``work`` (mode ``'resume'``).

        Returns
        -------
        RunWriter
            Moves the run over ``target`` after its first commit when the plan says so.
        """
        self._expect_mode(RESUME, "continue a run")
        return RunWriter.reopen(self.work, on_commit=self._committed)

    def complete(self) -> None:
        """Move ``work`` over ``target`` unless that is done or not planned.

        Call it when the run is complete (after :meth:`RunWriter.finish`), or, in mode
        ``'finished'``, once the model at ``work`` has been checked to be the one asked for.
        """
        if self.replace_target is not None and not self._replaced:
            self._replace()

    def save_model(
        self,
        header: RunHeader,
        metric_history: list[Metric],
        coef: np.ndarray,
        best_iter: int,
        history: list[dict[str, Any]],
        refit: dict[str, Any] | None = None,
    ) -> None:
        """Write a fitted model (:func:`rfmdist.store.writer.save_model`) at ``work``, first deleting a
        stale ``.partial``, then move it over ``target`` when planned.

        Parameters
        ----------
        header : RunHeader
        metric_history : list of Metric
        coef : numpy.ndarray, shape (m, c)
        best_iter : int
        history : list of dict
            ``R`` records.
        refit : dict, optional
            The record of a refit on all rows.
        """
        self._expect_mode(FRESH, "save a model")
        self._clear_stale_partial()
        save_model(self.work, header, metric_history, coef, best_iter, history, refit=refit)
        self.complete()

    def _clear_stale_partial(self) -> None:
        """Delete a stale ``.partial`` (when planned), just before the new store is written."""
        if self.clear_partial:
            self.partial.remove()
            logger.info("deleted the stale store %s", self.partial.url)

    def _committed(self, writer: RunWriter) -> None:
        """The writer's hook after each committed round: the move due after the first."""
        if self.replace_target == AFTER_FIRST_COMMIT and not self._replaced:
            self._replace()
            writer.relocate(self.target)

    def _replace(self) -> None:
        try:
            self.target.replace_with(self.work)
        except OSError as err:
            raise StoreWriteError(
                err.errno,
                f"could not move the run at {self.work.url!r} over {self.target.url!r}: "
                f"{err.strerror or err} ({type(err).__name__}); the run is kept at "
                f"{self.work.url!r}: fix the file system and {RESUME_HINT}",
            ) from err
        self._replaced = True

    def _expect_mode(self, mode: str, what: str) -> None:
        if self.mode != mode:
            raise ValueError(
                f"Expected a plan in mode {mode!r} to {what}, found mode {self.mode!r} (at "
                f"{self.work.url!r}); use open_writer for 'fresh', reopen_writer for 'resume'."
            )


def decide_run(
    target: StoreLocation,
    target_status: str | None,
    partial_status: str | None,
    *,
    resume: bool,
    overwrite: bool,
    target_rounds: int = 0,
) -> RunPlan:
    """Decide where a fit with ``store=target`` runs, from what is there; touches no file.

    - ``resume`` (``overwrite`` is then ignored): a complete ``.partial`` is the finished model (moved
      into place at :meth:`RunPlan.complete`); a running ``.partial`` is continued; else a run in
      progress at ``target`` is continued, a complete model there is loaded as is, and with nothing to
      resume a new run starts at ``target``.
    - otherwise: with nothing at ``target`` (nor at ``<target>.partial``, unless ``overwrite``) a new
      run starts there; with a run or model there, or a run or model at ``<target>.partial`` with
      nothing at ``target``, the fit is refused without ``overwrite``, and with it a new run starts at ``<target>.partial``, which
      replaces an interrupted run after its first committed round and a complete model when it
      completes.

    In a new run a ``.partial`` found is stale and is deleted when the writer is created.

    Parameters
    ----------
    target : StoreLocation
        The path the user gave.
    target_status, partial_status : {None, 'running', 'complete'}
        What is at ``target`` and at ``<target>.partial`` (:func:`rfmdist.store.reader.read_status`).
    resume, overwrite : bool
        The fit's flags.
    target_rounds : int, default=0
        Rounds committed by a running store at ``target`` (for the refusal's message).

    Returns
    -------
    RunPlan

    Raises
    ------
    FileExistsError
        A model or run is at ``target`` (or, with nothing at ``target``, at ``<target>.partial``)
        and neither ``resume`` nor ``overwrite`` was given.
    StoreError
        A status other than None, 'running' or 'complete' (an edited store).
    """
    for place, status in ((target, target_status), (target.beside(PARTIAL_SUFFIX), partial_status)):
        if status not in STATUSES:
            raise StoreError(
                f"Expected status 'running' or 'complete' in the rfmdist store at {place.url!r}, "
                f"found {status!r}; the store is damaged or was edited: restore it from a copy or "
                "choose another path."
            )
    partial = target.beside(PARTIAL_SUFFIX)
    if resume:
        replace = ON_COMPLETE if target_status == "complete" else AFTER_FIRST_COMMIT
        if partial_status == "complete":
            return RunPlan(target, partial, FINISHED, replace_target=ON_COMPLETE)
        if partial_status == "running":
            return RunPlan(target, partial, RESUME, replace_target=replace)
        if target_status == "running":
            return RunPlan(target, target, RESUME)
        if target_status == "complete":
            return RunPlan(target, target, FINISHED)
        return RunPlan(target, target, FRESH)
    if target_status == "complete" and not overwrite:
        raise FileExistsError(
            f"Expected no model at {target.url!r} (fit with store= does not replace a finished "
            "model), found a complete rfmdist model; pass overwrite=True to replace it when the new "
            "fit completes, resume=True to load it, or choose another path."
        )
    if target_status == "running" and not overwrite:
        raise FileExistsError(
            f"Expected no run at {target.url!r}, found an interrupted fit "
            f"({target_rounds} rounds committed); {RESUME_HINT}, or pass overwrite=True "
            "to start over."
        )
    if partial_status is not None and target_status is None and not overwrite:
        found = (
            "a complete model left by a replacement that did not finish"
            if partial_status == "complete"
            else "an interrupted fit"
        )
        raise FileExistsError(
            f"Expected nothing at {partial.url!r} beside the new store, found {found}; pass "
            "resume=True to continue (or move into place) that run, overwrite=True to discard it, "
            "or choose another path."
        )
    stale = partial_status is not None
    if target_status is None:
        return RunPlan(target, target, FRESH, clear_partial=stale)
    replace = ON_COMPLETE if target_status == "complete" else AFTER_FIRST_COMMIT
    return RunPlan(target, partial, FRESH, clear_partial=stale, replace_target=replace)


def plan_run(path: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> RunPlan:
    """Read what is at ``path`` and ``<path>.partial`` and decide the run (:func:`decide_run`).

    Nothing is deleted or moved here: the plan does that later (see the module docstring).

    Raises
    ------
    FileExistsError
        A model or run is at ``path`` and neither ``resume`` nor ``overwrite`` was given.
    StoreError
        Something other than an rfmdist store is at ``path`` or ``<path>.partial``.
    """
    target = store_location(path)
    status = read_status(target)
    partial_status = read_status(target.beside(PARTIAL_SUFFIX))
    plan = decide_run(
        target,
        status,
        partial_status,
        resume=resume,
        overwrite=overwrite,
        target_rounds=completed_rounds_at(target) if status == "running" else 0,
    )
    if resume and plan.mode == FRESH:
        logger.info("no run to resume at %s: starting a new one", target.url)
    return plan


def decide_save(
    target: StoreLocation, target_status: str | None, partial_exists: bool, *, overwrite: bool
) -> RunPlan:
    """Decide where ``save(target)`` writes, from what is there; touches no file.

    At ``target`` when nothing is there; else (with ``overwrite``) at ``<target>.partial``, moved over
    the store at ``target`` once written. Anything at ``.partial`` is deleted just before writing.

    Parameters
    ----------
    target : StoreLocation
    target_status : {None, 'running', 'complete'}
    partial_exists : bool
        Whether anything is at ``<target>.partial``.
    overwrite : bool

    Returns
    -------
    RunPlan
        Mode ``'fresh'``; carry it out with :meth:`RunPlan.save_model`.

    Raises
    ------
    FileExistsError
        A store is at ``target`` and ``overwrite`` is False.
    """
    if target_status is not None and not overwrite:
        raise FileExistsError(
            f"Expected no store at {target.url!r}, found a {target_status} rfmdist store; pass "
            "overwrite=True to replace it, or choose another path."
        )
    if target_status is None:
        return RunPlan(target, target, FRESH, clear_partial=partial_exists)
    partial = target.beside(PARTIAL_SUFFIX)
    return RunPlan(target, partial, FRESH, clear_partial=partial_exists, replace_target=ON_COMPLETE)


def save_location(path: str | os.PathLike[str], *, overwrite: bool) -> RunPlan:
    """Read what is at ``path`` and decide where ``save(path)`` writes (:func:`decide_save`).

    Raises
    ------
    FileExistsError
        A store is at ``path`` and ``overwrite`` is False.
    StoreError
        Something other than an rfmdist store is at ``path``.
    """
    target = store_location(path)
    status = read_status(target)
    return decide_save(target, status, target.beside(PARTIAL_SUFFIX).exists(), overwrite=overwrite)


def committed_rounds(path: str | os.PathLike[str]) -> int:
    """Rounds committed by the run at ``path`` (``<path>.partial`` first; 0 when nothing is there),
    from its attributes."""
    location = store_location(path)
    for place in (location.beside(PARTIAL_SUFFIX), location):
        if place.has_group():
            return completed_rounds_at(place)
    return 0
