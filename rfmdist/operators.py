"""Kernel operators over row blocks: the passes over the data that every solver and the AGOP use.

An operator binds the training rows ``X`` (n x d) to one round's kernel (:class:`PreparedKernel`, with
its ``m`` centers) and offers, without ever holding more than one row block of the ``n x m`` kernel
(unless asked to cache it):

- ``matvec(V)``         ``K(X, Z) V``           (n, c)
- ``rmatvec(U)``        ``K(X, Z)^T U``         (m, c)
- ``normal_matvec(V)``  ``K^T (K V)``           (m, c), each block's kernel computed once per pass
- ``gram_and_rmatvec(U)`` ``K^T K`` and ``K^T U`` (m, m) and (m, c), one pass
- ``agop_sum(coef)``    ``sum_x J(x)^T J(x)``   (d, d) or (d,), float64

:class:`BlockedKernelOperator` loops over row blocks of an in-memory NumPy/CuPy array;
:class:`DaskKernelOperator` runs one graph per pass over a row-chunked Dask array and adds the per-chunk
partial results by a tree reduction. Both use the same block functions and offer the same passes
(:class:`KernelOperator`); :func:`kernel_operator` is the one place that picks one for the rows.

Products are computed in the kernel's dtype and returned in the dtype of ``V`` (float64 solver state over
a float32 kernel is the usual mixed precision).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from rfmdist import memory
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


class BlockedKernelOperator:
    """Kernel passes over an in-memory array, one row block at a time.

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

    @property
    def n_rows(self) -> int:
        """Number of data rows ``n``."""
        return int((self.X if self._cached is None else self._cached).shape[0])

    def _slices(self) -> list[slice]:
        return [
            slice(start, min(start + self.block_rows, self.n_rows))
            for start in range(0, self.n_rows, self.block_rows)
        ]

    def _kernel_rows(self, rows: slice) -> Any:
        """The kernel block of ``rows`` (from the cache once it is filled)."""
        if self._cached is not None:
            return self._cached[rows]
        return self.prepared.block(self.X[rows])

    def _map(self, func: Any) -> list[Any]:
        """``func(rows, kernel block)`` for every row block, on :attr:`workers` threads, in order."""
        if self.cache and self._cached is None:
            self._cached = self.dense()
        return map_blocks(
            lambda rows: func(rows, self._kernel_rows(rows)), self._slices(), self.workers
        )

    def _sum(self, func: Any) -> Any:
        """The sum of ``func(rows, kernel block)`` over the row blocks, with one partial sum per
        thread (:func:`rfmdist.threads.sum_blocks`)."""
        if self.cache and self._cached is None:
            self._cached = self.dense()
        return sum_blocks(
            lambda rows: func(rows, self._kernel_rows(rows)), self._slices(), self.workers
        )

    def _tiled(self) -> bool:
        """True when products run on cache-sized tiles and never form a kernel block: the fused
        backend on the CPU, with no kernel kept."""
        return not self.cache and self.prepared.fused_tiles

    def _agop_rows(self, n_outputs: int) -> int:
        """Rows per block of an AGOP pass.

        The reference path's block holds a few (b x m) temporaries, so a quarter of
        :attr:`block_rows`; the fused path's only its gradients (b x c x d, a few copies), so up to
        :data:`AGOP_FUSED_ROWS` rows as fit :data:`AGOP_GRADIENT_BYTES` with them (the gradients'
        GEMMs stream the m x c d weighted centers once per block: the more rows, the less memory
        traffic). Never a function of the threads: the blocks' partial sums are added in their
        order, and a resumed fit with other threads must add the same ones."""
        if not self.prepared.fused_tiles:
            return max(16, self.block_rows // 4)
        d = self.prepared.centers_t.shape[1]
        by_memory = AGOP_GRADIENT_BYTES // (4 * 8 * max(1, n_outputs * d))
        return max(16, min(by_memory, AGOP_FUSED_ROWS))

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

    def _whole(self) -> Any:
        """The cached kernel when passes may use it whole (one BLAS call on the BLAS threads is
        faster than a Python loop over row blocks), else None."""
        if not self.cache:
            return None
        if self._cached is None:
            self._cached = self.dense()
        return self._cached

    def matvec(self, V: Any) -> Any:
        """``K(X, Z) V``; V shape (m, c), result (n, c) in V's dtype."""
        K = self._whole()
        if K is not None:
            return _block_matvec(K, V).astype(V.dtype, copy=False)
        xp = get_namespace(V)
        out = xp.empty((self.n_rows, V.shape[1]), dtype=V.dtype)
        if self._tiled():
            from rfmdist import fused

            def tiles(rows: slice) -> None:
                out[rows] = fused.matvec(self.prepared, self.X[rows], V)

            map_blocks(tiles, self._slices(), self.workers)
            return out

        def product(rows: slice, K: Any) -> None:
            out[rows] = _block_matvec(K, V)

        self._map(product)
        return out

    def rmatvec(self, U: Any) -> Any:
        """``K(X, Z)^T U``; U shape (n, c), result (m, c) in U's dtype."""
        K = self._whole()
        if K is not None:
            return _block_rmatvec(K, U).astype(U.dtype, copy=False)
        if self._tiled():
            from rfmdist import fused

            total = sum_blocks(
                lambda rows: fused.rmatvec(self.prepared, self.X[rows], U[rows]),
                self._slices(),
                self.workers,
            )
        else:
            total = self._sum(lambda rows, K: _block_rmatvec(K, U[rows]))
        return total.astype(U.dtype, copy=False)

    def normal_matvec(self, V: Any) -> Any:
        """``K^T (K V)``; V shape (m, c), result (m, c) in V's dtype."""
        K = self._whole()
        if K is not None:
            return _block_normal(K, V).astype(V.dtype, copy=False)
        if self._tiled():
            from rfmdist import fused

            total = sum_blocks(
                lambda rows: fused.normal_matvec(self.prepared, self.X[rows], V),
                self._slices(),
                self.workers,
            )
        else:
            total = self._sum(lambda rows, K: _block_normal(K, V))
        return total.astype(V.dtype, copy=False)

    def gram(self) -> Any:
        """``K^T K``, shape (m, m), float64 (each block's part by a float64 GEMM)."""
        return self._sum(lambda rows, K: _block_gram(K))

    def gram_and_rmatvec(self, U: Any) -> tuple[Any, Any]:
        """``K^T K`` (m, m) and ``K^T U`` (m, c) from one pass (each block's kernel once), float64.

        Parameters
        ----------
        U : array, shape (n, c)
        """
        both = self._sum(lambda rows, K: _block_gram_rhs(K, U[rows]))
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
        S = self.prepared.S
        accumulate = original_accumulation(S, diag)
        total = self.gradient_sum(coef, accumulate=accumulate, rows=rows, gemm_dtype=gemm_dtype)
        return to_original_agop(total, S, diag=diag)

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
        X = self.X if rows is None else self.X[rows]
        step = self._agop_rows(coef.shape[1])
        groups = []
        for outputs in output_groups(self.prepared, coef.shape[1], gemm_dtype):
            operand = GradientOperand.build(self.prepared, coef[:, outputs], gemm_dtype)
            parts = map_blocks(
                lambda start, operand=operand, outputs=outputs: transformed_agop_sum(
                    self.prepared,
                    X[start : start + step],
                    coef[:, outputs],
                    accumulate=accumulate,
                    operand=operand,
                ),
                range(0, X.shape[0], step),
                self.workers,
            )
            groups.append(
                get_namespace(parts[0]).concatenate(parts, axis=0)
                if accumulate == "stack"
                else ordered_sum(parts)
            )
        if accumulate == "stack":
            return get_namespace(groups[0]).concatenate(groups, axis=1)
        return ordered_sum(groups)

    def predict(self, coef: Any) -> Any:
        """Predictions ``K(X, Z) coef`` of the rows, shape (n, c)."""
        return self.matvec(coef)

    def lazy_predict(self, coef: Any) -> Any:
        """:meth:`predict` (in-memory rows give computed predictions)."""
        return self.predict(coef)


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
        S = self.prepared.S
        accumulate = original_accumulation(S, diag)
        total = self.gradient_sum(coef, accumulate=accumulate, rows=rows, gemm_dtype=gemm_dtype)
        return to_original_agop(total, S, diag=diag)

    def gradient_sum(
        self, coef: Any, *, accumulate: str, rows: Any = None, gemm_dtype: Any = None
    ) -> Any:
        """The AGOP's transformed-space partial sums (as :meth:`BlockedKernelOperator.gradient_sum`):
        per chunk, tree-reduced, or (``'stack'``) the chunks' gradients concatenated."""
        import dask.array as da

        X = self.X if rows is None else self.X[rows]
        X = X[:, :]  # a fresh graph layer even when rows is None
        k = self.prepared.centers_t.shape[1]
        n_chunks = len(X.chunks[0])
        meta = X._meta.astype(np.float64)
        if accumulate == "stack":
            c = coef.shape[1]
            return self._compute(
                lambda: da.map_blocks(
                    _agop_task,
                    X,
                    self._shared,
                    coef,
                    accumulate=accumulate,
                    gemm_dtype=gemm_dtype,
                    new_axis=[2],
                    chunks=(X.chunks[0], (c,), (k,)),
                    dtype=np.float64,
                    meta=meta[None],
                )
            )
        shape = (k,) if accumulate == "diagonal" else (k, k)
        return self._tree_sum(
            lambda: da.map_blocks(
                _agop_task,
                X,
                self._shared,
                coef,
                accumulate=accumulate,
                gemm_dtype=gemm_dtype,
                new_axis=[2] if len(shape) == 2 else [],
                chunks=((1,) * n_chunks, *((s,) for s in shape)),
                dtype=np.float64,
                meta=meta[None] if len(shape) == 2 else meta,
            )
        )

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
