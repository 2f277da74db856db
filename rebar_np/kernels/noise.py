"""Noise and samplers (docs/math.md, section "Noise and samples"): logistic noise, hard and relaxed
samples with their backward and tangent passes, REBAR's conditional-sample derivative, and the
32-bit samples of the importance-weighted bound.
"""
import numpy as np

from .activations import sigmoid_forward
from .fastmath import _logistic_noise_f32, _relaxed_sample_rows_f32, _sample_rows_f32
from .jit import arith_kernel, kernel
from .likelihood import loglik_rows
from .tables import group_codes

# Clipping bounds of u (docs/math.md, section "Noise and samples"), applied in float64 before the logs.
U_MIN = 1e-8
U_MAX = 1.0 - 1e-8


# --------------------------------------------------------------------------
# Noise and samplers (docs/math.md, section "Noise and samples")
# --------------------------------------------------------------------------
def logistic_noise(u):
    """z0 = log u - log(1 - u) = log(u / (1 - u)), with u clipped into [1e-8, 1 - 1e-8] in float64.

    The logistic sample of a layer is z = a + z0, so z0 is the part that does not
    depend on the parameters. Output has u's dtype.
    One logarithm, of the ratio u / (1 - u) (_odds): 1 - u is exact for u >= 1/2 and within
    half an ulp of 1 below, so the ratio is within 2 ulp and z0 within 5e-16 of
    log u - log1p(-u) (24 x 200: 7.4 against 16.4 us).
    float32 u take one float32 pass instead (fastmath.logistic_noise_f32: within 4 ulp of the
    float32 of the float64 value, 1.6x faster than this float64 route).
    """
    if u.dtype == np.float32 and u.flags.c_contiguous:
        return _logistic_noise_f32(u)
    z0 = _odds(u, np.empty(u.shape, dtype=np.float64))
    np.log(z0, out=z0)
    return z0.astype(u.dtype)


@arith_kernel
def _odds(u, out):
    """out = v / (1 - v) in float64, v = u clipped into [U_MIN, U_MAX] (logistic_noise's argument)."""
    uf, of = u.reshape(-1), out.reshape(-1)
    for i in range(uf.size):
        v = min(max(np.float64(uf[i]), U_MIN), U_MAX)
        of[i] = v / (1.0 - v)
    return out


@kernel
def hard_sample_forward(a, z0):
    """b = 1[a + z0 > 0]: a Bernoulli(sigma(a)) sample. Not differentiable (no backward)."""
    b = np.empty_like(a)
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            b[i, j] = 1.0 if a[i, j] + z0[i, j] > 0.0 else 0.0
    return b


def relaxed_sample_forward(a, z0, lam, improved):
    """Relaxed sample (docs/math.md, section "Noise and samples"), with z = a + z0:

    plain:     s = sigma(z / lam)
    improved:  s = sigma(z / lam + a lam / (lam + 1))   (the paper's "MuProp" relaxation)

    float32 rows compute t and sigma(t) in one pass (fastmath._relaxed_sample_rows_f32).
    """
    shift = lam / (lam + 1.0) if improved else 0.0
    if a.dtype == np.float32 and z0.dtype == np.float32 and a.ndim == 2:
        return _relaxed_sample_rows_f32(a, z0, 1.0 / lam, shift)
    return sigmoid_forward(_relaxed_logit(a, z0, 1.0 / lam, shift))


@arith_kernel
def _relaxed_logit(a, z0, inv_lam, shift):
    """t = (a + z0) / lam + shift a, in a's dtype."""
    t = np.empty_like(a)
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            t[i, j] = (a[i, j] + z0[i, j]) * inv_lam + a[i, j] * shift
    return t


@kernel
def relaxed_sample_backward(s, lam, improved, ds, dz_da):
    """dL/da of the relaxed sample, given dL/ds and the noise path's dz/da.

    With t = z / lam (+ a lam / (lam + 1) when improved) and s = sigma(t):
      ds/da = s (1 - s) [ dz/da / lam (+ lam / (lam + 1)) ].
    dz_da is 1 on the unconditional path and the conditional derivative on
    REBAR's conditional path (docs/math.md, section "Noise and samples"); pass an array of ones for the former.
    """
    da = np.empty_like(ds)
    n, m = s.shape
    shift = lam / (lam + 1.0) if improved else 0.0
    for i in range(n):
        for j in range(m):
            da[i, j] = ds[i, j] * s[i, j] * (1.0 - s[i, j]) * (dz_da[i, j] / lam + shift)
    return da


@kernel
def relaxed_logits_backward(dt, s, sig, k1, w):
    """dL/da of a relaxed layer's logits for L = w f, f = ... - log B(s; a), t = (a + z0)/lam + c a,
    given dt = dL/dt: through t (dt/da = 1/lam + c = k1) and through the -log B(s; a) term
    (d/da = -(s - sigma(a)), weighted by dL/df = w):
      da = dt k1 - w (s - sigma(a))."""
    da = np.empty_like(dt)
    n, m = dt.shape
    for i in range(n):
        for j in range(m):
            da[i, j] = dt[i, j] * k1 - w * (s[i, j] - sig[i, j])
    return da


@kernel
def relaxed_logits_backward_tangent(dt, dt_dot, s_dot, sig, a_dot, k1, dk1):
    """Forward mode of relaxed_logits_backward in tau, with k1_dot = dk1:
      da_dot = dt_dot k1 + dt dk1 - (s_dot - sigma(a) (1 - sigma(a)) a_dot)."""
    out = np.empty_like(dt)
    n, m = dt.shape
    for i in range(n):
        for j in range(m):
            sg = sig[i, j]
            out[i, j] = dt_dot[i, j] * k1 + dt[i, j] * dk1 - (s_dot[i, j] - sg * (1.0 - sg) * a_dot[i, j])
    return out


@kernel
def relaxed_sample_tangent(s, a, z0, a_dot, lam, improved):
    """Forward mode of s = sigma(t) in tau = log(lam), for t = z / lam (+ a lam / (lam + 1)), z = a + z0:

      dt/dtau = a_dot (1 / lam + c) + dt/dtau|explicit,   c = lam / (lam + 1) (improved) or 0,
      dt/dtau|explicit = -z / lam (+ a lam / (lam + 1)^2 when improved)   (dlam/dtau = lam),
      s_dot = s (1 - s) dt/dtau.

    a_dot is the tangent of the logits (empty for the switch layer, whose logits
    do not depend on tau). Returns (s_dot, t_explicit) with t_explicit = dt/dtau|explicit,
    which also gives df/dtau = sum <df/dt, t_explicit> from a reverse pass.
    """
    s_dot = np.empty_like(s)
    t_exp = np.empty_like(s)
    n, m = s.shape
    c = lam / (lam + 1.0) if improved else 0.0
    dc = lam / ((lam + 1.0) * (lam + 1.0)) if improved else 0.0
    has_a = a_dot.size > 0
    for i in range(n):
        for j in range(m):
            te = -(a[i, j] + z0[i, j]) / lam + a[i, j] * dc
            td = te + (a_dot[i, j] * (1.0 / lam + c) if has_a else 0.0)
            t_exp[i, j] = te
            s_dot[i, j] = s[i, j] * (1.0 - s[i, j]) * td
    return s_dot, t_exp


def dz_cond_dlogits(a, u, b):
    """Derivative of REBAR's conditional logistic sample z~ with respect to the logits
    (docs/math.md, section "Noise and samples", where it is derived).

    With the threshold u' = sigma(-a), b = 1 writes u = u' + r (1 - u') and b = 0
    writes u = r' u', r and r' held fixed while u' moves with a (du'/da = -u'(1 - u')):
      b = 1:  dz~/da = 1 - u' / u
      b = 0:  dz~/da = 1 - (1 - u') / (1 - u)
    (z~ = a + log u - log(1 - u) has the same value as z; only this derivative differs.)
    u is clipped as in logistic_noise; u' and the ratios are computed in float64, u' from
    e = exp(-|a|) (one exponential; 24 x 200: 8 against 18 us through sigmoid_forward).
    """
    e = _neg_abs_f64(a)
    np.exp(e, out=e)
    return _dz_cond(e, a, u, b, np.empty_like(a))


@arith_kernel
def _neg_abs_f64(a):
    """-|a| in float64 (the argument of dz_cond_dlogits' exponential)."""
    e = np.empty(a.shape, dtype=np.float64)
    af, ef = a.reshape(-1), e.reshape(-1)
    for i in range(af.size):
        ef[i] = -abs(np.float64(af[i]))
    return e


@arith_kernel
def _dz_cond(e, a, u, b, out):
    """dz_cond_dlogits' ratios, given e = exp(-|a|) in float64: with r = 1 / (1 + e),
    u' = sigma(-a) is e r for a >= 0 and r for a < 0, and 1 - u' = sigma(a) the other one
    (each without cancellation)."""
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            r = 1.0 / (1.0 + e[i, j])
            er = e[i, j] * r
            ui = min(max(np.float64(u[i, j]), U_MIN), U_MAX)
            if b[i, j] > 0.5:
                out[i, j] = 1.0 - (er if a[i, j] >= 0 else r) / ui
            else:
                out[i, j] = 1.0 - (r if a[i, j] >= 0 else er) / (1.0 - ui)
    return out


def mean_sample_forward(a):
    """Mean-field value mu = sigma(a) (the deterministic pass of MuProp)."""
    return sigmoid_forward(a)


BITS_TO_UNIFORM = 2.0 ** -32          # 32 random bits U stand for the uniform u = (U + 1/2) 2^-32


@kernel
def threshold_samples(bits, thr, k):
    """Hard samples b[r, j] = 1[u[r, j] > thr[r // k, j]] in thr's dtype, u = (bits + 1/2) 2^-32
    (evaluation.bound.uniform_bits): with thr = sigma(-a) this is b = 1[a + log u - log(1 - u) > 0], the same
    sample at the same noise without two logarithms.
    bits: (R, H) uint32 with k consecutive rows per row of thr (R = rows(thr) k); k = 1: one
    threshold row per row."""
    R, H = bits.shape
    b = np.empty((R, H), dtype=thr.dtype)
    for r in range(R):
        t = thr[r // k]
        for j in range(H):
            b[r, j] = 1.0 if (np.float64(bits[r, j]) + 0.5) * BITS_TO_UNIFORM > t[j] else 0.0
    return b


def sample_rows(bits, a, G):
    """The bound's step through a stochastic layer of logits a (R, H) at noise bits (R, H) uint32:
    (b, codes, ll) with b = threshold_samples(bits, sigma(-a), 1) the hard samples,
    codes = group_codes(b, G) their table codes (kernels/tables.py) and ll = loglik_rows(b, a, 1)
    their log-likelihood log B(b; a) per row, float64 (R,). Float32 a: the same in one pass
    (fastmath._sample_rows_f32)."""
    if a.dtype == np.float32:
        return _sample_rows_f32(bits, a, int(G))
    b = threshold_samples(bits, sigmoid_forward(-a), 1)
    return b, group_codes(b, G), loglik_rows(b, a, 1)
