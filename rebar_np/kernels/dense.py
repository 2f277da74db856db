"""The dense (affine) layer a = h W + c: forward, backward, tangent, and the Gram-matrix tangent.

Each function states the product it computes; in the training step's thread a big product is
computed by the blocked routes of kernels/blocking.py, which give the same product (see there).
"""
import numpy as np

from .blocking import (_accumulate_outer, _affine_halves, _dense_backward_halves, _in_blocks, _input_grad_blocks,
                       _row_blocks)
from .jit import arith_kernel, kernel


# --------------------------------------------------------------------------
# Dense (affine) layer
# --------------------------------------------------------------------------
def dense_forward(h, W, c):
    """Affine map  a = h W + c.

    h: (B, n_in), W: (n_in, n_out), c: (n_out,)  ->  a: (B, n_out).

    In the training step's thread, a product big enough to share is computed in two halves of
    W's rows (see "Products on two cores" below). Otherwise NumPy's product, not
    Numba's: Numba's calls SciPy's OpenBLAS, and NumPy ships its own, which here (0.3.31
    against SciPy's 0.3.30) does these shapes 1.2-1.3x faster: 24 x 784 x 200 in 93 instead
    of 120 us. For the backward's dL/da W^T it is the other way round (145 against 117 us),
    so the backward kernels keep Numba's.
    """
    B, (n_in, n_out) = h.shape[0], W.shape
    if _in_blocks(B * W.size, h, W, c):
        return _affine_halves(h, W, h, np.empty((0, 0), h.dtype), c, np.empty((B, n_out), h.dtype),
                              np.empty((2, B, n_out), h.dtype), _row_blocks(B, n_in, n_out))
    a = np.matmul(h, W)
    a += c
    return a


def dense_backward(h, W, da, dW, dc, need_dh, accumulate=True):
    """Backward of a = h W + c, given dL/da (B, n_out).

    dL/dW += h^T dL/da          (n_in, n_out)
    dL/dc += sum_n dL/da[n]     (n_out,)
    dL/dh  = dL/da W^T          (B, n_in), returned when need_dh, else an empty (0, 0) array

    accumulate=False writes dL/dW and dL/dc instead of adding to them (= in place of +=), so
    they may arrive uninitialised (np.empty): a gradient's first contribution then costs no
    zeroing pass (1.9 MB of model gradient took 68 us to zero inside a step, out of cache).
    """
    if _in_blocks(h.shape[0] * W.size, h, W, da, dW, dc):
        B, (n_in, n_out) = h.shape[0], W.shape
        return _dense_backward_halves(h, W, da, dW, dc, np.empty(h.shape if need_dh else (0, 0), da.dtype),
                                      _row_blocks(B, n_in, n_out), _input_grad_blocks(B, n_in, n_out),
                                      1.0 if accumulate else 0.0)
    if not accumulate:
        dW.fill(0.0)
        dc.fill(0.0)
    return _dense_backward(h, W, da, dW, dc, need_dh)


@kernel
def _dense_backward(h, W, da, dW, dc, need_dh):
    _accumulate_outer(h, da, dW)
    dc += da.sum(axis=0)
    if need_dh:
        return da @ W.T
    return np.empty((0, 0), dtype=da.dtype)


def dense_backward_input(W, da):
    """Only the input gradient of a = h W + c:  dL/dh = dL/da W^T  (no parameter gradients)."""
    if _in_blocks(da.shape[0] * W.size, W, da):
        B, (n_in, n_out) = da.shape[0], W.shape
        e2, e1 = np.empty((0, 0), da.dtype), np.empty(0, da.dtype)
        return _dense_backward_halves(e2, W, da, e2, e1, np.empty((B, n_in), da.dtype), 1,
                                      _input_grad_blocks(B, n_in, n_out), 1.0)
    return _dense_backward_input(W, da)


@kernel
def _dense_backward_input(W, da):
    return da @ W.T


@arith_kernel
def dense_forward_single(h, W, c):
    """a = h W + c for a single output unit (W: (n_in, 1), c: (1,)), as a (B,) vector: the
    baseline's output layer. One dot product per row here: NumPy's product of a (24, 100) matrix
    with one column goes through OpenBLAS's ?gemm, and took 10.6 us inside a training step for
    2,400 multiply-adds."""
    B, n_in = h.shape
    a = np.empty(B, dtype=h.dtype)
    for i in range(B):
        acc = c[0]
        for j in range(n_in):
            acc += h[i, j] * W[j, 0]
        a[i] = acc
    return a


@arith_kernel
def dense_backward_single(h, W, da, dW, dc):
    """Backward of dense_forward_single given dL/da (B,):

    dL/dW += h^T dL/da              (n_in, 1)
    dL/dc += sum_n dL/da[n]         (1,)
    dL/dh  = dL/da W^T              (B, n_in), the outer product of dL/da and W's column, returned.
    """
    B, n_in = h.shape
    dh = np.empty_like(h)
    total = dc[0]
    for i in range(B):
        total += da[i]
        for j in range(n_in):
            dW[j, 0] += h[i, j] * da[i]
            dh[i, j] = da[i] * W[j, 0]
    dc[0] = total
    return dh


def dense_tangent(h_dot, W, h, W_dot, c_dot):
    """Forward mode of a = h W + c:  a_dot = h_dot W + h W_dot + c_dot.

    Pass empty (0, 0) arrays for h_dot or W_dot (and an empty c_dot) to drop a term:
    the input-only tangent is h_dot W, the parameter-direction tangent h W_dot + c_dot.
    (NumPy's products, as in dense_forward, or two halves of W's rows.)
    """
    B = h_dot.shape[0] if h_dot.size else h.shape[0]
    if _in_blocks(B * W.size, h_dot, W, h, W_dot, c_dot):
        n_in, n_out = W.shape
        return _affine_halves(h_dot, W, h, W_dot, c_dot, np.empty((B, n_out), W.dtype),
                              np.empty((2, B, n_out), W.dtype), _row_blocks(B, n_in, n_out))
    if h_dot.size:
        a_dot = np.matmul(h_dot, W)
        if W_dot.size:
            a_dot += np.matmul(h, W_dot)
    else:
        a_dot = np.matmul(h, W_dot)
    if c_dot.size:
        a_dot += c_dot
    return a_dot


def gram_tangent(h, d):
    """h (h^T d) (B, n_out), for h (B, n_in) and d (B, n_out), through the Gram matrix h h^T (B, B).

    For a = h W + c whose weight gradient is G_W = h^T d, this is h G_W, the tangent of a along
    its own weight gradient, without forming G_W: B^2 (n_in + n_out) multiply-adds instead of
    B n_in n_out, fewer at batch 24 (24 x 784 x 200: 0.57 against 3.8 million).
    Inner products of two such gradients follow from it too (REBAR's variance objective):
    <h^T d, h^T e> = <e, h h^T d>.
    Numba's products (SciPy's ?gemm with a transpose flag): NumPy's h @ h.T takes its ?syrk
    path, 17 against 9 us for 24 x 784."""
    return _gram_tangent(h, d)


@kernel
def _gram_tangent(h, d):
    return (h @ h.T) @ d
