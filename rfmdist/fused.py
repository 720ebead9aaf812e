"""Fused kernel passes: the distance GEMM, its elementwise tail and the product in one pass.

The reference path (:mod:`rfmdist.kernels`) writes a whole kernel block to memory as the distance
GEMM's output and then runs NumPy's ``maximum``, a row minimum, ``sqrt``, ``negative`` and ``exp`` over
it, one array operation (one pass over memory) at a time, before the pass's product reads it again.

On the CPU this module computes a block tile by tile instead (:func:`_tile_pass`), each tile about
half a core's L2 cache (:func:`rfmdist.memory.tile_bytes`):

1. the tile's distances by one BLAS GEMM called from compiled code (SciPy's BLAS, as Numba's own
   ``np.dot``; :func:`gemm`), into the cached tile;
2. per row, a vectorized test for pairs closer than the GEMM resolves (the near pairs of
   :func:`rfmdist.distances.augment_rows`), which are recomputed from their differences;
3. the clamp at zero, ``sqrt`` (Laplace), ``exp`` and for the AGOP's weights the division by the radius,
   in one vectorized loop;
4. the tile's part of the pass: its product with the pass's vectors (a loop for a few columns, BLAS for
   more), or its place in the kernel block when the block itself is wanted.

Its ``exp`` is a vectorizable polynomial (:func:`exp_neg`; NumPy's SIMD ``exp`` is no faster, and the C
library's, called per element, several times slower), accurate to 1 ulp (float64) and 2 ulp (float32).
Arguments below the dtype's normal range give exactly 0 where NumPy gives subnormal numbers.

Threads: nothing here starts a thread. The compiled functions release the GIL, so the blocked loop's
threads (:mod:`rfmdist.threads`, BLAS limited to one thread each) and the Dask workers' threads run them
side by side, each tile's GEMM on its calling thread: a pass uses exactly the cores it is given. The
functions are compiled on first use and cached on disk (``NUMBA_CACHE_DIR`` moves the cache).

On a GPU, :func:`kernel_tail` runs steps 2-3 after CuPy's GEMM: the near pairs as the reference path
finds them, then one elementwise kernel.

Both paths take their distances from :mod:`rfmdist.distances` (the distance GEMM's two sides, the
near-pair limits and their recomputation), and this module imports nothing of :mod:`rfmdist.kernels`:
its functions take a :class:`~rfmdist.distances.KernelCenters` (the kernel's name, bandwidth and
transformed centers; a :class:`~rfmdist.kernels.PreparedKernel` is one) and the rows, and
:mod:`rfmdist.kernels` calls them for its ``'fused'`` backend.
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic, overload
from numba.np import linalg as numba_linalg

from rfmdist import memory
from rfmdist.backend import cupy_module, is_cupy_array
from rfmdist.distances import (
    LAPLACE_GRADIENT_GUARD,
    KernelCenters,
    NearLimits,
    TransformedRows,
    augment_rows,
    recompute_near_pairs,
)

# Fast-math flags that keep each operation's rounding: no reassociation (which would undo the exact
# range reduction of exp), but contraction to FMA and no NaN/inf/signed-zero bookkeeping.
_ELEMENTWISE_FLAGS = {"nnan", "ninf", "nsz", "contract", "afn"}

_LOG2E = 1.4426950408889634
# ln 2 split so that k * hi is exact for every exponent k of the dtype's normal range.
_LN2_HI_64, _LN2_LO_64 = 0.6931471803691238, 1.9082149292705877e-10
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693145751953125), np.float32(1.428606765330187e-06)
# float32 constants (a float64 one would widen the loop to 8 lanes): log2(e), 1/2, 1, 0, the smallest
# normal exponent, and the argument below which exp is subnormal (flushed to 0).
_LOG2E_32, _HALF_32, _ONE_32, _ZERO_32 = (np.float32(v) for v in (_LOG2E, 0.5, 1.0, 0.0))
_K_MIN_32, _CUT_32 = np.float32(-126.0), np.float32(-87.0)
# e**r on |r| <= ln2 / 2, highest power first. float64: to a relative 1.3e-17, the degree-11
# interpolant at Chebyshev nodes; float32: Taylor to r**7 (5.6e-9).
_EXP64_POLYNOMIAL = (
    2.5112773160490253e-08,
    2.763266884405684e-07,
    2.7557230408923952e-06,
    2.480148536058251e-05,
    0.00019841269904973566,
    0.0013888888952488711,
    0.008333333333310228,
    0.04166666666648709,
    0.16666666666666705,
    0.5000000000000019,
    1.0,
    1.0,
)
_EXP32_POLYNOMIAL = tuple(np.float32(1.0 / np.prod(np.arange(1, k + 1))) for k in range(7, -1, -1))


@intrinsic
def _pow2(typingctx: Any, k: Any) -> Any:
    """``2**k`` for an integral float ``k`` in the dtype's normal exponent range (bit arithmetic)."""
    width, mantissa, bias = (64, 52, 1023) if k == types.float64 else (32, 23, 127)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        integer = ir.IntType(width)
        exponent = builder.add(builder.fptosi(args[0], integer), ir.Constant(integer, bias))
        bits = builder.shl(exponent, ir.Constant(integer, mantissa))
        return builder.bitcast(bits, context.get_value_type(k))

    return k(k), codegen


@numba.njit(inline="always")
def _horner(r: Any, coefficients: Any) -> Any:
    """``sum_k coefficients[k] r**(n - k)`` by Horner's rule (unrolled: the tuple's length is known
    when compiling)."""
    p = coefficients[0]
    for c in coefficients[1:]:
        p = p * r + c
    return p


@numba.njit(fastmath=_ELEMENTWISE_FLAGS, cache=True)
def _exp_neg64(x: float) -> float:
    """``exp(x)`` for ``x <= 0`` in float64: ``2**k e**r`` with ``|r| <= ln2 / 2`` and ``e**r`` by
    :data:`_EXP64_POLYNOMIAL`."""
    k = max(np.floor(x * _LOG2E + 0.5), -1022.0)
    r = (x - k * _LN2_HI_64) - k * _LN2_LO_64
    p = _horner(r, _EXP64_POLYNOMIAL)
    return p * _pow2(k) if x > -708.0 else 0.0


@numba.njit(fastmath=_ELEMENTWISE_FLAGS, cache=True)
def _exp_neg32(x: np.float32) -> np.float32:
    """``exp(x)`` for ``x <= 0`` in float32 (every constant float32, so that the loop keeps 16 lanes)."""
    k = max(np.floor(x * _LOG2E_32 + _HALF_32), _K_MIN_32)
    r = (x - k * _LN2_HI_32) - k * _LN2_LO_32
    p = _horner(r, _EXP32_POLYNOMIAL)
    return p * _pow2(k) if x > _CUT_32 else _ZERO_32


def exp_neg(x):  # type: ignore[no-untyped-def]  # pragma: no cover - the overload runs instead
    """``exp(x)`` for ``x <= 0`` in the dtype of ``x``; callable from compiled code only (the
    annotations are left off: Numba matches them against the overload's)."""
    raise NotImplementedError("exp_neg is for Numba-compiled code; use numpy.exp elsewhere")


@overload(exp_neg)
def _exp_neg_overload(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: _exp_neg32(x)
    return lambda x: _exp_neg64(x)


# Entries of a row tested together for near pairs before they are looked at one by one.
NEAR_SCAN = 64


@numba.njit(nogil=True, cache=True)
def _has_near(row: Any, row_limit: Any, center_limits: Any) -> bool:
    """True if a distance of the row is at most its pair's limit
    (:class:`~rfmdist.distances.NearLimits`; before the clamp, so negative ones count); a count,
    which vectorizes where a floating-point minimum does not."""
    count = 0
    for j in range(row.shape[0]):
        if row[j] <= row_limit + center_limits[j]:
            count += 1
    return count > 0


@numba.njit(nogil=True, cache=True)
def _equal(a: Any, b: Any) -> bool:
    """True if the vectors are equal entry by entry (stops at the first difference)."""
    for k in range(a.shape[0]):
        if a[k] != b[k]:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _recompute_near(
    row: Any,
    row_limit: Any,
    center_limits: Any,
    x: Any,
    x_t: Any,
    centers: Any,
    centers_t: Any,
    scale: float,
) -> None:
    """The near pairs of this row recomputed from their transformed differences, and exactly 0
    where the row equals the center (``x`` and ``centers``: the coordinates before the transform,
    whose rounding may differ between the two). The row is scanned in runs of :data:`NEAR_SCAN` (a
    vectorized test each); only runs with a near pair are looked at one by one (in an exact fit
    every row has one: its own center)."""
    zero = row.dtype.type(0)
    width = row.shape[0]
    for run in range(0, width, NEAR_SCAN):
        stop = min(run + NEAR_SCAN, width)
        if not _has_near(row[run:stop], row_limit, center_limits[run:stop]):
            continue
        for j in range(run, stop):
            if row[j] <= row_limit + center_limits[j]:
                if _equal(x, centers[j]):
                    row[j] = zero
                    continue
                total = zero
                for k in range(x_t.shape[0]):
                    diff = x_t[k] - centers_t[j, k]
                    total += diff * diff
                row[j] = scale * total


@numba.njit(fastmath=_ELEMENTWISE_FLAGS, error_model="numpy", nogil=True, cache=True)
def _laplace_values(row: Any) -> None:
    zero = row.dtype.type(0)
    for j in range(row.shape[0]):
        row[j] = exp_neg(-np.sqrt(max(row[j], zero)))


@numba.njit(fastmath=_ELEMENTWISE_FLAGS, error_model="numpy", nogil=True, cache=True)
def _laplace_weights(row: Any, bandwidth: Any, guard: Any) -> None:
    """``K / ||x - z||_M``, 0 within ``guard`` of the ``x = z`` singularity."""
    zero = row.dtype.type(0)
    for j in range(row.shape[0]):
        root = np.sqrt(max(row[j], zero))
        radius = root * bandwidth
        # Computed for every entry, then selected: a division under a branch does not vectorize.
        weight = exp_neg(-root) / max(radius, guard)
        row[j] = weight if radius >= guard else zero


@numba.njit(fastmath=_ELEMENTWISE_FLAGS, error_model="numpy", nogil=True, cache=True)
def _gaussian_values(row: Any) -> None:
    zero = row.dtype.type(0)
    for j in range(row.shape[0]):
        row[j] = exp_neg(-max(row[j], zero))


@numba.njit(nogil=True, cache=True)
def _cpu_tail(
    dist: Any,
    start: int,
    weights: bool,
    row_limits: Any,
    center_limits: Any,
    rows: Any,
    rows_t: Any,
    centers: Any,
    centers_t: Any,
    scale: float,
    laplace: bool,
    bandwidth: float,
    guard: float,
) -> None:
    """The tail of the columns ``start:start + len(centers_t)`` of ``dist`` (b, >= m), in place: the
    whole array and an offset, as a slice of a row is contiguous where a 2-D view's row is not. The
    arguments after ``weights`` are :func:`_tail_operands`'s."""
    # In the kernel's dtype (a float64 scalar would widen a float32 loop to float64).
    cast = dist.dtype.type
    bandwidth_t, guard_t, scale_t = cast(bandwidth), cast(guard), cast(scale)
    stop = start + centers_t.shape[0]
    for i in range(dist.shape[0]):
        row = dist[i, start:stop]
        _recompute_near(
            row, row_limits[i], center_limits, rows[i], rows_t[i], centers, centers_t, scale_t
        )
        if not laplace:
            _gaussian_values(row)
        elif weights:
            _laplace_weights(row, bandwidth_t, guard_t)
        else:
            _laplace_values(row)


# --- BLAS from compiled code: the GEMM Numba's own np.dot calls, on row-major views ----------------


def gemm(A, B, C, trans_a, trans_b, beta):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``C = op(A) op(B) + beta C`` on row-major 2-D views with unit column stride (any row stride),
    from compiled code only: BLAS called on the calling thread, under the BLAS thread budget in force
    there (the blocked loop's threads limit it to one), so that a pass's threads stay its own."""
    raise NotImplementedError("gemm is for Numba-compiled code")


@overload(gemm)
def _gemm_overload(A, B, C, trans_a, trans_b, beta):  # type: ignore[no-untyped-def]
    # SciPy's BLAS through Numba's helper library: what np.dot uses (numba.np.linalg._BLAS, private,
    # hence the upper bound on numba in pyproject.toml); a ctypes pointer instead would keep the
    # compiled code from being cached on disk.
    routine = numba_linalg._BLAS().numba_xxgemm(C.dtype)
    kind = ord("s" if C.dtype == types.float32 else "d")

    def impl(A, B, C, trans_a, trans_b, beta):  # type: ignore[no-untyped-def]
        # Column-major BLAS sees a row-major X as X^T: C^T = op(B)^T op(A)^T.
        factors = np.array([1.0, beta], dtype=C.dtype)
        routine(
            kind,
            _YES if trans_b else _NO,
            _YES if trans_a else _NO,
            C.shape[1],
            C.shape[0],
            A.shape[0] if trans_a else A.shape[1],
            factors[0:].ctypes,
            B.ctypes,
            B.strides[0] // B.itemsize,
            A.ctypes,
            A.strides[0] // A.itemsize,
            factors[1:].ctypes,
            C.ctypes,
            C.strides[0] // C.itemsize,
        )

    return impl


_NO, _YES = ord("n"), ord("t")


# --- cache-sized tiles: GEMM, tail and contraction while the tile is in cache -----------------------

BLOCK, MATVEC, RMATVEC = 0, 1, 2
# Up to this many columns, a tile's product with a block of vectors is a loop, not a GEMM.
FEW_COLUMNS = 8
# Rows of a tile when the centers are many (its width then follows from the tile's bytes).
TILE_ROWS = 256
# A strip of K^T (K V) (all centers, so that both products use it) is this many tiles' bytes.
STRIP_TILES = 4
# Up to this many gradient columns (outputs x features) a weights tile's products follow the tile.
GRADIENT_TILE_COLUMNS = 256
# Bytes of a strip of gradient weights (rows x all centers) beyond that.
GRADIENT_STRIP_BYTES = 16 * 2**20


@numba.njit(nogil=True, cache=True)
def _fill_tile(
    tile: Any, start: int, ops: Any, i0: int, i1: int, j0: int, j1: int, weights: bool
) -> None:
    """The kernel (or weights) of rows ``i0:i1`` against centers ``j0:j1`` into the columns
    ``start:start + j1 - j0`` of ``tile``; ``ops`` is :func:`_kernel_operands`'s tuple."""
    (
        rows_aug,
        centers_aug,
        row_limits,
        center_limits,
        rows,
        rows_t,
        centers,
        centers_t,
        scale,
        laplace,
        bandwidth,
        guard,
    ) = ops
    target = tile[:, start : start + j1 - j0]
    gemm(rows_aug[i0:i1], centers_aug[j0:j1], target, False, True, 0.0)
    _cpu_tail(
        tile,
        start,
        weights,
        row_limits[i0:i1],
        center_limits[j0:j1],
        rows[i0:i1],
        rows_t[i0:i1],
        centers[j0:j1],
        centers_t[j0:j1],
        scale,
        laplace,
        bandwidth,
        guard,
    )


@numba.njit(fastmath=True, nogil=True, cache=True)
def _add_row_products(tile: Any, operand_t: Any, start: int, out: Any) -> None:
    """``out += tile @ operand_t[:, start:start + width].T`` for few columns: one dot product per row
    and column (BLAS's GEMM with one or two columns runs at a fraction of this). The whole
    ``operand_t`` and an offset, not a view of its columns: a slice of one of its rows is contiguous
    (an indexed ``operand_t[k, start + j]`` keeps the loop from vectorizing)."""
    width = tile.shape[1]
    for i in range(tile.shape[0]):
        row = tile[i]
        for k in range(operand_t.shape[0]):
            column = operand_t[k, start : start + width]
            total = row.dtype.type(0)
            for j in range(width):
                total += row[j] * column[j]
            out[i, k] += total


@numba.njit(fastmath=True, nogil=True, cache=True)
def _add_column_products(tile: Any, operand: Any, out_t: Any, start: int) -> None:
    """``out_t[:, start:start + width] += (tile.T @ operand).T`` for few columns: one AXPY per row and
    column (the whole ``out_t`` and an offset, as in :func:`_add_row_products`)."""
    width = tile.shape[1]
    for i in range(tile.shape[0]):
        row = tile[i]
        for k in range(operand.shape[1]):
            weight = operand[i, k]
            target = out_t[k, start : start + width]
            for j in range(width):
                target[j] += row[j] * weight


@numba.njit(nogil=True, cache=True)
def _tile_pass(
    mode: int,
    ops: Any,
    weights: bool,
    tile_rows: int,
    tile_cols: int,
    operand: Any,
    out: Any,
) -> None:
    """One block's pass, tile by tile: ``BLOCK`` writes the kernel to ``out`` (b, m); ``MATVEC`` adds
    ``K operand`` (operand (m, c)) to ``out`` (b, c); ``RMATVEC`` adds ``K^T operand`` (operand
    (b, c)) to ``out`` (m, c). With at most :data:`FEW_COLUMNS` columns the products are loops over the
    tile (``operand`` of MATVEC and ``out`` of RMATVEC then transposed: (c, m)), else BLAS."""
    b, m = ops[0].shape[0], ops[1].shape[0]
    few = mode != BLOCK and operand.shape[0 if mode == MATVEC else 1] <= FEW_COLUMNS
    buffer = np.empty(tile_rows * tile_cols, dtype=out.dtype)
    for i0 in range(0, b, tile_rows):
        i1 = min(i0 + tile_rows, b)
        for j0 in range(0, m, tile_cols):
            j1 = min(j0 + tile_cols, m)
            # The kernel goes straight into its place in the block; products use a cached tile.
            if mode == BLOCK:
                tile, start = out[i0:i1], j0
            else:
                tile, start = buffer[: (i1 - i0) * (j1 - j0)].reshape((i1 - i0, j1 - j0)), 0
            _fill_tile(tile, start, ops, i0, i1, j0, j1, weights)
            if mode == BLOCK:
                continue
            if mode == MATVEC and few:
                _add_row_products(tile, operand, j0, out[i0:i1])
            elif mode == MATVEC:
                gemm(tile, operand[j0:j1], out[i0:i1], False, False, 1.0)
            elif few:
                _add_column_products(tile, operand[i0:i1], out, j0)
            else:
                gemm(tile, operand[i0:i1], out[j0:j1], True, False, 1.0)


@numba.njit(nogil=True, cache=True)
def _normal_pass(ops: Any, strip_rows: int, V: Any, out: Any) -> None:
    """Adds ``K^T (K V)`` of a block to ``out`` (m, c): per strip of rows (all centers), the strip's
    kernel once, then both products from it while it is in cache."""
    b, m = ops[0].shape[0], ops[1].shape[0]
    strip = np.empty(strip_rows * m, dtype=out.dtype)
    products = np.empty(strip_rows * V.shape[1], dtype=out.dtype)
    for i0 in range(0, b, strip_rows):
        i1 = min(i0 + strip_rows, b)
        kernel = strip[: (i1 - i0) * m].reshape((i1 - i0, m))
        _fill_tile(kernel, 0, ops, i0, i1, 0, m, False)
        product = products[: (i1 - i0) * V.shape[1]].reshape((i1 - i0, V.shape[1]))
        gemm(kernel, V, product, False, False, 0.0)
        gemm(kernel, product, out, True, False, 1.0)


@numba.njit(nogil=True, cache=True)
def _gradient_pass(
    ops: Any,
    tile_rows: int,
    tile_cols: int,
    panel_cols: int,
    weighted_centers: Any,
    coef_t: Any,
    center_terms: Any,
    row_weights: Any,
) -> None:
    """Adds the two contractions of a block's gradients: ``W weighted_centers`` to ``center_terms``
    (b, c d) and ``W coef_t.T`` to ``row_weights`` (b, c), ``W`` the gradient weights
    (:meth:`rfmdist.kernels.PreparedKernel.gradient_weights`), never formed for the whole block. The weights are
    made tile by tile into panels of ``panel_cols`` centers, and each panel's products are one GEMM
    and one loop (see :func:`gradient_terms` for the panels' width). The products run in the
    operands' dtype."""
    b, m = ops[0].shape[0], ops[1].shape[0]
    buffer = np.empty(tile_rows * panel_cols, dtype=ops[0].dtype)
    cast = np.empty(tile_rows * panel_cols, dtype=coef_t.dtype)
    for i0 in range(0, b, tile_rows):
        i1 = min(i0 + tile_rows, b)
        for p0 in range(0, m, panel_cols):
            p1 = min(p0 + panel_cols, m)
            size = (i1 - i0) * (p1 - p0)
            panel = buffer[:size].reshape((i1 - i0, p1 - p0))
            for j0 in range(p0, p1, tile_cols):
                _fill_tile(panel, j0 - p0, ops, i0, i1, j0, min(j0 + tile_cols, p1), True)
            weights = cast[:size].reshape((i1 - i0, p1 - p0))
            weights[:] = panel
            gemm(weights, weighted_centers[p0:p1], center_terms[i0:i1], False, False, 1.0)
            _add_row_products(weights, coef_t, p0, row_weights[i0:i1])


@functools.cache
def _gpu_tail_kernel(laplace: bool, weights: bool) -> Any:
    """The CuPy elementwise kernel of the clamp, ``sqrt``, ``exp`` and (AGOP) the division."""
    if not laplace:
        body = "y = exp(-max(d, (T)0));"
    elif weights:
        body = "T root = sqrt(max(d, (T)0)); T radius = root * (T)bandwidth; y = radius >= (T)guard ? exp(-root) / radius : (T)0;"
    else:
        body = "y = exp(-sqrt(max(d, (T)0)));"
    return cupy_module().ElementwiseKernel(
        "T d, float64 bandwidth, float64 guard", "T y", body, f"rfmdist_tail_{laplace}_{weights}"
    )


def kernel_tail(
    dist: Any,
    limits: NearLimits,
    rows: TransformedRows,
    centers: KernelCenters,
    *,
    weights: bool = False,
) -> Any:
    """Kernel values (or the AGOP's gradient weights) from the distance GEMM's output, in place.

    Parameters
    ----------
    dist : array, shape (b, m)
        ``scale * ||x' - z'||^2`` by GEMM (``scale`` the kernel's
        :attr:`~rfmdist.distances.KernelCenters.distance_scale`;
        :func:`rfmdist.distances.gemm_distances`), before the clamp at zero; overwritten.
    limits : NearLimits
        Which pairs are recomputed from their differences (:func:`rfmdist.distances.augment_rows`).
    rows : TransformedRows
        The block's rows (b of them).
    centers : KernelCenters
        The kernel and its m centers (a :class:`~rfmdist.kernels.PreparedKernel` is one).
    weights : bool, default False
        Return the AGOP's gradient weights (``K / ||x - z||_M`` for Laplace, 0 within
        :data:`~rfmdist.distances.LAPLACE_GRADIENT_GUARD` of ``x = z``; ``K`` for Gaussian).

    Returns
    -------
    array, shape (b, m)
        ``dist`` itself, overwritten.
    """
    if is_cupy_array(dist):
        recompute_near_pairs(dist, limits, rows, centers)
        tail = _gpu_tail_kernel(centers.kernel == "laplace", weights)
        return tail(dist, centers.bandwidth, LAPLACE_GRADIENT_GUARD, dist)
    _cpu_tail(dist, 0, weights, *_tail_operands(centers, rows, limits))
    return dist


# --- the passes' entry points (NumPy arrays, the 'fused' backend) -----------------------------------


def _tail_operands(
    centers: KernelCenters, rows: TransformedRows, limits: NearLimits
) -> tuple[Any, ...]:
    """What the tail of a block's distances needs (:func:`_cpu_tail`): the near-pair limits of the
    rows and of the centers, the rows and centers before and after the transform, the scale and the
    kernel's flags."""
    return (
        limits.rows,
        limits.centers,
        np.ascontiguousarray(rows.X),
        np.ascontiguousarray(rows.Xt),
        centers.centers,
        centers.centers_t,
        centers.distance_scale,
        centers.kernel == "laplace",
        centers.bandwidth,
        LAPLACE_GRADIENT_GUARD,
    )


def _kernel_operands(centers: KernelCenters, rows: TransformedRows) -> tuple[Any, ...]:
    """What every tile needs of a block of rows: the augmented rows and centers of the distance
    GEMM, then :func:`_tail_operands`."""
    rows_aug, limits = augment_rows(
        rows.Xt, rows.sq, centers.centers_aug, scale=centers.distance_scale
    )
    return (rows_aug, centers.centers_aug, *_tail_operands(centers, rows, limits))


def tile_shape(n_centers: int, itemsize: int, tile_bytes: int | None = None) -> tuple[int, int]:
    """Rows and centers of a tile of about ``tile_bytes`` (by default half a core's L2 cache).

    Examples
    --------
    >>> tile_shape(5000, 8, tile_bytes=2**20)
    (256, 512)
    >>> tile_shape(100, 8, tile_bytes=2**20)
    (1310, 100)
    """
    tile_bytes = tile_bytes or memory.tile_bytes()
    cols = max(1, min(n_centers, max(64, tile_bytes // (TILE_ROWS * itemsize))))
    return max(1, tile_bytes // (cols * itemsize)), cols


def _run_tiles(
    centers: KernelCenters,
    operands: tuple[Any, ...],
    mode: int,
    operand: Any,
    out: Any,
    *,
    weights: bool = False,
) -> Any:
    rows, cols = tile_shape(centers.n_centers, out.itemsize)
    _tile_pass(mode, operands, weights, rows, cols, operand, out)
    return out


def block(
    centers: KernelCenters, rows: TransformedRows, *, weights: bool = False, out: Any = None
) -> Any:
    """Kernel values ``K(X, Z)`` (or the AGOP's gradient weights) of transformed rows.

    Parameters
    ----------
    centers : KernelCenters
        The kernel and its m centers (a :class:`~rfmdist.kernels.PreparedKernel` is one).
    rows : TransformedRows
        :meth:`KernelCenters.transform <rfmdist.distances.KernelCenters.transform>` of the b rows.
    weights : bool, default False
        ``K / ||x - z||_M`` (Laplace; 0 at the ``x = z`` singularity) or ``K`` (Gaussian).
    out : array, shape (b, m), optional
        Where to write them (C-contiguous, the kernel's dtype): a block's rows of a whole kernel.

    Returns
    -------
    array, shape (b, m), the kernel's dtype
    """
    if out is None:
        out = np.empty((rows.Xt.shape[0], centers.n_centers), dtype=centers.centers_t.dtype)
    operands = _kernel_operands(centers, rows)
    return _run_tiles(centers, operands, BLOCK, out[:0], out, weights=weights)


def _in_kernel_dtype(centers: KernelCenters, V: Any) -> Any:
    return np.ascontiguousarray(V, dtype=centers.centers_t.dtype)


def matvec(centers: KernelCenters, X: Any, V: Any) -> Any:
    """``K(X, Z) V`` without the kernel block: X (b, d), V (m, c); result (b, c), kernel's dtype."""
    V = _in_kernel_dtype(centers, V)
    out = np.zeros((X.shape[0], V.shape[1]), dtype=V.dtype)
    operand = np.ascontiguousarray(V.T) if V.shape[1] <= FEW_COLUMNS else V
    return _run_tiles(
        centers, _kernel_operands(centers, centers.transform(X)), MATVEC, operand, out
    )


def rmatvec(centers: KernelCenters, X: Any, U: Any) -> Any:
    """``K(X, Z)^T U`` without the kernel block: X (b, d), U (b, c); result (m, c), kernel's dtype."""
    U = _in_kernel_dtype(centers, U)
    few = U.shape[1] <= FEW_COLUMNS
    shape = (U.shape[1], centers.n_centers) if few else (centers.n_centers, U.shape[1])
    out = _run_tiles(
        centers,
        _kernel_operands(centers, centers.transform(X)),
        RMATVEC,
        U,
        np.zeros(shape, U.dtype),
    )
    return out.T if few else out


def normal_matvec(centers: KernelCenters, X: Any, V: Any) -> Any:
    """``K^T (K V)`` of a block: X (b, d), V (m, c); result (m, c), kernel's dtype."""
    V = _in_kernel_dtype(centers, V)
    out = np.zeros((centers.n_centers, V.shape[1]), dtype=V.dtype)
    rows, cols = tile_shape(centers.n_centers, V.itemsize)
    strip_rows = max(16, STRIP_TILES * rows * cols // centers.n_centers)
    _normal_pass(_kernel_operands(centers, centers.transform(X)), strip_rows, V, out)
    return out


def gradient_terms(
    centers: KernelCenters, rows: TransformedRows, weighted_centers: Any, coef: Any
) -> tuple[Any, Any]:
    """``W weighted_centers`` and ``W coef`` of transformed rows, ``W`` their gradient weights, by
    tiles (:func:`_gradient_pass`): the two GEMMs of :func:`rfmdist.agop.transformed_gradients`.

    Parameters
    ----------
    centers : KernelCenters
        The kernel and its m centers.
    rows : TransformedRows
        The b rows.
    weighted_centers : array, shape (m, c * d)
    coef : array, shape (m, c)
        Both in the GEMMs' dtype.

    Returns
    -------
    center_terms : array, shape (b, c * d)
    row_weights : array, shape (b, c)
    """
    dtype, b, itemsize = coef.dtype, rows.Xt.shape[0], rows.Xt.itemsize
    center_terms = np.zeros((b, weighted_centers.shape[1]), dtype=dtype)
    row_weights = np.zeros((b, coef.shape[1]), dtype=dtype)
    # A panel is one tile while the products' output (rows x c d) stays in cache with it; with more
    # gradient columns it spans all centers (a strip of rows), so that the output of c d columns is
    # written once per strip, not once per tile.
    tile_rows, cols = tile_shape(centers.n_centers, itemsize)
    panel = cols
    if weighted_centers.shape[1] > GRADIENT_TILE_COLUMNS:
        by_bytes = GRADIENT_STRIP_BYTES // (centers.n_centers * itemsize)
        tile_rows, panel = max(16, min(TILE_ROWS, by_bytes)), centers.n_centers
    _gradient_pass(
        _kernel_operands(centers, rows),
        tile_rows,
        cols,
        panel,
        np.ascontiguousarray(weighted_centers),
        np.ascontiguousarray(coef.T),
        center_terms,
        row_weights,
    )
    return center_terms, row_weights
