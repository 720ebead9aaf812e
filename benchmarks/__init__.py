"""The benchmarks of rfmdist: scripts run from a checkout (``python benchmarks/NAME.py`` or
``python -m benchmarks.NAME``), not part of the installed package.

:mod:`benchmarks.runner` runs the tabular collections, which plug into it:
:mod:`benchmarks.uci121` and :mod:`benchmarks.grinsztajn`, with their loaders in
:mod:`benchmarks.datasets`. :mod:`benchmarks.common` holds what the other scripts share.
"""
