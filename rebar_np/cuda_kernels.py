"""CUDA kernels: the numba.cuda twin of rebar_np.kernels.

Every public function here has the name and the arguments of its CPU twin in
rebar_np/kernels.py and computes the same thing (the derivation is in the CPU
twin's docstring; only the parallel decomposition differs). Arguments are
rebar_np.device.DeviceArray (a size-0 NumPy or device array still means
"absent", as on the CPU); results are DeviceArrays, except where the CPU twin
returns a Python scalar (sum_squares, dot), which stay host scalars here.
Callers do not import this module: rebar_np.device.K dispatches to it.

Every kernel is a grid-stride loop over its output (rebar_np.device.launch picks
the grid), so any grid computes the same result, and the kernels run unchanged
on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which is how CI tests them.
"""
import math

import numpy as np
from numba import cuda

from .device import DeviceArray, empty, launch, simulator


# --------------------------------------------------------------------------
# Array arithmetic behind DeviceArray's operators (rebar_np.device)
# --------------------------------------------------------------------------

@cuda.jit(device=True)
def apply(op, x, y):
    if op == 0:
        return x + y
    if op == 1:
        return x - y
    if op == 2:
        return x * y
    if op == 3:
        return x / y
    if op == 4:
        return y - x
    if op == 5:
        return y / x
    return y                                   # set

@cuda.jit(device=True)
def index(i, mode, ncol):
    if mode == 0:
        return i
    if mode == 1:
        return i % ncol
    if mode == 2:
        return i // ncol
    return 0

@cuda.jit
def ew_array(x, mx, y, my, out, op, ncol):
    """out[i] = x[i'] op y[i''] over the flat output, operands broadcast by row or column."""
    i = cuda.grid(1)
    while i < out.size:
        out[i] = apply(op, x[index(i, mx, ncol)], y[index(i, my, ncol)])
        i += cuda.gridsize(1)

@cuda.jit
def ew_scalar(x, s, out, op):
    """out[i] = x[i] op s."""
    i = cuda.grid(1)
    while i < out.size:
        out[i] = apply(op, x[i], s)
        i += cuda.gridsize(1)

@cuda.jit
def take_columns(a, start, out):
    i = cuda.grid(1)
    n = out.shape[1]
    while i < out.size:
        out[i // n, i % n] = a[i // n, start + i % n]
        i += cuda.gridsize(1)

@cuda.jit
def sum_rows(a, out):
    """out[n] = sum_j a[n, j]  (one thread per row)."""
    n = cuda.grid(1)
    while n < a.shape[0]:
        acc = 0.0                              # accumulated in float64
        for j in range(a.shape[1]):
            acc += a[n, j]
        out[n] = acc
        n += cuda.gridsize(1)

@cuda.jit
def sum_cols(a, out):
    """out[j] = sum_n a[n, j]  (one thread per column)."""
    j = cuda.grid(1)
    while j < a.shape[1]:
        acc = 0.0
        for n in range(a.shape[0]):
            acc += a[n, j]
        out[j] = acc
        j += cuda.gridsize(1)

@cuda.jit
def sum_all(a, out):
    """out[0] += sum_i a[i]: grid-stride partial sums, one atomic add per thread."""
    i = cuda.grid(1)
    acc = 0.0
    while i < a.size:
        acc += a[i]
        i += cuda.gridsize(1)
    cuda.atomic.add(out, 0, acc)

