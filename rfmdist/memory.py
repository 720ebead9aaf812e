"""Memory budgets of the kernel passes: bytes per kernel block and for a cached ``n x m`` kernel.

On the CPU the budgets are fixed (and configurable): 8 MiB kernel blocks per thread of a pass, which
stay near the caches, and ``RFMDIST_KERNEL_CACHE_BYTES`` (2 GiB by default) for a cached kernel. On a
GPU they follow the device's free memory, so that a fit never asks for more device memory than there
is:

- available = (free device memory + CuPy's unused pool) x ``RFMDIST_GPU_MEMORY_FRACTION`` (0.5);
- a kernel block gets at most 1/16 of that (and at most 1 GiB): the gradient of a block holds up to
  :data:`BLOCK_TEMPORARIES` block-sized temporaries, and the rest covers the solver's small state;
- a cached kernel may use what is left after :data:`BLOCK_TEMPORARIES` blocks (capped by
  ``RFMDIST_KERNEL_CACHE_BYTES`` when that is set).

Only plain device allocations are made (CuPy's default pool over ``cudaMalloc``), never managed memory.
"""

from __future__ import annotations

import os
from typing import Any

from rfmdist import backend

CPU_BLOCK_BYTES = 8 * 2**20
GPU_MAX_BLOCK_BYTES = 2**30
# Block-sized arrays alive at once in the worst pass (the Laplace gradient of a block).
BLOCK_TEMPORARIES = 8
DEFAULT_GPU_FRACTION = 0.5
DEFAULT_CACHE_BYTES = 2 * 2**30


def device_of(like: Any) -> str:
    """``'gpu'`` for a CuPy array (or a Dask array of CuPy chunks), else ``'cpu'``."""
    meta = getattr(like, "_meta", like)
    return "gpu" if backend.is_cupy_array(meta) else "cpu"


def gpu_fraction() -> float:
    """Fraction of the free device memory rfmdist may use (env ``RFMDIST_GPU_MEMORY_FRACTION``)."""
    text = os.environ.get("RFMDIST_GPU_MEMORY_FRACTION", str(DEFAULT_GPU_FRACTION))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(
            f"Expected RFMDIST_GPU_MEMORY_FRACTION in (0, 1], found {text!r}; e.g. 0.5."
        )
    return value


def host_cache_bytes() -> int:
    """Host memory for a cached kernel (env ``RFMDIST_KERNEL_CACHE_BYTES``, 2 GiB by default)."""
    return int(float(os.environ.get("RFMDIST_KERNEL_CACHE_BYTES", DEFAULT_CACHE_BYTES)))


def available_bytes(device: str) -> int:
    """Bytes the kernel passes may use on ``device``.

    Parameters
    ----------
    device : {'cpu', 'gpu'}
        On 'gpu': the current device's free memory (with CuPy's unused pool) times
        :func:`gpu_fraction`; on 'cpu': :func:`host_cache_bytes`.
    """
    if device == "gpu":
        return int(backend.free_device_bytes() * gpu_fraction())
    return host_cache_bytes()


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


def cache_bytes(device: str) -> int:
    """Bytes a cached ``n x m`` kernel may take on ``device`` (0: do not cache).

    On the CPU this is :func:`host_cache_bytes` as before; on a GPU what is left of
    :func:`available_bytes` once :data:`BLOCK_TEMPORARIES` blocks are set aside, capped by
    ``RFMDIST_KERNEL_CACHE_BYTES`` when that is set.
    """
    if device != "gpu":
        return host_cache_bytes()
    available = available_bytes("gpu")
    room = available - BLOCK_TEMPORARIES * min(
        GPU_MAX_BLOCK_BYTES, available // (2 * BLOCK_TEMPORARIES)
    )
    if "RFMDIST_KERNEL_CACHE_BYTES" in os.environ:
        room = min(room, host_cache_bytes())
    return max(0, int(room))
