"""Products whose left factor is a hard sample, a = (2 b - 1) W + c, as sums of table rows
("the method of Four Russians"): the importance-weighted bound's route (evaluation/bound.py).

binary_product(group_codes(b, G), binary_product_table(W), c) is the matrix product
(2 b - 1) W + c, with fewer roundings
(tests/test_kernels.py::test_binary_product_equals_the_matrix_product; the bound with and without
tables: tests/test_reference.py::test_iw_bound_matches_reference_at_the_same_noise).
"""
import numpy as np
from numba import njit

from .jit import arith_kernel, kernel


# --------------------------------------------------------------------------
# Products whose left factor is a hard sample (the importance-weighted bound, CPU)
# --------------------------------------------------------------------------
# The bound evaluates a = (2 b - 1) W + c for thousands of samples b in {0, 1}^n_in of each
# example, with W fixed. Cut the n_in units into groups of GROUP_BITS: a group's part of the
# product, sum_{i in group} (2 b_i - 1) W_i, takes one of 2^GROUP_BITS values, which are
# tabulated once per W ("the method of Four Russians"). A row of a is then c plus one table
# row per group: n_in / GROUP_BITS additions per output instead of n_in multiply-adds.
# Measured on one core at 1000 x 200 x 784 (float32): 1.76 ms against OpenBLAS sgemm's 3.08,
# and at 1000 x 200 x 200, 0.50 against 0.79; the sum has fewer roundings than the product's
# (max |error| 2.8e-6 against sgemm's 4.2e-6 there). Five bits per group measured best
# (4: the sum is longer, 6 and 8: the tables outgrow the caches).
GROUP_BITS = 5
GROUP_BLOCK = 8       # table rows summed per pass over an output row (binary_product writes the 8
                      # out); G is padded to a multiple
# The tables must stay in the caches: those of 1000-unit layers (20-26 MB) were no faster than
# sgemm, those of 200- and 500-unit layers (4 and 7 MB) 1.9 and 1.5x faster.
TABLE_MAX_BYTES = 8 << 20


@kernel
def _n_groups(n_in):
    groups = (n_in + GROUP_BITS - 1) // GROUP_BITS
    return (groups + GROUP_BLOCK - 1) // GROUP_BLOCK * GROUP_BLOCK


def binary_product_groups(n_in):
    """G, the number of groups of binary_product_table for n_in input units: ceil(n_in / GROUP_BITS)
    rounded up to a multiple of GROUP_BLOCK (the groups past n_in are zero tables)."""
    return int(_n_groups(n_in))


def binary_product_pays(W):
    """Whether W's table (binary_product_table) is small enough for table products to beat the
    matrix product: at most TABLE_MAX_BYTES."""
    n_in, n_out = W.shape
    return binary_product_groups(n_in) * (1 << GROUP_BITS) * n_out * W.dtype.itemsize <= TABLE_MAX_BYTES


@kernel
def binary_product_table(W):
    """T[g, m] = sum_{i < GROUP_BITS} (2 m_i - 1) W[GROUP_BITS g + i]   (m_i: bit i of the code m;
    rows past n_in count as zero), shape (G, 2^GROUP_BITS, n_out) in W's dtype, G from
    binary_product_groups. Then (2 b - 1) W = sum_g T[g, code_g(b)] with code_g(b) = sum_i b_{GROUP_BITS g + i} 2^i."""
    n_in, n_out = W.shape
    G = _n_groups(n_in)
    T = np.zeros((G, 1 << GROUP_BITS, n_out), dtype=W.dtype)
    for g in range(G):
        for m in range(1 << GROUP_BITS):
            t = T[g, m]
            for i in range(GROUP_BITS):
                row = GROUP_BITS * g + i
                if row < n_in:
                    w = W[row]
                    if (m >> i) & 1:
                        for j in range(n_out):
                            t[j] += w[j]
                    else:
                        for j in range(n_out):
                            t[j] -= w[j]
    return T


@kernel
def group_codes(b, G):
    """codes[r, g] = sum_{i < GROUP_BITS} 1[b[r, GROUP_BITS g + i] > 1/2] 2^i, (R, G) int32: which row of
    table group g a hard sample b (R, n_in) selects (0 for the padding groups past n_in)."""
    R, n_in = b.shape
    codes = np.zeros((R, G), dtype=np.int32)
    for r in range(R):
        for g in range(G):
            code = 0
            for i in range(GROUP_BITS):
                j = GROUP_BITS * g + i
                if j < n_in and b[r, j] > 0.5:
                    code |= 1 << i
            codes[r, g] = code
    return codes


@arith_kernel
def binary_product(codes, T, c):
    """a = (2 b - 1) W + c  (R, n_out), from b's group codes (group_codes) and W's table
    (binary_product_table): each row is c plus the table rows its codes select (_table_row)."""
    R, G = codes.shape
    a = np.empty((R, T.shape[2]), dtype=T.dtype)
    for r in range(R):
        _table_row(codes[r], T, c, a[r])
    return a


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"}, inline="always")
def _table_row(cr, T, c, ar):
    """ar = c + sum_g T[g, cr[g]]: one row of binary_product, summed GROUP_BLOCK groups at a time so
    that the output row is read and written once per block."""
    G, n_out = cr.shape[0], T.shape[2]
    for j in range(n_out):
        ar[j] = c[j]
    for g in range(0, G, GROUP_BLOCK):
        t0, t1, t2, t3 = T[g, cr[g]], T[g + 1, cr[g + 1]], T[g + 2, cr[g + 2]], T[g + 3, cr[g + 3]]
        t4, t5, t6, t7 = T[g + 4, cr[g + 4]], T[g + 5, cr[g + 5]], T[g + 6, cr[g + 6]], T[g + 7, cr[g + 7]]
        for j in range(n_out):
            ar[j] += ((t0[j] + t1[j]) + (t2[j] + t3[j])) + ((t4[j] + t5[j]) + (t6[j] + t7[j]))
