"""Checks of the ``cluster/`` deployment recipes (no SLURM/PBS/Kubernetes/GPU needed).

The recipes are scripts, not part of the installed library, so they are loaded from
their paths. Nothing here imports ``rfmdist``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
K8S = CLUSTER / "kubernetes"
SBATCH = CLUSTER / "slurm" / "rfmdist-fit.sbatch"
JOBQUEUE_LAUNCHER = CLUSTER / "jobqueue" / "launch.py"
IMAGE = "ghcr.io/your-org/rfmdist:latest"
INSTALL_TEST_EXTRA = (
    "install the test extra: pip install -e '.[test]' "
    "(it provides 'dask-jobqueue>=0.9' and 'pyyaml>=6')"
)

if str(CLUSTER) not in sys.path:
    sys.path.insert(0, str(CLUSTER))


def _require(module: str, package: str) -> ModuleType:
    """Import ``module`` or FAIL (never skip) with the install instruction."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"expected {package} to be importable for the cluster recipe tests, found "
            f"ImportError ({exc}); fix: {INSTALL_TEST_EXTRA}",
            pytrace=False,
        )


def _jobqueue_launch() -> ModuleType:
    """The jobqueue launcher helpers; FAIL (not error/skip) without dask-jobqueue."""
    _require("dask_jobqueue", "dask-jobqueue")
    from rfmdist_cluster import jobqueue_launch

    return jobqueue_launch


def _yaml() -> ModuleType:
    """PyYAML; FAIL (not error/skip) without it."""
    return _require("yaml", "pyyaml")


@pytest.fixture
def local_gpu() -> ModuleType:
    """``cluster/local-gpu/run_local_gpu.py`` loaded as a module."""
    path = CLUSTER / "local-gpu" / "run_local_gpu.py"
    spec = importlib.util.spec_from_file_location("run_local_gpu", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec(jq_launch: ModuleType, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "cores": 16,
        "memory": "64GiB",
        "walltime": "02:00:00",
        "queue": "compute",
        "account": "proj42",
        "jobs": 3,
    }
    values.update(overrides)
    return jq_launch.WorkerJobSpec(**values)


def _worker_line(script: str) -> str:
    lines = [line for line in script.splitlines() if " -m " in line]
    assert len(lines) == 1, script
    return lines[0]


def _assert_blas_before_worker(script: str, jq_launch: ModuleType) -> None:
    worker_at = script.index(_worker_line(script))
    for name in jq_launch.BLAS_THREAD_VARIABLES:
        line = f"export {name}=1"
        assert line in script, script
        assert script.index(line) < worker_at


# --------------------------------------------------------------------------- SLURM / PBS


def test_slurm_cpu_job_script() -> None:
    jq_launch = _jobqueue_launch()
    script = jq_launch.render_job_script("slurm", _spec(jq_launch))
    for line in (
        "#SBATCH -J rfmdist-worker",
        "#SBATCH -p compute",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
        "#SBATCH -t 02:00:00",
    ):
        assert line in script.splitlines(), (line, script)
    assert "--gres" not in script
    worker = _worker_line(script)
    assert "-m distributed.cli.dask_worker" in worker
    assert "--nthreads 16" in worker  # one worker process per job, threads = cores
    assert "--nworkers" not in worker
    assert jq_launch.PLACEHOLDER_SCHEDULER in worker
    _assert_blas_before_worker(script, jq_launch)


def test_slurm_gpu_job_script() -> None:
    jq_launch = _jobqueue_launch()
    script = jq_launch.render_job_script("slurm", _spec(jq_launch, gpus_per_node=4))
    assert "#SBATCH --gres=gpu:4" in script.splitlines()
    assert "#SBATCH --cpus-per-task=16" in script.splitlines()
    worker = _worker_line(script)
    assert "-m dask_cuda.cli " in worker  # == `dask cuda worker`, one process per GPU
    assert "--nthreads 4" in worker  # cores split over the 4 GPU workers
    assert "--memory-limit 16.00GiB" in worker
    assert "--nanny" not in worker and "--nworkers" not in worker
    _assert_blas_before_worker(script, jq_launch)


def test_pbs_cpu_job_script() -> None:
    jq_launch = _jobqueue_launch()
    script = jq_launch.render_job_script("pbs", _spec(jq_launch, walltime="12:00:00"))
    for line in (
        "#PBS -N rfmdist-worker",
        "#PBS -q compute",
        "#PBS -A proj42",
        "#PBS -l select=1:ncpus=16:mem=64GB",
        "#PBS -l walltime=12:00:00",
    ):
        assert line in script.splitlines(), (line, script)
    worker = _worker_line(script)
    assert "-m distributed.cli.dask_worker" in worker
    assert "--nthreads 16" in worker
    _assert_blas_before_worker(script, jq_launch)


def test_pbs_gpu_job_script() -> None:
    jq_launch = _jobqueue_launch()
    script = jq_launch.render_job_script("pbs", _spec(jq_launch, gpus_per_node=2))
    assert "#PBS -l select=1:ncpus=16:ngpus=2:mem=64GB" in script.splitlines()
    worker = _worker_line(script)
    assert "-m dask_cuda.cli " in worker
    assert "--nthreads 8" in worker


def test_pbs_resource_spec_override_and_extras() -> None:
    jq_launch = _jobqueue_launch()
    spec = _spec(
        jq_launch,
        resource_spec="nodes=1:ppn=16:gpus=1",
        gpus_per_node=1,
        job_extra_directives=("-m abe",),
        job_script_prologue=("module load cuda/12",),
        blas_threads=2,
    )
    script = jq_launch.render_job_script("pbs", spec)
    assert "#PBS -l nodes=1:ppn=16:gpus=1" in script.splitlines()
    assert "#PBS -m abe" in script.splitlines()
    assert "module load cuda/12" in script
    assert "export OMP_NUM_THREADS=2" in script


@pytest.mark.parametrize(
    ("system", "queue_option", "expected"),
    [
        ("slurm", "--partition", ("#SBATCH -p gpu", "#SBATCH -t 01:30:00", "#SBATCH --gres=gpu:2")),
        ("pbs", "--queue", ("#PBS -q gpu", "#PBS -l walltime=01:30:00", ":ngpus=2:")),
    ],
)
def test_launcher_cli_prints_job_script(
    caplog: pytest.LogCaptureFixture, system: str, queue_option: str, expected: tuple[str, ...]
) -> None:
    jq_launch = _jobqueue_launch()
    argv = [
        system, queue_option, "gpu", "--account", "proj42", "--walltime", "01:30:00",
        "--cores", "8", "--memory", "32GiB", "--jobs", "2", "--gpus-per-node", "2",
        "--print-job-script",
    ]  # fmt: skip
    with caplog.at_level("INFO"):
        assert jq_launch.main(argv) == 0
    text = caplog.text
    assert all(line in text for line in expected), text
    assert "-m dask_cuda.cli" in text


@pytest.mark.parametrize("system", ["slurm", "pbs"])
def test_launcher_script_help(system: str) -> None:
    _require("dask_jobqueue", "dask-jobqueue")
    out = subprocess.run(
        [sys.executable, str(JOBQUEUE_LAUNCHER), system, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "--print-job-script" in out and "--gpus-per-node" in out


@pytest.mark.parametrize(
    ("system", "overrides", "needle"),
    [
        ("slurm", {"walltime": "four hours"}, "walltime"),
        ("pbs", {"walltime": "1-00:00:00"}, "walltime"),
        ("slurm", {"memory": "lots"}, "memory"),
        ("slurm", {"cores": 2, "gpus_per_node": 4}, "core per GPU"),
        ("slurm", {"jobs": 0}, "jobs"),
    ],
)
def test_bad_job_spec_errors(system: str, overrides: dict[str, Any], needle: str) -> None:
    jq_launch = _jobqueue_launch()
    with pytest.raises(ValueError, match=needle) as info:
        jq_launch.render_job_script(system, _spec(jq_launch, **overrides))
    message = str(info.value)
    assert "expected" in message and "found" in message and "fix" in message


def test_missing_jobqueue_message(monkeypatch: pytest.MonkeyPatch) -> None:
    jq_launch = _jobqueue_launch()
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(ImportError, match="pip install dask-jobqueue"):
        jq_launch.render_job_script("slurm", _spec(jq_launch))


def test_fit_argument_passthrough() -> None:
    from rfmdist_cluster import fitcmd

    launcher, fit = fitcmd.split_launcher_argv(["--cores", "4", "--", "--train", "a", "--out", "m"])
    assert launcher == ["--cores", "4"] and fit == ["--train", "a", "--out", "m"]
    fitcmd.validate_fit_argv(fit)
    with pytest.raises(fitcmd.FitArgumentError, match="missing"):
        fitcmd.validate_fit_argv(["--train", "a"])
    with pytest.raises(fitcmd.FitArgumentError, match="--scheduler"):
        fitcmd.validate_fit_argv([*fit, "--scheduler=tcp://x:8786"])
    command = fitcmd.build_fit_command("tcp://h:8786", [*fit, "--resume"], gpus=True)
    assert command[:4] == ["rfmdist", "fit", "--scheduler", "tcp://h:8786"]
    assert command.count("--gpus") == 1 and "--resume" in command
    again = fitcmd.build_fit_command("tcp://h:8786", [*fit, "--gpus"], gpus=True)
    assert again.count("--gpus") == 1


# --------------------------------------------------------------------------- sbatch


def test_sbatch_script_syntax_and_plumbing() -> None:
    bash = shutil.which("bash")
    assert bash is not None, "expected bash on PATH to check the sbatch script"
    subprocess.run([bash, "-n", str(SBATCH)], check=True, timeout=30)
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash")
    assert "#SBATCH --requeue" in text
    assert 'dask scheduler --scheduler-file "$SCHEDULER_FILE"' in text
    assert "srun " in text
    assert 'dask worker --scheduler-file "$SCHEDULER_FILE"' in text
    assert 'dask cuda worker --scheduler-file "$SCHEDULER_FILE"' in text
    assert 'rfmdist fit --scheduler-file "$SCHEDULER_FILE" --resume' in text
    assert "export OMP_NUM_THREADS=1" in text


def test_sbatch_rejects_overwrite(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, str(SBATCH), "--train", "a", "--out", "m.zarr", "--overwrite"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--overwrite" in done.stderr and "fix" in done.stderr


# --------------------------------------------------------------------------- Kubernetes


def _manifests(yaml_mod: ModuleType) -> dict[str, dict[str, Any]]:
    files = sorted(K8S.glob("*.yaml"))
    assert files, f"expected YAML manifests in {K8S}"
    return {path.name: yaml_mod.safe_load(path.read_text()) for path in files}


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec["containers"]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "DaskCluster":
        return doc["spec"]
    return doc["spec"]["cluster"]["spec"]


def _check_dask_cluster_spec(spec: dict[str, Any], name: str, *, gpu: bool) -> None:
    worker = spec["worker"]
    assert isinstance(worker["replicas"], int) and worker["replicas"] >= 1
    (container,) = _containers(worker["spec"])
    assert container["image"] == IMAGE
    args = container["args"]
    expected = ["dask", "cuda", "worker"] if gpu else ["dask", "worker"]
    assert args[: len(expected)] == expected
    assert "$(DASK_WORKER_NAME)" in args
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
        assert resources[kind].get("nvidia.com/gpu") == (1 if gpu else None)
    if not gpu:
        assert args[args.index("--nthreads") + 1] == str(resources["limits"]["cpu"])
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["OMP_NUM_THREADS"] == "1"
    (scheduler,) = _containers(spec["scheduler"]["spec"])
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert scheduler["image"] == IMAGE
    selector = spec["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == name  # service must find its scheduler pod
    assert {p["port"] for p in spec["scheduler"]["service"]["ports"]} >= {8786}


def test_manifests_parse_and_have_kinds() -> None:
    yaml_mod = _yaml()
    docs = _manifests(yaml_mod)
    kinds = {name: (doc["apiVersion"], doc["kind"]) for name, doc in docs.items()}
    assert kinds["daskcluster-cpu.yaml"] == ("kubernetes.dask.org/v1", "DaskCluster")
    assert kinds["daskcluster-gpu.yaml"] == ("kubernetes.dask.org/v1", "DaskCluster")
    assert kinds["daskjob-fit.yaml"] == ("kubernetes.dask.org/v1", "DaskJob")
    assert kinds["daskjob-fit-gpu.yaml"] == ("kubernetes.dask.org/v1", "DaskJob")
    assert kinds["pvc.yaml"] == ("v1", "PersistentVolumeClaim")
    for name, doc in docs.items():
        assert doc["metadata"]["name"], name


@pytest.mark.parametrize(
    ("filename", "gpu"),
    [
        ("daskcluster-cpu.yaml", False),
        ("daskcluster-gpu.yaml", True),
        ("daskjob-fit.yaml", False),
        ("daskjob-fit-gpu.yaml", True),
    ],
)
def test_dask_cluster_specs(filename: str, gpu: bool) -> None:
    yaml_mod = _yaml()
    doc = _manifests(yaml_mod)[filename]
    _check_dask_cluster_spec(_cluster_spec(doc), doc["metadata"]["name"], gpu=gpu)


@pytest.mark.parametrize(
    ("filename", "gpu"), [("daskjob-fit.yaml", False), ("daskjob-fit-gpu.yaml", True)]
)
def test_daskjob_runs_rfmdist_fit(filename: str, gpu: bool) -> None:
    yaml_mod = _yaml()
    job = _manifests(yaml_mod)[filename]["spec"]["job"]["spec"]
    assert job["restartPolicy"] in ("OnFailure", "Never")  # a bare pod; never "Always"
    (container,) = _containers(job)
    assert container["image"] == IMAGE
    args = container["args"]
    assert args[:2] == ["rfmdist", "fit"]
    assert args[args.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"
    assert {"--train", "--out", "--resume"} <= set(args)
    assert ("--gpus" in args) is gpu


def test_volumes_reference_the_pvc() -> None:
    yaml_mod = _yaml()
    docs = _manifests(yaml_mod)
    claim = docs["pvc.yaml"]["metadata"]["name"]

    def claims(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["claimName"]] if "claimName" in node else []
            return found + [c for value in node.values() for c in claims(value)]
        if isinstance(node, list):
            return [c for item in node for c in claims(item)]
        return []

    used = {c for name, doc in docs.items() if name != "pvc.yaml" for c in claims(doc)}
    assert used == {claim}


def test_plain_job_targets_existing_cluster() -> None:
    yaml_mod = _yaml()
    docs = _manifests(yaml_mod)
    job = docs["fit-job-on-daskcluster.yaml"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    (container,) = _containers(job["spec"]["template"]["spec"])
    args = container["args"]
    assert args[:2] == ["rfmdist", "fit"] and "--resume" in args
    cluster_name = docs["daskcluster-cpu.yaml"]["metadata"]["name"]
    assert args[args.index("--scheduler") + 1] == f"tcp://{cluster_name}-scheduler:8786"


# --------------------------------------------------------------------------- local GPU


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", [0, 1]),
        ("", []),
        ("3", [3]),
        (" 2 , 0 ", [2, 0]),
        ("GPU-9baca7f5-0f2f-01ac-6b05-8da14d6e9005", ["GPU-9baca7f5-0f2f-01ac-6b05-8da14d6e9005"]),
    ],
)
def test_devices_from_cuda_visible_devices(
    local_gpu: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str, expected: list[Any]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)

    def no_count() -> int:
        raise AssertionError("the GPU count must not be queried when the variable is set")

    assert local_gpu.devices_from_environment(device_count=no_count) == expected


def test_devices_unset_uses_device_count(
    local_gpu: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_gpu.devices_from_environment(device_count=lambda: 3) == [0, 1, 2]
    assert local_gpu.devices_from_environment(device_count=lambda: 0) == []
    # --devices overrides the environment
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert local_gpu.devices_from_environment("1", device_count=lambda: 8) == [1]


@pytest.mark.parametrize("value", ["0,x", "0,0"])
def test_bad_device_values(local_gpu: ModuleType, value: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        local_gpu.visible_devices(value, device_count=lambda: 2)
    assert "fix" in str(info.value)


def test_cluster_kwargs_one_worker_per_gpu(local_gpu: ModuleType) -> None:
    kwargs = local_gpu.cluster_kwargs([0, 2])
    assert kwargs["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert kwargs["n_workers"] == 2
    assert kwargs["rmm_pool_size"] is None  # RMM pool off by default
    assert kwargs["rmm_managed_memory"] is False  # never managed memory
    with pytest.raises(RuntimeError, match="expected at least one visible GPU"):
        local_gpu.cluster_kwargs([])


def test_missing_dask_cuda_message(
    local_gpu: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    with pytest.raises(ImportError) as info:
        local_gpu.require_dask_cuda()
    message = str(info.value)
    assert "expected the dask-cuda package" in message and "found" in message
    assert "pip install 'rfmdist[cuda12]' (or 'rfmdist[cuda13]' on CUDA 13)" in message
    with pytest.raises(SystemExit) as exit_info:
        local_gpu.main(["--", "--train", "a.parquet", "--out", "m.zarr"])
    assert exit_info.value.code == 2
    assert (
        "pip install 'rfmdist[cuda12]' (or 'rfmdist[cuda13]' on CUDA 13)" in capsys.readouterr().err
    )


def test_every_recipe_has_a_readme() -> None:
    for folder in ("", "slurm", "pbs", "kubernetes", "local-gpu", "plain"):
        readme = CLUSTER / folder / "README.md"
        assert readme.is_file(), f"expected {readme}"
