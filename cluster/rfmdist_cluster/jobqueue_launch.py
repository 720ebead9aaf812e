"""The dask-jobqueue launcher of ``cluster/jobqueue/launch.py`` for SLURM and PBS.

Its first argument names the batch system (``slurm`` or ``pbs``); the launcher

1. builds the keyword arguments of a dask-jobqueue ``SLURMCluster`` / ``PBSCluster``
   (one worker process per job with ``threads = cores`` for CPU jobs; one
   ``dask cuda worker`` process per GPU for GPU jobs, via ``python -m dask_cuda.cli``),
2. either renders the job script (``--print-job-script``, nothing is submitted) or
   creates the cluster, scales it to ``--jobs`` jobs, opens a ``distributed.Client``,
   waits for the workers and
3. runs ``rfmdist fit --scheduler ADDRESS <pass-through arguments>`` in a subprocess.

Nothing here imports ``rfmdist``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rfmdist_cluster import fitcmd

logger = logging.getLogger(__name__)

System = Literal["slurm", "pbs"]
SYSTEMS: tuple[str, ...] = ("slurm", "pbs")

#: How the launcher is started (its usage line and examples).
PROG = "python cluster/jobqueue/launch.py"

#: Placeholder used when rendering a job script without a running scheduler.
PLACEHOLDER_SCHEDULER = "tcp://<scheduler-address>:8786"

#: Thread-count variables of the common BLAS / OpenMP runtimes.
BLAS_THREAD_VARIABLES: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: ``python -m <module>`` started per job for GPU workers (the ``dask cuda worker`` CLI).
GPU_WORKER_MODULE = "dask_cuda.cli"

_WALLTIME_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "slurm": (re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$"), "HH:MM:SS or D-HH:MM:SS"),
    "pbs": (re.compile(r"^\d+(:\d{1,2}){0,2}$"), "HH:MM:SS"),
}


class JobQueueImportError(ImportError):
    """dask-jobqueue (or dask-cuda for GPU jobs) is not installed."""


def _require_jobqueue() -> Any:
    """Import and return :mod:`dask_jobqueue` or raise a helpful error."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise JobQueueImportError(
            "expected the dask-jobqueue package to build SLURM/PBS job scripts, found it "
            f"is not importable ({exc}); fix: pip install dask-jobqueue"
        ) from exc
    return dask_jobqueue


def blas_prologue(threads: int) -> list[str]:
    """Return ``export`` lines pinning BLAS/OpenMP thread pools to ``threads``.

    Dask already runs one task per worker thread; letting every task also start a
    multi-threaded BLAS call oversubscribes the cores, so the default is 1.

    Parameters
    ----------
    threads : int
        Threads per BLAS call (>= 1).

    Returns
    -------
    list of str
        One ``export NAME=threads`` line per variable of :data:`BLAS_THREAD_VARIABLES`.
    """
    return [f"export {name}={int(threads)}" for name in BLAS_THREAD_VARIABLES]


@dataclass(frozen=True)
class WorkerJobSpec:
    """Resources of one batch job that hosts Dask worker(s).

    Parameters
    ----------
    cores : int
        CPU cores per job (CPU jobs: threads of the single worker; GPU jobs: split
        evenly over the per-GPU workers).
    memory : str
        Memory per job, e.g. ``"64GiB"``.
    walltime : str
        Job walltime, ``HH:MM:SS`` (SLURM also accepts ``D-HH:MM:SS``).
    queue : str, optional
        SLURM partition / PBS queue.
    account : str, optional
        Account (``-A``) charged for the jobs.
    jobs : int, default 1
        Number of jobs (nodes) to submit.
    gpus_per_node : int, default 0
        GPUs per job; 0 for CPU workers, N > 0 for N ``dask cuda worker`` processes.
    blas_threads : int, default 1
        Value of ``OMP_NUM_THREADS`` and friends in the job.
    job_name : str, default "rfmdist-worker"
        Batch job name.
    interface : str, optional
        Network interface of the workers (and of the scheduler unless overridden).
    local_directory : str, optional
        Worker scratch / spill directory (node-local disk is best).
    log_directory : str, optional
        Directory for the job scheduler's stdout/stderr files.
    python : str, optional
        Python executable on the compute nodes (default: the launcher's).
    job_extra_directives : tuple of str
        Extra ``#SBATCH`` / ``#PBS`` directives (without the prefix).
    job_script_prologue : tuple of str
        Extra shell lines run before the worker (e.g. ``module load cuda``).
    resource_spec : str, optional
        PBS only: the full ``-l`` resource string (overrides the computed one).
    """

    cores: int
    memory: str
    walltime: str
    queue: str | None = None
    account: str | None = None
    jobs: int = 1
    gpus_per_node: int = 0
    blas_threads: int = 1
    job_name: str = "rfmdist-worker"
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    job_extra_directives: tuple[str, ...] = field(default_factory=tuple)
    job_script_prologue: tuple[str, ...] = field(default_factory=tuple)
    resource_spec: str | None = None

    def __post_init__(self) -> None:
        from dask.utils import parse_bytes

        for name, minimum in (("cores", 1), ("jobs", 1), ("gpus_per_node", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"expected {name} to be an integer >= {minimum}, found {value!r}; "
                    f"fix: pass --{name.replace('_', '-')} {max(minimum, 1)} or more."
                )
        if not isinstance(self.blas_threads, int) or self.blas_threads < 1:
            raise ValueError(
                f"expected blas_threads >= 1, found {self.blas_threads!r}; "
                "fix: pass --blas-threads 1 (recommended) or more."
            )
        if self.gpus_per_node > self.cores:
            raise ValueError(
                f"expected at least one core per GPU worker, found cores={self.cores} "
                f"for gpus_per_node={self.gpus_per_node}; fix: raise --cores to "
                f">= {self.gpus_per_node}."
            )
        try:
            parse_bytes(self.memory)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"expected memory like '64GiB', found {self.memory!r}; "
                "fix: pass --memory with a unit, e.g. --memory 64GiB."
            ) from exc

    @property
    def workers_per_job(self) -> int:
        """Number of Dask worker processes in one job (1 for CPU, one per GPU)."""
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def total_workers(self) -> int:
        """Number of Dask workers once every job runs."""
        return self.jobs * self.workers_per_job


def check_walltime(system: System, walltime: str) -> None:
    """Raise ``ValueError`` unless ``walltime`` has a format ``system`` accepts.

    Parameters
    ----------
    system : {"slurm", "pbs"}
        Batch system.
    walltime : str
        Walltime string.
    """
    pattern, shape = _WALLTIME_PATTERNS[system]
    if not pattern.match(walltime):
        raise ValueError(
            f"expected a {system.upper()} walltime as {shape}, found {walltime!r}; "
            "fix: pass e.g. --walltime 04:00:00."
        )


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(
            f"expected a batch system in {SYSTEMS}, found {system!r}; fix: pass "
            f"'{PROG} slurm ...' or '{PROG} pbs ...'."
        )


def pbs_gpu_resource_spec(spec: WorkerJobSpec) -> str:
    """Return the PBS Pro ``select`` statement for a GPU job.

    Parameters
    ----------
    spec : WorkerJobSpec
        Job resources with ``gpus_per_node > 0``.

    Returns
    -------
    str
        ``select=1:ncpus=C:ngpus=N:mem=M``.
    """
    from dask.utils import parse_bytes
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    mem = pbs_format_bytes_ceil(parse_bytes(spec.memory))
    return f"select=1:ncpus={spec.cores}:ngpus={spec.gpus_per_node}:mem={mem}"


def job_kwargs(system: System, spec: WorkerJobSpec) -> dict[str, Any]:
    """Translate ``spec`` into ``SLURMCluster`` / ``PBSCluster`` keyword arguments.

    Parameters
    ----------
    system : {"slurm", "pbs"}
        Batch system.
    spec : WorkerJobSpec
        Job resources.

    Returns
    -------
    dict
        Keyword arguments accepted by both the dask-jobqueue cluster and job classes.
    """
    _check_system(system)
    check_walltime(system, spec.walltime)
    kwargs: dict[str, Any] = {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.workers_per_job,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "account": spec.account,
        "job_name": spec.job_name,
        "job_script_prologue": [*blas_prologue(spec.blas_threads), *spec.job_script_prologue],
        "job_extra_directives": list(spec.job_extra_directives),
    }
    for key in ("interface", "local_directory", "log_directory", "python"):
        value = getattr(spec, key)
        if value is not None:
            kwargs[key] = value
    if spec.gpus_per_node > 0:
        # dask-cuda starts one worker process per visible GPU itself; dask-jobqueue
        # passes --nthreads cores/processes and --memory-limit memory/processes.
        kwargs["worker_command"] = GPU_WORKER_MODULE
        if system == "slurm":
            kwargs["job_extra_directives"].insert(0, f"--gres=gpu:{spec.gpus_per_node}")
    if system == "pbs":
        if spec.resource_spec is not None:
            kwargs["resource_spec"] = spec.resource_spec
        elif spec.gpus_per_node > 0:
            kwargs["resource_spec"] = pbs_gpu_resource_spec(spec)
    elif spec.resource_spec is not None:
        raise ValueError(
            f"expected no resource_spec for SLURM, found {spec.resource_spec!r}; fix: "
            "use job_extra_directives (--job-extra-directive) for extra #SBATCH lines."
        )
    return kwargs


def render_job_script(
    system: System, spec: WorkerJobSpec, scheduler_address: str = PLACEHOLDER_SCHEDULER
) -> str:
    """Render the batch script of one worker job without submitting anything.

    Uses dask-jobqueue's ``Job.job_script()`` directly, so no scheduler is started.

    Parameters
    ----------
    system : {"slurm", "pbs"}
        Batch system.
    spec : WorkerJobSpec
        Job resources.
    scheduler_address : str, optional
        Address written into the worker command (a placeholder by default).

    Returns
    -------
    str
        The job script, as ``sbatch`` / ``qsub`` would receive it.
    """
    jq = _require_jobqueue()
    job_cls = jq.SLURMCluster.job_cls if system == "slurm" else jq.PBSCluster.job_cls
    job = job_cls(scheduler_address, name="dummy-name", **job_kwargs(system, spec))
    return job.job_script()


def _require_dask_cuda_for_gpu(spec: WorkerJobSpec) -> None:
    if spec.gpus_per_node <= 0:
        return
    try:
        import dask_cuda  # noqa: F401
    except ImportError as exc:
        raise JobQueueImportError(
            "expected dask-cuda in this environment (the GPU jobs run "
            f"'python -m {GPU_WORKER_MODULE}' with the same Python), found it is not "
            f"importable ({exc}); fix: pip install 'rfmdist[cuda12]' (or 'rfmdist[cuda13]' on CUDA 13), or pass "
            "--python pointing at a GPU environment on the compute nodes."
        ) from exc


def launch(
    system: System,
    spec: WorkerJobSpec,
    fit_argv: Sequence[str],
    *,
    min_workers: int | None = None,
    wait_timeout: float = 3600.0,
    scheduler_interface: str | None = None,
    dashboard_address: str = ":8787",
    rfmdist_exe: str = "rfmdist",
) -> int:
    """Start the batch cluster, wait for workers and run ``rfmdist fit`` against it.

    Parameters
    ----------
    system : {"slurm", "pbs"}
        Batch system.
    spec : WorkerJobSpec
        Job resources.
    fit_argv : sequence of str
        Pass-through ``rfmdist fit`` arguments (``--train ... --out ...``).
    min_workers : int, optional
        Workers to wait for before fitting (default: all of them).
    wait_timeout : float, default 3600
        Seconds to wait for ``min_workers`` (includes queueing time).
    scheduler_interface : str, optional
        Network interface of the scheduler, if different from the workers'.
    dashboard_address : str, default ":8787"
        Dashboard address of the scheduler.
    rfmdist_exe : str, default "rfmdist"
        The ``rfmdist`` executable.

    Returns
    -------
    int
        Exit status of ``rfmdist fit`` (non-zero if the workers never arrived).
    """
    fitcmd.validate_fit_argv(fit_argv)
    executable = fitcmd.resolve_executable(rfmdist_exe)
    _require_dask_cuda_for_gpu(spec)
    jq = _require_jobqueue()
    from distributed import Client

    cluster_cls = jq.SLURMCluster if system == "slurm" else jq.PBSCluster
    scheduler_options: dict[str, Any] = {"dashboard_address": dashboard_address}
    if scheduler_interface is not None:
        scheduler_options["interface"] = scheduler_interface
    wanted = spec.total_workers if min_workers is None else min_workers
    if not 1 <= wanted <= spec.total_workers:
        raise ValueError(
            f"expected 1 <= min_workers <= {spec.total_workers} (jobs x workers per job), "
            f"found {wanted}; fix: lower --min-workers or raise --jobs."
        )
    if "--resume" not in fit_argv:
        logger.info("tip: add --resume to the fit arguments so a rerun continues a fit")

    with cluster_cls(scheduler_options=scheduler_options, **job_kwargs(system, spec)) as cluster:
        logger.info("dashboard: %s", cluster.dashboard_link)
        logger.debug("job script:\n%s", cluster.job_script())
        cluster.scale(jobs=spec.jobs)
        with Client(cluster) as client:
            logger.info(
                "submitted %d %s job(s); waiting up to %.0f s for %d worker(s)",
                spec.jobs,
                system.upper(),
                wait_timeout,
                wanted,
            )
            try:
                client.wait_for_workers(n_workers=wanted, timeout=wait_timeout)
            except TimeoutError:
                found = len(client.scheduler_info(n_workers=-1)["workers"])
                logger.error(
                    "expected %d worker(s) within %.0f s, found %d; fix: check the queue "
                    "(squeue -u $USER / qstat -u $USER) and the job logs "
                    "(--log-directory), raise --wait-timeout or lower --min-workers.",
                    wanted,
                    wait_timeout,
                    found,
                )
                return 1
            command = fitcmd.build_fit_command(
                cluster.scheduler_address,
                fit_argv,
                gpus=spec.gpus_per_node > 0,
                executable=executable,
            )
            return fitcmd.run_fit(command)


def build_parser() -> argparse.ArgumentParser:
    """Return the launcher's argument parser: one sub-command per batch system.

    Returns
    -------
    argparse.ArgumentParser
        Parser for the arguments *before* ``--``; ``system`` holds the chosen batch system.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Start Dask workers as SLURM or PBS jobs (dask-jobqueue) and run "
            "'rfmdist fit --scheduler ADDRESS ...' against them. Everything after '--' "
            "is passed to rfmdist fit."
        ),
        epilog=f"options of one batch system: {PROG} {{{','.join(SYSTEMS)}}} --help",
    )
    systems = parser.add_subparsers(dest="system", required=True)
    for system in SYSTEMS:
        add_system_arguments(
            systems.add_parser(
                system,
                help=f"workers as {system.upper()} jobs",
                description=f"Start Dask workers as {system.upper()} jobs and run rfmdist fit.",
                epilog=(
                    f"example: {PROG} {system} --jobs 4 --cores 32 --memory 128GiB "
                    "--walltime 04:00:00 -- --train data.parquet --target y "
                    "--out model.zarr --resume"
                ),
            ),
            system,
        )
    return parser


def add_system_arguments(parser: argparse.ArgumentParser, system: System) -> None:
    """Add the job-resource, network and run options of ``system`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command parser of ``system``.
    system : {"slurm", "pbs"}
        Batch system (SLURM names the queue a partition; PBS takes ``--resource-spec``).
    """
    _check_system(system)
    res = parser.add_argument_group("job resources")
    if system == "slurm":
        res.add_argument("-p", "--partition", "--queue", dest="queue", help="SLURM partition")
    else:
        res.add_argument("-q", "--queue", dest="queue", help="PBS queue")
    res.add_argument("-A", "--account", help="account/project charged for the jobs")
    res.add_argument("--walltime", default="01:00:00", help="per job (default: %(default)s)")
    res.add_argument("--cores", type=int, required=True, help="CPU cores per job")
    res.add_argument("--memory", required=True, help="memory per job, e.g. 128GiB")
    res.add_argument("--jobs", type=int, default=1, help="number of jobs/nodes (default: 1)")
    res.add_argument(
        "--gpus-per-node",
        type=int,
        default=0,
        help="GPUs per job; > 0 runs one 'dask cuda worker' process per GPU (default: 0)",
    )
    if system == "pbs":
        res.add_argument(
            "--resource-spec",
            help="full '#PBS -l' resource string (default: select=1:ncpus=C[:ngpus=N]:mem=M)",
        )
    res.add_argument(
        "--job-extra-directive",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="extra batch directive without the #SBATCH/#PBS prefix (repeatable)",
    )
    res.add_argument(
        "--prologue",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run in the job before the worker, e.g. 'module load cuda' (repeatable)",
    )
    res.add_argument(
        "--blas-threads", type=int, default=1, help="OMP/BLAS threads per task (default: 1)"
    )
    res.add_argument("--job-name", default="rfmdist-worker")
    res.add_argument("--log-directory", help="directory for the jobs' stdout/stderr")
    res.add_argument("--local-directory", help="worker scratch/spill dir (node-local disk)")
    res.add_argument("--python", help="python executable on the compute nodes")
    net = parser.add_argument_group("network and run")
    net.add_argument("--interface", help="network interface of the workers, e.g. ib0")
    net.add_argument("--scheduler-interface", help="network interface of the scheduler")
    net.add_argument("--dashboard-address", default=":8787")
    net.add_argument("--min-workers", type=int, help="workers to wait for (default: all)")
    net.add_argument(
        "--wait-timeout", type=float, default=3600.0, help="seconds (default: %(default)s)"
    )
    net.add_argument("--rfmdist-exe", default="rfmdist", help="rfmdist executable")
    net.add_argument(
        "--print-job-script",
        action="store_true",
        help="render the worker job script and exit without submitting anything",
    )
    net.add_argument("--log-level", default="INFO", help="launcher log level")


def spec_from_args(system: System, args: argparse.Namespace) -> WorkerJobSpec:
    """Build a :class:`WorkerJobSpec` from parsed launcher arguments.

    Parameters
    ----------
    system : {"slurm", "pbs"}
        Batch system.
    args : argparse.Namespace
        Output of :func:`build_parser` ``.parse_args`` for ``system``.

    Returns
    -------
    WorkerJobSpec
        The job resources.
    """
    return WorkerJobSpec(
        cores=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        jobs=args.jobs,
        gpus_per_node=args.gpus_per_node,
        blas_threads=args.blas_threads,
        job_name=args.job_name,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        python=args.python,
        job_extra_directives=tuple(args.job_extra_directive),
        job_script_prologue=tuple(args.prologue),
        resource_spec=getattr(args, "resource_spec", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``cluster/jobqueue/launch.py``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name, the batch system first (default:
        ``sys.argv[1:]``), e.g. ``["slurm", "--cores", "8", ..., "--", "--train", ...]``.

    Returns
    -------
    int
        Process exit status.
    """
    launcher_argv, fit_argv = fitcmd.split_launcher_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(launcher_argv)
    system: System = args.system
    try:
        fitcmd.configure_logging(args.log_level)
        spec = spec_from_args(system, args)
        if args.print_job_script:
            logger.info("worker job script:\n%s", render_job_script(system, spec))
            return 0
        return launch(
            system,
            spec,
            fit_argv,
            min_workers=args.min_workers,
            wait_timeout=args.wait_timeout,
            scheduler_interface=args.scheduler_interface,
            dashboard_address=args.dashboard_address,
            rfmdist_exe=args.rfmdist_exe,
        )
    except (ValueError, ImportError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
