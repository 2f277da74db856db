"""Performance internals of the dense products (kernels/dense.py): BLAS's ?gemm called directly,
and the training step's products cut into two halves of W's rows, each in blocks small enough
for OpenBLAS's small-matrix kernels, the halves on two cores.

What they compute is the readable product of kernels/dense.py: _affine_halves is
a = h W + c (and the tangent h_dot W + h W_dot + c_dot) as one NumPy product would give it, and
_dense_backward_halves is dL/dW = h^T dL/da, dL/dc = sum_n dL/da[n], dL/dh = dL/da W^T; they
differ from one product only in rounding (the sums are cut at other places), and the blocks do
not depend on the number of cores, so a run is bit for bit the same on one core or two.
tests/test_kernels.py::test_products_in_blocks_equal_the_one_block_products holds the blocked
products equal to the one-block ones, and
tests/test_kernels.py::test_products_in_blocks_do_not_depend_on_the_cores that the cores change nothing.
"""
import functools
import threading

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  the BLAS that Numba's products use, and _gemm below
from llvmlite import binding as llvm_binding
from numba import prange, types
from numba.extending import get_cython_function_address, overload

from .jit import kernel, split_kernel


# --------------------------------------------------------------------------
# BLAS's gemm, called directly where a product is accumulated into an array
# (Numba's ``C += A @ B`` allocates A @ B, then adds it in a second pass: for a
# 784 x 200 weight gradient that is ~20% of the product's own time)
# --------------------------------------------------------------------------
# SciPy's ?gemm, registered under our own symbol names so that Numba's on-disk cache can
# refer to them by name (a ctypes pointer in a kernel would make it uncacheable).
for _name in ("sgemm", "dgemm"):
    llvm_binding.add_symbol("rebar_np_" + _name, get_cython_function_address("scipy.linalg.cython_blas", _name))
_GEMM_SIGNATURE = types.void(*([types.voidptr] * 13))      # Fortran: every argument by reference
_sgemm = types.ExternalFunction("rebar_np_sgemm", _GEMM_SIGNATURE)
_dgemm = types.ExternalFunction("rebar_np_dgemm", _GEMM_SIGNATURE)


def _gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """Column-major C (m x n) = op(A) op(B) + beta C, op(A) m x k, op(B) k x n (BLAS ?gemm, alpha = 1):
    beta = 1 adds to C; beta = 0 writes C without reading it (its contents may be anything)."""


@overload(_gemm)
def _gemm_typed(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta):
    gemm, dtype = (_sgemm, np.float32) if c.dtype == types.float32 else (_dgemm, np.float64)

    def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta):
        ints = np.array([m, n, k, lda, ldb, ldc], dtype=np.int32)
        coefficients = np.array([1.0, beta], dtype=dtype)           # alpha, beta
        flags = np.array([trans_a, trans_b], dtype=np.uint8)
        gemm(flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
             coefficients[0:].ctypes, a.ctypes, ints[3:].ctypes, b.ctypes, ints[4:].ctypes,
             coefficients[1:].ctypes, c.ctypes, ints[5:].ctypes)
    return impl


@kernel
def _accumulate_outer(h, da, dW):
    """dW += h^T da  (h: (B, n_in), da: (B, n_out), dW: (n_in, n_out)), written into dW by BLAS
    when the three arrays are C-contiguous of one float dtype: the row-major dW is the
    column-major dW^T, so this is the column-major dW^T += da^T h, ?gemm("N", "T")."""
    B, n_in = h.shape
    n_out = da.shape[1]
    if (h.flags.c_contiguous and da.flags.c_contiguous and dW.flags.c_contiguous
            and h.dtype == dW.dtype and da.dtype == dW.dtype and B > 0):
        _gemm(ord("N"), ord("T"), n_out, n_in, B, da, n_out, h, n_in, dW, n_out, 1.0)
    else:
        dW += h.T @ da


# --------------------------------------------------------------------------
# Products on two cores
#
# A batch-24 step is a chain of products of about a million multiply-adds each (24 x 784 x 200
# takes ~100 us on one core): too small for BLAS's own threads, whose hand-offs cost more
# than they save, but worth halving. In the training step's thread (the main thread) each
# product below is cut into two halves of W's rows, split at a multiple of 16 rows, and Numba's
# prange gives the two halves to two cores when this thread may use two (numba.set_num_threads,
# which train.StepCores sets by measuring), or runs them one after the other when it may use one.
# dL/dW = h^T dL/da and dL/dh = dL/da W^T split along W's rows by themselves (each half writes
# its own rows of dL/dW, its own columns of dL/dh). a = h W + c sums over W's rows, so each half
# writes its partial product h[:, rows] W[rows] into a buffer of its own and the two are added
# after (B x n_out additions). Every product of a step thus reads a half of W on the same core,
# as Adam's pass over W does (adam.adam_kernel_halves cuts the flat tensor near the same row),
# and finds it in that core's cache. Cut into halves of output columns instead, the forward read
# the half of W the other core had used: on the 2-vCPU Xeon the step was 4% (dynamic_rebar) to
# 12% (nvil) slower, and even with W in cache 24 x 200 x 784 took 45.6 against 35.9 us.
#
# Each half is computed by single-threaded BLAS (?gemm, alpha = beta = 1, with the whole
# arrays' leading dimensions) in one or more equal blocks (_blocks_per_half): OpenBLAS
# multiplies a product of at most SMALL_GEMM_MACS multiply-adds with its small-matrix kernels,
# without first copying both operands into packed panels, and at batch 24 that copy costs as
# much as the multiplication. Measured on one core (Zen 4, SciPy's OpenBLAS 0.3.30, float32,
# batch 24), per product, whole or halved against small blocks:
#     784 x 200:  h W 117 -> 69 us,  dL/dW 86 -> 78,  dL/dh 117 -> 87
#     200 x 784:  h W 114 -> 68 us,  dL/dW 87 -> 73,  dL/dh 122 -> 71
#     784 x 1000: h W 587 -> 359 us, dL/dW 402 -> 391, dL/dh 578 -> 370
# Its ("T", "N") kernel, which dL/dh uses, is also only taken for at most SMALL_GEMM_TN_ENTRIES
# output entries. From batch 128 the small kernels are slower than packing (784 x 200: h W
# 441 -> 523 us), so above SMALL_GEMM_MAX_BATCH, or where a product would need more than
# MAX_BLOCKS_PER_HALF blocks, each half is one block. Where OpenBLAS has no small-matrix kernels
# for the CPU, the blocks are packed like whole halves and cost only their extra ?gemm calls
# (8 packed blocks of 24 x 784 x 1000: 605 against 587 us).
#
# The blocks are the same whatever the number of cores, so the results are bit for bit the same
# on one core or two: the choice changes the speed only, and may change during a run.
# The outputs are allocated by the callers (inside a parallel kernel Numba would fill new
# arrays in parallel regions of their own), and the kernels use no array expressions
# (each would become a parallel region too).
#
# Other threads (the evaluation's workers, one per core) keep the one-block products.
# --------------------------------------------------------------------------
SPLIT_MIN_MACS = 200_000        # smaller products stay in one block (halving them gains less than the hand-off)
SPLIT_MIN_SIZE = 32_768         # elementwise passes (Adam, the variance monitor) over smaller tensors stay whole
SMALL_GEMM_MACS = 1_000_000     # OpenBLAS's small-matrix kernels take ?gemm products up to 100^3 multiply-adds
SMALL_GEMM_TN_ENTRIES = 1200    # ... and ("T", "N") products with at most this many output entries
SMALL_GEMM_MAX_BATCH = 64       # above this batch size packing pays (see above)
MAX_BLOCKS_PER_HALF = 16        # beyond this the blocks are too thin to gain (one ?gemm call each)
_MAIN_THREAD = threading.main_thread().ident


def _in_step_thread():
    """Whether kernels called from this thread work in two blocks (the main thread)."""
    return threading.get_ident() == _MAIN_THREAD


def _in_blocks(macs, *arrays):
    """Whether a product of `macs` multiply-adds on these arrays is computed in two blocks: a big
    enough product, on C-contiguous NumPy arrays of one float dtype (what ?gemm takes), in the
    step's thread."""
    if macs < SPLIT_MIN_MACS:
        return False
    dtype = arrays[0].dtype
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
            return False
    return dtype in (np.float32, np.float64) and _in_step_thread()


@functools.lru_cache(maxsize=None)
def _blocks_per_half(n, batch, macs_per_unit, max_units=None):
    """Into how many equal blocks each half of a product's n split units (output columns or
    rows) is cut, so that every block is small enough for OpenBLAS's small-matrix kernels:
    at most SMALL_GEMM_MACS multiply-adds (macs_per_unit per unit) and at most max_units units.
    1 (the whole half) above SMALL_GEMM_MAX_BATCH or where it would take more than
    MAX_BLOCKS_PER_HALF blocks."""
    if batch > SMALL_GEMM_MAX_BATCH:
        return 1
    half = n - _halves(n)           # the larger half: _halves(n) <= n / 2
    for k in range(1, MAX_BLOCKS_PER_HALF + 1):
        size = -(-half // k)
        if size * macs_per_unit <= SMALL_GEMM_MACS and (max_units is None or size <= max_units):
            return k
    return 1


def _row_blocks(B, n_in, n_out):
    """Blocks per half of W's rows for a = h W + c (and its tangent) and dL/dW = h^T dL/da:
    B n_out multiply-adds per row."""
    return _blocks_per_half(n_in, B, B * n_out)


def _input_grad_blocks(B, n_in, n_out):
    """Blocks per half of dL/dh = dL/da W^T, a ("T", "N") product: its rows' multiply-adds and
    output entries both within the small-matrix limits."""
    return _blocks_per_half(n_in, B, B * n_out, SMALL_GEMM_TN_ENTRIES // B)


def _in_halves(a):
    """Whether an elementwise pass over the NumPy array a runs in two halves (adam.adam_kernel_halves,
    train.ema_moments_halves, train.adam_and_moments_halves): a big enough C-contiguous tensor, in
    the step's thread."""
    return a.size >= SPLIT_MIN_SIZE and a.flags.c_contiguous and _in_step_thread()


@kernel
def _halves(n):
    """The two blocks [0, mid) and [mid, n) of n columns: mid a multiple of 16 near n / 2."""
    mid = (n // 2) // 16 * 16
    return mid if mid > 0 else n // 2


@kernel
def _half(n, part):
    """Half `part` of n units: 0 is [0, mid), 1 is [mid, n), with mid = _halves(n)."""
    mid = _halves(n)
    return (0, mid) if part == 0 else (mid, n)


@kernel
def _block(n, part, k, q):
    """Block q of the k equal blocks of half `part` of n units (see _half)."""
    lo, hi = _half(n, part)
    return lo + (hi - lo) * q // k, lo + (hi - lo) * (q + 1) // k


@split_kernel
def _dense_backward_halves(h, W, da, dW, dc, dh, k_dW, k_dh, beta):
    """dense_backward by blocks of W's rows (the inputs), k_dW (k_dh) blocks per half: for rows lo:hi,
    dL/dW[lo:hi] (+)= h[:, lo:hi]^T da  (column-major dW^T[:, lo:hi] (+)= da^T h[:, lo:hi]: ?gemm("N", "T"))
    dL/dh[:, lo:hi] = da W[lo:hi]^T     (column-major dh^T[lo:hi] = W[lo:hi] da^T: ?gemm("T", "N")),
    then dL/dc. beta = 1 adds to dW and dc, 0 writes them; dh is always written (it may arrive
    uninitialised). An empty dh, or empty h, dW and dc (dense_backward_input), drops those products."""
    B, n_out = da.shape
    n_in = W.shape[0]
    if B == 0 and beta == 0.0:
        dW[:, :] = 0.0                      # no rows: the gradient is 0 (dc below)
    for part in prange(2):
        if B > 0 and dW.size:
            for q in range(k_dW):
                lo, hi = _block(n_in, part, k_dW, q)
                if hi > lo:
                    _gemm(ord("N"), ord("T"), n_out, hi - lo, B, da, n_out, h[:, lo:], n_in, dW[lo:, :], n_out, beta)
        if B > 0 and dh.size:
            for q in range(k_dh):
                lo, hi = _block(n_in, part, k_dh, q)
                if hi > lo:
                    _gemm(ord("T"), ord("N"), hi - lo, B, n_out, W[lo:, :], n_out, da, n_out, dh[:, lo:], n_in, 0.0)
    if dc.size:
        if beta == 0.0:
            dc[:] = 0.0
        for r in range(B):
            for j in range(n_out):
                dc[j] += da[r, j]
    return dh


@split_kernel
def _affine_halves(h1, W1, h2, W2, c, out, parts, k):
    """out = h1 W1 + h2 W2 + c (B, n_out) by halves of the weights' rows, k blocks per half; an empty h1
    or W2 (or c) drops its term (dense_forward: h W + c; dense_tangent: h_dot W + h W_dot + c_dot).
    parts (2, B, n_out), which may arrive uninitialised, takes each half's partial product
    parts[p] = sum over the half's rows i of h[:, i] W[i, :], per term; row-major parts[p] is
    column-major parts[p]^T (n_out x B), so a block of rows lo:hi adds  W[lo:hi]^T h[:, lo:hi]^T
    (column-major W^T[:, lo:hi] h^T[lo:hi]: ?gemm("N", "N"), beta = 0 for the half's first).
    Then out = parts[0] + parts[1] + c."""
    n_in, n_out = W1.shape
    B = out.shape[0]
    for part in prange(2):
        beta = 0.0                          # the half's first product writes its buffer
        for q in range(k):
            lo, hi = _block(n_in, part, k, q)
            if hi > lo and B > 0:
                if h1.size:
                    _gemm(ord("N"), ord("N"), n_out, B, hi - lo, W1[lo:, :], n_out, h1[:, lo:], n_in,
                          parts[part], n_out, beta)
                    beta = 1.0
                if W2.size:
                    _gemm(ord("N"), ord("N"), n_out, B, hi - lo, W2[lo:, :], n_out, h2[:, lo:], n_in,
                          parts[part], n_out, beta)
                    beta = 1.0
        if beta == 0.0:                     # no rows in this half (or no batch): its sum is 0
            for r in range(B):
                for j in range(n_out):
                    parts[part, r, j] = 0.0
    for r in range(B):
        for j in range(n_out):
            out[r, j] = parts[0, r, j] + parts[1, r, j]
        if c.size:
            for j in range(n_out):
                out[r, j] += c[j]
    return out
