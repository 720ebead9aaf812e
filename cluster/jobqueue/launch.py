#!/usr/bin/env python3
"""Run ``rfmdist fit`` on Dask workers started as SLURM or PBS jobs (dask-jobqueue).

Usage (see ``cluster/slurm/README.md`` and ``cluster/pbs/README.md``)::

    python cluster/jobqueue/launch.py slurm --jobs 4 --cores 32 --memory 128GiB \
        --walltime 04:00:00 -- --train data.parquet --target y --out model.zarr --resume

The first argument names the batch system (``slurm`` or ``pbs``). Add
``--gpus-per-node N`` for one ``dask cuda worker`` per GPU and ``--print-job-script`` to
render the job script without submitting anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The shared helpers live in cluster/rfmdist_cluster (not part of the installed library).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfmdist_cluster.jobqueue_launch import main

if __name__ == "__main__":
    sys.exit(main())
