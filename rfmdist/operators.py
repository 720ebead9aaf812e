"""Kernel operators over row blocks: the passes over the data that every solver and the AGOP use.

An operator binds the training rows ``X`` (n x d) to one round's kernel (:class:`PreparedKernel`, with
its ``m`` centers) and offers, without ever holding more than one row block of the ``n x m`` kernel
(unless asked to cache it):

- ``matvec(V)``         ``K(X, Z) V``           (n, c)
- ``rmatvec(U)``        ``K(X, Z)^T U``         (m, c)
- ``normal_matvec(V)``  ``K^T (K V)``           (m, c), each block's kernel computed once per pass
- ``gram_and_rmatvec(U)`` ``K^T K`` and ``K^T U`` (m, m) and (m, c), one pass
- ``agop_sum(coef)``    ``sum_x J(x)^T J(x)``   (d, d) or (d,), float64

:class:`BlockedKernelOperator` loops over row blocks of an in-memory NumPy/CuPy array, by a strategy
chosen once per operator (:func:`block_strategy`): the whole kernel kept, the fused backend's CPU tiles,
or one kernel block per row block; :class:`DaskKernelOperator` runs one graph per pass over a
row-chunked Dask array and adds the per-chunk partial results by a tree reduction (each chunk's part by
a :class:`BlockedKernelOperator`). Both use the same block functions and offer the same passes
(:class:`KernelOperator`); :func:`kernel_operator` is the one place that picks one for the rows.

Products are computed in the kernel's dtype and returned in the dtype of ``V`` (float64 solver state over
a float32 kernel is the usual mixed precision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from rfmdist import fused, memory
from rfmdist.agop import (
    GradientOperand,
    original_accumulation,
    to_original_agop,
    transformed_agop_sum,
)
from rfmdist.backend import get_namespace
from rfmdist.dask_cluster import active_client, share_with_workers
from rfmdist.kernels import PreparedKernel
from rfmdist.threads import (
    blas_limit_for_dask,
    block_workers,
    compute_dask,
    map_blocks,
    ordered_sum,
    ordered_sum_blocks,
    sum_blocks,
)

logger = logging.getLogger(__name__)

# Target bytes of one (b x m) kernel block in the blocked loop (per thread on the CPU): large enough
# for GEMM efficiency, small enough to stay near the caches and keep peak memory low.
BLOCK_BYTES = memory.CPU_BLOCK_BYTES


def rows_per_block(n_centers: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block so that one ``b x m`` kernel block takes about ``block_bytes``."""
    return max(64, block_bytes // max(1, n_centers * itemsize))


# The tree reduction's fan-in for m x m partial sums (Gram passes): pairs, so that a worker holds few.
GRAM_SPLIT_EVERY = 2

# Most rows of a fused AGOP block (its tiles have 256; several blocks keep every thread busy), and
# the bytes its gradients may take (four b x c x d copies in float64; an eighth of the operand's).
AGOP_FUSED_ROWS = 512
AGOP_GRADIENT_BYTES = 32 * 2**20

# Bytes of the (m, c x d) weighted centers of an AGOP pass; more outputs go in several groups.
AGOP_OPERAND_BYTES = 256 * 2**20


def output_groups(prepared: PreparedKernel, n_outputs: int, dtype: Any = None) -> list[slice]:
    """Slices of the outputs whose AGOP operand (``m x c' x d`` in ``dtype``, the kernel's by
    default) fits :data:`AGOP_OPERAND_BYTES`. Every group computes the kernel's weights again."""
    m, d = prepared.centers_t.shape
    itemsize = np.dtype(prepared.centers_t.dtype if dtype is None else dtype).itemsize
    per_output = max(1, m * d * itemsize)
    size = max(1, min(n_outputs, AGOP_OPERAND_BYTES // per_output))
    return [slice(start, min(start + size, n_outputs)) for start in range(0, n_outputs, size)]


# A broadcast to a worker that just died can wait forever; past this the kernel travels in the graph.
SCATTER_TIMEOUT_S = 10.0
# A pass whose graph refers to data the cluster lost with a worker (the broadcast kernel, when the
# worker holding its only copy died mid-broadcast) is cancelled by the scheduler; it is rebuilt with
# the kernel shared again, at most this many times.
LOST_DATA_RETRIES = 2

# --- block functions shared by the in-memory loop and the Dask tasks -------------------------------


# Up to this many vectors a product with a kernel block is one GEMV per vector: OpenBLAS's GEMM with
# 2-3 columns streams the block at a third of its GEMV rate (measured on a cached 9,363^2 float64
# kernel: 2 columns in 20 ms as GEMVs, 32 ms as one GEMM; 1 column 10 ms).
GEMV_MAX_COLUMNS = 3


def _product(A: Any, V: Any) -> Any:
    """``A @ V``, by columns when ``V`` has few."""
    if 1 < V.shape[1] <= GEMV_MAX_COLUMNS and get_namespace(A) is np:
        out = np.empty((A.shape[0], V.shape[1]), dtype=np.result_type(A, V))
        for j in range(V.shape[1]):
            out[:, j] = A @ V[:, j]
        return out
    return A @ V


def _block_matvec(K: Any, V: Any) -> Any:
    return _product(K, V.astype(K.dtype, copy=False))


def _block_rmatvec(K: Any, U: Any) -> Any:
    return _product(K.T, U.astype(K.dtype, copy=False))


def _block_gram(K: Any) -> Any:
    """``K^T K``, shape (m, m), by a float64 GEMM whatever the kernel's dtype: products of float32
    entries are exact in float64, so the result is a Gram matrix (positive semi-definite) to float64
    resolution, as the Nyström system's direct solve needs (see :mod:`rfmdist.solvers.systems`)."""
    K64 = K.astype(get_namespace(K).float64, copy=False)
    return K64.T @ K64


def _block_gram_rhs(K: Any, U: Any) -> Any:
    """``[K^T K | K^T U]``, shape (m, m + c), float64."""
    xp = get_namespace(K)
    rhs = _product(K.T, U.astype(K.dtype, copy=False)).astype(xp.float64, copy=False)
    return xp.concatenate([_block_gram(K), rhs], axis=1)


def _block_normal(K: Any, V: Any) -> Any:
    if V is None:  # the Gram matrix K^T K itself
        return _block_gram(K)
    return _product(K.T, _product(K, V.astype(K.dtype, copy=False)))


class KernelOperator(Protocol):
    """The passes over the rows that solvers, scores and the AGOP use (see the module docstring).

    Results are computed arrays on the client (NumPy or CuPy), except :meth:`lazy_predict` of a Dask
    operator.
    """

    prepared: PreparedKernel

    @property
    def n_rows(self) -> int: ...

    def matvec(self, V: Any) -> Any: ...

    def rmatvec(self, U: Any) -> Any: ...

    def normal_matvec(self, V: Any) -> Any: ...

    def gram(self) -> Any: ...

    def gram_and_rmatvec(self, U: Any) -> tuple[Any, Any]: ...

    def dense(self) -> Any: ...

    def columns(self, centers: Any) -> Any: ...

    def agop_sum(
        self, coef: Any, *, diag: bool, rows: Any = None, gemm_dtype: Any = None
    ) -> Any: ...

    def gradient_sum(
        self, coef: Any, *, accumulate: str, rows: Any = None, gemm_dtype: Any = None
    ) -> Any: ...

    def predict(self, coef: Any) -> Any: ...

    def lazy_predict(self, coef: Any) -> Any: ...


def kernel_operator(
    X: Any,
    prepared: PreparedKernel,
    *,
    cache: bool = False,
    split_every: int = 8,
    block_rows: int | None = None,
    workspace: memory.Workspace | None = None,
) -> KernelOperator:
    """The kernel operator over the rows ``X``: Dask passes for a Dask array, else in-memory blocks.

    Parameters
    ----------
    X : array or dask.array.Array, shape (n, d)
    prepared : PreparedKernel
    cache : bool, default False
        Keep the ``n x m`` kernel after the first pass (on the workers for a Dask array).
    split_every : int, default 8
        Fan-in of a Dask operator's tree reductions.
    block_rows : int, optional
        Rows per block of an in-memory operator (by default from its kernel block bytes).
    workspace : Workspace, optional
        Where an in-memory operator keeps its cached kernel from round to round.
    """
    from rfmdist.data import is_dask_array

    if is_dask_array(X):
        return DaskKernelOperator(X, prepared, cache=cache, split_every=split_every)
    return BlockedKernelOperator(
        X, prepared, cache=cache, block_rows=block_rows, workspace=workspace
    )


def agop_in_original_coordinates(
    op: KernelOperator, coef: Any, *, diag: bool, rows: Any, gemm_dtype: Any
) -> Any:
    """An operator's AGOP sum (shape (d, d), or (d,) with ``diag``; float64) from its
    transformed-space sum (:meth:`KernelOperator.gradient_sum`)."""
    S = op.prepared.S
    accumulate = original_accumulation(S, diag)
    total = op.gradient_sum(coef, accumulate=accumulate, rows=rows, gemm_dtype=gemm_dtype)
    return to_original_agop(total, S, diag=diag)


class BlockedKernelOperator:
    """Kernel passes over an in-memory array, one row block at a time.

    How the passes get their kernel is chosen once, when the operator is made (:attr:`strategy`,
    :func:`block_strategy`): the whole kernel kept (``cache``), the fused backend's CPU tiles, or one
    kernel block per row block.

    Parameters
    ----------
    X : array, shape (n, d)
        NumPy or CuPy rows.
    prepared : PreparedKernel
    cache : bool
        Keep the whole ``n x m`` kernel after the first pass (fast solver iterations when it fits).
    block_rows : int, optional
        Rows per block; by default about ``BLOCK_BYTES`` of kernel per block on the CPU, and on a GPU
        what its free memory allows (:func:`rfmdist.memory.block_bytes`).
    kernel : array, shape (n, m), optional
        The kernel already computed (a cached Dask chunk); ``X`` may then be None.
    workers : int, optional
        Threads running the blocks of a pass (CPU only). By default the BLAS thread budget in force,
        capped by the cores (:func:`rfmdist.threads.block_workers`); the Dask tasks pass 1.
    workspace : Workspace, optional
        Where :meth:`dense` writes the whole kernel (the array ``"kernel"``, reused by the next
        round's operator: no page faults for a fresh ``n x m`` array).

    Attributes
    ----------
    strategy : KernelBlocks, FusedTiles or CachedKernel
        What every pass of this operator runs (:class:`BlockStrategy`).
    """

    def __init__(
        self,
        X: Any,
        prepared: PreparedKernel,
        *,
        cache: bool = False,
        block_rows: int | None = None,
        kernel: Any = None,
        workers: int | None = None,
        workspace: memory.Workspace | None = None,
    ) -> None:
        self.X = X
        self.prepared = prepared
        self.workspace = workspace
        self.cache = cache or kernel is not None
        device = memory.device_of(prepared.centers_t)
        if device == "gpu":
            workers = 1
        self.workers = block_workers() if workers is None else max(1, int(workers))
        itemsize = np.dtype(prepared.centers_t.dtype).itemsize
        self.block_rows = block_rows or rows_per_block(
            prepared.n_centers, itemsize, memory.block_bytes(device)
        )
        self._cached: Any = kernel
        self.strategy: BlockStrategy = block_strategy(self)

    @property
    def n_rows(self) -> int:
        """Number of data rows ``n``."""
        return int((self.X if self._cached is None else self._cached).shape[0])

    def _slices(self) -> list[slice]:
        return [
            slice(start, min(start + self.block_rows, self.n_rows))
            for start in range(0, self.n_rows, self.block_rows)
        ]

    def _sum(self, func: Callable[[slice], Any]) -> Any:
        """The sum of ``func(rows)`` over the row blocks, with one partial sum per thread
        (:func:`rfmdist.threads.sum_blocks`)."""
        return sum_blocks(func, self._slices(), self.workers)

    def dense(self) -> Any:
        """The whole kernel ``K(X, Z)``, shape (n, m), built block by block."""
        if self._cached is not None:
            return self._cached
        xp = get_namespace(self.X)
        shape, dtype = (self.n_rows, self.prepared.n_centers), self.prepared.centers_t.dtype
        out = (
            xp.empty(shape, dtype=dtype)
            if self.workspace is None
            else self.workspace.array("kernel", shape, dtype, xp)
        )

        def fill(rows: slice) -> None:
            self.prepared.block(self.X[rows], out=out[rows])

        map_blocks(fill, self._slices(), self.workers)
        return out

    def columns(self, centers: Any) -> Any:
        """``K(X, Z[centers])``, shape (n, r): the kernel's columns of the given centers (from the
        cache when it is filled, else one pass against those centers only)."""
        if self._cached is not None:
            return self._cached[:, centers]
        return BlockedKernelOperator(
            self.X, self.prepared.subset(centers), workers=self.workers
        ).dense()

    def matvec(self, V: Any) -> Any:
        """``K(X, Z) V``; V shape (m, c), result (n, c) in V's dtype."""
        return self.strategy.matvec(V).astype(V.dtype, copy=False)

    def rmatvec(self, U: Any) -> Any:
        """``K(X, Z)^T U``; U shape (n, c), result (m, c) in U's dtype."""
        return self.strategy.rmatvec(U).astype(U.dtype, copy=False)

    def normal_matvec(self, V: Any) -> Any:
        """``K^T (K V)``; V shape (m, c), result (m, c) in V's dtype."""
        return self.strategy.normal_matvec(V).astype(V.dtype, copy=False)

    def gram(self) -> Any:
        """``K^T K``, shape (m, m), float64 (each block's part by a float64 GEMM)."""
        kernel_rows = self.strategy.kernel_rows()
        return self._sum(lambda rows: _block_gram(kernel_rows(rows)))

    def gram_and_rmatvec(self, U: Any) -> tuple[Any, Any]:
        """``K^T K`` (m, m) and ``K^T U`` (m, c) from one pass (each block's kernel once), float64.

        Parameters
        ----------
        U : array, shape (n, c)
        """
        kernel_rows = self.strategy.kernel_rows()
        both = self._sum(lambda rows: _block_gram_rhs(kernel_rows(rows), U[rows]))
        m = self.prepared.n_centers
        return both[:, :m], both[:, m:]

    def agop_sum(self, coef: Any, *, diag: bool, rows: Any = None, gemm_dtype: Any = None) -> Any:
        """AGOP partial sum over (a subset of) the rows, in the original coordinates.

        Parameters
        ----------
        coef : array, shape (m, c)
        diag : bool
        rows : array of int, optional
            Row indices (sorted) at which the gradients are taken; all rows by default.
        gemm_dtype : dtype, optional
            Dtype of the gradients' GEMMs (the kernel's by default); their outer products are
            summed in float64 either way.

        Returns
        -------
        array, shape (d, d) or (d,); float64
        """
        return agop_in_original_coordinates(self, coef, diag=diag, rows=rows, gemm_dtype=gemm_dtype)

    def gradient_sum(
        self, coef: Any, *, accumulate: str, rows: Any = None, gemm_dtype: Any = None
    ) -> Any:
        """The AGOP's partial sum over (a subset of) the rows in the transformed space (``k``
        columns, :func:`rfmdist.agop.transformed_agop_sum`).

        Parameters
        ----------
        coef : array, shape (m, c)
        accumulate : {'diagonal', 'gram', 'stack'}
        rows, gemm_dtype
            As for :meth:`agop_sum`.

        Returns
        -------
        array, shape (k,), (k, k) or (s, c, k) (``s`` rows); float64
        """
        n_points = self.n_rows if rows is None else len(rows)
        step = self.strategy.agop_rows(coef.shape[1])
        starts = range(0, n_points, step)
        xp = get_namespace(self.prepared.centers_t)
        stacked = (
            xp.empty((n_points, coef.shape[1], self.prepared.centers_t.shape[1]), xp.float64)
            if accumulate == "stack"
            else None
        )
        groups = []
        for outputs in output_groups(self.prepared, coef.shape[1], gemm_dtype):
            operand = GradientOperand.build(self.prepared, coef[:, outputs], gemm_dtype)

            def block(start: int, operand: Any = operand, outputs: slice = outputs) -> Any:
                # The block's rows only (a gathered AGOP sample of wide rows is a gigabyte).
                part = slice(start, start + step)
                X = self.X[part] if rows is None else self.X[rows[part]]
                total = transformed_agop_sum(
                    self.prepared, X, coef[:, outputs], accumulate=accumulate, operand=operand
                )
                if stacked is None:
                    return total
                stacked[part, outputs] = total
                return None

            if stacked is not None:  # each block writes its gradients in place
                map_blocks(block, starts, self.workers)
            else:  # the blocks' partial sums added in order, a few held at a time
                groups.append(ordered_sum_blocks(block, starts, self.workers))
        return stacked if stacked is not None else ordered_sum(groups)

    def predict(self, coef: Any) -> Any:
        """Predictions ``K(X, Z) coef`` of the rows, shape (n, c)."""
        return self.matvec(coef)

    def lazy_predict(self, coef: Any) -> Any:
        """:meth:`predict` (in-memory rows give computed predictions)."""
        return self.predict(coef)


# --- how a BlockedKernelOperator's passes get their kernel: chosen once per operator ---------------


class BlockStrategy(Protocol):
    """What a :class:`BlockedKernelOperator`'s passes run, chosen once by :func:`block_strategy`:
    :class:`KernelBlocks`, :class:`FusedTiles` or :class:`CachedKernel`.

    ``kernel_rows()`` gives the kernel block of a row block as a function of its rows, called on a
    pass's threads (what must be ready first, the cached kernel, is made before they start);
    ``matvec``, ``rmatvec`` and ``normal_matvec`` give ``K V`` (n, c), ``K^T U`` and ``K^T (K V)``
    (m, c), computed in the kernel's dtype (the operator casts them to the operand's); ``agop_rows``
    the rows per block of an AGOP pass with ``n_outputs`` outputs.
    """

    name: str

    def kernel_rows(self) -> Callable[[slice], Any]: ...

    def matvec(self, V: Any) -> Any: ...

    def rmatvec(self, U: Any) -> Any: ...

    def normal_matvec(self, V: Any) -> Any: ...

    def agop_rows(self, n_outputs: int) -> int: ...


class KernelBlocks:
    """One kernel block per row block (:meth:`PreparedKernel.block`: the reference path's array
    operations, or on a GPU the fused backend's elementwise kernel), each made by the thread that
    uses it and dropped after its products.

    Parameters
    ----------
    op : BlockedKernelOperator
        Whose rows, kernel, row blocks and threads the passes use.
    """

    name = "blocks"

    def __init__(self, op: BlockedKernelOperator) -> None:
        self.op = op

    def _block(self, rows: slice) -> Any:
        return self.op.prepared.block(self.op.X[rows])

    def kernel_rows(self) -> Callable[[slice], Any]:
        """The kernel block of a row block, made from its rows."""
        return self._block

    def block_matvec(self, rows: slice, V: Any) -> Any:
        """``K[rows] V``."""
        return _block_matvec(self._block(rows), V)

    def block_rmatvec(self, rows: slice, U: Any) -> Any:
        """``K[rows]^T U``, ``U`` the block's rows of the operand."""
        return _block_rmatvec(self._block(rows), U)

    def block_normal(self, rows: slice, V: Any) -> Any:
        """``K[rows]^T (K[rows] V)``."""
        return _block_normal(self._block(rows), V)

    def matvec(self, V: Any) -> Any:
        """``K V`` (n, c) in V's dtype, each row block's product written in its place."""
        out = get_namespace(V).empty((self.op.n_rows, V.shape[1]), dtype=V.dtype)

        def product(rows: slice) -> None:
            out[rows] = self.block_matvec(rows, V)

        map_blocks(product, self.op._slices(), self.op.workers)
        return out

    def rmatvec(self, U: Any) -> Any:
        """``K^T U`` (m, c), the row blocks' parts added."""
        return self.op._sum(lambda rows: self.block_rmatvec(rows, U[rows]))

    def normal_matvec(self, V: Any) -> Any:
        """``K^T (K V)`` (m, c), the row blocks' parts added."""
        return self.op._sum(lambda rows: self.block_normal(rows, V))

    def agop_rows(self, n_outputs: int) -> int:
        """A quarter of the operator's :attr:`~BlockedKernelOperator.block_rows`: a block of the
        gradients' weights holds a few (b x m) temporaries.

        Never a function of the threads (nor is :meth:`FusedTiles.agop_rows`): the blocks' partial
        sums are added in their order, and a resumed fit with other threads must add the same ones.
        """
        return max(16, self.op.block_rows // 4)


class FusedTiles(KernelBlocks):
    """The fused backend's CPU tiles (:mod:`rfmdist.fused`): the products of a row block are made
    tile by tile and its kernel block is never formed (the Gram passes, which want the block, take it
    from :meth:`PreparedKernel.block`, itself on tiles)."""

    name = "tiles"

    def block_matvec(self, rows: slice, V: Any) -> Any:
        """``K[rows] V`` by :func:`rfmdist.fused.matvec`."""
        return fused.matvec(self.op.prepared, self.op.X[rows], V)

    def block_rmatvec(self, rows: slice, U: Any) -> Any:
        """``K[rows]^T U`` by :func:`rfmdist.fused.rmatvec`."""
        return fused.rmatvec(self.op.prepared, self.op.X[rows], U)

    def block_normal(self, rows: slice, V: Any) -> Any:
        """``K[rows]^T (K[rows] V)`` by :func:`rfmdist.fused.normal_matvec`."""
        return fused.normal_matvec(self.op.prepared, self.op.X[rows], V)

    def agop_rows(self, n_outputs: int) -> int:
        """Up to :data:`AGOP_FUSED_ROWS` rows, as many as fit :data:`AGOP_GRADIENT_BYTES` with their
        gradients (b x c x d, a few copies): a tiled block holds no (b x m) array, and the gradients'
        GEMMs stream the m x c d weighted centers once per block, so the more rows the less memory
        traffic."""
        d = self.op.prepared.centers_t.shape[1]
        by_memory = AGOP_GRADIENT_BYTES // (4 * 8 * max(1, n_outputs * d))
        return max(16, min(by_memory, AGOP_FUSED_ROWS))


class CachedKernel:
    """The whole ``n x m`` kernel, made by the first pass (:meth:`BlockedKernelOperator.dense`) and
    kept: a product is one BLAS call on the BLAS threads (faster than a Python loop over row blocks),
    and the Gram passes take their row blocks from it.

    Parameters
    ----------
    op : BlockedKernelOperator
    uncached : KernelBlocks
        The strategy the operator would have without the cache: the AGOP's, whose gradients are not
        the kernel's values.
    """

    name = "cached"

    def __init__(self, op: BlockedKernelOperator, uncached: KernelBlocks) -> None:
        self.op = op
        self.uncached = uncached

    def kernel(self) -> Any:
        """The whole kernel, shape (n, m), made on first use."""
        if self.op._cached is None:
            self.op._cached = self.op.dense()
        return self.op._cached

    def kernel_rows(self) -> Callable[[slice], Any]:
        """The kernel block of a row block, cut from the whole kernel."""
        kernel = self.kernel()
        return lambda rows: kernel[rows]

    def matvec(self, V: Any) -> Any:
        """``K V``, one product."""
        return _block_matvec(self.kernel(), V)

    def rmatvec(self, U: Any) -> Any:
        """``K^T U``, one product."""
        return _block_rmatvec(self.kernel(), U)

    def normal_matvec(self, V: Any) -> Any:
        """``K^T (K V)``, two products."""
        return _block_normal(self.kernel(), V)

    def agop_rows(self, n_outputs: int) -> int:
        """The uncached strategy's (:attr:`uncached`)."""
        return self.uncached.agop_rows(n_outputs)


def block_strategy(op: BlockedKernelOperator) -> BlockStrategy:
    """The strategy of ``op``'s passes: :class:`CachedKernel` when it keeps the kernel
    (``op.cache``); else :class:`FusedTiles` where its kernel runs on the fused backend's CPU tiles
    (:attr:`PreparedKernel.fused_tiles`); else :class:`KernelBlocks`."""
    uncached = FusedTiles(op) if op.prepared.fused_tiles else KernelBlocks(op)
    return CachedKernel(op, uncached) if op.cache else uncached


class DaskKernelOperator:
    """Kernel passes over a row-chunked Dask array: one graph per pass, tree-reduced.

    The prepared kernel is sent to the workers once (scattered when a ``distributed`` client is
    active) and reused by every pass of the round; the pass's small operand (``V``) is part of that
    pass's graph once. A pass that the scheduler cancels because data it refers to was lost with a
    worker is rebuilt with the kernel sent again (see :meth:`_compute`).

    Parameters
    ----------
    X : dask.array.Array, shape (n, d)
        Chunked by rows only.
    prepared : PreparedKernel
    cache : bool
        Persist the ``n x m`` kernel chunks (on the workers) after the first pass.
    split_every : int
        Fan-in of the tree reduction of per-chunk partial sums.
    """

    def __init__(
        self,
        X: Any,
        prepared: PreparedKernel,
        *,
        cache: bool = False,
        split_every: int = 8,
    ) -> None:
        self.X = X
        self.prepared = prepared
        self.cache = cache
        self.split_every = split_every
        self._shared = share_with_workers(prepared, timeout=SCATTER_TIMEOUT_S)
        self._cached: Any = None

    @property
    def n_rows(self) -> int:
        """Number of data rows ``n``."""
        return int(self.X.shape[0])

    def _kernel_array(self) -> Any:
        """The kernel as a lazy (or persisted) Dask array with the row chunks of X."""
        import dask.array as da

        if self._cached is not None:
            return self._cached
        m = self.prepared.n_centers
        dtype = self.prepared.centers_t.dtype
        K = da.map_blocks(
            _kernel_task,
            self.X,
            self._shared,
            chunks=(self.X.chunks[0], (m,)),
            dtype=dtype,
            meta=self.X._meta.astype(dtype),
        )
        if self.cache:
            with blas_limit_for_dask(K):
                self._cached = K.persist()
            return self._cached
        return K

    def dense(self) -> Any:
        """The whole kernel ``K(X, Z)`` gathered on the client, shape (n, m) (for direct solves)."""
        return self._compute(self._kernel_array)

    def columns(self, centers: Any) -> Any:
        """``K(X, Z[centers])`` gathered on the client, shape (n, r) (one pass against those
        centers only)."""
        subset = self.prepared.subset(centers)
        return DaskKernelOperator(self.X, subset, split_every=self.split_every).dense()

    def _compute(self, build: Callable[[], Any]) -> Any:
        """Compute the collection that ``build()`` makes from the current shared kernel.

        If the scheduler cancels it because a key it depends on was lost (the only copies of the
        broadcast kernel were on workers that died), the kernel is sent again, the cached kernel
        (whose recipe referred to the lost copy) dropped, and the pass rebuilt and recomputed, at
        most :data:`LOST_DATA_RETRIES` times.
        """
        from concurrent.futures import CancelledError

        for _ in range(LOST_DATA_RETRIES):
            try:
                return compute_dask(build())
            except CancelledError as err:  # distributed's FutureCancelledError
                client = active_client()
                if client is None or client.status != "running":
                    raise  # no client, or it lost its scheduler: nothing to send the kernel to
                logger.warning(
                    "a kernel pass was cancelled (%s: %s); sending the round's kernel to the "
                    "workers again and recomputing the pass",
                    type(err).__name__,
                    err,
                )
                self._shared = share_with_workers(self.prepared, timeout=SCATTER_TIMEOUT_S)
                self._cached = None
        return compute_dask(build())

    def _tree_sum(self, build_parts: Callable[[], Any], *, squares: bool = False) -> Any:
        """Add the per-chunk partial results (stacked on axis 0) that ``build_parts()`` makes, by a
        tree reduction; compute. ``squares``: the parts are ``m x m`` (Gram passes), added in pairs
        (``split_every=2``) so that a worker holds few of them at once."""
        split_every = GRAM_SPLIT_EVERY if squares else self.split_every
        return self._compute(lambda: build_parts().sum(axis=0, split_every=split_every))

    def _source(self) -> tuple[Any, bool]:
        """The array each pass maps over: the persisted kernel when cached, else the rows of X."""
        if self.cache:
            return self._kernel_array(), True
        return self.X, False

    def matvec(self, V: Any) -> Any:
        """``K(X, Z) V``; V shape (m, c), result (n, c) computed on the client in V's dtype."""
        import dask.array as da

        def build() -> Any:
            source, cached = self._source()
            return da.map_blocks(
                _matvec_task,
                source,
                self._shared,
                V,
                cached=cached,
                chunks=(source.chunks[0], (V.shape[1],)),
                dtype=V.dtype,
                meta=source._meta.astype(V.dtype),
            )

        return self._compute(build)

    def gram(self) -> Any:
        """``K^T K``, shape (m, m), float64, tree-reduced: for direct solves of small Nyström systems."""
        return self.normal_matvec(None)

    def normal_matvec(self, V: Any) -> Any:
        """``K^T (K V)``, fused per chunk and tree-reduced; V shape (m, c), result (m, c).

        Each chunk is processed in row blocks, so a task holds one block of its kernel at a time
        (unless the kernel is cached). ``V=None`` gives ``K^T K`` in float64 (see :meth:`gram`).
        """
        import dask.array as da

        m = self.prepared.n_centers
        width = m if V is None else V.shape[1]
        dtype = np.float64 if V is None else V.dtype

        def build() -> Any:
            source, cached = self._source()
            return da.map_blocks(
                _normal_task,
                source,
                self._shared,
                V,
                cached=cached,
                new_axis=[2],
                chunks=((1,) * len(source.chunks[0]), (m,), (width,)),
                dtype=dtype,
                meta=source._meta.astype(dtype)[None],
            )

        return self._tree_sum(build, squares=V is None)

    def gram_and_rmatvec(self, U: Any) -> tuple[Any, Any]:
        """``K^T K`` (m, m) and ``K^T U`` (m, c) from one pass (each chunk's kernel once), float64,
        tree-reduced together; U a Dask array (n, c)."""
        m = self.prepared.n_centers
        both = self._contract_rows(_gram_rhs_task, U, m + U.shape[1], np.float64, squares=True)
        return both[:, :m], both[:, m:]

    def rmatvec(self, U: Any) -> Any:
        """``K(X, Z)^T U``; U a Dask array (n, c), rechunked to the rows of X. Result (m, c)."""
        return self._contract_rows(_rmatvec_task, U, U.shape[1], U.dtype)

    def _contract_rows(
        self, task: Any, U: Any, columns: int, dtype: Any, *, squares: bool = False
    ) -> Any:
        """The tree-reduced sum over row chunks of ``task(chunk, U's rows, kernel, cached)``, each a
        (1, m, columns) array."""
        import dask.array as da

        m, width = self.prepared.n_centers, U.shape[1]

        def build() -> Any:
            source, cached = self._source()
            rows = U.rechunk((source.chunks[0], (width,)))
            # The rows (or kernel) and U share only their row chunks: contract their own columns.
            return da.blockwise(
                task,
                "imc",
                source,
                "ij",
                rows,
                "ik",
                self._shared,
                None,
                cached,
                None,
                new_axes={"m": m, "c": columns},
                adjust_chunks={"i": 1},
                concatenate=True,
                dtype=dtype,
                meta=source._meta.astype(dtype)[None],
            )

        return self._tree_sum(build, squares=squares)

    def agop_sum(self, coef: Any, *, diag: bool, rows: Any = None, gemm_dtype: Any = None) -> Any:
        """AGOP partial sums over (a subset of) the rows, tree-reduced; float64 (d, d) or (d,)
        (as :meth:`BlockedKernelOperator.agop_sum`)."""
        return agop_in_original_coordinates(self, coef, diag=diag, rows=rows, gemm_dtype=gemm_dtype)

    def gradient_sum(
        self, coef: Any, *, accumulate: str, rows: Any = None, gemm_dtype: Any = None
    ) -> Any:
        """The AGOP's transformed-space partial sums (as :meth:`BlockedKernelOperator.gradient_sum`):
        per chunk, tree-reduced, or (``'stack'``) the chunks' gradients concatenated."""
        import dask.array as da

        X = self.X if rows is None else self.X[rows]
        X = X[:, :]  # a fresh graph layer even when rows is None
        k = self.prepared.centers_t.shape[1]
        meta = X._meta.astype(np.float64)
        if accumulate == "stack":  # each chunk's gradients (b, c, k), concatenated
            chunks, new_axis = (X.chunks[0], (coef.shape[1],), (k,)), [2]
        else:  # each chunk's partial sum (1, k) or (1, k, k), tree-reduced
            shape = (k,) if accumulate == "diagonal" else (k, k)
            chunks = ((1,) * len(X.chunks[0]), *((s,) for s in shape))
            new_axis = [2] if len(shape) == 2 else []

        def parts() -> Any:
            return da.map_blocks(
                _agop_task,
                X,
                self._shared,
                coef,
                accumulate=accumulate,
                gemm_dtype=gemm_dtype,
                new_axis=new_axis,
                chunks=chunks,
                dtype=np.float64,
                meta=meta[None] if new_axis else meta,
            )

        if accumulate == "stack":
            return self._compute(parts)
        # k x k partials are added in pairs, as a Gram pass's m x m ones.
        return self._tree_sum(parts, squares=accumulate == "gram")

    def predict(self, coef: Any) -> Any:
        """Predictions ``K(X, Z) coef`` of the rows, shape (n, c), computed on the client."""
        return self._compute(lambda: self.lazy_predict(coef))

    def lazy_predict(self, coef: Any) -> Any:
        """Lazy predictions ``K(X, Z) coef``: a Dask array (n, c) with the row chunks of X (the
        caller computes it, so a lost kernel copy is not recovered as in :meth:`_compute`)."""
        import dask.array as da

        return da.map_blocks(
            _predict_task,
            self.X,
            self._shared,
            coef,
            chunks=(self.X.chunks[0], (coef.shape[1],)),
            dtype=coef.dtype,
            meta=self.X._meta.astype(coef.dtype),
        )


def _kernel_task(x_block: Any, prepared: PreparedKernel) -> Any:
    return prepared.block(x_block)


def _chunk_operator(chunk: Any, prepared: PreparedKernel, cached: bool) -> BlockedKernelOperator:
    """The blocked loop over one Dask chunk: rows of X, or (cached) its rows of the kernel."""
    if cached:
        return BlockedKernelOperator(None, prepared, kernel=chunk, workers=1)
    return BlockedKernelOperator(chunk, prepared, workers=1)


def _matvec_task(chunk: Any, prepared: PreparedKernel, V: Any, *, cached: bool) -> Any:
    return _chunk_operator(chunk, prepared, cached).matvec(V)


def _normal_task(chunk: Any, prepared: PreparedKernel, V: Any, *, cached: bool) -> Any:
    op = _chunk_operator(chunk, prepared, cached)
    return (op.gram() if V is None else op.normal_matvec(V))[None]


def _gram_rhs_task(chunk: Any, U: Any, prepared: PreparedKernel, cached: bool) -> Any:
    gram, rhs = _chunk_operator(chunk, prepared, cached).gram_and_rmatvec(U)
    return get_namespace(gram).concatenate([gram, rhs], axis=1)[None]


def _rmatvec_task(chunk: Any, U: Any, prepared: PreparedKernel, cached: bool) -> Any:
    return _chunk_operator(chunk, prepared, cached).rmatvec(U)[None]


def _agop_task(
    x_block: Any, prepared: PreparedKernel, coef: Any, *, accumulate: str, gemm_dtype: Any
) -> Any:
    op = BlockedKernelOperator(x_block, prepared, workers=1)
    total = op.gradient_sum(coef, accumulate=accumulate, gemm_dtype=gemm_dtype)
    return total if accumulate == "stack" else total[None]


def _predict_task(x_block: Any, prepared: PreparedKernel, coef: Any) -> Any:
    return BlockedKernelOperator(x_block, prepared, workers=1).matvec(coef)
