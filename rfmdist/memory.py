"""Memory budgets of a fit, from the memory the machine actually has.

Every budget is *available memory x a safety fraction*, read when it is needed (a fit that starts
when the machine is busy gets less), with environment variables as overrides:

- host (the process that runs the solver, and in-memory passes): the memory available now (psutil's
  ``available``, capped by the limit of the control group a container runs in), times
  ``RFMDIST_MEMORY_FRACTION`` (:data:`DEFAULT_HOST_FRACTION`, 0.5: the other half is left to the
  data, the fit's small state, the rest of the caller's program and whatever else runs there);
- Dask workers (a kernel persisted on the cluster): per worker, its memory limit (or, without one,
  the host's available memory) minus what its process already holds, times the same fraction, for
  the workers together;
- a GPU: its free memory plus what CuPy's pool holds unused, times ``RFMDIST_GPU_MEMORY_FRACTION``
  (0.5).

``RFMDIST_KERNEL_CACHE_BYTES`` caps the bytes of a cached ``n x m`` kernel wherever it is kept.

Kernel blocks: 8 MiB per thread of a CPU pass (they stay near the caches; far below any budget;
the fused passes compute each block in tiles of half a core's L2 cache, :func:`tile_bytes`),
and on a GPU 1/16 of its budget (at most 1 GiB): the gradient of a block holds up to
:data:`BLOCK_TEMPORARIES` block-sized temporaries, and the rest covers the solver's small state. A
cached kernel on a GPU may use what is left after :data:`BLOCK_TEMPORARIES` blocks.

Only plain device allocations are made (CuPy's default pool over ``cudaMalloc``), never managed memory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from rfmdist import backend
from rfmdist.dask_cluster import worker_info

CPU_BLOCK_BYTES = 8 * 2**20
# A core's L2 cache where the OS does not say (the fused CPU passes' tiles take half of it).
DEFAULT_L2_BYTES = 2**21
L2_CACHE_FILE = "/sys/devices/system/cpu/cpu0/cache/index2/size"
GPU_MAX_BLOCK_BYTES = 2**30
# Block-sized arrays alive at once in the worst pass (the Laplace gradient of a block).
BLOCK_TEMPORARIES = 8
DEFAULT_GPU_FRACTION = 0.5
DEFAULT_HOST_FRACTION = 0.5
# Control-group files holding a container's memory limit and usage (cgroup v2, then v1).
CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
)


def device_of(like: Any) -> str:
    """``'gpu'`` for a CuPy array (or a Dask array of CuPy chunks), else ``'cpu'``."""
    meta = getattr(like, "_meta", like)
    return "gpu" if backend.is_cupy_array(meta) else "cpu"


@functools.cache
def l2_cache_bytes() -> int:
    """A core's L2 cache in bytes, from ``/sys`` (Linux), else :data:`DEFAULT_L2_BYTES`."""
    try:
        text = Path(L2_CACHE_FILE).read_text().strip().upper()
    except OSError:
        return DEFAULT_L2_BYTES
    units = {"K": 2**10, "M": 2**20}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError):
        return DEFAULT_L2_BYTES


def tile_bytes() -> int:
    """Bytes of one tile of a fused CPU pass (:mod:`rfmdist.fused`): half a core's L2 cache, so that
    the tile and the GEMM's packed operands stay in it."""
    return max(2**16, l2_cache_bytes() // 2)


def _fraction(name: str, default: float) -> float:
    text = os.environ.get(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"Expected {name} in (0, 1], found {text!r}; e.g. {default}.")
    return value


def gpu_fraction() -> float:
    """Fraction of the free device memory rfmdist may use (env ``RFMDIST_GPU_MEMORY_FRACTION``)."""
    return _fraction("RFMDIST_GPU_MEMORY_FRACTION", DEFAULT_GPU_FRACTION)


def host_fraction() -> float:
    """Fraction of the available host memory rfmdist may use (env ``RFMDIST_MEMORY_FRACTION``)."""
    return _fraction("RFMDIST_MEMORY_FRACTION", DEFAULT_HOST_FRACTION)


def cache_cap_bytes() -> int | None:
    """The explicit cap on a cached kernel (env ``RFMDIST_KERNEL_CACHE_BYTES``), or None."""
    text = os.environ.get("RFMDIST_KERNEL_CACHE_BYTES")
    if text is None:
        return None
    try:
        value = int(float(text))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"Expected RFMDIST_KERNEL_CACHE_BYTES to be a number of bytes >= 0, found {text!r}; "
            "e.g. 4e9, or unset it to follow the available memory."
        )
    return value


def _cgroup_room() -> int | None:
    """Bytes left under this container's memory limit (None when there is no limit)."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:
            return None
        return max(0, int(limit_text) - usage)
    return None


def host_available_bytes() -> int:
    """Memory this process could still get now: psutil's ``available``, capped by the cgroup limit."""
    import psutil

    available = int(psutil.virtual_memory().available)
    room = _cgroup_room()
    return available if room is None else min(available, room)


def available_bytes(device: str) -> int:
    """Bytes a fit may use on ``device`` now: what is available there times its safety fraction.

    Parameters
    ----------
    device : {'cpu', 'gpu'}
        'gpu': the current device's free memory (with CuPy's unused pool) times
        :func:`gpu_fraction`; 'cpu': :func:`host_available_bytes` times :func:`host_fraction`.
    """
    if device == "gpu":
        return int(backend.free_device_bytes() * gpu_fraction())
    return int(host_available_bytes() * host_fraction())


def block_bytes(device: str) -> int:
    """Target bytes of one ``b x m`` kernel block on ``device``.

    Examples
    --------
    >>> block_bytes("cpu") == CPU_BLOCK_BYTES
    True
    """
    if device != "gpu":
        return CPU_BLOCK_BYTES
    return int(min(GPU_MAX_BLOCK_BYTES, available_bytes("gpu") // (2 * BLOCK_TEMPORARIES)))


def _capped(room: float) -> int:
    cap = cache_cap_bytes()
    return max(0, int(room if cap is None else min(room, cap)))


def cache_bytes(device: str) -> int:
    """Bytes a cached ``n x m`` kernel may take in this process on ``device`` (0: do not cache).

    On the CPU :func:`available_bytes`; on a GPU what is left of it once :data:`BLOCK_TEMPORARIES`
    blocks are set aside. Both capped by ``RFMDIST_KERNEL_CACHE_BYTES`` when that is set.
    """
    available = available_bytes(device)
    if device != "gpu":
        return _capped(available)
    blocks = BLOCK_TEMPORARIES * min(GPU_MAX_BLOCK_BYTES, available // (2 * BLOCK_TEMPORARIES))
    return _capped(available - blocks)


def workers_cache_bytes(client: Any) -> int:
    """Bytes a kernel persisted on the workers of ``client`` may take, all workers together.

    Each worker may hold ``(its memory limit - its process's memory) x`` :func:`host_fraction`
    (without a limit: the host's available memory); the kernel's row chunks spread over the workers,
    so the total is what the most constrained worker can hold times the number of workers. Capped by
    ``RFMDIST_KERNEL_CACHE_BYTES``.

    Parameters
    ----------
    client : distributed.Client
    """
    workers = worker_info(client)
    if not workers:
        return 0
    rooms = []
    for info in workers.values():
        limit = int(info.get("memory_limit") or 0)
        used = int(info.get("metrics", {}).get("memory", 0))
        rooms.append((limit - used) if limit else host_available_bytes())
    return _capped(max(0, min(rooms)) * host_fraction() * len(rooms))


def worker_bytes(client: Any) -> int:
    """Bytes one task of ``client``'s most constrained worker may hold for ``m x m`` partial sums:
    its room (memory limit minus what its process holds; without a limit the host's available
    memory) times :func:`host_fraction`, halved (a persisted kernel may take the other half), per
    thread.

    Parameters
    ----------
    client : distributed.Client
    """
    workers = worker_info(client)
    rooms = []
    for info in workers.values():
        limit = int(info.get("memory_limit") or 0)
        used = int(info.get("metrics", {}).get("memory", 0))
        room = (limit - used) if limit else host_available_bytes()
        rooms.append(max(0, room) / max(1, int(info.get("nthreads", 1))))
    return int(min(rooms, default=0) * host_fraction() / 2)


class Workspace:
    """Large arrays that a fit reuses from round to round instead of allocating them anew.

    Every round of an exact fit needs the same ``n x n`` arrays (the kernel, a factor). A fresh one
    is paid in page faults as it is first written, and dearly when two threads fault at once:
    measured here, filling a new 20,000^2 float64 kernel on two threads took 5.9 s, against 1.9 s
    for the same kernel written into the previous round's array, and 0.8 s to first zero the new
    array on one thread (which :meth:`array` therefore does for new host arrays). Arrays are keyed
    by name; asking again for a name with the same shape, dtype and namespace returns the same
    array (its contents are whatever was written last).

    Examples
    --------
    >>> space = Workspace()
    >>> a = space.array("kernel", (3, 3), np.float64, np)
    >>> space.array("kernel", (3, 3), np.float64, np) is a, space.nbytes
    (True, 72)
    """

    def __init__(self) -> None:
        self._arrays: dict[str, Any] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: Any, xp: Any) -> Any:
        """An array of ``shape`` and ``dtype`` in namespace ``xp``, reused when it matches."""
        held = self._arrays.get(name)
        dtype = np.dtype(dtype)
        if (
            held is not None
            and held.shape == tuple(shape)
            and held.dtype == dtype
            and backend.get_namespace(held) is xp
        ):
            return held
        self._arrays.pop(name, None)  # let the old one go before allocating the new one
        array = xp.empty(shape, dtype=dtype)
        if xp is np:
            array.fill(0)  # fault the pages in on one thread, before the passes' threads write
        self._arrays[name] = array
        return array

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(int(a.nbytes) for a in self._arrays.values())

    def release(self) -> None:
        """Drop every array."""
        self._arrays.clear()
