"""Entry point of the ``rfmdist`` command: sub-commands, logging and exit codes.

Exit codes scripts can trust: 0 success, 2 usage or bad input (one clear line on stderr, no traceback
unless ``--log-level debug``), 1 any other failure. Log records keep their message but lose their
traceback unless ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rfmdist.cli import demo, evaluate, fit, inspect, predict
from rfmdist.cli.errors import UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

logger = logging.getLogger("rfmdist.cli")

# Errors that mean "the input or the request is wrong": exit 2 with one line.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)

COMMANDS = (demo, fit, predict, evaluate, inspect)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command module."""
    parser = argparse.ArgumentParser(
        prog="rfmdist",
        description="Recursive Feature Machines at scale on Dask: fit, predict, evaluate, inspect.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        command = module.register(sub)
        command.add_argument(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning", "error"],
            help="Logging verbosity (debug also shows tracebacks). Default: info.",
        )
    return parser


def _version() -> str:
    from rfmdist import __version__

    return f"rfmdist {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (``sys.argv[1:]`` by default).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 2 on usage errors, 0 on --help
        return int(stop.code or 0)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    debug = args.log_level == "debug"
    for handler in logging.getLogger().handlers:
        if debug:
            handler.removeFilter(_without_traceback)
        elif _without_traceback not in handler.filters:
            handler.addFilter(_without_traceback)
    try:
        return int(args.run(args) or EXIT_OK)
    except (UsageError, *BAD_INPUT_ERRORS) as err:
        if debug:
            logger.exception("bad input")
        sys.stderr.write(f"rfmdist {args.command}: error: {_one_line(err)}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"rfmdist {args.command}: interrupted\n")
        return EXIT_FAILURE
    except Exception as err:  # the last resort: report, never a bare traceback unless debugging
        if debug:
            logger.exception("failure")
        sys.stderr.write(
            f"rfmdist {args.command}: failed: {type(err).__name__}: {_one_line(err)}\n"
        )
        return EXIT_FAILURE


def _without_traceback(record: logging.LogRecord) -> bool:
    """Log filter: keep the message, drop the traceback (libraries such as distributed log them for
    errors they recover from or that the command reports itself); ``--log-level debug`` keeps them."""
    record.exc_info = None
    record.exc_text = None
    return True


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
