"""Build and run the ``rfmdist fit`` command line that the launchers hand off to.

Every launcher in ``cluster/`` creates a Dask cluster, waits for its workers and then
runs ``rfmdist fit --scheduler ADDRESS <user arguments>`` in a subprocess. The user's
``rfmdist fit`` arguments are given after a ``--`` separator on the launcher's command
line and are passed through untouched (apart from the checks below).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: Options that the launcher sets itself and that must not be passed through.
LAUNCHER_OWNED_OPTIONS: tuple[str, ...] = ("--scheduler", "--scheduler-file")

#: Options without which ``rfmdist fit`` cannot run (checked before any job is queued).
REQUIRED_FIT_OPTIONS: tuple[str, ...] = ("--train", "--out")


class FitArgumentError(ValueError):
    """The pass-through ``rfmdist fit`` arguments are unusable."""


def configure_logging(level: str) -> None:
    """Set up launcher logging; quiet the in-process Dask scheduler unless debugging.

    Parameters
    ----------
    level : str
        Log level name for the launcher, e.g. ``"INFO"``.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(
            f"expected a log level such as INFO or DEBUG, found {level!r}; "
            "fix: pass --log-level INFO."
        )
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if numeric > logging.DEBUG:
        import distributed  # noqa: F401  (its import sets the "distributed" log level)

        for name in ("distributed", "dask_jobqueue", "dask_cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)


def split_launcher_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a launcher command line at the first ``--``.

    Parameters
    ----------
    argv : sequence of str
        Command-line arguments without the program name.

    Returns
    -------
    launcher_argv : list of str
        Arguments before ``--`` (parsed by the launcher's argparse parser).
    fit_argv : list of str
        Arguments after ``--`` (passed through to ``rfmdist fit``); empty if there is
        no ``--``.
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def _option_names(fit_argv: Sequence[str]) -> set[str]:
    """Return the ``--option`` names in ``fit_argv`` (``--a=b`` counts as ``--a``)."""
    return {arg.split("=", 1)[0] for arg in fit_argv if arg.startswith("--")}


def validate_fit_argv(fit_argv: Sequence[str]) -> None:
    """Check the pass-through ``rfmdist fit`` arguments before any job is queued.

    Parameters
    ----------
    fit_argv : sequence of str
        Arguments given after ``--`` on the launcher command line.

    Raises
    ------
    FitArgumentError
        If a required option is missing or an option owned by the launcher is given.
    """
    names = _option_names(fit_argv)
    owned = sorted(names.intersection(LAUNCHER_OWNED_OPTIONS))
    if owned:
        raise FitArgumentError(
            f"expected the launcher to choose the scheduler address, but found {owned} "
            "among the rfmdist fit arguments; fix: remove them (the launcher adds "
            "--scheduler ADDRESS of the cluster it creates)."
        )
    missing = [opt for opt in REQUIRED_FIT_OPTIONS if opt not in names]
    if missing:
        shown = " ".join(fit_argv) or "<nothing>"
        raise FitArgumentError(
            f"expected rfmdist fit arguments {list(REQUIRED_FIT_OPTIONS)} after '--', "
            f"found {shown!r} (missing {missing}); fix: append e.g. "
            "'-- --train data.parquet --target y --out model.zarr --resume'."
        )


def build_fit_command(
    scheduler_address: str,
    fit_argv: Sequence[str],
    *,
    gpus: bool = False,
    executable: str = "rfmdist",
) -> list[str]:
    """Return the ``rfmdist fit`` argument vector for a running cluster.

    Parameters
    ----------
    scheduler_address : str
        Address of the Dask scheduler, e.g. ``tcp://10.0.0.5:8786``.
    fit_argv : sequence of str
        Validated pass-through arguments (see :func:`validate_fit_argv`).
    gpus : bool, default False
        Add ``--gpus`` (GPU workers) unless the user already gave it.
    executable : str, default "rfmdist"
        The ``rfmdist`` console script.

    Returns
    -------
    list of str
        ``[executable, "fit", "--scheduler", scheduler_address, *fit_argv]`` plus
        ``--gpus`` when requested.
    """
    command = [executable, "fit", "--scheduler", scheduler_address, *fit_argv]
    if gpus and "--gpus" not in _option_names(fit_argv):
        command.append("--gpus")
    return command


def resolve_executable(name: str) -> str:
    """Find the ``rfmdist`` console script on ``PATH``.

    Parameters
    ----------
    name : str
        Executable name or path.

    Returns
    -------
    str
        Absolute path of the executable.

    Raises
    ------
    FileNotFoundError
        If it cannot be found.
    """
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"expected the rfmdist command line ({name!r}) on PATH, found nothing; fix: "
            "activate the environment where rfmdist is installed (pip install rfmdist) "
            "or pass --rfmdist-exe /path/to/rfmdist."
        )
    return found


def run_fit(command: Sequence[str]) -> int:
    """Run ``rfmdist fit`` in a subprocess and return its exit status.

    Parameters
    ----------
    command : sequence of str
        Output of :func:`build_fit_command`.

    Returns
    -------
    int
        The exit status of ``rfmdist fit``.
    """
    logger.info("running: %s", " ".join(command))
    completed = subprocess.run(list(command), check=False)
    if completed.returncode != 0:
        logger.error("rfmdist fit exited with status %d", completed.returncode)
    return completed.returncode
