#!/usr/bin/env bash
# Download, HERE (a machine with PyPI), the wheels that scripts/gpu-check.sh installs on a GPU machine
# that has no network: dask, distributed, zarr and their dependencies, for CPython 3.11 and 3.12 on
# x86-64 Linux (the device image's python3 was 3.12 when last read; 3.11 costs ~3 MiB more). Not 3.10:
# zarr 3, which rfmdist needs, requires Python >= 3.11.
# NumPy, SciPy, pandas, scikit-learn and CuPy are left out: the GPU image has them, and NumPy alone
# would add 16 MiB per Python version.
#
# Usage: scripts/build-gpu-wheels.sh [DEST]      (DEST defaults to .gpu-wheels, git-ignored)
# Then carry DEST to the device machine (the device tool's carry argument) and run scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.gpu-wheels}"
pip="${PIP:-python3 -m pip}"
# The versions this repository is tested with here (pin them so the wheels agree with each other).
packages=("dask[array]==2026.8.0" "distributed==2026.8.0" "zarr==3.1.6")
exclude='^(numpy|scipy|pandas|scikit_learn|cupy[-_a-z0-9]*)-'
mkdir -p "$dest"
for version in 3.11 3.12; do
    $pip download --quiet --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any \
        -d "$dest" "${packages[@]}"
done
for wheel in "$dest"/*.whl; do
    if basename "$wheel" | grep -Eiq "$exclude"; then
        rm -f "$wheel"
    fi
done
size=$(du -sm "$dest" | cut -f1)
echo "$(ls "$dest" | wc -l) wheels in $dest: ${size} MiB"
if [ "$size" -ge 60 ]; then
    echo "error: $dest is ${size} MiB; the device tool carries at most 64 MiB in all" >&2
    exit 1
fi
