"""Performance internals of the pointwise kernels: float32 transcendentals that vectorise inside a
jitted loop, the kernels' one-pass float32 routes built on them, and a row's sum of log1p terms as
the logarithm of a product.

exp_f32, log_f32, log1p_f32, softplus_f32, sigmoid_f32, tanh_f32 and logistic_noise_f32 are float32
scalar functions with no libm calls (each docstring states its measured error in ulps and its edges;
tests/test_fastmath.py checks them; benchmarks/fastmath.py times them against libm and NumPy).
What the kernels built on them compute is the readable formula of kernels/activations.py,
kernels/likelihood.py and kernels/noise.py: _sigmoid_rows_f32 is sigma(a)
(tests/test_kernels.py::test_sigmoid_forward_float32_rows), _relaxed_sample_rows_f32 is REBAR's relaxed
sample, _logistic_noise_f32 is log u - log(1 - u) (tests/test_kernels.py::test_relaxed_sample_forward_backward,
tests/test_kernels.py::test_logistic_noise_values_and_clipping), _exp_neg_abs_f32 is exp(-|a|) (within 5 ulp
of the exact value; tests/test_kernels.py::test_float32_exponential_is_within_5_ulp), _sum_log1p_row is
sum_j log1p(e_j) (in float64 against NumPy's logaddexp:
tests/test_kernels.py::test_bernoulli_loglik_forward_and_backward), and _bernoulli_loglik_rows_f32 and
_loglik_rows_f32 are sum_j [y_j a_j - softplus(a_j)] as the float64 routes compute it
(tests/test_kernels.py::test_loglik_rows_float32_agrees_with_float64, tests/test_kernels.py::test_bernoulli_float32).
_sample_rows_f32 is kernels/noise.py:sample_rows's
composition in one pass (tests/test_kernels.py::test_sample_rows_is_its_composition), and
_binary_product_loglik_f32 is kernels/tables.py:binary_product_loglik's
(tests/test_kernels.py::test_binary_product_loglik_is_its_composition).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .jit import arith_kernel
from .tables import GROUP_BITS, _table_row


# exp(-|a|) for float32 a, inside a jitted loop. Numba calls libm's scalar expf per element here
# (llvmlite has no SVML), so this is written out in a form LLVM vectorises:
#   t = max(-|a|, -87) = n ln 2 + f,  n = round(t / ln 2) (an integer in [-126, 0]),  |f| <= ln(2) / 2,
#   exp(t) = 2^n e^f,
# f computed as t - n LN2_HI - n LN2_LO (LN2_HI has 9 significant bits, so n LN2_HI is exact),
# e^f by its Taylor polynomial of degree 7 (remainder (ln(2)/2)^8 / 8! = 5e-9, below float32's
# resolution of 6e-8), and 2^n by writing n + 127 into a float32's exponent bits. Measured
# over [-87, 0]: at most 5 ulp from the exact value (NumPy's expf: 3). Below -87 the result
# is 0 instead of subnormal (NumPy's expf is 0 below -103.3); log1p of either is 0 in any sum
# here, and sigma(a) = e / (1 + e) is then 0 for a < -87, as NumPy's float32 gives it.
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
EXP_LOWEST = -87.0
EXP_TAYLOR = tuple(1.0 / np.prod(np.arange(1.0, i + 1.0)) for i in range(8))      # 1 / i!


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, inline="always")
def _exp_neg_abs_f32(a, e, exponent_bits):
    """e[j] = exp(-|a[j]|) for float32 rows a, e and an int32 scratch row exponent_bits (see above)."""
    inv_ln2, lowest = np.float32(1.0 / np.log(2.0)), np.float32(EXP_LOWEST)
    hi_part, lo_part, half = np.float32(LN2_HI), np.float32(LN2_LO), np.float32(0.5)
    c0, c1, c2, c3, c4, c5, c6, c7 = [np.float32(c) for c in EXP_TAYLOR]
    for j in range(a.shape[0]):
        t_in = -abs(a[j])
        t = max(t_in, lowest)
        n = np.floor(t * inv_ln2 + half)
        f = (t - n * hi_part) - n * lo_part
        e[j] = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))))
        exponent_bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23) if t_in >= lowest else np.int32(0)
    scale = exponent_bits.view(np.float32)                      # 2^n, or 0 below -87 (and for NaN: NaN 0 = NaN)
    for j in range(a.shape[0]):
        e[j] *= scale[j]


@arith_kernel
def _exp_neg_abs_f32_array(a):
    """exp(-|a|) for a float32 array a, as _exp_neg_abs_f32 computes it inside the kernels (for tests)."""
    af = a.reshape(-1)
    e = np.empty_like(af)
    _exp_neg_abs_f32(af, e, np.empty(af.shape[0], dtype=np.int32))
    return e.reshape(a.shape)


@arith_kernel
def _loglik_rows_f32(y, a, k):
    """loglik_rows for float32 a, with the exponentials of softplus(a) = max(a, 0) + log1p(e),
    e = exp(-|a|), computed row by row in the pass."""
    R, m = a.shape
    out = np.empty(R, dtype=np.float64)
    e = np.empty(m, dtype=np.float32)
    exponent_bits = np.empty(m, dtype=np.int32)
    for r in range(R):
        yr, ar = y[r // k], a[r]
        acc = 0.0
        for j in range(m):
            acc += yr[j] * ar[j] - max(ar[j], np.float32(0.0))
        _exp_neg_abs_f32(ar, e, exponent_bits)
        out[r] = acc - _sum_log1p_row(e)
    return out


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, inline="always")
def _bernoulli_loglik_row(y, a, e, sig):
    """One row: returns sum_j [y_j a_j - max(a_j, 0)] - sum_j log1p(e_j) and writes sig = sigma(a),
    given e = exp(-|a|)."""
    acc = 0.0
    for j in range(a.shape[0]):
        aj = a[j]
        acc += y[j] * aj - max(aj, 0.0)
        r = 1.0 / (1.0 + e[j])
        sig[j] = r if aj >= 0 else e[j] * r
    return acc - _sum_log1p_row(e)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, inline="always")
def _sum_log1p_row(e):
    """sum_j log1p(e_j) for e_j in [0, 1], as log prod_j (1 + e_j): one logarithm per block of
    512 terms instead of one per term. Each factor is in [1, 2], so a block's product is at
    most 2^512 (float64 holds 2^1023); in float64 the product's rounding error is about
    512 ulp, far below float32 resolution and ~1e-13 relative in float64.
    The block's product is kept as 8 interleaved partial products p0..p7 (term j goes to
    p_{j % 8}), so that consecutive multiplications do not wait for each other (about 1.6x
    faster than one running product). They are locals, not an array: an np.ones(8) per block
    was an allocation per row (24 x 784: 6.2 against 8.2 us)."""
    total = 0.0
    m = e.shape[0]
    for start in range(0, m, 512):
        stop = min(start + 512, m)
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 1.0
        n8 = start + (stop - start) // 8 * 8
        for j in range(start, n8, 8):
            p0 *= 1.0 + np.float64(e[j])
            p1 *= 1.0 + np.float64(e[j + 1])
            p2 *= 1.0 + np.float64(e[j + 2])
            p3 *= 1.0 + np.float64(e[j + 3])
            p4 *= 1.0 + np.float64(e[j + 4])
            p5 *= 1.0 + np.float64(e[j + 5])
            p6 *= 1.0 + np.float64(e[j + 6])
            p7 *= 1.0 + np.float64(e[j + 7])
        block = ((p0 * p1) * (p2 * p3)) * ((p4 * p5) * (p6 * p7))
        for j in range(n8, stop):
            block *= 1.0 + np.float64(e[j])
        total += np.log(block)
    return total


@arith_kernel
def _bernoulli_loglik_rows_f32(y, a):
    """_bernoulli_loglik_rows for float32 a, with e = exp(-|a|) computed row by row in the pass
    (one call instead of three and no (B, n) array of e: 24 x 784 logits, ~22 against ~27 us)."""
    n, m = a.shape
    ll = np.empty(n, dtype=a.dtype)
    sig = np.empty_like(a)
    e = np.empty(m, dtype=np.float32)
    exponent_bits = np.empty(m, dtype=np.int32)
    for i in range(n):
        _exp_neg_abs_f32(a[i], e, exponent_bits)
        ll[i] = _bernoulli_loglik_row(y[i], a[i], e, sig[i])
    return ll, sig


# --------------------------------------------------------------------------
# float32 exp, log, log1p, softplus, sigmoid, tanh that LLVM vectorises
# --------------------------------------------------------------------------
# Scalar functions for jitted loops over float32 arrays. Numba calls libm's scalar expf/logf/
# log1pf/tanhf per element (no SVML in this llvmlite), and a call stops the loop from vectorising.
# These have no calls and no data-dependent exits: range reduction through the float's bits
# (_f32_bits, _bits_f32: the same 32 bits read as the other type), short polynomials, and every
# special case (edges, NaN) picked by a ternary that LLVM turns into a vector select. Both sides
# of a ternary are computed, so each function costs the same for every input.
#
# Errors are in ulps of the float32 result against the correctly rounded float32 of the float64
# value (tests/test_fastmath.py), compiled with arith_kernel's flags as in the kernels. The few
# operations whose order carries the accuracy (the Cody-Waite reductions, log1p's rounding
# correction) are _add/_sub/_mul: LLVM instructions without "reassoc", which would let LLVM fold
# (1 + y) - 1 to y or n LN2_HI + n LN2_LO to n (LN2_HI + LN2_LO).
F32 = types.float32


@intrinsic
def _f32_bits(typingctx, x):
    """The 32 bits of a float32, as an int32."""
    if x != F32:
        return None
    return types.int32(x), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@intrinsic
def _bits_f32(typingctx, i):
    """The float32 whose bits are the low 32 bits of the integer i."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif v.type.width < 32:
            v = builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return F32(i), codegen


def _ordered(builder, op, args):
    return op(args[0], args[1], flags=("contract",))


@intrinsic
def _add(typingctx, a, b):
    """a + b in float32, never reassociated with its neighbours."""
    if a == F32 and b == F32:
        return F32(a, b), lambda context, builder, sig, args: _ordered(builder, builder.fadd, args)


@intrinsic
def _sub(typingctx, a, b):
    """a - b in float32, never reassociated with its neighbours."""
    if a == F32 and b == F32:
        return F32(a, b), lambda context, builder, sig, args: _ordered(builder, builder.fsub, args)


@intrinsic
def _mul(typingctx, a, b):
    """a b in float32, never reassociated with its neighbours."""
    if a == F32 and b == F32:
        return F32(a, b), lambda context, builder, sig, args: _ordered(builder, builder.fmul, args)



f32_njit = njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, inline="always")
F32_INF = np.inf
F32_TINY = 2.0 ** -126                  # the smallest normal float32

# exp: x = n ln 2 + f, |f| <= ln(2)/2, e^x = 2^n e^f; e^f = 1 + f + f^2 P(f) with Cephes' expf
# minimax coefficients; 2^n as 2^n1 2^n2 (n1 = floor(n/2)) so that both factors are normal
# floats for every n in [-150, 128] (subnormal results and the last binade before overflow).
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
EXP_MIN, EXP_MAX = -104.0, 89.0          # exp(-104) < 2^-150 rounds to 0; exp(89) > 2^128 overflows
INV_LN2 = 1.0 / np.log(2.0)


@f32_njit
def exp_f32(x):
    """e^x for float32 x: e^x = 2^n e^f, n = rint(x / ln 2), f = x - n ln 2 by a Cody-Waite reduction, e^f by a
    degree-7 polynomial. Max error 1 ulp (measured on every 7th float32 of [-104, 89] and every float32 near
    the thresholds; tests/test_fastmath.py). Edges as expf's: +-0 and subnormal x give 1; subnormal results
    below x = -87.34 (on the subnormal grid, same bound in its ulps), 0 below -103.97 and at -inf; +inf above
    88.72 and at +inf; NaN for NaN."""
    lo, hi = np.float32(EXP_MIN), np.float32(EXP_MAX)
    xc = x if x > lo else lo                    # NaN -> lo here, NaN again at the end
    xc = xc if xc < hi else hi
    n = np.rint(xc * np.float32(INV_LN2))
    f = _sub(_sub(xc, _mul(n, np.float32(LN2_HI))), _mul(n, np.float32(LN2_LO)))
    p = np.float32(EXP_P[0]) * f + np.float32(EXP_P[1])
    p = p * f + np.float32(EXP_P[2])
    p = p * f + np.float32(EXP_P[3])
    p = p * f + np.float32(EXP_P[4])
    p = p * f + np.float32(EXP_P[5])
    y = _add(_add(p * (f * f), f), np.float32(1.0))
    k = np.int32(n)
    k1 = k >> 1
    y = _mul(_mul(y, _bits_f32((k1 + 127) << 23)), _bits_f32((k - k1 + 127) << 23))   # (2^n1 2^n2 may overflow)
    return y if x == x else x


# log: x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)) (f exact), and with s = f / (2 + f),
# log(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2)), R with musl's logf coefficients.
LOG_R = (0.66666662693, 0.40000972152, 0.28498786688, 0.24279078841)
LOG_LN2_HI, LOG_LN2_LO = 6.9313812256e-01, 9.0580006145e-06     # LOG_LN2_HI has 16 significant bits
SQRT_HALF_BITS = 0x3f3504f3                                      # float32 sqrt(1/2)
LOG1P_SMALL = (0.70710677 - 1.0, 1.4142135 - 1.0)                # 1 + y in [sqrt(1/2), sqrt(2))


@f32_njit
def _log_reduce(x):
    """(k, f) with x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)), for positive finite x (subnormal x
    scaled by 2^23 first)."""
    tiny = x < np.float32(F32_TINY)
    xs = x * np.float32(2.0 ** 23) if tiny else x
    ix = _f32_bits(xs) + np.int32(0x3f800000 - SQRT_HALF_BITS)
    k = (ix >> 23) - 127 - (23 if tiny else 0)
    f = _bits_f32((ix & 0x007fffff) + SQRT_HALF_BITS) - np.float32(1.0)
    return k, f


@f32_njit
def _log_kf(k, f, c):
    """k ln 2 + log(1 + f) + c for f in [sqrt(1/2) - 1, sqrt(2) - 1] and a correction c of order ulp(f)."""
    s = f / (np.float32(2.0) + f)
    z = s * s
    w = z * z
    r = z * (np.float32(LOG_R[0]) + w * np.float32(LOG_R[2])) + w * (np.float32(LOG_R[1]) + w * np.float32(LOG_R[3]))
    hfsq = np.float32(0.5) * f * f
    dk = np.float32(k)
    tail = s * (hfsq + r) + (dk * np.float32(LOG_LN2_LO) + c)
    return _add(_add(_sub(tail, hfsq), f), _mul(dk, np.float32(LOG_LN2_HI)))


@f32_njit
def log_f32(x):
    """log(x) for float32 x (musl's logf): max error 1 ulp over positive float32 x, subnormal x included (measured on
    every 7th one; tests/test_fastmath.py). log(+-0) = -inf, log(x < 0) = NaN (-inf too), log(+inf) = +inf,
    NaN for NaN."""
    k, f = _log_reduce(x)
    y = _log_kf(k, f, np.float32(0.0))
    y = y if x < np.float32(F32_INF) else x              # +inf and NaN
    return y if x > 0 else (np.float32(-F32_INF) if x == 0 else np.float32(np.nan))


@f32_njit
def log1p_f32(x):
    """log(1 + x) for float32 x: x itself is the reduced argument f when 1 + x is in [sqrt(1/2),
    sqrt(2)) (so tiny x keep their relative precision: log1p(x) = x for |x| < 2^-24 and subnormal x),
    otherwise t = 1 + x is reduced as in log_f32 and the rounding error of t added back
    (c = x - (t - 1), or 1 - (t - x) when t >= 2 sqrt(2), over t). Max error 1 ulp over float32
    x > -1 (measured on every 7th one; tests/test_fastmath.py). -inf at -1, NaN below -1, +inf at
    +inf, NaN for NaN; +-0 -> +0."""
    one = np.float32(1.0)
    t = _add(x, one)
    k, f = _log_reduce(t)
    c = _sub(one, _sub(t, x)) if k >= 2 else _sub(x, _sub(t, one))
    small = (x > np.float32(LOG1P_SMALL[0])) & (x < np.float32(LOG1P_SMALL[1]))
    y = _log_kf(0 if small else k, x if small else f, np.float32(0.0) if small else c / t)
    y = y if x < np.float32(F32_INF) else x              # +inf and NaN
    return y if x > -one else (np.float32(-F32_INF) if x == -one else np.float32(np.nan))


@f32_njit
def softplus_f32(a):
    """log(1 + e^a) = max(a, 0) + log1p(e), e = e^-|a| in [0, 1], for float32 a. log1p(e) without
    forming 1 + e: e itself is the reduced argument below sqrt(2) - 1, and above it
    1 + e = 2 (1 + f) with f = e/2 - 1/2, exact. Never overflows; a << 0 gives e^a with its
    relative precision (subnormal from a = -87.34, 0 below -103.97); a for a > 16.6 (to float32
    resolution) and +inf at +inf; NaN for NaN. Max error 2 ulp (measured on every 7th float32 above
    -104; tests/test_fastmath.py)."""
    zero, half = np.float32(0.0), np.float32(0.5)
    e = exp_f32(-abs(a))
    big = e > np.float32(LOG1P_SMALL[1])
    f = _sub(_mul(e, half), half) if big else e
    return (a if a > zero else zero) + _log_kf(1 if big else 0, f, zero)


@f32_njit
def sigmoid_f32(a):
    """sigma(a) = 1 / (1 + e^-a) for float32 a, from e = e^-|a|: 1 / (1 + e) for a >= 0 and
    e / (1 + e) for a < 0, neither of which overflows or cancels: a << 0 gives e^a with its
    relative precision down to the smallest normal float32 (a = -87.34) and 0 below it (never
    subnormal: arithmetic on subnormals costs ~100 cycles an operation on x86, and sigma(a) feeds
    the backward's products); 1 above a = 16.6 and at +inf, 0 at -inf, NaN for NaN. Max error
    3 ulp against the float32 of sigma(a) with subnormal values read as 0 (measured on every 7th
    float32 above -104; tests/test_fastmath.py)."""
    e = exp_f32(-abs(a))
    r = np.float32(1.0) / (np.float32(1.0) + e)
    s = r if a >= 0 else e * r
    return np.float32(0.0) if s < np.float32(F32_TINY) else s


# tanh: Cephes' tanhf, an odd polynomial x + x^3 P(x^2) below |x| = 0.625 (relative precision
# down to subnormal x) and 1 - 2 / (1 + e^2|x|) = (1 - e) / (1 + e), e = e^-2|x|, above.
TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)
TANH_SMALL = 0.625


@f32_njit
def tanh_f32(x):
    """tanh(x) for float32 x: max error 2 ulp (relative, so small and subnormal x keep their
    precision; measured on every 7th float32 of [-10, 10] and the tests' grid of all float32,
    tests/test_fastmath.py); +-1 from |x| = 9.01 and at +-inf; +-0 -> +0; NaN for NaN."""
    z = x * x
    p = np.float32(TANH_P[0]) * z + np.float32(TANH_P[1])
    p = p * z + np.float32(TANH_P[2])
    p = p * z + np.float32(TANH_P[3])
    p = p * z + np.float32(TANH_P[4])
    p = p * z * x + x
    ax = abs(x)
    e = exp_f32(np.float32(-2.0) * ax)
    q = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    q = q if x >= 0 else -q
    return p if ax < np.float32(TANH_SMALL) else q


@arith_kernel
def exp_f32_array(x):
    """exp_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = exp_f32(xf[i])
    return out.reshape(x.shape)


@arith_kernel
def log_f32_array(x):
    """log_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = log_f32(xf[i])
    return out.reshape(x.shape)


@arith_kernel
def log1p_f32_array(x):
    """log1p_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = log1p_f32(xf[i])
    return out.reshape(x.shape)


@arith_kernel
def softplus_f32_array(x):
    """softplus_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = softplus_f32(xf[i])
    return out.reshape(x.shape)


@arith_kernel
def sigmoid_f32_array(x):
    """sigmoid_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = sigmoid_f32(xf[i])
    return out.reshape(x.shape)


@arith_kernel
def tanh_f32_array(x):
    """tanh_f32 over a float32 array (one loop; for tests and benchmarks)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    for i in range(xf.size):
        out[i] = tanh_f32(xf[i])
    return out.reshape(x.shape)


# --------------------------------------------------------------------------
# Kernels' float32 routes built on them
# --------------------------------------------------------------------------
LOGIT_U_MIN = 1e-8              # noise.U_MIN: u and 1 - u are clipped below at it


@f32_njit
def logistic_noise_f32(u):
    """log(v / w) for float32 u, v = min(max(u, 1e-8), 1), w = max(1 - v, 1e-8) (logistic_noise's clipping: float32
    cannot hold 1 - 1e-8, so the upper clip is made on 1 - u; NaN is read as 0). One logarithm: of the ratio r
    = v / w, or, where r is in [sqrt(1/2), sqrt(2)) (u within 0.086 of 1/2), log1p of q = (2 v - 1) / w, whose
    numerator is exact, so z0 keeps its relative precision near u = 1/2. 1 - u is exact for u >= 1/2 and
    within half an ulp below, so r and q are within 2 ulp and z0 within 4 ulp of the correctly rounded float32
    of log(u) - log(1 - u) (measured on every 3rd float32 of [0, 1]; tests/test_fastmath.py)."""
    one, lo = np.float32(1.0), np.float32(LOGIT_U_MIN)
    v = u if u > lo else lo                     # (NaN -> lo)
    v = v if v < one else one
    w = _sub(one, v)
    w = w if w > lo else lo
    q = _sub(_add(v, v), one) / w
    k, f = _log_reduce(v / w)
    near = (q > np.float32(LOG1P_SMALL[0])) & (q < np.float32(LOG1P_SMALL[1]))
    return _log_kf(0 if near else k, q if near else f, np.float32(0.0))


@arith_kernel
def _logistic_noise_f32(u):
    """logistic_noise for float32 u, one pass of logistic_noise_f32."""
    uf = u.reshape(-1)
    z0 = np.empty_like(uf)
    for i in range(uf.size):
        z0[i] = logistic_noise_f32(uf[i])
    return z0.reshape(u.shape)


@arith_kernel
def _relaxed_sample_rows_f32(a, z0, inv_lam, shift):
    """sigma(t), t = (a + z0) / lam + shift a, for float32 a (B, n), one pass of sigmoid_f32 with t
    in float32 (1 / lam and shift rounded to float32 first)."""
    n, m = a.shape
    s = np.empty((n, m), dtype=np.float32)
    k, c = np.float32(inv_lam), np.float32(shift)
    for i in range(n):
        for j in range(m):
            s[i, j] = sigmoid_f32((a[i, j] + z0[i, j]) * k + a[i, j] * c)
    return s


@arith_kernel
def _sigmoid_rows_f32(a):
    """sigma(a) for float32 a (B, n), one pass of sigmoid_f32 (within 3 ulp, relative precision in the
    tail a << 0). One pass instead of NumPy's four; against the former exp(-|a|) scratch row and a
    second loop, 1.2x (24 x 784) to 1.6x (24 x 200) faster. The tanh form 1/2 + tanh(a/2)/2
    loses relative precision to cancellation for negative a: 6% off at a = -16, 0 from -20."""
    n, m = a.shape
    s = np.empty((n, m), dtype=np.float32)
    for i in range(n):
        for j in range(m):
            s[i, j] = sigmoid_f32(a[i, j])
    return s


@arith_kernel
def _sample_rows_f32(bits, a, G):
    """noise.sample_rows for float32 logits a, one row at a time: the threshold sigma(-a) as
    _sigmoid_rows_f32 computes it (sigmoid_f32), softplus(a) from e = exp(-|a|) as _loglik_rows_f32
    does, and the row's codes read from the row just written. The same samples bit for bit, the
    same log-likelihood up to the order of its float64 sum; the composition's four passes over
    (R, H) arrays took 1.5x as long."""
    R, H = a.shape
    b = np.empty((R, H), dtype=np.float32)
    codes = np.zeros((R, G), dtype=np.int32)
    ll = np.empty(R, dtype=np.float64)
    e = np.empty(H, dtype=np.float32)
    exponent_bits = np.empty(H, dtype=np.int32)
    one, zero = np.float32(1.0), np.float32(0.0)
    for r in range(R):
        ar, br = a[r], b[r]
        _exp_neg_abs_f32(ar, e, exponent_bits)
        acc = 0.0
        for j in range(H):
            threshold = sigmoid_f32(-ar[j])
            bj = one if (np.float64(bits[r, j]) + 0.5) * 2.0 ** -32 > threshold else zero
            br[j] = bj
            acc += bj * ar[j] - max(ar[j], zero)
        ll[r] = acc - _sum_log1p_row(e)
        cr = codes[r]
        for g in range(G):
            code = 0
            for i in range(GROUP_BITS):
                j = GROUP_BITS * g + i
                if j < H and br[j] > 0.5:
                    code |= 1 << i
            cr[g] = code
    return b, codes, ll


@arith_kernel
def _binary_product_loglik_f32(codes, T, c, y, k):
    """tables.binary_product_loglik for float32 tables: row r of the product summed into one
    buffer (tables._table_row), then scored there as _loglik_rows_f32 scores a row."""
    R = codes.shape[0]
    m = T.shape[2]
    out = np.empty(R, dtype=np.float64)
    ar = np.empty(m, dtype=np.float32)
    e = np.empty(m, dtype=np.float32)
    exponent_bits = np.empty(m, dtype=np.int32)
    for r in range(R):
        _table_row(codes[r], T, c, ar)
        yr = y[r // k]
        acc = 0.0
        for j in range(m):
            acc += yr[j] * ar[j] - max(ar[j], np.float32(0.0))
        _exp_neg_abs_f32(ar, e, exponent_bits)
        out[r] = acc - _sum_log1p_row(e)
    return out
