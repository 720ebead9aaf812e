"""The kernel's dtype of a fit: the one asked for, or chosen for the device from its measured rates.

``dtype=None`` means float64 wherever float64 costs little more than float32, float32 where it costs
much more:

- on the CPU, float64: a CPU's float64 GEMM runs at half its float32 rate (measured on the 2-core
  reference machine: about 50 against 100 GFLOP/s), and float64 kernels never need the float32
  safeguards (:mod:`rfmdist.solvers.systems`); nothing is measured;
- on a GPU, float64 when its measured float64 GEMM rate is at least :data:`FLOAT64_RATE_SHARE` of its
  float32 rate (datacenter cards with float64 tensor cores or units: about 1 on H100/H200 and A100,
  0.5 on V100), else float32 (consumer cards: 1/32 to 1/64). The rates are those of the cost model's
  calibration (:func:`rfmdist.solvers.costs.gemm_rates`, measured once per process).

The choice and its reason go into the fit's log and every round's record (``history_[t]["dtype"]``,
``history_[t]["dtype_choice"]``); a resumed fit keeps the dtype of the run it continues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: dtype=None takes float64 on a GPU whose float64 GEMM rate is at least this share of its float32 rate.
FLOAT64_RATE_SHARE = 0.25


@dataclass(frozen=True)
class DtypeChoice:
    """The kernel dtype of a fit and why.

    Attributes
    ----------
    dtype : numpy.dtype
    reason : str
    """

    dtype: np.dtype
    reason: str


def choose_dtype(dtype: str | None, device: str) -> DtypeChoice:
    """The kernel dtype for the estimators' ``dtype`` parameter on ``device``.

    Parameters
    ----------
    dtype : {'float32', 'float64'} or None
    device : {'cpu', 'gpu'}

    Examples
    --------
    >>> choose_dtype("float32", "cpu").dtype, choose_dtype(None, "cpu").dtype
    (dtype('float32'), dtype('float64'))
    """
    if dtype is not None:
        return DtypeChoice(np.dtype(dtype), "as requested")
    if device != "gpu":
        return DtypeChoice(np.dtype(np.float64), "dtype=None on the CPU")
    from rfmdist.solvers.costs import gemm_rates
    from rfmdist.threads import blas_threads

    return dtype_for_rates(gemm_rates("gpu", blas_threads()))


def dtype_for_rates(rates: dict[str, float]) -> DtypeChoice:
    """The GPU rule of the module docstring for measured GEMM rates (flop/s by dtype name).

    Examples
    --------
    >>> dtype_for_rates({"float32": 51e12, "float64": 50e12}).dtype  # an H200
    dtype('float64')
    >>> dtype_for_rates({"float32": 80e12, "float64": 1.3e12}).dtype  # a consumer card
    dtype('float32')
    """
    share = rates["float64"] / rates["float32"]
    chosen = np.dtype(np.float64 if share >= FLOAT64_RATE_SHARE else np.float32)
    return DtypeChoice(
        chosen,
        f"dtype=None on a GPU whose float64 GEMM runs at {share:.2f} of its float32 rate "
        f"({rates['float64'] / 1e12:.1f} and {rates['float32'] / 1e12:.1f} TFLOP/s measured; "
        f"float64 from {FLOAT64_RATE_SHARE:g})",
    )
