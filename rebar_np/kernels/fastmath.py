"""Performance internals of the pointwise kernels: float32 exponentials computed inside the
row's pass, and a row's sum of log1p terms as the logarithm of a product.

What they compute is the readable formula of kernels/activations.py and kernels/likelihood.py:
_exp_neg_abs_f32 is exp(-|a|) (within 5 ulp of the exact value;
tests/test_kernels.py::test_float32_exponential_is_within_5_ulp), _sigmoid_rows_f32 is sigma(a)
(tests/test_kernels.py::test_sigmoid_forward_float32_rows), _sum_log1p_row is sum_j log1p(e_j)
(in float64 against NumPy's logaddexp: tests/test_kernels.py::test_bernoulli_loglik_forward_and_backward),
and _bernoulli_loglik_rows_f32 and _loglik_rows_f32 are sum_j [y_j a_j - softplus(a_j)] as the
float64 routes compute it (tests/test_kernels.py::test_loglik_rows_float32_agrees_with_float64,
tests/test_kernels.py::test_bernoulli_float32). _sample_rows_f32 is kernels/noise.py:sample_rows's
composition in one pass (tests/test_kernels.py::test_sample_rows_is_its_composition), and
_binary_product_loglik_f32 is kernels/tables.py:binary_product_loglik's
(tests/test_kernels.py::test_binary_product_loglik_is_its_composition).
"""
import numpy as np
from numba import njit

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


@arith_kernel
def _sigmoid_rows_f32(a):
    """sigma(a) for float32 a (B, n) with e = exp(-|a|) (_exp_neg_abs_f32, within 5 ulp):
    sigma(a) = 1 / (1 + e) for a >= 0 and e / (1 + e) for a < 0, neither of which overflows.
    One pass instead of NumPy's four (24 x 200: 2.7 against 5.2 us). It keeps float32's relative
    precision down to a = -87 and gives 0 below (e is 0 there); the tanh form 1/2 + tanh(a/2)/2
    loses it to cancellation for negative a: 6% off at a = -16, 9x too large at -19.5, 0 from -20."""
    n, m = a.shape
    s = np.empty((n, m), dtype=np.float32)
    exponent_bits = np.empty(m, dtype=np.int32)
    one = np.float32(1.0)
    for i in range(n):
        si = s[i]
        _exp_neg_abs_f32(a[i], si, exponent_bits)
        for j in range(m):
            e = si[j]
            r = one / (one + e)
            si[j] = r if a[i, j] >= 0 else e * r
    return s


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


@arith_kernel
def _sample_rows_f32(bits, a, G):
    """noise.sample_rows for float32 logits a, one row at a time: e = exp(-|a|) once serves both
    sigma(-a) (the threshold, as _sigmoid_rows_f32 computes it: 1 / (1 + e) for -a >= 0, else
    e / (1 + e)) and softplus(a) (as _loglik_rows_f32), and the row's codes are read from the
    row just written. The same samples bit for bit, the same log-likelihood up to the order of
    its float64 sum; the composition's four passes over (R, H) arrays took 1.5x as long."""
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
            inv = one / (one + e[j])
            threshold = inv if -ar[j] >= 0 else e[j] * inv               # sigma(-a_j)
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
