"""Pointwise nonlinearities: tanh and sigma with their backward and tangent passes, softplus.

(float32 sigma rows take the one-pass route of kernels/fastmath.py.)
"""
import numpy as np

from .fastmath import _sigmoid_rows_f32, softplus_f32_array
from .jit import arith_kernel, kernel


# --------------------------------------------------------------------------
# Pointwise nonlinearities
#
# Written as explicit loops over 2-D arrays that write into an output of the
# input's dtype: Numba would otherwise promote float32 arrays to float64 when
# they meet a float literal, and the loops fuse what NumPy would do in passes.
# --------------------------------------------------------------------------
def tanh_forward(a):
    """h = tanh(a)  (NumPy's SIMD tanh, in a's dtype)."""
    return np.tanh(a)


@kernel
def tanh_backward(h, dh):
    """dL/da = dL/dh * (1 - h^2), using the forward's output h = tanh(a)."""
    da = np.empty_like(dh)
    n, m = h.shape
    for i in range(n):
        for j in range(m):
            da[i, j] = dh[i, j] * (1.0 - h[i, j] * h[i, j])
    return da


@kernel
def tanh_tangent(h, pre_dot):
    """Forward mode of h = tanh(pre):  h_dot = (1 - h^2) pre_dot."""
    h_dot = np.empty_like(pre_dot)
    n, m = h.shape
    for i in range(n):
        for j in range(m):
            h_dot[i, j] = (1.0 - h[i, j] * h[i, j]) * pre_dot[i, j]
    return h_dot


@kernel
def tanh_backward_tangent(h, h_dot, dh, dh_dot):
    """Forward mode of the backward dpre = dh (1 - h^2):
    dpre_dot = dh_dot (1 - h^2) - 2 h h_dot dh."""
    out = np.empty_like(dh)
    n, m = h.shape
    for i in range(n):
        for j in range(m):
            hij = h[i, j]
            out[i, j] = dh_dot[i, j] * (1.0 - hij * hij) - 2.0 * hij * h_dot[i, j] * dh[i, j]
    return out


def sigmoid_forward(a):
    """s = sigma(a) = 1 / (1 + exp(-a)), computed as 1/2 + tanh(a/2)/2 so it never overflows;
    float32 rows in one pass of the vectorised float32 sigma (fastmath.py:_sigmoid_rows_f32)."""
    if a.dtype == np.float32 and a.ndim == 2:
        return _sigmoid_rows_f32(a)
    s = np.multiply(a, 0.5)         # Python scalars keep a's dtype (NumPy >= 2)
    np.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s




@kernel
def sigmoid_backward(s, ds):
    """dL/da = dL/ds * s (1 - s), using the forward's output s = sigma(a)."""
    da = np.empty_like(ds)
    n, m = s.shape
    for i in range(n):
        for j in range(m):
            da[i, j] = ds[i, j] * s[i, j] * (1.0 - s[i, j])
    return da


@kernel
def sigmoid_backward_tangent(s, s_dot, ds, ds_dot):
    """Forward mode of dL/dt = dL/ds s (1 - s):  ds_dot s (1 - s) + ds (1 - 2 s) s_dot."""
    out = np.empty_like(ds)
    n, m = s.shape
    for i in range(n):
        for j in range(m):
            sij = s[i, j]
            out[i, j] = ds_dot[i, j] * sij * (1.0 - sij) + ds[i, j] * (1.0 - 2.0 * sij) * s_dot[i, j]
    return out


def softplus(a):
    """softplus(a) = log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|)) (stable for any a).

    Its derivative is sigma(a); the backward passes below use that directly.
    float32 arrays take one vectorised pass (fastmath.py:softplus_f32, within 2 ulp; 1.4-1.7x
    faster than these NumPy passes).
    """
    if a.dtype == np.float32 and a.flags.c_contiguous:
        return softplus_f32_array(a)
    e = _log1p_exp_neg_abs(a)
    e += np.maximum(a, 0.0)
    return e


def _exp_neg_abs(a):
    """exp(-|a|) in a's dtype: in (0, 1], so it never overflows."""
    e = _neg_abs(a)
    np.exp(e, out=e)
    return e


@arith_kernel
def _neg_abs(a):
    """-|a| in a's dtype, in one pass (the argument of _exp_neg_abs's exponential)."""
    e = np.empty_like(a)
    af, ef = a.reshape(-1), e.reshape(-1)
    for i in range(af.size):
        ef[i] = -abs(af[i])
    return e


def _log1p_exp_neg_abs(a):
    """log1p(exp(-|a|)) in a's dtype."""
    e = _exp_neg_abs(a)
    np.log1p(e, out=e)
    return e
