"""Shared helpers for the ``cluster/`` deployment recipes of rfmdist.

This package is *not* part of the installed ``rfmdist`` library: it lives next to the
recipes so that the launcher scripts (``cluster/jobqueue/launch.py`` for SLURM and PBS,
``cluster/local-gpu/run_local_gpu.py``) can share code. The launchers put ``cluster/``
on ``sys.path`` themselves; nothing here imports ``rfmdist``.
"""
