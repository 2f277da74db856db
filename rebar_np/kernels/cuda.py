"""CUDA kernels: the numba.cuda twin of rebar_np.kernels.

Every public function here has the name and the arguments of its CPU twin in
rebar_np.kernels and computes the same thing (the derivation is in the CPU
twin's docstring; only the parallel decomposition differs). Arguments are
rebar_np.kernels.dispatch.DeviceArray (a size-0 NumPy or device array still means
"absent", as on the CPU); results are DeviceArrays, except where the CPU twin
returns a Python scalar (sum_squares, dot), which stay host scalars here.
Passes and estimators do not import this module: rebar_np.kernels.dispatch.K dispatches to it
(the optimizer and the training loop pick the twins of their own kernels here).

Every kernel is a grid-stride loop over its output (rebar_np.kernels.dispatch.launch picks
the grid), so any grid computes the same result, and the kernels run unchanged
on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which is how CI tests them.
"""
import math

import numpy as np
from numba import cuda, float64

from .dispatch import empty, launch, simulator
from .noise import BITS_TO_UNIFORM, U_MAX, U_MIN
from .tables import GROUP_BITS
from .tables import binary_product_groups, binary_product_pays  # noqa: F401  (host helpers, the same on both)


# --------------------------------------------------------------------------
# Array arithmetic behind DeviceArray's operators (rebar_np.kernels.dispatch)
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
            acc += float64(a[n, j])              # float64 on the simulator too
        out[n] = acc
        n += cuda.gridsize(1)

@cuda.jit
def sum_cols(a, out, accumulate):
    """out[j] (+)= sum_n a[n, j]  (one thread per column): a.sum(axis=0), and a bias gradient."""
    j = cuda.grid(1)
    while j < a.shape[1]:
        acc = 0.0
        for n in range(a.shape[0]):
            acc += float64(a[n, j])
        if accumulate:
            out[j] += acc
        else:
            out[j] = acc
        j += cuda.gridsize(1)

@cuda.jit
def sum_all(a, out):
    """out[0] += sum_i a[i]: grid-stride partial sums, one atomic add per thread."""
    i = cuda.grid(1)
    acc = 0.0
    while i < a.size:
        acc += float64(a[i])
        i += cuda.gridsize(1)
    cuda.atomic.add(out, 0, acc)


def sum_total(a):
    """sum_i a_i of a DeviceArray in float64, as a one-element device array (no host sync)."""
    out = _zeros1(np.float64)
    blocks, threads = launch(a.size)
    sum_all[min(blocks, 64), threads](a.flat(), out)
    return out


# Helpers of the twins below: an output shaped like an input, and a launch of a
# grid-stride kernel over an output's elements.
#
# Sums are accumulated in float64 by casting the first operand (acc += float64(x) ...):
# on a GPU Numba would promote float32 meeting acc = 0.0 anyway, but the simulator
# computes with NumPy scalars, where float32 + a Python float stays float32 (NumPy 2).
def _like(a):
    return empty(a.shape, a.dtype)


def _run(kern, out, *args):
    kern[launch(out.size)](*args)
    return out


def _zeros1(dtype):
    """A one-element device accumulator, zeroed (for atomic sums)."""
    return cuda.to_device(np.zeros(1, dtype))


@cuda.jit(device=True)
def _sigmoid(t):
    """sigma(t) = 1/2 + tanh(t/2)/2, as the CPU's sigmoid_forward: never overflows."""
    return 0.5 + 0.5 * math.tanh(0.5 * t)


@cuda.jit(device=True)
def _softplus(a):
    """softplus(a) = max(a, 0) + log1p(exp(-|a|)), stable for any a."""
    return max(a, 0.0) + math.log1p(math.exp(-abs(a)))


# --------------------------------------------------------------------------
# Dense (affine) layer
#
# The products go through one shared-memory tiled GEMM, C (+)= op(A) op(B):
#   a = h W (+ c),  dW += h^T da,  dh = da W^T,  a_dot = h_dot W + h W_dot.
# The bias add is DeviceArray's row broadcast; the bias gradient adds sum_cols in place.
# --------------------------------------------------------------------------
TILE = 4 if simulator() else 16          # the simulator runs a Python thread per CUDA thread


@cuda.jit
def gemm(A, B, C, trans_a, trans_b, accumulate):
    """C (+)= op(A) op(B), op(X) = X^T when its flag is set; float64 accumulation.

    One TILE x TILE block computes one tile of C (thread (ty, tx) its element
    (i, j)), walking the shared dimension K a tile at a time: each thread stages
    one element of op(A) and one of op(B) in shared memory, zero outside the
    matrices, so shapes need not be multiples of TILE."""
    sA = cuda.shared.array((TILE, TILE), float64)
    sB = cuda.shared.array((TILE, TILE), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty                 # row of C
    j = cuda.blockIdx.x * TILE + tx                 # column of C
    n, m = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    acc = 0.0
    for k0 in range(0, K, TILE):
        ka, kb = k0 + tx, k0 + ty
        if i < n and ka < K:
            sA[ty, tx] = A[ka, i] if trans_a else A[i, ka]     # op(A)[i, ka]
        else:
            sA[ty, tx] = 0.0
        if j < m and kb < K:
            sB[ty, tx] = B[j, kb] if trans_b else B[kb, j]     # op(B)[kb, j]
        else:
            sB[ty, tx] = 0.0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()
    if i < n and j < m:
        if accumulate:
            C[i, j] += acc
        else:
            C[i, j] = acc


def _gemm(A, B, C, trans_a=False, trans_b=False, accumulate=False):
    """C (+)= op(A) op(B) on DeviceArrays; a 2-D grid of TILE x TILE blocks covering C."""
    n, m = C.shape
    if n == 0 or m == 0:
        return C                                                # nothing to compute (and no empty grid)
    grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE)      # x: column tiles, y: row tiles
    gemm[grid, (TILE, TILE)](A.d, B.d, C.d, int(trans_a), int(trans_b), int(accumulate))
    return C


def dense_forward(h, W, c):
    """Affine map  a = h W + c   (h: (B, n_in), W: (n_in, n_out), c: (n_out,))."""
    a = _gemm(h, W, empty((h.shape[0], W.shape[1]), np.result_type(h.dtype, W.dtype)))
    a += c                                                      # DeviceArray's row broadcast
    return a


def dense_backward(h, W, da, dW, dc, need_dh, accumulate=True):
    """Backward of a = h W + c:  dW += h^T da,  dc += sum_n da[n] (= for both when not accumulate),
    dh = da W^T returned when need_dh, else an empty (0, 0) DeviceArray."""
    _gemm(h, da, dW, trans_a=True, accumulate=accumulate)
    sum_cols[launch(da.shape[1])](da.d, dc.d, int(accumulate))  # dc (+)= column sums, in place
    if need_dh:
        return dense_backward_input(W, da)
    return empty((0, 0), da.dtype)


def dense_backward_input(W, da):
    """Only the input gradient of a = h W + c:  dh = da W^T."""
    return _gemm(da, W, empty((da.shape[0], W.shape[0]), np.result_type(da.dtype, W.dtype)), trans_b=True)


def dense_forward_single(h, W, c):
    """a = h W + c for a single output unit (W: (n_in, 1)), as a (B,) vector."""
    return dense_forward(h, W, c).reshape(h.shape[0])


def dense_backward_single(h, W, da, dW, dc):
    """Backward of dense_forward_single given dL/da (B,): dW += h^T da, dc += sum_n da[n];
    returns dh = da W^T (B, n_in)."""
    return dense_backward(h, W, da.reshape(da.shape[0], 1), dW, dc, True)


def dense_tangent(h_dot, W, h, W_dot, c_dot):
    """Forward mode of a = h W + c:  a_dot = h_dot W + h W_dot + c_dot, a term dropped
    when its array is empty (size 0)."""
    if h_dot.size:
        a_dot = _gemm(h_dot, W, empty((h_dot.shape[0], W.shape[1]), np.result_type(h_dot.dtype, W.dtype)))
        if W_dot.size:
            _gemm(h, W_dot, a_dot, accumulate=True)
    else:
        a_dot = _gemm(h, W_dot, empty((h.shape[0], W_dot.shape[1]), np.result_type(h.dtype, W_dot.dtype)))
    if c_dot.size:
        a_dot += c_dot
    return a_dot


def gram_tangent(h, d):
    """h (h^T d) through the Gram matrix h h^T (B, B) (see the CPU kernel)."""
    B = h.shape[0]
    gram = _gemm(h, h, empty((B, B), h.dtype), trans_b=True)
    return _gemm(gram, d, empty((B, d.shape[1]), np.result_type(h.dtype, d.dtype)))


# --------------------------------------------------------------------------
# Pointwise nonlinearities
#
# One grid-stride loop over the flat arrays (all of one shape) per function;
# the output has the input's dtype, the arithmetic is done in float64 where a
# float literal meets a float32 value (as in the CPU's Numba loops).
# --------------------------------------------------------------------------
@cuda.jit
def _tanh(a, h):
    i = cuda.grid(1)
    while i < h.size:
        h[i] = math.tanh(a[i])
        i += cuda.gridsize(1)


def tanh_forward(a):
    """h = tanh(a)."""
    h = _like(a)
    return _run(_tanh, h, a.flat(), h.flat())


@cuda.jit
def _tanh_backward(h, dh, da):
    i = cuda.grid(1)
    while i < da.size:
        da[i] = dh[i] * (1.0 - h[i] * h[i])
        i += cuda.gridsize(1)


def tanh_backward(h, dh):
    """dL/da = dL/dh (1 - h^2), from the forward's output h = tanh(a)."""
    da = _like(dh)
    return _run(_tanh_backward, da, h.flat(), dh.flat(), da.flat())


def tanh_tangent(h, pre_dot):
    """Forward mode of h = tanh(pre):  h_dot = (1 - h^2) pre_dot (tanh_backward's arithmetic)."""
    h_dot = _like(pre_dot)
    return _run(_tanh_backward, h_dot, h.flat(), pre_dot.flat(), h_dot.flat())


@cuda.jit
def _tanh_backward_tangent(h, h_dot, dh, dh_dot, out):
    i = cuda.grid(1)
    while i < out.size:
        out[i] = dh_dot[i] * (1.0 - h[i] * h[i]) - 2.0 * h[i] * h_dot[i] * dh[i]
        i += cuda.gridsize(1)


def tanh_backward_tangent(h, h_dot, dh, dh_dot):
    """Forward mode of dpre = dh (1 - h^2):  dpre_dot = dh_dot (1 - h^2) - 2 h h_dot dh."""
    out = _like(dh)
    return _run(_tanh_backward_tangent, out, h.flat(), h_dot.flat(), dh.flat(), dh_dot.flat(), out.flat())


@cuda.jit
def _sigmoid_forward(a, s):
    i = cuda.grid(1)
    while i < s.size:
        s[i] = _sigmoid(a[i])
        i += cuda.gridsize(1)


def sigmoid_forward(a):
    """s = sigma(a) = 1/2 + tanh(a/2)/2."""
    s = _like(a)
    return _run(_sigmoid_forward, s, a.flat(), s.flat())


@cuda.jit
def _sigmoid_backward(s, ds, da):
    i = cuda.grid(1)
    while i < da.size:
        da[i] = ds[i] * s[i] * (1.0 - s[i])
        i += cuda.gridsize(1)


def sigmoid_backward(s, ds):
    """dL/da = dL/ds s (1 - s), from the forward's output s = sigma(a)."""
    da = _like(ds)
    return _run(_sigmoid_backward, da, s.flat(), ds.flat(), da.flat())


@cuda.jit
def _sigmoid_backward_tangent(s, s_dot, ds, ds_dot, out):
    i = cuda.grid(1)
    while i < out.size:
        out[i] = ds_dot[i] * s[i] * (1.0 - s[i]) + ds[i] * (1.0 - 2.0 * s[i]) * s_dot[i]
        i += cuda.gridsize(1)


def sigmoid_backward_tangent(s, s_dot, ds, ds_dot):
    """Forward mode of dL/dt = dL/ds s (1 - s):  ds_dot s (1 - s) + ds (1 - 2 s) s_dot."""
    out = _like(ds)
    return _run(_sigmoid_backward_tangent, out, s.flat(), s_dot.flat(), ds.flat(), ds_dot.flat(), out.flat())


@cuda.jit
def _softplus_forward(a, out):
    i = cuda.grid(1)
    while i < out.size:
        out[i] = _softplus(a[i])
        i += cuda.gridsize(1)


def softplus(a):
    """softplus(a) = log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|))."""
    out = _like(a)
    return _run(_softplus_forward, out, a.flat(), out.flat())


# --------------------------------------------------------------------------
# Bernoulli log-likelihood (hard and relaxed values alike)
#
# The row sums take one thread per row; the backward passes are flat loops
# with the row's upstream gradient dll[i // m] (m values per row).
# --------------------------------------------------------------------------
@cuda.jit
def _bernoulli_loglik(y, a, ll, sig):
    """Per row n: ll[n] = sum_j [y a - max(a, 0) - log1p(e)] and sig = 1 / (1 + e) (a >= 0)
    or e / (1 + e) (a < 0), from one exponential e = exp(-|a|) per entry (as on the CPU)."""
    n = cuda.grid(1)
    while n < a.shape[0]:
        acc = 0.0
        for j in range(a.shape[1]):
            aj = a[n, j]
            e = math.exp(-abs(aj))
            acc += float64(y[n, j]) * aj - max(aj, 0.0) - math.log1p(e)
            r = 1.0 / (1.0 + e)
            sig[n, j] = r if aj >= 0 else e * r
        ll[n] = acc
        n += cuda.gridsize(1)


def bernoulli_loglik_forward(y, a):
    """(ll, sig): log B(y; a) = sum_j [y_j a_j - softplus(a_j)] per row (accumulated in float64,
    stored in a's dtype) and the backward's cache sig = sigma(a)."""
    ll, sig = empty((a.shape[0],), a.dtype), _like(a)
    _bernoulli_loglik[launch(a.shape[0])](y.d, a.d, ll.d, sig.d)
    return ll, sig


@cuda.jit
def _softplus_rows(a, out):
    n = cuda.grid(1)
    while n < a.shape[0]:
        acc = 0.0
        for j in range(a.shape[1]):
            acc += _softplus(float64(a[n, j]))
        out[n] = acc
        n += cuda.gridsize(1)


def softplus_rows(a):
    """sum_j softplus(a_j) for each row of a (B, n), float64 (B,)."""
    out = empty((a.shape[0],), np.float64)
    _softplus_rows[launch(a.shape[0])](a.d, out.d)
    return out


@cuda.jit
def _loglik_rows(y, a, k, out):
    r = cuda.grid(1)
    while r < a.shape[0]:
        acc = 0.0
        for j in range(a.shape[1]):
            aj = float64(a[r, j])
            acc += float64(y[r // k, j]) * aj - _softplus(aj)
        out[r] = acc
        r += cuda.gridsize(1)


def loglik_rows(y, a, k):
    """log B(y; a) = sum_j [y_j a_j - softplus(a_j)] per row of a, float64 (R,), y holding one row
    per k consecutive rows of a."""
    out = empty((a.shape[0],), np.float64)
    _loglik_rows[launch(a.shape[0])](y.d, a.d, int(k), out.d)
    return out


@cuda.jit
def _bernoulli_loglik_backward(y, sig, dll, da, m):
    i = cuda.grid(1)
    while i < da.size:
        da[i] = dll[i // m] * (y[i] - sig[i])
        i += cuda.gridsize(1)


def bernoulli_loglik_backward(y, sig, dll):
    """d log B / d a = y - sigma(a), so dL/da = dll[:, None] (y - sig)."""
    da = _like(sig)
    return _run(_bernoulli_loglik_backward, da, y.flat(), sig.flat(), dll.d, da.flat(), sig.shape[1])


@cuda.jit
def _bernoulli_loglik_backward_tangent(y_dot, has_y, sig, a_dot, dll, out, m):
    i = cuda.grid(1)
    while i < out.size:
        yd = y_dot[i] if has_y else 0.0
        out[i] = dll[i // m] * (yd - sig[i] * (1.0 - sig[i]) * a_dot[i])
        i += cuda.gridsize(1)


def bernoulli_loglik_backward_tangent(y_dot, sig, a_dot, dll):
    """Forward mode of dL/da = dll (y - sigma(a)), dll fixed:  dll (y_dot - sig (1 - sig) a_dot).
    An empty y_dot means y is fixed (sig stands in for it in the launch, unread)."""
    out = _like(sig)
    has_y = y_dot.size > 0
    return _run(_bernoulli_loglik_backward_tangent, out, (y_dot if has_y else sig).flat(), int(has_y),
                sig.flat(), a_dot.flat(), dll.d, out.flat(), sig.shape[1])


@cuda.jit
def _bernoulli_loglik_backward_sample(a, dll, dy, m):
    i = cuda.grid(1)
    while i < dy.size:
        dy[i] = dll[i // m] * a[i]
        i += cuda.gridsize(1)


def bernoulli_loglik_backward_sample(a, dll):
    """d log B / d y = a, so dL/dy = dll[:, None] a."""
    dy = _like(a)
    return _run(_bernoulli_loglik_backward_sample, dy, a.flat(), dll.d, dy.flat(), a.shape[1])


# --------------------------------------------------------------------------
# Noise and samplers (docs/math.md, section "Noise and samples")
# --------------------------------------------------------------------------
@cuda.jit
def _logistic_noise(u, z0):
    i = cuda.grid(1)
    while i < z0.size:
        v = min(max(float64(u[i]), U_MIN), U_MAX)          # clipped in float64
        z0[i] = math.log(v) - math.log1p(-v)
        i += cuda.gridsize(1)


def logistic_noise(u):
    """z0 = log u - log(1 - u), u clipped into [U_MIN, U_MAX] in float64; u's dtype."""
    z0 = _like(u)
    return _run(_logistic_noise, z0, u.flat(), z0.flat())


@cuda.jit
def _hard_sample_forward(a, z0, b):
    i = cuda.grid(1)
    while i < b.size:
        b[i] = 1.0 if a[i] + z0[i] > 0.0 else 0.0
        i += cuda.gridsize(1)


def hard_sample_forward(a, z0):
    """b = 1[a + z0 > 0]: a Bernoulli(sigma(a)) sample (no backward)."""
    b = _like(a)
    return _run(_hard_sample_forward, b, a.flat(), z0.flat(), b.flat())


@cuda.jit
def _relaxed_sample_forward(a, z0, inv_lam, shift, s):
    i = cuda.grid(1)
    while i < s.size:
        s[i] = _sigmoid((a[i] + z0[i]) * inv_lam + a[i] * shift)
        i += cuda.gridsize(1)


def relaxed_sample_forward(a, z0, lam, improved):
    """s = sigma(z / lam) (plain) or sigma(z / lam + a lam / (lam + 1)) (improved), z = a + z0.
    (The CPU rounds the logit t to a's dtype before the sigmoid; here t stays in float64.)"""
    shift = lam / (lam + 1.0) if improved else 0.0
    s = _like(a)
    return _run(_relaxed_sample_forward, s, a.flat(), z0.flat(), 1.0 / lam, float(shift), s.flat())


@cuda.jit
def _relaxed_sample_backward(s, lam, shift, ds, dz_da, da):
    i = cuda.grid(1)
    while i < da.size:
        da[i] = ds[i] * s[i] * (1.0 - s[i]) * (dz_da[i] / lam + shift)
        i += cuda.gridsize(1)


def relaxed_sample_backward(s, lam, improved, ds, dz_da):
    """dL/da = ds s (1 - s) [dz/da / lam (+ lam / (lam + 1) when improved)]."""
    shift = lam / (lam + 1.0) if improved else 0.0
    da = _like(ds)
    return _run(_relaxed_sample_backward, da, s.flat(), float(lam), float(shift), ds.flat(), dz_da.flat(),
                da.flat())


@cuda.jit
def _relaxed_logits_backward(dt, s, sig, k1, w, da):
    i = cuda.grid(1)
    while i < da.size:
        da[i] = dt[i] * k1 - w * (s[i] - sig[i])
        i += cuda.gridsize(1)


def relaxed_logits_backward(dt, s, sig, k1, w):
    """da = dt k1 - w (s - sigma(a)): through t (dt/da = k1) and through w times -log B(s; a)."""
    da = _like(dt)
    return _run(_relaxed_logits_backward, da, dt.flat(), s.flat(), sig.flat(), float(k1), float(w), da.flat())


@cuda.jit
def _relaxed_logits_backward_tangent(dt, dt_dot, s_dot, sig, a_dot, k1, dk1, out):
    i = cuda.grid(1)
    while i < out.size:
        out[i] = dt_dot[i] * k1 + dt[i] * dk1 - (s_dot[i] - sig[i] * (1.0 - sig[i]) * a_dot[i])
        i += cuda.gridsize(1)


def relaxed_logits_backward_tangent(dt, dt_dot, s_dot, sig, a_dot, k1, dk1):
    """Forward mode of relaxed_logits_backward:  da_dot = dt_dot k1 + dt dk1 - (s_dot - sig (1 - sig) a_dot)."""
    out = _like(dt)
    return _run(_relaxed_logits_backward_tangent, out, dt.flat(), dt_dot.flat(), s_dot.flat(), sig.flat(),
                a_dot.flat(), float(k1), float(dk1), out.flat())


@cuda.jit
def _relaxed_sample_tangent(s, a, z0, a_dot, has_a, lam, c, dc, s_dot, t_exp):
    i = cuda.grid(1)
    while i < s_dot.size:
        te = -(a[i] + z0[i]) / lam + a[i] * dc                        # dt/dtau|explicit
        td = te + (a_dot[i] * (1.0 / lam + c) if has_a else 0.0)      # + through the logits
        t_exp[i] = te
        s_dot[i] = s[i] * (1.0 - s[i]) * td
        i += cuda.gridsize(1)


def relaxed_sample_tangent(s, a, z0, a_dot, lam, improved):
    """Forward mode of s = sigma(t) in tau = log lam (derivation in the CPU twin):
    (s_dot, t_explicit). An empty a_dot means the logits do not depend on tau
    (a stands in for it in the launch, unread)."""
    c = lam / (lam + 1.0) if improved else 0.0
    dc = lam / ((lam + 1.0) * (lam + 1.0)) if improved else 0.0
    has_a = a_dot.size > 0
    s_dot, t_exp = _like(s), _like(s)
    _run(_relaxed_sample_tangent, s_dot, s.flat(), a.flat(), z0.flat(), (a_dot if has_a else a).flat(),
         int(has_a), float(lam), float(c), float(dc), s_dot.flat(), t_exp.flat())
    return s_dot, t_exp


@cuda.jit
def _dz_cond(a, u, b, out):
    i = cuda.grid(1)
    while i < out.size:
        up = _sigmoid(-float64(a[i]))                       # u' = sigma(-a), float64
        ui = min(max(float64(u[i]), U_MIN), U_MAX)
        if b[i] > 0.5:
            out[i] = 1.0 - up / ui                          # b = 1
        else:
            out[i] = 1.0 - (1.0 - up) / (1.0 - ui)          # b = 0
        i += cuda.gridsize(1)


def dz_cond_dlogits(a, u, b):
    """REBAR's conditional-path derivative dz~/da: 1 - u'/u (b = 1) or 1 - (1 - u')/(1 - u) (b = 0),
    u' = sigma(-a); u clipped as in logistic_noise; a's dtype."""
    out = _like(a)
    return _run(_dz_cond, out, a.flat(), u.flat(), b.flat(), out.flat())


def mean_sample_forward(a):
    """Mean-field value mu = sigma(a) (the deterministic pass of MuProp)."""
    return sigmoid_forward(a)


@cuda.jit
def _threshold_samples(bits, thr, k, b):
    i = cuda.grid(1)
    H = bits.shape[1]
    while i < b.size:
        r, j = i // H, i % H
        b[r, j] = 1.0 if (float64(bits[r, j]) + 0.5) * BITS_TO_UNIFORM > thr[r // k, j] else 0.0
        i += cuda.gridsize(1)


def threshold_samples(bits, thr, k):
    """b[r, j] = 1[(bits[r, j] + 1/2) 2^-32 > thr[r // k, j]] in thr's dtype (k consecutive rows
    of bits per row of thr)."""
    b = empty(bits.shape, thr.dtype)
    return _run(_threshold_samples, b, bits.d, thr.d, int(k), b.d)


# --------------------------------------------------------------------------
# Products whose left factor is a hard sample: table sums (see the CPU twins)
# --------------------------------------------------------------------------
@cuda.jit
def _binary_product_table(W, T):
    i = cuda.grid(1)
    M, n_out = T.shape[1], T.shape[2]
    while i < T.size:
        g, m, j = i // (M * n_out), (i // n_out) % M, i % n_out
        t = 0.0
        for q in range(GROUP_BITS):
            row = GROUP_BITS * g + q
            if row < W.shape[0]:
                t += W[row, j] if (m >> q) & 1 else -W[row, j]
        T[g, m, j] = t
        i += cuda.gridsize(1)


def binary_product_table(W):
    """T[g, m] = sum_{i < GROUP_BITS} (2 m_i - 1) W[GROUP_BITS g + i], (G, 2^GROUP_BITS, n_out) in W's dtype."""
    n_in, n_out = W.shape
    T = empty((binary_product_groups(n_in), 1 << GROUP_BITS, n_out), W.dtype)
    return _run(_binary_product_table, T, W.d, T.d)


@cuda.jit
def _group_codes(b, codes):
    i = cuda.grid(1)
    G = codes.shape[1]
    while i < codes.size:
        r, g = i // G, i % G
        code = 0
        for q in range(GROUP_BITS):
            j = GROUP_BITS * g + q
            if j < b.shape[1] and b[r, j] > 0.5:
                code |= 1 << q
        codes[r, g] = code
        i += cuda.gridsize(1)


def group_codes(b, G):
    """codes[r, g] = sum_q 1[b[r, GROUP_BITS g + q] > 1/2] 2^q, (R, G) int32."""
    codes = empty((b.shape[0], int(G)), np.int32)
    return _run(_group_codes, codes, b.d, codes.d)


def binary_product_loglik(codes, T, c, y, k):
    """loglik_rows(y, binary_product(codes, T, c), k), float64 (R,) (the CPU's one pass as two kernels)."""
    return loglik_rows(y, binary_product(codes, T, c), k)


def sample_rows(bits, a, G):
    """(b, codes, ll): hard samples b = 1[u > sigma(-a)] at noise bits, their group codes and
    log B(b; a) per row, float64 (R,) (the CPU's one pass as its three kernels)."""
    b = threshold_samples(bits, sigmoid_forward(-a), 1)
    return b, group_codes(b, G), loglik_rows(b, a, 1)


@cuda.jit
def _binary_product(codes, T, c, a):
    i = cuda.grid(1)
    n_out = a.shape[1]
    while i < a.size:
        r, j = i // n_out, i % n_out
        t = c[j]
        for g in range(codes.shape[1]):
            t += T[g, codes[r, g], j]
        a[r, j] = t
        i += cuda.gridsize(1)


def binary_product(codes, T, c):
    """a = (2 b - 1) W + c = c + sum_g T[g, codes[:, g]]  (R, n_out)."""
    a = empty((codes.shape[0], T.shape[2]), T.dtype)
    return _run(_binary_product, a, codes.d, T.d, c.d, a.d)


# --------------------------------------------------------------------------
# Reductions used by estimators and evaluation
#
# Whole-array sums: grid-stride float64 partial sums, one atomic add per thread
# into a one-element accumulator. Row sums: one thread per row.
# --------------------------------------------------------------------------
@cuda.jit
def _leave_one_out_center(f, total, out):
    i = cuda.grid(1)
    B = f.size
    while i < B:
        out[i] = f[i] - (total[0] - f[i]) / (B - 1)
        i += cuda.gridsize(1)


def leave_one_out_center(f):
    """f_n - mean_{m != n} f_m = f_n - (sum_m f_m - f_n) / (B - 1)  (B >= 2)."""
    out = _like(f)
    return _run(_leave_one_out_center, out, f.flat(), sum_total(f), out.flat())


@cuda.jit
def _sum_products(a, b, out):
    """out[0] += sum_i a_i b_i."""
    i = cuda.grid(1)
    acc = 0.0
    while i < a.size:
        acc += float64(a[i]) * b[i]
        i += cuda.gridsize(1)
    cuda.atomic.add(out, 0, acc)


def _sum_of_products(a, b):
    out = _zeros1(np.float64)
    blocks, threads = launch(a.size)
    _sum_products[min(blocks, 64), threads](a.flat(), b.flat(), out)
    return float(out.copy_to_host()[0])


def sum_squares(a):
    """sum_i a_i^2 over every entry, accumulated in float64; a host float."""
    return _sum_of_products(a, a)


def dot(a, b):
    """sum_i a_i b_i over every entry of two arrays of one shape, float64; a host float."""
    return _sum_of_products(a, b)


@cuda.jit
def _subtract_scaled(g, alpha, e, out):
    i = cuda.grid(1)
    squares, products = 0.0, 0.0
    while i < g.size:
        gi = g[i] - alpha * e[i]
        g[i] = gi
        squares += float64(gi) * gi
        products += float64(gi) * e[i]
        i += cuda.gridsize(1)
    cuda.atomic.add(out, 0, squares)
    cuda.atomic.add(out, 1, products)


def subtract_scaled(g, alpha, e):
    """g <- g - alpha e in place; returns (sum g^2, sum g e) of the new g, float64 host floats
    (alpha in g's dtype, as on the CPU)."""
    out = cuda.to_device(np.zeros(2, np.float64))
    blocks, threads = launch(g.size)
    _subtract_scaled[min(blocks, 64), threads](g.flat(), g.dtype.type(alpha), e.flat(), out)
    squares, products = out.copy_to_host()
    return float(squares), float(products)


@cuda.jit
def _per_example_dot(s, a, k, out):
    r = cuda.grid(1)
    while r < s.shape[0]:
        acc = 0.0
        e = r // k                                          # the example of row r
        for j in range(s.shape[1]):
            acc += float64(s[r, j]) * a[e, j]
        out[r] = acc
        r += cuda.gridsize(1)


def per_example_dot(s, a, k):
    """d[r] = sum_j s[r, j] a[r // k, j], float64 (R,) (any k: the CPU's three cases are one loop here)."""
    out = empty((s.shape[0],), np.float64)
    _per_example_dot[launch(s.shape[0])](s.d, a.d, int(k), out.d)
    return out


@cuda.jit
def _logmeanexp_rows(F, out):
    n = cuda.grid(1)
    k = F.shape[1]
    while n < F.shape[0]:
        m = -math.inf
        for i in range(k):
            m = max(m, float64(F[n, i]))
        safe = m if not (math.isinf(m) or math.isnan(m)) else 0.0     # as np.where(isfinite(m), m, 0)
        acc = 0.0
        for i in range(k):
            acc += math.exp(float64(F[n, i]) - safe)
        # log(0) = -inf (a row of -inf), written out: the simulator's math.log raises on 0
        out[n] = safe + (math.log(acc / k) if acc != 0.0 else -math.inf)
        n += cuda.gridsize(1)


def logmeanexp_rows(F):
    """log (1/k sum_i exp F[n, i]) per row n of F (B, k), as m_n + log mean exp(F - m_n), float64."""
    out = empty((F.shape[0],), np.float64)
    _logmeanexp_rows[launch(F.shape[0])](F.d, out.d)
    return out


# --------------------------------------------------------------------------
# Optimizer and training-loop kernels
#
# Twins of rebar_np.training.adam.adam_kernel and rebar_np.training.train.ema_moments / adam_and_moments / all_finite.
# --------------------------------------------------------------------------
@cuda.jit
def _adam(p, g, m, v, lr_t, beta1, beta2, eps, bad):
    i = cuda.grid(1)
    nbad = 0
    one = beta1 / beta1                     # 1 in the scalars' dtype: float32 stays float32, as on the CPU
    while i < p.size:
        gi = g[i]
        if not _finite(gi):
            nbad += 1
        m[i] = beta1 * m[i] + (one - beta1) * gi
        v[i] = beta2 * v[i] + (one - beta2) * gi * gi
        p[i] -= lr_t * m[i] / (math.sqrt(v[i]) + eps)
        i += cuda.gridsize(1)
    if nbad:
        cuda.atomic.add(bad, 0, nbad)


def adam_kernel(p, g, m, v, lr_t, beta1, beta2, eps):
    """One Adam update in place:  m <- beta1 m + (1 - beta1) g,  v <- beta2 v + (1 - beta2) g^2,
    p <- p - lr_t m / (sqrt(v) + eps); the scalars arrive in the arrays' dtype (see adam_update).
    Returns the number of non-finite entries of g (a host int)."""
    bad = _zeros1(np.int64)
    _adam[launch(p.size)](p.flat(), g.flat(), m.flat(), v.flat(), lr_t, beta1, beta2, eps, bad)
    return int(bad.copy_to_host()[0])


@cuda.jit(device=True)
def _finite(x):
    return not (math.isinf(x) or math.isnan(x))


@cuda.jit
def _ema_moments(g, m1, m2, decay, bad):
    i = cuda.grid(1)
    nbad = 0
    one = decay / decay
    while i < g.size:
        gi = g[i]
        if not _finite(gi):
            nbad += 1
        m1[i] = decay * m1[i] + (one - decay) * gi
        m2[i] = decay * m2[i] + (one - decay) * gi * gi
        i += cuda.gridsize(1)
    if nbad:
        cuda.atomic.add(bad, 0, nbad)


def ema_moments(g, m1, m2, decay):
    """m1 <- d m1 + (1 - d) g;  m2 <- d m2 + (1 - d) g^2 (in place, in the arithmetic of decay's type).
    Returns the number of non-finite entries of g (a host int)."""
    bad = _zeros1(np.int64)
    _ema_moments[launch(g.size)](g.flat(), m1.flat(), m2.flat(), decay, bad)
    return int(bad.copy_to_host()[0])


def adam_and_moments(p, g, m, v, m1, m2, lr_t, beta1, beta2, eps, decay):
    """ema_moments(g, m1, m2, decay), then adam_kernel(p, g, m, v, ...): the CPU's one pass as two
    launches (on the GPU the second read of g costs little). Returns ema_moments' count."""
    bad = ema_moments(g, m1, m2, decay)
    _adam[launch(p.size)](p.flat(), g.flat(), m.flat(), v.flat(), lr_t, beta1, beta2, eps,
                          _zeros1(np.int64))      # g's count is ema_moments'; this one is not read back
    return bad


@cuda.jit
def _count_nonfinite(a, bad):
    i = cuda.grid(1)
    nbad = 0
    while i < a.size:
        if not _finite(a[i]):
            nbad += 1
        i += cuda.gridsize(1)
    if nbad:
        cuda.atomic.add(bad, 0, nbad)


def all_finite(a):
    """True when no entry of a is NaN or inf (a host bool)."""
    bad = _zeros1(np.int64)
    _count_nonfinite[launch(a.size)](a.flat(), bad)
    return int(bad.copy_to_host()[0]) == 0
