"""Every kernel of rebar_np/kernels/ against central finite differences (float64),
and against itself in float32 (same results to 1e-5 relative).

A backward is checked through a random linear functional of its forward:
L = sum(G * out), so dL/d(out) = G and the backward's result must equal the
finite-difference gradient of L. A tangent (forward mode) is checked as the
derivative of its forward along a straight line t -> inputs + t * tangents.
"""
import numpy as np
import pytest
from scipy.special import expit, logsumexp

from rebar_np import kernels as K
from rebar_np.kernels import blocking, fastmath

EPS = 1e-6
FD_TOL = 1e-6       # relative error allowed against central differences (float64)
F32_TOL = 1e-5      # relative error allowed between float32 and float64 results


def rng_for(seed=0):
    return np.random.default_rng(seed)


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0,
                float(np.max(np.abs(got))) if got.size else 0.0, 1e-300)
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def assert_close(name, got, want, tol=FD_TOL):
    assert np.shape(got) == np.shape(want), f"{name}: shape {np.shape(got)} != {np.shape(want)}"
    err = rel_err(got, want)
    assert err < tol, f"{name}: relative error {err:.3e} (tolerance {tol:.0e})"


def fd(fn, arr, eps=EPS):
    """Central differences of the scalar fn() with respect to every entry of arr (perturbed in place)."""
    g = np.empty(arr.shape)
    flat, gflat = arr.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = fn()
        flat[i] = old - eps
        fm = fn()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def fd_line(fn, eps=EPS):
    """d fn(t) / dt at t = 0 by central differences (fn returns an array)."""
    return (np.asarray(fn(eps), np.float64) - np.asarray(fn(-eps), np.float64)) / (2 * eps)


def as32(v):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.ascontiguousarray(v, dtype=np.float32)
    return v


def as64(v):
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return np.ascontiguousarray(v, dtype=np.float64)
    return v


def assert_float32_agrees(name, kernel, *args, out_dtype=np.float32, tol=F32_TOL):
    """kernel(float32 args) has float32 outputs equal to kernel(the same values in float64) to tol."""
    a32 = [as32(a) for a in args]
    a64 = [as64(a) for a in a32]          # identical values, so only the arithmetic differs
    o32, o64 = kernel(*a32), kernel(*a64)
    if not isinstance(o32, tuple):
        o32, o64 = (o32,), (o64,)
    for k, (p, q) in enumerate(zip(o32, o64)):
        if p.size == 0:
            continue
        want_dtype = np.float64 if out_dtype is np.float64 else out_dtype
        assert p.dtype == want_dtype, f"{name} output {k}: dtype {p.dtype}, expected {np.dtype(want_dtype)}"
        assert_close(f"{name} output {k} (float32 vs float64)", p, q, tol)


# --------------------------------------------------------------------------
# Dense layer
# --------------------------------------------------------------------------
def dense_setup(seed=0, B=4, n_in=5, n_out=3):
    r = rng_for(seed)
    return r.normal(size=(B, n_in)), r.normal(size=(n_in, n_out)), r.normal(size=n_out), r.normal(size=(B, n_out))


def test_dense_forward_value():
    h, W, c, _ = dense_setup()
    assert_close("dense_forward", K.dense_forward(h, W, c), h @ W + c, 1e-12)


def test_dense_backward_matches_finite_differences():
    h, W, c, G = dense_setup()
    L = lambda: float(np.sum(G * K.dense_forward(h, W, c)))
    dW0, dc0 = rng_for(1).normal(size=W.shape), rng_for(2).normal(size=c.shape)   # backward accumulates
    dW, dc = dW0.copy(), dc0.copy()
    dh = K.dense_backward(h, W, G, dW, dc, True)
    assert_close("dense_backward dh", dh, fd(L, h))
    assert_close("dense_backward dW (accumulated)", dW - dW0, fd(L, W))
    assert_close("dense_backward dc (accumulated)", dc - dc0, fd(L, c))
    dW2, dc2 = np.zeros_like(W), np.zeros_like(c)
    empty = K.dense_backward(h, W, G, dW2, dc2, False)
    assert empty.shape == (0, 0), f"need_dh=False must return an empty (0, 0) array, got {empty.shape}"
    assert_close("dense_backward dW (need_dh=False)", dW2, dW - dW0, 1e-12)
    assert_close("dense_backward_input", K.dense_backward_input(W, G), dh, 1e-12)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_dense_single_is_dense_of_one_unit(dtype, tol):
    """The baseline's output layer: dense_forward_single / dense_backward_single against
    dense_forward / dense_backward with n_out = 1 (the backward's accumulation included)."""
    h, W, c, G = (a.astype(dtype) for a in dense_setup(4, B=6, n_in=7, n_out=1))
    assert_close("dense_forward_single", K.dense_forward_single(h, W, c), K.dense_forward(h, W, c)[:, 0], tol)
    assert K.dense_forward_single(h, W, c).shape == (6,) and K.dense_forward_single(h, W, c).dtype == dtype
    dW0, dc0 = rng_for(5).normal(size=W.shape).astype(dtype), rng_for(6).normal(size=c.shape).astype(dtype)
    dW, dc, dW1, dc1 = dW0.copy(), dc0.copy(), dW0.copy(), dc0.copy()
    dh = K.dense_backward_single(h, W, G[:, 0].copy(), dW, dc)
    want = K.dense_backward(h, W, G, dW1, dc1, True)
    assert_close("dense_backward_single dh", dh, want, tol)
    assert_close("dense_backward_single dW (accumulated)", dW, dW1, tol)
    assert_close("dense_backward_single dc (accumulated)", dc, dc1, tol)
    L = lambda: float(np.sum(G[:, 0] * K.dense_forward_single(h, W, c)))
    if dtype == np.float64:
        assert_close("dense_backward_single dW (finite differences)", dW - dW0, fd(L, W))


def test_dense_tangent_matches_finite_differences():
    h, W, c, _ = dense_setup()
    r = rng_for(3)
    h_dot, W_dot, c_dot = r.normal(size=h.shape), r.normal(size=W.shape), r.normal(size=c.shape)
    e2, e1 = np.empty((0, 0)), np.empty(0)
    cases = {
        "input and parameters": (h_dot, W_dot, c_dot),
        "input only": (h_dot, None, None),
        "parameters only": (None, W_dot, c_dot),
        "weights only": (None, W_dot, None),
    }
    for label, (hd, Wd, cd) in cases.items():
        line = lambda t: K.dense_forward(h + t * (0 if hd is None else hd), W + t * (0 if Wd is None else Wd),
                                         c + t * (0 if cd is None else cd))
        got = K.dense_tangent(e2 if hd is None else hd, W, h, e2 if Wd is None else Wd, e1 if cd is None else cd)
        assert_close(f"dense_tangent ({label})", got, fd_line(line))


def test_dense_float32():
    h, W, c, G = dense_setup()
    assert_float32_agrees("dense_forward", K.dense_forward, h, W, c)
    assert_float32_agrees("dense_backward", lambda *a: K.dense_backward(*a, True), h, W, G,
                          np.zeros_like(W), np.zeros_like(c))
    dW32, dc32 = np.zeros(W.shape, np.float32), np.zeros(c.shape, np.float32)
    K.dense_backward(as32(h), as32(W), as32(G), dW32, dc32, False)
    dW64, dc64 = np.zeros_like(W), np.zeros_like(c)
    K.dense_backward(as64(as32(h)), as64(as32(W)), as64(as32(G)), dW64, dc64, False)
    assert_close("dense_backward dW float32", dW32, dW64, F32_TOL)
    assert_close("dense_backward dc float32", dc32, dc64, F32_TOL)
    assert_float32_agrees("dense_backward_input", K.dense_backward_input, W, G)
    assert_float32_agrees("dense_tangent", K.dense_tangent, h, W, h, W, c)


# Products in two blocks (the training step's thread; kernels/blocking.py "Products on two cores")
BLOCK_SHAPES = [(24, 784, 200), (24, 200, 784), (24, 1000, 333), (9, 500, 47), (3, 70000, 1), (24, 1, 10000)]


def one_block(fn, *args):
    """fn computed off the main thread: the one-block products (NumPy's and Numba's)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def in_threads(n, fn, *args):
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,n_in,n_out", BLOCK_SHAPES)
def test_products_in_blocks_equal_the_one_block_products(B, n_in, n_out, dtype):
    """Big products in the main thread run as two halves of ?gemm blocks: the same values as one
    product (to rounding), dL/dW and dL/dc accumulated, dL/dh only when asked, whatever the edges
    (uneven halves and blocks; 24 x 1000 x 333 takes 5, 5 and 11 blocks per half; a one-row W
    leaves the first half of its rows empty)."""
    assert blocking._in_blocks(B * n_in * n_out, np.zeros((1, 1)))
    r = rng_for(3)
    h, hd = (r.standard_normal((B, n_in)).astype(dtype) for _ in range(2))
    W, Wd = (r.standard_normal((n_in, n_out)).astype(dtype) for _ in range(2))
    c, da = r.standard_normal(n_out).astype(dtype), r.standard_normal((B, n_out)).astype(dtype)
    e2, e1 = np.empty((0, 0), dtype), np.empty(0, dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5

    assert_close("forward", K.dense_forward(h, W, c), one_block(K.dense_forward, h, W, c), tol)
    for need_dh in (True, False):
        dW0, dc0 = r.standard_normal(W.shape).astype(dtype), r.standard_normal(c.shape).astype(dtype)
        dW, dc, dW1, dc1 = dW0.copy(), dc0.copy(), dW0.copy(), dc0.copy()
        dh = K.dense_backward(h, W, da, dW, dc, need_dh)
        dh1 = one_block(K.dense_backward, h, W, da, dW1, dc1, need_dh)
        assert dh.shape == dh1.shape == ((B, n_in) if need_dh else (0, 0))
        assert_close("backward dh", dh, dh1, tol)
        assert_close("backward dW += h^T da", dW - dW0, dW1 - dW0, tol)
        assert_close("backward dc += sum da", dc - dc0, dc1 - dc0, tol)
        # accumulate=False writes dW and dc, whatever they held (NaN here), in blocks and in one
        dWw, dcw, dWw1, dcw1 = (np.full(a.shape, np.nan, dtype) for a in (dW0, dc0, dW0, dc0))
        dhw = K.dense_backward(h, W, da, dWw, dcw, need_dh, accumulate=False)
        one_block(K.dense_backward, h, W, da, dWw1, dcw1, need_dh, False)
        assert_close("backward dh (writing dW)", dhw, dh1, tol)
        for got, want, label in ((dWw, dW1 - dW0, "dW = h^T da"), (dcw, dc1 - dc0, "dc = sum da"),
                                 (dWw1, dW1 - dW0, "dW = h^T da (one block)"), (dcw1, dc1 - dc0, "dc (one block)")):
            assert np.all(np.isfinite(got)), label
            assert_close(f"backward {label}", got, want, tol)
    assert_close("backward input", K.dense_backward_input(W, da), one_block(K.dense_backward_input, W, da), tol)
    for args, label in (((hd, W, h, Wd, c), "both"), ((hd, W, h, e2, e1), "input"), ((e2, W, h, Wd, c), "params")):
        assert_close(f"tangent ({label})", K.dense_tangent(*args), one_block(K.dense_tangent, *args), tol)


def test_products_in_blocks_do_not_depend_on_the_cores():
    """One core or two run the same blocks, so the step's numbers are bit for bit the same
    (what lets train.StepCores switch during a run)."""
    r = rng_for(4)
    h, W = r.standard_normal((24, 784)).astype(np.float32), r.standard_normal((784, 200)).astype(np.float32)
    c, da = r.standard_normal(200).astype(np.float32), r.standard_normal((24, 200)).astype(np.float32)
    outs = []
    for n in (1, 2):
        dW, dc = np.zeros_like(W), np.zeros_like(c)
        outs.append([in_threads(n, K.dense_forward, h, W, c), in_threads(n, K.dense_backward, h, W, da, dW, dc, True),
                     dW, dc, in_threads(n, K.dense_backward_input, W, da),
                     in_threads(n, K.dense_tangent, h, W, h, W, c)])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_small_or_unusual_products_stay_in_one_block():
    f32 = np.zeros((24, 200), np.float32)
    assert not blocking._in_blocks(blocking.SPLIT_MIN_MACS - 1, f32)
    assert blocking._in_blocks(blocking.SPLIT_MIN_MACS, f32)
    assert not blocking._in_blocks(blocking.SPLIT_MIN_MACS, f32, f32.astype(np.float64))     # mixed dtypes
    assert not blocking._in_blocks(blocking.SPLIT_MIN_MACS, np.zeros((200, 24), np.float32).T)  # not C-contiguous
    assert not blocking._in_blocks(blocking.SPLIT_MIN_MACS, f32.astype(np.int64))
    assert not one_block(blocking._in_blocks, blocking.SPLIT_MIN_MACS, f32)                   # not the step's thread


@pytest.mark.parametrize("n", [7, 200, 16, 784, 1])
def test_halves_cover_the_columns_at_a_cache_line(n):
    mid = blocking._halves(n)
    assert 0 <= mid <= n and (mid % 16 == 0 or n < 32)
    assert abs(mid - n / 2) <= 16


@pytest.mark.parametrize("n", [7, 200, 333, 784, 1])
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_blocks_cover_each_half_in_order(n, k):
    """The k blocks of each half tile [0, mid) and [mid, n) in order (some empty when k > n / 2)."""
    mid = blocking._halves(n)
    for part, (lo0, hi0) in enumerate(((0, mid), (mid, n))):
        edges = [blocking._block(n, part, k, q) for q in range(k)]
        assert edges[0][0] == lo0 and edges[-1][1] == hi0
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        assert all(0 <= hi - lo <= -(-(hi0 - lo0) // k) for lo, hi in edges)


def test_blocks_per_half_fit_the_small_matrix_kernels():
    """Blocks small enough for OpenBLAS's unpacked kernels at small batches, whole halves otherwise."""
    for n, B, per_unit, max_units in ((200, 24, 24 * 784, None), (784, 24, 24 * 200, None),
                                      (784, 24, 24 * 200, blocking.SMALL_GEMM_TN_ENTRIES // 24),
                                      (1000, 64, 64 * 200, None)):
        k = blocking._blocks_per_half(n, B, per_unit, max_units)
        half = max(blocking._halves(n), n - blocking._halves(n))
        size, fewer = -(-half // k), -(-half // (k - 1))      # block sizes with k and with k - 1 blocks
        assert 1 < k <= blocking.MAX_BLOCKS_PER_HALF and size * per_unit <= blocking.SMALL_GEMM_MACS
        assert max_units is None or size <= max_units
        assert fewer * per_unit > blocking.SMALL_GEMM_MACS or (max_units is not None and fewer > max_units)  # fewest
    assert blocking._blocks_per_half(784, 24, 100, None) == 1                              # already small
    assert blocking._blocks_per_half(784, blocking.SMALL_GEMM_MAX_BATCH + 1, 200 * 128, None) == 1  # packing pays
    assert blocking._blocks_per_half(100_000, 24, 24 * 784, None) == 1                     # would take too many


# --------------------------------------------------------------------------
# Pointwise nonlinearities
# --------------------------------------------------------------------------
def pointwise_setup(seed=0, shape=(4, 5), scale=2.0):
    r = rng_for(seed)
    return r.normal(size=shape) * scale, r.normal(size=shape)


def test_tanh_forward_backward():
    a, G = pointwise_setup()
    h = K.tanh_forward(a)
    assert_close("tanh_forward", h, np.tanh(a), 1e-14)
    assert_close("tanh_backward", K.tanh_backward(h, G), fd(lambda: float(np.sum(G * K.tanh_forward(a))), a))


def test_tanh_tangents():
    a, G = pointwise_setup()
    r = rng_for(5)
    a_dot, G_dot = r.normal(size=a.shape), r.normal(size=a.shape)
    h = K.tanh_forward(a)
    assert_close("tanh_tangent", K.tanh_tangent(h, a_dot), fd_line(lambda t: K.tanh_forward(a + t * a_dot)))
    # the backward dpre = dh (1 - h^2) with h = tanh(a + t a_dot) and dh = G + t G_dot
    h_dot = K.tanh_tangent(h, a_dot)
    line = lambda t: K.tanh_backward(K.tanh_forward(a + t * a_dot), G + t * G_dot)
    assert_close("tanh_backward_tangent", K.tanh_backward_tangent(h, h_dot, G, G_dot), fd_line(line))


def test_sigmoid_forward_backward():
    a, G = pointwise_setup()
    s = K.sigmoid_forward(a)
    assert_close("sigmoid_forward", s, expit(a), 1e-14)
    assert_close("mean_sample_forward", K.mean_sample_forward(a), expit(a), 1e-14)
    assert_close("sigmoid_backward", K.sigmoid_backward(s, G),
                 fd(lambda: float(np.sum(G * K.sigmoid_forward(a))), a))


def test_sigmoid_forward_float32_rows():
    """float32 rows take sigma from exp(-|a|) in one pass: within 4e-7 relative of the float64
    value everywhere (the tanh form 1/2 + tanh(a/2)/2 loses it to cancellation for negative a:
    6% off at a = -16, 0 from a = -20), 0 or 1 (never subnormal) far out, NaN for NaN;
    other shapes keep the tanh form."""
    r = rng_for(31)
    a = np.concatenate([r.normal(size=(3, 200)) * 8, [np.linspace(-90.0, 90.0, 200)]]).astype(np.float32)
    want = expit(a.astype(np.float64))
    got = K.sigmoid_forward(a)
    assert got.dtype == np.float32
    rel = float(np.max(np.abs(got - want) / np.maximum(want, 1e-30)))
    assert rel < 4e-7, f"float32 sigmoid off by {rel:.2e} relative"
    edge = np.array([[-1000.0, -88.0, 88.0, 1000.0, -np.inf, np.inf, 0.0, np.nan]], dtype=np.float32)
    out = K.sigmoid_forward(edge)
    assert list(out[0, :7]) == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5] and np.isnan(out[0, 7]), out
    assert not np.any(np.signbit(out[0, :7])), out
    v = np.float32([-3.0, 0.5, 4.0])                  # 1-D: the tanh form
    assert_close("sigmoid_forward (1-D float32)", K.sigmoid_forward(v), expit(v.astype(np.float64)), 1e-6)


def test_per_example_dot_sums_in_float64():
    """d[r] = sum_j s[r, j] a[r // k, j] for k = 1, 2 and R, float64. For k = 1 (row by row) the
    float32 entries are summed in float64 (every float32 product is exact in float64, so only
    the order of the sum differs from the reference); the other two are float32 products."""
    r = rng_for(32)
    s = r.normal(size=(6, 300)).astype(np.float32)
    for k in (1, 2, 6):
        a = r.normal(size=(6 // k, 300)).astype(np.float32)
        want = np.array([np.sum(s[i].astype(np.float64) * a[i // k].astype(np.float64)) for i in range(6)])
        got = K.per_example_dot(s, a, k)
        assert got.dtype == np.float64
        assert_close(f"per_example_dot (k = {k})", got, want, 1e-13 if k == 1 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_subtract_scaled(dtype):
    """g <- g - alpha e in place (alpha rounded to g's dtype; the update within an ulp of NumPy's
    g - alpha * e, which rounds twice where the kernel may fuse), and (|g|^2, <g, e>) of the new g
    summed in float64."""
    r = rng_for(33)
    g, e = r.normal(size=(7, 300)).astype(dtype), r.normal(size=(7, 300)).astype(dtype)
    alpha = 0.0123
    want_g = g - g.dtype.type(alpha) * e
    squares, products = K.subtract_scaled(g, alpha, e)
    assert g.dtype == dtype
    assert_close("subtract_scaled g", g, want_g, 2.0 * np.finfo(dtype).eps)
    g64, e64 = g.astype(np.float64), e.astype(np.float64)
    assert_close("subtract_scaled |g|^2", squares, np.sum(g64 * g64), 1e-13)
    assert_close("subtract_scaled <g, e>", products, np.sum(g64 * e64), 1e-13)



@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gram_tangent_is_h_times_the_weight_gradient(dtype):
    """h (h^T d) through the Gram matrix equals the tangent h G_W of the weight gradient G_W = h^T d,
    and <d, .>, <e, .> of it are |G_W|^2 and <G_W, h^T e>, the sums REBAR's tuning reads off it."""
    r = rng_for(34)
    h, d, e = (r.normal(size=shape).astype(dtype) for shape in ((6, 50), (6, 9), (6, 9)))
    h64, d64, e64 = h.astype(np.float64), d.astype(np.float64), e.astype(np.float64)
    G, E = h64.T @ d64, h64.T @ e64
    Y = K.gram_tangent(h, d)
    assert Y.dtype == dtype and Y.shape == d.shape
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert_close("gram_tangent", Y, h64 @ G, tol)
    assert_close("<d, h h^T d> = |h^T d|^2", K.dot(d, Y), np.sum(G * G), tol)
    assert_close("<e, h h^T d> = <h^T d, h^T e>", K.dot(e, Y), np.sum(G * E), tol)

def test_sigmoid_backward_tangent():
    a, G = pointwise_setup()
    r = rng_for(6)
    a_dot, G_dot = r.normal(size=a.shape), r.normal(size=a.shape)
    s = K.sigmoid_forward(a)
    s_dot = s * (1 - s) * a_dot
    line = lambda t: K.sigmoid_backward(K.sigmoid_forward(a + t * a_dot), G + t * G_dot)
    assert_close("sigmoid_backward_tangent", K.sigmoid_backward_tangent(s, s_dot, G, G_dot), fd_line(line))


def test_softplus_value_and_stability():
    a, _ = pointwise_setup(scale=5.0)
    assert_close("softplus", K.softplus(a), np.logaddexp(0.0, a), 1e-14)
    extreme = np.array([[1000.0, -1000.0, 0.0, 50.0, -50.0, 710.0, -745.0]])
    for dtype in (np.float64, np.float32):
        out = K.softplus(extreme.astype(dtype))
        assert out.dtype == dtype
        assert np.all(np.isfinite(out)), f"softplus({extreme}) in {np.dtype(dtype)} is not finite: {out}"
        want = np.logaddexp(0.0, extreme)
        assert_close(f"softplus at extremes ({np.dtype(dtype)})", out, want, 1e-6)
        assert float(out[0, 0]) == 1000.0 and 0.0 <= float(out[0, 1]) < 1e-30, out
    # the derivative of softplus is sigmoid
    assert_close("d softplus / da", K.sigmoid_forward(a), fd(lambda: float(np.sum(K.softplus(a))), a))
    s = K.sigmoid_forward(extreme)
    assert np.all(np.isfinite(s)) and s[0, 0] == 1.0 and s[0, 1] == 0.0


def test_pointwise_float32():
    a, G = pointwise_setup()
    h, s = np.tanh(a), expit(a)
    assert_float32_agrees("tanh_forward", K.tanh_forward, a)
    assert_float32_agrees("tanh_backward", K.tanh_backward, h, G)
    assert_float32_agrees("tanh_tangent", K.tanh_tangent, h, G)
    assert_float32_agrees("tanh_backward_tangent", K.tanh_backward_tangent, h, G, G * 0.5, a)
    assert_float32_agrees("sigmoid_forward", K.sigmoid_forward, a)
    assert_float32_agrees("mean_sample_forward", K.mean_sample_forward, a)
    assert_float32_agrees("sigmoid_backward", K.sigmoid_backward, s, G)
    assert_float32_agrees("sigmoid_backward_tangent", K.sigmoid_backward_tangent, s, G, G * 0.5, a)
    assert_float32_agrees("softplus", K.softplus, a)


# --------------------------------------------------------------------------
# Bernoulli log-likelihood
# --------------------------------------------------------------------------
def bernoulli_setup(seed=0, B=4, n=6, relaxed=False):
    r = rng_for(seed)
    a = r.normal(size=(B, n)) * 3
    y = r.uniform(0.02, 0.98, (B, n)) if relaxed else (r.random((B, n)) < 0.5).astype(np.float64)
    return y, a, r.normal(size=B)


@pytest.mark.parametrize("relaxed", [False, True])
def test_bernoulli_loglik_forward_and_backward(relaxed):
    y, a, g = bernoulli_setup(relaxed=relaxed)
    ll, sig = K.bernoulli_loglik_forward(y, a)
    assert_close("bernoulli_loglik_forward ll", ll, np.sum(y * a - np.logaddexp(0, a), axis=1), 1e-13)
    assert_close("bernoulli_loglik_forward sig", sig, expit(a), 1e-14)
    L = lambda: float(np.sum(g * K.bernoulli_loglik_forward(y, a)[0]))
    assert_close("bernoulli_loglik_backward (d/da)", K.bernoulli_loglik_backward(y, sig, g), fd(L, a))
    assert_close("bernoulli_loglik_backward_sample (d/dy)", K.bernoulli_loglik_backward_sample(a, g), fd(L, y))


def test_bernoulli_loglik_backward_tangent():
    y, a, g = bernoulli_setup(relaxed=True)
    r = rng_for(7)
    y_dot, a_dot = r.normal(size=y.shape), r.normal(size=a.shape)
    sig = expit(a)
    both = lambda t: K.bernoulli_loglik_backward(y + t * y_dot, expit(a + t * a_dot), g)
    assert_close("bernoulli_loglik_backward_tangent (y and a move)",
                 K.bernoulli_loglik_backward_tangent(y_dot, sig, a_dot, g), fd_line(both))
    a_only = lambda t: K.bernoulli_loglik_backward(y, expit(a + t * a_dot), g)
    assert_close("bernoulli_loglik_backward_tangent (y fixed)",
                 K.bernoulli_loglik_backward_tangent(np.empty((0, 0)), sig, a_dot, g), fd_line(a_only))


def test_bernoulli_loglik_extremes():
    a = np.array([[1000.0, -1000.0, 1000.0, -1000.0]])
    y = np.array([[1.0, 0.0, 0.0, 1.0]])
    for dtype in (np.float64, np.float32):
        ll, sig = K.bernoulli_loglik_forward(y.astype(dtype), a.astype(dtype))
        assert np.all(np.isfinite(ll)) and np.all(np.isfinite(sig))
        assert_close(f"bernoulli_loglik_forward at +-1000 ({np.dtype(dtype)})", ll, [-2000.0], 1e-7)
        assert list(sig[0]) == [1.0, 0.0, 1.0, 0.0]


def test_bernoulli_float32():
    y, a, g = bernoulli_setup(relaxed=True)
    assert_float32_agrees("bernoulli_loglik_forward", K.bernoulli_loglik_forward, y, a)
    assert_float32_agrees("bernoulli_loglik_backward", K.bernoulli_loglik_backward, y, expit(a), g)
    assert_float32_agrees("bernoulli_loglik_backward_sample", K.bernoulli_loglik_backward_sample, a, g)
    assert_float32_agrees("bernoulli_loglik_backward_tangent", K.bernoulli_loglik_backward_tangent,
                          y, expit(a), a, g)


# --------------------------------------------------------------------------
# Noise and samplers
# --------------------------------------------------------------------------
def test_logistic_noise_values_and_clipping():
    u = np.array([[0.0, 1.0, 0.5, 0.25, 1e-12, 1 - 1e-12, 0.9]])
    lo, hi = np.log(1e-8) - np.log1p(-1e-8), np.log1p(-1e-8) - np.log(1e-8)
    want = np.array([[lo, hi, 0.0, np.log(0.25 / 0.75), lo, hi, np.log(9.0)]])
    for dtype in (np.float64, np.float32):
        z0 = K.logistic_noise(u.astype(dtype))
        assert z0.dtype == dtype
        assert np.all(np.isfinite(z0)), f"logistic_noise({u}) in {np.dtype(dtype)}: {z0}"
        assert_close(f"logistic_noise ({np.dtype(dtype)})", z0, want, 1e-6 if dtype == np.float32 else 1e-8)
    r = rng_for(8).random((5, 7))
    assert_close("logistic_noise", K.logistic_noise(r), np.log(r) - np.log1p(-r), 1e-12)
    assert_float32_agrees("logistic_noise", K.logistic_noise, r)


def test_hard_sample_is_bernoulli_sigmoid():
    r = rng_for(9)
    a = np.array([[-2.0, -0.5, 0.0, 0.7, 3.0]])
    z0 = K.logistic_noise(r.random((1, 5)))
    assert np.array_equal(K.hard_sample_forward(a, z0), (a + z0 > 0).astype(np.float64))
    n = 40000
    A = np.ascontiguousarray(np.repeat(a, n, axis=0))
    b = K.hard_sample_forward(A, K.logistic_noise(r.random(A.shape)))
    p = expit(a[0])
    z = (b.mean(axis=0) - p) / np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(z) < 4.5), f"hard sample frequencies off sigma(a): z = {z}"
    assert_float32_agrees("hard_sample_forward", K.hard_sample_forward, a, z0)


@pytest.mark.parametrize("improved", [False, True])
def test_relaxed_sample_forward_backward(improved):
    r = rng_for(10)
    a = r.normal(size=(4, 5)) * 2
    z0 = K.logistic_noise(r.random(a.shape))
    G = r.normal(size=a.shape)
    lam = 0.6
    s = K.relaxed_sample_forward(a, z0, lam, improved)
    t = (a + z0) / lam + (a * lam / (lam + 1) if improved else 0.0)
    assert_close("relaxed_sample_forward", s, expit(t), 1e-13)
    L = lambda: float(np.sum(G * K.relaxed_sample_forward(a, z0, lam, improved)))
    assert_close(f"relaxed_sample_backward (improved={improved}, dz/da = 1)",
                 K.relaxed_sample_backward(s, lam, improved, G, np.ones_like(a)), fd(L, a))
    # a general noise path: z0 moves with a so that dz/da = d
    d = r.normal(size=a.shape)
    a0 = a.copy()
    Ld = lambda: float(np.sum(G * K.relaxed_sample_forward(a, z0 + (d - 1) * (a - a0), lam, improved)))
    assert_close(f"relaxed_sample_backward (improved={improved}, dz/da = d)",
                 K.relaxed_sample_backward(s, lam, improved, G, d), fd(Ld, a))
    assert_float32_agrees("relaxed_sample_forward", K.relaxed_sample_forward, a, z0, lam, improved)
    assert_float32_agrees("relaxed_sample_backward", K.relaxed_sample_backward, s, lam, improved, G, d)


@pytest.mark.parametrize("improved", [False, True])
def test_relaxed_sample_tangent(improved):
    r = rng_for(11)
    a = r.normal(size=(3, 4))
    a_dot = r.normal(size=a.shape)
    z0 = K.logistic_noise(r.random(a.shape))
    lam = 0.7
    tau = np.log(lam)
    s = K.relaxed_sample_forward(a, z0, lam, improved)
    s_dot, t_exp = K.relaxed_sample_tangent(s, a, z0, a_dot, lam, improved)
    line = lambda t: K.relaxed_sample_forward(a + t * a_dot, z0, np.exp(tau + t), improved)
    assert_close(f"relaxed_sample_tangent s_dot (improved={improved})", s_dot, fd_line(line))
    t_of = lambda t: (a + z0) / np.exp(tau + t) + (a * np.exp(tau + t) / (np.exp(tau + t) + 1) if improved else 0)
    assert_close(f"relaxed_sample_tangent t_explicit (improved={improved})", t_exp, fd_line(t_of))
    s_dot0, _ = K.relaxed_sample_tangent(s, a, z0, np.empty((0, 0)), lam, improved)
    fixed = lambda t: K.relaxed_sample_forward(a, z0, np.exp(tau + t), improved)
    assert_close(f"relaxed_sample_tangent, logits fixed (improved={improved})", s_dot0, fd_line(fixed))
    assert_float32_agrees("relaxed_sample_tangent", K.relaxed_sample_tangent, s, a, z0, a_dot, lam, improved)


def test_relaxed_logits_backward_and_tangent():
    r = rng_for(12)
    a, dt, s = r.normal(size=(3, 4)), r.normal(size=(3, 4)), r.uniform(0.05, 0.95, (3, 4))
    z0 = K.logistic_noise(r.random(a.shape))
    lam = 0.8
    k1 = lambda lm: 1 / lm + lm / (lm + 1)
    # F(a) = sum(dt * t(a)) - sum log B(s; a) with t = (a + z0)/lam + c a, s held fixed
    F = lambda: float(np.sum(dt * ((a + z0) / lam + a * lam / (lam + 1)))
                      - np.sum(K.bernoulli_loglik_forward(s, a)[0]))
    da = K.relaxed_logits_backward(dt, s, expit(a), k1(lam), 1.0)
    assert_close("relaxed_logits_backward", da, fd(F, a))
    # with a weight w on the f term (dL/df = w: the -log B term's derivative scales, dt is given)
    w = -0.37
    Fw = lambda: float(np.sum(dt * ((a + z0) / lam + a * lam / (lam + 1)))
                       - w * np.sum(K.bernoulli_loglik_forward(s, a)[0]))
    assert_close("relaxed_logits_backward (weighted)", K.relaxed_logits_backward(dt, s, expit(a), k1(lam), w),
                 fd(Fw, a))
    # tangent in tau = log lam, with dt, s and a moving along straight lines
    dt_dot, s_dot, a_dot = r.normal(size=a.shape), r.normal(size=a.shape), r.normal(size=a.shape)
    tau = np.log(lam)
    dk1 = -1 / lam + lam / (lam + 1) ** 2          # d k1 / d tau
    line = lambda t: K.relaxed_logits_backward(dt + t * dt_dot, s + t * s_dot, expit(a + t * a_dot),
                                               k1(np.exp(tau + t)), 1.0)
    got = K.relaxed_logits_backward_tangent(dt, dt_dot, s_dot, expit(a), a_dot, k1(lam), dk1)
    assert_close("relaxed_logits_backward_tangent", got, fd_line(line))
    assert_float32_agrees("relaxed_logits_backward", K.relaxed_logits_backward, dt, s, expit(a), k1(lam), w)
    assert_float32_agrees("relaxed_logits_backward_tangent", K.relaxed_logits_backward_tangent,
                          dt, dt_dot, s_dot, expit(a), a_dot, k1(lam), dk1)


def test_dz_cond_dlogits():
    """z~(a') built from the threshold u'(a') = sigma(-a') with r (b = 1) or r' (b = 0) held fixed."""
    r = rng_for(13)
    a = r.normal(size=(6, 5)) * 1.5
    u = r.random(a.shape)
    b = K.hard_sample_forward(a, K.logistic_noise(u))
    assert 0 < b.mean() < 1
    up0 = expit(-a)
    assert np.array_equal(b == 1, u > up0)
    rr = np.where(b == 1, (u - up0) / (1 - up0), u / up0)

    def z_tilde(t):
        ap = a + t
        up = expit(-ap)
        uu = np.where(b == 1, up + rr * (1 - up), rr * up)
        return ap + np.log(uu) - np.log1p(-uu)
    assert_close("conditional z~ has the value of z", z_tilde(0.0), a + np.log(u) - np.log1p(-u), 1e-10)
    assert_close("dz_cond_dlogits", K.dz_cond_dlogits(a, u, b), fd_line(z_tilde))
    # SPEC section 2's formulas
    want = np.where(b == 1, 1 - up0 / u, 1 - (1 - up0) / (1 - u))
    assert_close("dz_cond_dlogits (closed form)", K.dz_cond_dlogits(a, u, b), want, 1e-12)
    assert_float32_agrees("dz_cond_dlogits", K.dz_cond_dlogits, a, u, b, tol=1e-4)
    # far-out logits with u just past the threshold, where dz~/da is far from 1: u' (b = 1) and
    # 1 - u' = sigma(a) (b = 0) are each computed without cancellation, so the result keeps
    # float64's relative precision (through 1/2 + tanh(-a/2)/2 it was ~1e-8 off here)
    a = np.array([[16.0, -16.0, 12.0, -12.0]])
    u = np.array([[1.2e-7, 1.0 - 1.2e-7, 7e-6, 1.0 - 7e-6]])
    b = np.array([[1.0, 0.0, 1.0, 0.0]])
    want = np.where(b == 1, 1 - expit(-a) / u, 1 - expit(a) / (1 - u))
    assert 0.05 < np.min(want) and np.max(want) < 0.2, want
    assert_close("dz_cond_dlogits (far-out logits)", K.dz_cond_dlogits(a, u, b), want, 1e-13)


def test_float32_exponential_is_within_5_ulp():
    """The bound's float32 exp(-|a|) (kernels/fastmath.py:_exp_neg_abs_f32): within 5 ulp of the exact value
    on [-87, 87], 0 beyond (never subnormal, never negative), NaN for NaN."""
    a = np.concatenate([np.linspace(-87.0, 87.0, 200001), rng_for(22).normal(size=20000) * 5,
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    exact = np.exp(-np.abs(a.astype(np.float64)))
    ulps = float(np.max(np.abs(fastmath._exp_neg_abs_f32_array(a) - exact) / exact)) / 2.0 ** -24
    assert ulps <= 5.0, f"exp(-|a|) off by {ulps:.2f} ulp"
    beyond = np.array([87.5, -88.0, 103.0, 1e30, -np.inf, np.inf, np.nan], dtype=np.float32)
    got = fastmath._exp_neg_abs_f32_array(beyond)
    assert np.all(got[:-1] == 0.0) and not np.any(np.signbit(got[:-1])) and np.isnan(got[-1]), got


@pytest.mark.parametrize("k", [1, 3])
def test_loglik_rows_float32_agrees_with_float64(k):
    """loglik_rows computes its float32 exponentials in the pass: same values as in float64
    (where NumPy's exp is used), to float32 resolution, logits from -100 to 100."""
    r = rng_for(23)
    y = (r.random((4, 300)) < 0.3).astype(np.float64)
    a = r.normal(size=(4 * k, 300)) * 6
    a[0, :6] = [0.0, 90.0, -90.0, 1e-30, 100.0, -100.0]
    want = K.loglik_rows(y, a, k)
    sp = np.logaddexp(0.0, a)
    assert_close("loglik_rows (float64)", want, np.sum(np.repeat(y, k, axis=0) * a - sp, axis=1), 1e-12)
    got = K.loglik_rows(as32(y), as32(a), k)
    assert got.dtype == np.float64
    assert_close("loglik_rows (float32)", got, K.loglik_rows(y, as64(as32(a)), k), 1e-7)
    a[1, 7] = np.nan
    assert np.isnan(K.loglik_rows(as32(y), as32(a), k)[1])


# --------------------------------------------------------------------------
# Table products with a binary left factor (the importance-weighted bound)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n_in, n_out", [(200, 784), (13, 7), (41, 3), (1, 2), (5, 5)])
def test_binary_product_equals_the_matrix_product(n_in, n_out):
    """(2 b - 1) W + c from b's group codes and W's table, against the float64 product, for
    input widths that are and are not multiples of GROUP_BITS and of a GROUP_BLOCK of groups."""
    r = rng_for(21)
    W, c = r.normal(size=(n_in, n_out)), r.normal(size=n_out)
    b = (r.random((9, n_in)) < 0.5).astype(np.float64)
    b[0], b[1] = 0.0, 1.0                                   # all units off, all on
    T = K.binary_product_table(W)
    G = K.binary_product_groups(n_in)
    assert T.shape == (G, 2 ** K.GROUP_BITS, n_out) and G % K.GROUP_BLOCK == 0
    assert G * K.GROUP_BITS >= n_in > (G - K.GROUP_BLOCK) * K.GROUP_BITS
    codes = K.group_codes(b, G)
    assert codes.shape == (9, G) and codes.dtype == np.int32 and codes.max() < 2 ** K.GROUP_BITS
    want = (2 * b - 1) @ W + c
    assert_close("binary_product", K.binary_product(codes, T, c), want, 1e-13)
    W32, c32, b32 = as32(W), as32(c), as32(b)
    got32 = K.binary_product(K.group_codes(b32, G), K.binary_product_table(W32), c32)
    assert got32.dtype == np.float32
    assert_close("binary_product (float32)", got32, want, 1e-5)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("n_in, n_out", [(200, 784), (13, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_product_loglik_is_its_composition(dtype, n_in, n_out, k):
    """The table product scored in the same pass (float32: fastmath._binary_product_loglik_f32) is
    loglik_rows of binary_product, up to the order of a float64 sum; logits past float32's
    exponential's range included."""
    r = rng_for(24)
    W, c = (r.normal(size=(n_in, n_out)) * 3).astype(dtype), (r.normal(size=n_out) * 40).astype(dtype)
    b = (r.random((12, n_in)) < 0.5).astype(dtype)
    y = (r.random((12 // k, n_out)) < 0.5).astype(dtype)
    G = K.binary_product_groups(n_in)
    codes, T = K.group_codes(b, G), K.binary_product_table(W)
    got = K.binary_product_loglik(codes, T, c, y, k)
    assert got.dtype == np.float64
    assert_close("binary_product_loglik", got, K.loglik_rows(y, K.binary_product(codes, T, c), k), 1e-13)


def test_tables_pay_only_while_they_fit_the_caches():
    assert K.binary_product_pays(np.zeros((200, 784), np.float32))          # 4 MB
    assert K.binary_product_pays(np.zeros((500, 500), np.float32))          # 6.7 MB
    assert not K.binary_product_pays(np.zeros((1000, 1000), np.float32))    # 25.6 MB


@pytest.mark.parametrize("H", [200, 13, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_rows_is_its_composition(dtype, H):
    """The bound's step through a layer (kernels.sample_rows; float32: one pass, fastmath._sample_rows_f32)
    gives the samples and codes of threshold_samples at sigma(-a) and group_codes bit for bit, and
    their loglik_rows up to the order of a float64 sum, for logits far past float32's exponential's
    range, at 0 and -0, and for noise at both ends of its range."""
    from rebar_np.evaluation.bound import uniform_bits
    r = rng_for(23)
    a = (r.normal(size=(40, H)) * 6).astype(dtype)
    a[0, :] = 0.0
    a[1, :] = -0.0
    a[2, ::2], a[2, 1::2] = 95.0, -95.0
    bits = uniform_bits(r, (40, H))
    bits[3, :], bits[4, :] = 0, 2 ** 32 - 1
    G = K.binary_product_groups(H)
    b, codes, ll = K.sample_rows(bits, a, G)
    want_b = K.threshold_samples(bits, K.sigmoid_forward(-a), 1)
    assert b.dtype == dtype and np.array_equal(b, want_b) and 0 < want_b.sum() < want_b.size
    assert np.array_equal(codes, K.group_codes(want_b, G))
    assert_close("sample_rows' log-likelihood", ll, K.loglik_rows(want_b, a, 1), 1e-13)


def test_group_codes_read_each_unit_into_its_bit():
    b = np.zeros((2, 12))
    b[0, [0, 4, 5, 11]] = 1.0                              # groups of 5: bits 0 and 4 of group 0, 0 of 1, 1 of 2
    b[1, :] = 1.0
    codes = K.group_codes(b, K.binary_product_groups(12))
    assert codes[0, :3].tolist() == [1 + 16, 1, 2] and codes[1, :3].tolist() == [31, 31, 3]
    assert not codes[:, 3:].any()                           # padding groups select their (zero) row 0


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------
def test_leave_one_out_center():
    f = rng_for(14).normal(size=7) * 10
    want = np.array([f[n] - np.mean(np.delete(f, n)) for n in range(f.size)])
    assert_close("leave_one_out_center", K.leave_one_out_center(f), want, 1e-12)
    assert_close("leave_one_out_center (B=2)", K.leave_one_out_center(f[:2]), [f[0] - f[1], f[1] - f[0]], 1e-12)
    assert_float32_agrees("leave_one_out_center", K.leave_one_out_center, f)


def test_logmeanexp_rows():
    r = rng_for(15)
    F = r.normal(size=(4, 9)) * 5
    F[1] -= 5000.0            # would underflow exp
    F[2] += 800.0             # would overflow exp
    F[3, 0] = 1e4             # one dominant term
    got = K.logmeanexp_rows(F)
    want = logsumexp(F, axis=1) - np.log(F.shape[1])
    assert np.all(np.isfinite(got))
    assert got.dtype == np.float64
    err = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    assert err < 1e-12, f"logmeanexp_rows: relative error {err:.3e}"
    assert_float32_agrees("logmeanexp_rows", K.logmeanexp_rows, F, out_dtype=np.float64)
