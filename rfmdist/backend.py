"""Array namespaces: the only module of rfmdist that imports CuPy.

Every other module asks :func:`get_namespace` for the namespace of its inputs and writes the same code
for NumPy and CuPy arrays. CuPy imports on machines without a GPU but fails at the first allocation, so
:func:`gpu_available` checks that an allocation succeeds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from rfmdist.threads import single_threaded_blas

logger = logging.getLogger(__name__)


@functools.cache
def _cupy() -> ModuleType | None:
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def cupy_module() -> ModuleType:
    """Return the CuPy module, or raise an ImportError that says how to install it."""
    cupy = _cupy()
    if cupy is None:
        raise ImportError(
            "GPU arrays need CuPy, which is not installed. Install it for the machine's CUDA "
            "version (nvidia-smi shows it): pip install 'rfmdist[cuda12]' or 'rfmdist[cuda13]'; "
            "or use device='cpu'."
        )
    return cupy


def is_cupy_array(x: Any) -> bool:
    """True if ``x`` is a CuPy ndarray (never imports CuPy when it is not loaded)."""
    cupy = _cupy()
    return cupy is not None and isinstance(x, cupy.ndarray)


def get_namespace(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any of ``arrays`` is a CuPy array, else ``numpy``.

    Mixing is refused: a NumPy array beside a CuPy one is almost always a bug that would cost a silent
    device-to-host copy.
    """
    kinds = {is_cupy_array(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if len(kinds) > 1:
        raise TypeError(
            "Expected all arrays on one device, found a mix of NumPy and CuPy arrays; "
            "move them with rfmdist.backend.to_numpy or cupy.asarray first."
        )
    return cupy_module() if kinds == {True} else np


def to_numpy(x: Any) -> np.ndarray:
    """Bring an array home: CuPy arrays are copied to the host, others go through ``np.asarray``."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


@functools.cache
def gpu_available() -> bool:
    """True if CuPy is installed and can allocate on at least one CUDA device."""
    cupy = _cupy()
    if cupy is None:
        return False
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        cupy.zeros(1)
    except Exception as err:  # CUDA raises several unrelated types when no driver/device exists
        logger.debug("CuPy is installed but cannot allocate on a GPU: %s", err)
        return False
    return True


def cholesky_lower(a: Any, *, overwrite: bool = False) -> Any:
    """Lower Cholesky factor ``L`` with ``L L^T = a``.

    On NumPy the factorisation runs on the BLAS threads in force (measured on 2 cores: 1.7x faster
    with both than with one; :func:`threadpoolctl.threadpool_limits` restricts it).

    Parameters
    ----------
    a : array, shape (n, n)
        Symmetric positive definite.
    overwrite : bool, default False
        Factor a C-ordered NumPy ``a`` in place (no ``n x n`` copy): its lower triangle becomes
        ``L``, its strict upper triangle is left as it was (the returned array is ``a`` itself, with
        that upper triangle; read it as lower triangular). Without it, or on CuPy, ``a`` is intact.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``a`` is not numerically positive definite (also for CuPy, which reports it as NaNs).
        With ``overwrite`` the lower triangle of ``a`` is then partly overwritten.
    """
    xp = get_namespace(a)
    if xp is np:
        import scipy.linalg

        if overwrite and a.flags.c_contiguous:
            # a is symmetric, so its transpose is the same matrix in Fortran order: LAPACK's upper
            # factor of a.T, written in place, is the lower factor of a in a's own memory.
            (potrf,) = scipy.linalg.get_lapack_funcs(("potrf",), (a,))
            _, info = potrf(a.T, lower=0, clean=0, overwrite_a=1)
            if info != 0:
                raise np.linalg.LinAlgError(
                    f"Cholesky factorisation failed (LAPACK potrf info={info}): matrix not "
                    "positive definite"
                )
            return a
        return scipy.linalg.cholesky(a, lower=True, check_finite=False)
    low = xp.linalg.cholesky(a)
    if not bool(xp.isfinite(low).all()):
        raise np.linalg.LinAlgError("Cholesky factorisation failed: matrix not positive definite")
    return low


def lower_gram(lower: Any) -> Any:
    """``L^T L`` (symmetric, full) of a lower-triangular ``L``, NumPy or CuPy.

    On NumPy, LAPACK's ``lauum``: m^3 / 3 flops against 2 m^3 for a general product (at m = 4,000 on
    2 cores: 0.48 s against 1.04 s for ``L.T @ L``).

    Parameters
    ----------
    lower : array, shape (m, m)
        Lower triangular (the strict upper triangle is ignored on NumPy and must be zero on CuPy).
    """
    xp = get_namespace(lower)
    if xp is not np:
        return lower.T @ lower
    import scipy.linalg

    (lauum,) = scipy.linalg.get_lapack_funcs(("lauum",), (lower,))
    product, info = lauum(lower, lower=1)
    if info != 0:  # pragma: no cover - lauum only fails on invalid arguments
        raise np.linalg.LinAlgError(f"LAPACK lauum failed with info={info}")
    product = np.tril(product)
    product += np.tril(product, -1).T
    return product


def solve_triangular(a: Any, b: Any, *, lower: bool, trans: bool = False) -> Any:
    """Solve ``a x = b`` (or ``a^T x = b`` with ``trans``) for a triangular ``a``, NumPy or CuPy."""
    xp = get_namespace(a, b)
    if xp is np:
        import scipy.linalg

        with single_threaded_blas():
            return scipy.linalg.solve_triangular(
                a, b, lower=lower, trans="T" if trans else "N", check_finite=False
            )
    from cupyx.scipy.linalg import solve_triangular as cupy_solve_triangular

    return cupy_solve_triangular(a, b, lower=lower, trans="T" if trans else "N")


# --- devices ---------------------------------------------------------------------------------------

DEVICES: tuple[str, ...] = ("cpu", "gpu", "auto")


def resolve_device(device: str) -> str:
    """Resolve an estimator's ``device`` to ``'cpu'`` or ``'gpu'``.

    Parameters
    ----------
    device : {'cpu', 'gpu', 'auto'}
        'auto' is 'gpu' exactly when :func:`gpu_available` (CuPy installed and able to allocate).

    Raises
    ------
    ImportError
        ``device='gpu'`` without CuPy (the message gives the install command).
    RuntimeError
        ``device='gpu'`` with CuPy installed but no CUDA device it can allocate on.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device != "gpu":
        raise ValueError(f"Expected device in {DEVICES}, found {device!r}; pass device='cpu'.")
    cupy_module()
    if not gpu_available():
        raise RuntimeError(
            "Expected a CUDA GPU that CuPy can allocate on for device='gpu', found none (no "
            "device, no driver, or CUDA_VISIBLE_DEVICES hides them; see nvidia-smi); use "
            "device='auto' to fall back to the CPU, or device='cpu'."
        )
    return "gpu"


def working_namespace(device: str) -> ModuleType:
    """The array namespace of ``device``: CuPy for 'gpu', NumPy for 'cpu'."""
    return cupy_module() if device == "gpu" else np


def synchronize(xp: ModuleType) -> None:
    """Wait for the device's queued work (a no-op for NumPy): for timing GPU code."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def to_device(x: Any, dtype: Any = None) -> Any:
    """Copy a host array (or a CuPy array, to another dtype) to the current GPU: ``cupy.asarray``."""
    return cupy_module().asarray(x, dtype=dtype)


def device_meta(dtype: Any, ndim: int = 2) -> Any:
    """An empty CuPy array of ``dtype``: the ``meta`` of Dask arrays with CuPy chunks."""
    return cupy_module().empty((0,) * ndim, dtype=dtype)


def free_device_bytes() -> int:
    """Bytes the current GPU can still give: free device memory plus what CuPy's pool holds unused."""
    cupy = cupy_module()
    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free) + int(cupy.get_default_memory_pool().free_bytes())


#: The spacing of TF32 numbers at 1 (a 10-bit mantissa): the relative resolution of TF32 GEMMs.
TF32_EPSILON = 2.0**-10


def tf32_enabled() -> bool:
    """True when this process's CuPy float32 GEMMs use TF32 (:func:`set_tf32`); False without CuPy."""
    cupy = _cupy()
    if cupy is None:
        return False
    from cupy._core import _routines_linalg as linalg

    return bool(linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32)


def set_tf32(enabled: bool) -> bool | None:
    """Let CuPy's float32 GEMMs use TF32 tensor cores (or not); return the previous setting.

    TF32 rounds the GEMM inputs to a 10-bit mantissa (relative error ~5e-4 instead of float32's
    ~6e-8), which is much faster on Ampere and later GPUs. Sets CuPy's float32 compute type (what the
    ``CUPY_TF32=1`` environment variable selects at CuPy's first GEMM) for this process; returns None
    and does nothing where CuPy is not installed (a CPU worker).
    """
    cupy = _cupy()
    if cupy is None:
        return None
    from cupy._core import _routines_linalg as linalg

    previous = tf32_enabled()
    linalg.set_compute_type(
        np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
    )
    return previous


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Context in which this process's CuPy float32 GEMMs use TF32 (``enabled``) or full float32."""
    previous = set_tf32(enabled)
    try:
        yield
    finally:
        if previous is not None:
            set_tf32(previous)
