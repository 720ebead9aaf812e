"""The ``rfmdist`` command line: ``rfmdist demo | fit | predict | evaluate | inspect``."""

from rfmdist.cli.main import main

__all__ = ["main"]
