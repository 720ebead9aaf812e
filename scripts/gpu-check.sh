#!/usr/bin/env bash
# The GPU check in one command (< 10 minutes on one H100): install the carried wheels, run the GPU
# tests (pytest -m gpu, junit XML) and the GPU benchmark, leaving everything in the output folder.
#
# Usage (on the GPU machine, in the repository root, after scripts/build-gpu-wheels.sh ran where
# PyPI is reachable and .gpu-wheels/ was carried along):
#     scripts/gpu-check.sh [OUTDIR]            (OUTDIR defaults to $OUT, else gpu-check-out)
# Environment: PYTHON (default python3), WHEELS (default .gpu-wheels), BENCH_ARGS (extra arguments
# for benchmarks/gpu_bench.py, e.g. "--quick" or "--cpu-rows 50000").
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check-out}}"
python="${PYTHON:-python3}"
wheels="${WHEELS:-.gpu-wheels}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CUPY_TF32=0
log="$out/gpu-check.log"
status=0
{
    echo "== $(date -u +%FT%TZ) $(uname -m); $($python --version 2>&1)"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
    $python -c "import numpy, scipy, cupy; print('numpy', numpy.__version__, 'scipy', \
scipy.__version__, 'cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())"
    echo "== installing from $wheels"
    # The missing pieces (dask, distributed, zarr and their dependencies) from the wheel folder;
    # what the image has already (numpy, scipy, pandas, scikit-learn, cupy) is kept as it is.
    $python -m pip install --quiet --no-index --find-links "$wheels" \
        "dask[array]" distributed zarr || status=1
    # rfmdist itself, editable; without build isolation (no index to fetch setuptools from), and
    # falling back to PYTHONPATH when the image's setuptools is too old for pyproject.toml.
    if ! $python -m pip install --quiet --no-index --find-links "$wheels" --no-deps \
        --no-build-isolation -e .; then
        echo "pip install -e . failed: using PYTHONPATH=$PWD"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    $python -c "import rfmdist, dask, distributed, zarr; print('rfmdist from', rfmdist.__file__, \
'dask', dask.__version__, 'zarr', zarr.__version__)" || status=1
    echo "== pytest -m gpu"
    timeout 300 $python -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu.py \
        --junitxml="$out/gpu-tests.xml" -s || status=1
    echo "== benchmarks/gpu_bench.py ${BENCH_ARGS:-}"
    # shellcheck disable=SC2086
    timeout 300 $python benchmarks/gpu_bench.py --out "$out" ${BENCH_ARGS:-} || status=1
    echo "== done: status $status"
    exit "$status"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
