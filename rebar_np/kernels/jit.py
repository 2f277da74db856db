"""How every CPU kernel is compiled: the Numba decorators the kernel modules share.

Nothing here computes; a reader following a derivative can skip this module.
"""
from numba import njit

# Every kernel is compiled once and cached on disk, and releases the GIL (nogil) so
# that evaluation threads run side by side. error_model="numpy" lets a
# division by zero give inf/nan (as NumPy does) instead of raising: without it
# Numba guards every division and no loop with a division vectorises.
kernel = njit(cache=True, error_model="numpy", nogil=True)
fast_kernel = njit(cache=True, error_model="numpy", fastmath=True, nogil=True)  # pure arithmetic loops only
# Arithmetic loops that may be reordered (sums re-associated, a / b as a * (1 / b))
# so LLVM vectorises them, but that keep NaN and inf semantics (no "nnan"/"ninf"):
# a NaN produced in a step must survive to the finiteness check.
arith_kernel = njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, nogil=True)
# Kernels whose prange loops share their work between cores ("Products on two cores" below).
split_kernel = njit(cache=True, error_model="numpy", nogil=True, parallel=True)

# Transcendental functions (exp, log, log1p, tanh) are taken from NumPy's ufuncs,
# which have SIMD implementations (AVX2 / AVX-512); Numba without Intel's SVML
# calls the scalar libm once per element, 10-30x slower on these arrays. So the
# kernels below that need them are plain Python functions: one ufunc call per
# transcendental, then a jitted loop for the arithmetic around it. The exceptions are
# float32 routes that measured faster with fastmath.py's vectorisable exp/log/sigma/softplus
# computed inside the loop (float32 sigma rows, logistic noise, relaxed samples, softplus,
# the log-likelihood rows' exponentials); tanh stays NumPy's (2.5x faster than fastmath's).
