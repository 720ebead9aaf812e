"""The command line's own error: a request that cannot be run as given (exit 2)."""

from __future__ import annotations


class UsageError(Exception):
    """A command line that cannot be run as given (exit 2, one line on stderr)."""
