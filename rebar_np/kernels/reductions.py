"""Reductions used by the estimators and the evaluation (leave-one-out centring, sums of squares,
dot products, per-example dot products, log-mean-exp of rows)."""
import numpy as np

from .jit import arith_kernel, kernel


# --------------------------------------------------------------------------
# Reductions used by estimators and evaluation
# --------------------------------------------------------------------------
@kernel
def leave_one_out_center(f):
    """f_n - mean_{m != n} f_m: REINFORCE's learning signal (B >= 2).

    mean_{m != n} f_m = (sum_m f_m - f_n) / (B - 1).
    """
    B = f.shape[0]
    total = 0.0
    for n in range(B):
        total += f[n]
    out = np.empty_like(f)
    for n in range(B):
        out[n] = f[n] - (total - f[n]) / (B - 1)
    return out


@arith_kernel
def sum_squares(a):
    """sum_i a_i^2 over every entry, accumulated in float64 (no float64 copy of a)."""
    af = a.reshape(-1)
    acc = 0.0
    for i in range(af.size):
        acc += np.float64(af[i]) * af[i]
    return acc


@arith_kernel
def dot(a, b):
    """sum_i a_i b_i over every entry of two arrays of one shape, accumulated in float64."""
    af, bf = a.reshape(-1), b.reshape(-1)
    acc = 0.0
    for i in range(af.size):
        acc += np.float64(af[i]) * bf[i]
    return acc


def subtract_scaled(g, alpha, e):
    """g <- g - alpha e in place (e of g's shape); returns (sum_i g_i^2, sum_i g_i e_i) of the new g,
    accumulated in float64: REBAR's G_k = g_k - (eta_k / B) E_k together with what the variance
    objective and its eta gradient need of it, |G_k|^2 and <G_k, E_k>, in one pass (157,000
    float32 entries: 22 us, against 64 for the update, sum_squares and dot). alpha is rounded
    to g's dtype, as NumPy's g -= alpha * e would."""
    return _subtract_scaled(g, g.dtype.type(alpha), e)


@arith_kernel
def _subtract_scaled(g, alpha, e):
    gf, ef = g.reshape(-1), e.reshape(-1)
    squares, products = 0.0, 0.0
    for i in range(gf.size):
        gi = gf[i] - alpha * ef[i]
        gf[i] = gi
        squares += np.float64(gi) * gi
        products += np.float64(gi) * ef[i]
    return squares, products


def per_example_dot(s, a, k):
    """d[r] = sum_j s[r, j] a[r // k, j], float64 (R,): row r of s against its example's row of a,
    where a holds one row per k consecutive rows of s (k = 1: row by row; k = R: one row for all)."""
    R, n = s.shape
    if k == 1:
        return _row_dots(s, a)
    if k == R:
        return (s @ a[0]).astype(np.float64)
    return np.matmul(s.reshape(R // k, k, n), a.reshape(R // k, n, 1)).reshape(R).astype(np.float64)


@arith_kernel
def _row_dots(s, a):
    """per_example_dot for k = 1: d[r] = sum_j s[r, j] a[r, j] in float64, without a float64
    copy of either (NumPy's einsum with dtype=float64 took 5.3 us at 24 x 200, this 1.3)."""
    R, n = s.shape
    d = np.empty(R, dtype=np.float64)
    for r in range(R):
        acc = 0.0
        for j in range(n):
            acc += np.float64(s[r, j]) * a[r, j]
        d[r] = acc
    return d


def logmeanexp_rows(F):
    """log (1/k sum_i exp F[n, i]) per row n of F (B, k), stable: the importance-weighted bound.

    With m_n = max_i F[n, i]:  m_n + log (1/k sum_i exp(F[n, i] - m_n)), in float64.
    """
    F = np.asarray(F, dtype=np.float64)
    m = F.max(axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    return safe + np.log(np.mean(np.exp(F - safe[:, None]), axis=1))
