"""CPU kernels: every differentiable piece of an SBN as a forward/backward pair.

Conventions (the same in every module, and in SPEC.md):

- arrays are 2-D ``(B, n)`` batches, C-contiguous, float32 for training and
  float64 for checks; every kernel is generic in the dtype;
- a ``*_forward`` returns its output (and whatever the backward needs is either
  that output or one of its inputs, which the caller keeps);
- the matching ``*_backward`` sits right below it, takes the upstream gradient
  ``d<out>`` (a derivative of the *loss*) and returns the gradient of its inputs;
  parameter gradients are *accumulated* (``+=``) into the arrays passed in, so
  several passes can add into one gradient dict.

Symbols: ``a`` logits, ``h`` a layer's input or a hidden activation, ``u``
uniform noise, ``z`` logistic noise, ``b`` hard sample, ``s`` relaxed sample,
``lam`` temperature.
"""
import numpy as np
from numba import njit

# Clipping bounds of SPEC section 2, applied in float64 before the logs.
U_MIN = 1e-8
U_MAX = 1.0 - 1e-8


# --------------------------------------------------------------------------
# Dense (affine) layer
# --------------------------------------------------------------------------
@njit(cache=True)
def dense_forward(h, W, c):
    """Affine map  a = h W + c.

    h: (B, n_in), W: (n_in, n_out), c: (n_out,)  ->  a: (B, n_out).
    """
    a = h @ W
    a += c
    return a


@njit(cache=True)
def dense_backward(h, W, da, dW, dc, need_dh):
    """Backward of a = h W + c, given dL/da (B, n_out).

    dL/dW += h^T dL/da          (n_in, n_out)
    dL/dc += sum_n dL/da[n]     (n_out,)
    dL/dh  = dL/da W^T          (B, n_in), returned when need_dh, else an empty (0, 0) array
    """
    dW += h.T @ da
    dc += da.sum(axis=0)
    if need_dh:
        return da @ W.T
    return np.empty((0, 0), dtype=da.dtype)


# --------------------------------------------------------------------------
# Pointwise nonlinearities
# --------------------------------------------------------------------------
@njit(cache=True)
def tanh_forward(a):
    """h = tanh(a)."""
    return np.tanh(a)


@njit(cache=True)
def tanh_backward(h, dh):
    """dL/da = dL/dh * (1 - h^2), using the forward's output h = tanh(a)."""
    return dh * (1.0 - h * h)


@njit(cache=True)
def sigmoid_forward(a):
    """sigma(a) = 1 / (1 + exp(-a)), written as 1/2 + tanh(a/2)/2 so it never overflows."""
    return 0.5 + 0.5 * np.tanh(0.5 * a)


@njit(cache=True)
def sigmoid_backward(s, ds):
    """dL/da = dL/ds * s (1 - s), using the forward's output s = sigma(a)."""
    return ds * s * (1.0 - s)


@njit(cache=True)
def softplus(a):
    """softplus(a) = log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|)) (stable for any a).

    Its derivative is sigma(a); the backward passes below use that directly.
    """
    return np.maximum(a, 0.0) + np.log1p(np.exp(-np.abs(a)))


# --------------------------------------------------------------------------
# Bernoulli log-likelihood (hard and relaxed values alike)
# --------------------------------------------------------------------------
@njit(cache=True)
def bernoulli_loglik_forward(y, a):
    """log B(y; a) = sum_j [ y_j a_j - softplus(a_j) ], one value per row.

    y: (B, n) values in {0, 1} (hard) or (0, 1) (relaxed); a: (B, n) logits.
    Returns (B,).
    """
    return (y * a - softplus(a)).sum(axis=1)


@njit(cache=True)
def bernoulli_loglik_backward(y, a, dll):
    """Derivative of log B(y; a) with respect to the logits.

    d log B / d a_j = y_j - sigma(a_j), so  dL/da = dL/dll[:, None] * (y - sigma(a)).
    dll: (B,) upstream gradient of the per-row log-likelihood.
    """
    return dll.reshape(-1, 1) * (y - sigmoid_forward(a))


@njit(cache=True)
def bernoulli_loglik_backward_sample(a, dll):
    """Derivative of log B(y; a) with respect to the values y (used for relaxed samples).

    d log B / d y_j = a_j, so  dL/dy = dL/dll[:, None] * a.
    """
    return dll.reshape(-1, 1) * a


# --------------------------------------------------------------------------
# Noise and samplers (SPEC section 2)
# --------------------------------------------------------------------------
@njit(cache=True)
def logistic_noise(u):
    """z0 = log u - log(1 - u), with u clipped into [1e-8, 1 - 1e-8] in float64.

    The logistic sample of a layer is z = a + z0, so z0 is the part that does not
    depend on the parameters. Output has u's dtype.
    """
    z0 = np.empty_like(u)
    n, m = u.shape
    for i in range(n):
        for j in range(m):
            ui = min(max(np.float64(u[i, j]), U_MIN), U_MAX)
            z0[i, j] = np.log(ui) - np.log1p(-ui)
    return z0


@njit(cache=True)
def hard_sample_forward(a, z0):
    """b = 1[a + z0 > 0]: a Bernoulli(sigma(a)) sample. Not differentiable (no backward)."""
    b = np.empty_like(a)
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            b[i, j] = 1.0 if a[i, j] + z0[i, j] > 0.0 else 0.0
    return b


@njit(cache=True)
def relaxed_sample_forward(a, z0, lam, improved):
    """Relaxed sample of SPEC section 2, with z = a + z0:

    plain:     s = sigma(z / lam)
    improved:  s = sigma(z / lam + a lam / (lam + 1))   (the paper's "MuProp" relaxation)
    """
    z = a + z0
    if improved:
        return sigmoid_forward(z / lam + a * (lam / (lam + 1.0)))
    return sigmoid_forward(z / lam)


@njit(cache=True)
def relaxed_sample_backward(s, lam, improved, ds, dz_da):
    """dL/da of the relaxed sample, given dL/ds and the noise path's dz/da.

    With t = z / lam (+ a lam / (lam + 1) when improved) and s = sigma(t):
      ds/da = s (1 - s) [ dz/da / lam (+ lam / (lam + 1)) ].
    dz_da is 1 on the unconditional path and the conditional derivative on
    REBAR's conditional path (SPEC section 2).
    """
    dt = ds * s * (1.0 - s)
    if improved:
        return dt * (dz_da / lam + lam / (lam + 1.0))
    return dt * (dz_da / lam)


@njit(cache=True)
def mean_sample_forward(a):
    """Mean-field value mu = sigma(a) (the deterministic pass of MuProp)."""
    return sigmoid_forward(a)


# --------------------------------------------------------------------------
# Reductions used by estimators and evaluation
# --------------------------------------------------------------------------
@njit(cache=True)
def leave_one_out_center(f):
    """f_n - mean_{m != n} f_m: REINFORCE's learning signal (B >= 2).

    mean_{m != n} f_m = (sum_m f_m - f_n) / (B - 1).
    """
    B = f.shape[0]
    total = f.sum()
    return f - (total - f) / (B - 1)


@njit(cache=True)
def logmeanexp_rows(F):
    """log (1/k sum_i exp F[n, i]) per row n of F (B, k), stable: the importance-weighted bound."""
    B, k = F.shape
    out = np.empty(B, dtype=np.float64)
    for n in range(B):
        m = -np.inf
        for i in range(k):
            if F[n, i] > m:
                m = F[n, i]
        acc = 0.0
        for i in range(k):
            acc += np.exp(F[n, i] - m)
        out[n] = m + np.log(acc / k)
    return out
