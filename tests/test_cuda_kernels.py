"""Every CUDA twin of rebar_np/kernels/cuda.py against its CPU kernel (rebar_np.kernels,
rebar_np.training.adam.adam_kernel, rebar_np.training.train.ema_moments / all_finite), and DeviceArray's
arithmetic (rebar_np.kernels.dispatch) against NumPy.

Runs on Numba's CUDA simulator (conftest.py sets NUMBA_ENABLE_CUDASIM=1 unless
REBAR_NP_REAL_CUDA=1), which runs one Python thread per CUDA thread: the shapes are
tiny, but most have more elements than the simulator's launch has threads, so the
grid-stride loops do stride. Results agree to 1e-10 relative in float64 and 1e-5 in
float32 (the twins accumulate in float64 and order sums differently); hard samples,
counts and flags agree exactly.
"""
import operator
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from rebar_np.kernels import cuda as C
from rebar_np.kernels import dispatch as D
from rebar_np import kernels as K
from rebar_np.evaluation.bound import uniform_bits
from rebar_np.training.adam import adam_kernel as cpu_adam_kernel
from rebar_np.kernels.dispatch import DeviceArray, to_device, to_host
from rebar_np.training.train import adam_and_moments as cpu_adam_and_moments
from rebar_np.training.train import all_finite as cpu_all_finite
from rebar_np.training.train import ema_moments as cpu_ema_moments

B, N_IN, N_OUT = 3, 5, 4          # B N_OUT = 12 > 8 threads of a simulator launch: the loops stride
DTYPES = [np.float32, np.float64]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def assert_same(name, got, want, tol):
    """got (a DeviceArray, or a host value) equals the CPU's want: dtype, shape, the non-finite
    entries exactly and the finite ones to tol relative."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{name}: {type(got)} is not a {len(want)}-tuple"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(f"{name}[{i}]", g, w, tol)
        return
    if isinstance(want, np.ndarray):
        assert isinstance(got, DeviceArray), f"{name}: returned {type(got).__name__}, not a DeviceArray"
        got = to_host(got)
        assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != CPU's {want.dtype}"
        assert got.shape == want.shape, f"{name}: shape {got.shape} != CPU's {want.shape}"
    else:
        assert not isinstance(got, DeviceArray), f"{name}: a DeviceArray where the CPU returns {type(want)}"
        assert isinstance(got, type(want)) or np.isscalar(got), f"{name}: {type(got)} != {type(want)}"
        got, want = np.asarray(got), np.asarray(want)
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite), f"{name}: non-finite entries differ:\n{got}\n{want}"
    assert np.array_equal(got[~finite], want[~finite], equal_nan=True), f"{name}: non-finite values differ"
    err = rel_err(got[finite], want[finite])
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def dev(x, absent="host"):
    """The CUDA twin's argument for a CPU argument: arrays copied to the device, scalars as they are.
    A size-0 array stays a NumPy array (absent="host") or becomes a size-0 DeviceArray ("device")."""
    if not isinstance(x, np.ndarray):
        return x
    if x.size == 0 and absent == "host":
        return x
    return to_device(x)


def compare(name, args, dtype, absent="host", cpu=None, gpu=None):
    """Run the CPU kernel and its twin on the same arguments; compare every result."""
    cpu = cpu or getattr(K, name)
    gpu = gpu or getattr(C, name)
    want = cpu(*args)
    got = gpu(*[dev(a, absent) for a in args])
    assert_same(name, got, want, TOL[np.dtype(dtype)])
    return got, want


def uniform(rng, shape, dtype, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(dtype)


def empty2(dtype):
    return np.empty((0, 0), dtype)


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------
def test_importing_the_module_compiles_and_runs_nothing():
    """A bare import (in a fresh interpreter) needs no GPU and launches nothing."""
    env = dict(os.environ)
    if env.get("REBAR_NP_REAL_CUDA") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    code = "import rebar_np.kernels.cuda as C; assert C.TILE in (4, 16); print('ok')"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_k_keeps_the_cpu_kernels_sees_patches_and_dispatches_once_device_arrays_exist():
    """rebar_np.kernels.dispatch.K (in a fresh interpreter): the CPU kernel itself, kept as a plain
    attribute; a patch of rebar_np.kernels is seen, and so is its undoing; after the first
    DeviceArray the same name dispatches on its arguments."""
    env = dict(os.environ)
    if env.get("REBAR_NP_REAL_CUDA") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    code = """if True:
        import numpy as np
        import rebar_np.kernels as KM
        from rebar_np.kernels.dispatch import K, to_device, to_host
        real = KM.sigmoid_forward
        assert K.sigmoid_forward is real and vars(K)["sigmoid_forward"] is real
        KM.sigmoid_forward = lambda a: "patched"
        assert K.sigmoid_forward(None) == "patched"
        KM.sigmoid_forward = real
        assert K.sigmoid_forward is real
        KM.A_TEST_CONSTANT = 1
        assert K.A_TEST_CONSTANT == 1
        del KM.A_TEST_CONSTANT
        try:
            K.A_TEST_CONSTANT
            raise SystemExit("K kept a deleted name")
        except AttributeError:
            pass
        a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
        d = to_device(a)
        assert K.sigmoid_forward is not real
        assert np.allclose(to_host(K.sigmoid_forward(d)), real(a), rtol=1e-6)
        assert np.array_equal(K.sigmoid_forward(a), real(a))
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_every_cpu_kernel_has_a_twin_with_its_arguments():
    import inspect

    def params(f):
        return list(inspect.signature(getattr(f, "py_func", f)).parameters)

    public = [n for n, f in vars(K).items() if not n.startswith("_") and callable(f)
              and getattr(f, "__module__", "").startswith(K.__name__ + ".")]
    assert len(public) > 30
    for n in public:
        assert params(getattr(C, n)) == params(getattr(K, n)), n
    for cpu in (cpu_adam_kernel, cpu_ema_moments, cpu_adam_and_moments, cpu_all_finite):
        name = getattr(cpu, "py_func", cpu).__name__
        assert params(getattr(C, name)) == params(cpu), name


# --------------------------------------------------------------------------
# Dense (affine) layer
# --------------------------------------------------------------------------
# (B, n_in, n_out): the module's shape, one where nothing is a multiple of TILE (4 on the
# simulator) and every dimension spans two tiles, and a 1 x 1 x 1 corner
GEMM_SHAPES = [(B, N_IN, N_OUT), (5, 7, 6), (1, 1, 1)]


def dense_args(dtype, shape, seed=0):
    b, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    return (uniform(rng, (b, n_in), dtype), uniform(rng, (n_in, n_out), dtype), uniform(rng, (n_out,), dtype),
            uniform(rng, (b, n_out), dtype))


@pytest.mark.parametrize("shape", GEMM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward(dtype, shape):
    h, W, c, _ = dense_args(dtype, shape)
    compare("dense_forward", (h, W, c), dtype)


@pytest.mark.parametrize("need_dh", [True, False])
@pytest.mark.parametrize("shape", GEMM_SHAPES[:2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_accumulates_parameter_gradients(dtype, shape, need_dh):
    h, W, _, da = dense_args(dtype, shape)
    rng = np.random.default_rng(1)
    dW0, dc0 = uniform(rng, W.shape, dtype), uniform(rng, (W.shape[1],), dtype)   # earlier passes' sums
    dW, dc = dW0.copy(), dc0.copy()
    dW_d, dc_d = to_device(dW0), to_device(dc0)
    want = K.dense_backward(h, W, da, dW, dc, need_dh)
    got = C.dense_backward(to_device(h), to_device(W), to_device(da), dW_d, dc_d, need_dh)
    tol = TOL[np.dtype(dtype)]
    assert_same("dW", dW_d, dW, tol)
    assert_same("dc", dc_d, dc, tol)
    assert rel_err(dW - dW0, h.T.astype(np.float64) @ da) < 1e-4       # it did accumulate
    if need_dh:
        assert_same("dh", got, want, tol)
    else:
        assert got.size == 0 and want.size == 0 and got.dtype == want.dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_single(dtype):
    h, W, c, da = dense_args(dtype, (B, N_IN, 1))
    compare("dense_forward_single", (h, W, c), dtype)
    rng = np.random.default_rng(2)
    dW, dc = uniform(rng, W.shape, dtype), uniform(rng, (1,), dtype)
    dW_d, dc_d = to_device(dW), to_device(dc)
    want = K.dense_backward_single(h, W, da[:, 0].copy(), dW, dc)
    got = C.dense_backward_single(to_device(h), to_device(W), to_device(da[:, 0].copy()), dW_d, dc_d)
    tol = TOL[np.dtype(dtype)]
    assert_same("dense_backward_single dh", got, want, tol)
    assert_same("dense_backward_single dW", dW_d, dW, tol)
    assert_same("dense_backward_single dc", dc_d, dc, tol)


@pytest.mark.parametrize("shape", GEMM_SHAPES[:2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_input(dtype, shape):
    _, W, _, da = dense_args(dtype, shape)
    compare("dense_backward_input", (W, da), dtype)


@pytest.mark.parametrize("drop, absent", [("none", "host")] + [(d, where) for d in ("h_dot", "W_dot", "c_dot", "W_dot+c_dot")
                                                                 for where in ("host", "device")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_tangent(dtype, drop, absent):
    """Each term dropped by a size-0 argument, given as a NumPy or as a device array."""
    h, W, _, _ = dense_args(dtype, (5, 7, 6))
    h_dot, W_dot, c_dot, _ = dense_args(dtype, (5, 7, 6), seed=1)
    if "h_dot" in drop:
        h_dot = empty2(dtype)
    if "W_dot" in drop:
        W_dot = empty2(dtype)
    if "c_dot" in drop:
        c_dot = np.empty(0, dtype)
    compare("dense_tangent", (h_dot, W, h, W_dot, c_dot), dtype, absent)


# --------------------------------------------------------------------------
# Pointwise nonlinearities, Bernoulli log-likelihood, noise and samplers
# (one table: kernel name, arguments from (rng, dtype))
# --------------------------------------------------------------------------
def _u(r, t, lo=-2.0, hi=2.0, shape=(B, N_OUT)):
    return uniform(r, shape, t, lo, hi)


def _prob(r, t):
    return _u(r, t, 0.02, 0.98)


def _hard(r, t):
    return (r.random((B, N_OUT)) < 0.5).astype(t)


def _noise_with_edges(r, t):
    """Uniform noise including 0, 1 and values beyond the clipping bounds."""
    u = _u(r, t, 0.0, 1.0)
    u.reshape(-1)[:4] = [0.0, 1.0, 1e-12, 1.0 - 1e-12]
    return u


def _lme_rows(r, t):
    """Rows for logmeanexp: ordinary, with a -inf, all -inf, with +inf, with NaN."""
    F = uniform(r, (5, 4), t, -30.0, 5.0)
    F[1, 2] = -np.inf
    F[2, :] = -np.inf
    F[3, 0] = np.inf
    F[4, 1] = np.nan
    return F


LAM = 0.7
CASES = [
    ("tanh_forward", lambda r, t: (_u(r, t, -3, 3),)),
    ("tanh_backward", lambda r, t: (np.tanh(_u(r, t)), _u(r, t))),
    ("tanh_tangent", lambda r, t: (np.tanh(_u(r, t)), _u(r, t))),
    ("tanh_backward_tangent", lambda r, t: (np.tanh(_u(r, t)), _u(r, t), _u(r, t), _u(r, t))),
    ("sigmoid_forward", lambda r, t: (_u(r, t, -40, 40),)),
    ("sigmoid_backward", lambda r, t: (_prob(r, t), _u(r, t))),
    ("sigmoid_backward_tangent", lambda r, t: (_prob(r, t), _u(r, t), _u(r, t), _u(r, t))),
    ("softplus", lambda r, t: (_u(r, t, -40, 40),)),
    ("bernoulli_loglik_forward[hard y]", lambda r, t: (_hard(r, t), _u(r, t, -8, 8))),
    ("bernoulli_loglik_forward[relaxed y]", lambda r, t: (_prob(r, t), _u(r, t, -8, 8))),
    ("softplus_rows", lambda r, t: (_u(r, t, -40, 40),)),
    ("loglik_rows[k=1]", lambda r, t: (_hard(r, t), _u(r, t, -40, 40), 1)),
    ("loglik_rows[k=R]", lambda r, t: (_hard(r, t)[:1], _u(r, t, -40, 40), B)),
    ("bernoulli_loglik_backward", lambda r, t: (_hard(r, t), _prob(r, t), _u(r, t, shape=(B,)))),
    ("bernoulli_loglik_backward_tangent[y_dot]",
     lambda r, t: (_u(r, t), _prob(r, t), _u(r, t), _u(r, t, shape=(B,)))),
    ("bernoulli_loglik_backward_tangent[no y_dot]",
     lambda r, t: (empty2(t), _prob(r, t), _u(r, t), _u(r, t, shape=(B,)))),
    ("bernoulli_loglik_backward_sample", lambda r, t: (_u(r, t), _u(r, t, shape=(B,)))),
    ("logistic_noise", lambda r, t: (_noise_with_edges(r, t),)),
    ("relaxed_sample_forward[plain]", lambda r, t: (_u(r, t), _u(r, t), LAM, False)),
    ("relaxed_sample_forward[improved]", lambda r, t: (_u(r, t), _u(r, t), LAM, True)),
    ("relaxed_sample_backward[plain]", lambda r, t: (_prob(r, t), LAM, False, _u(r, t), _u(r, t))),
    ("relaxed_sample_backward[improved]", lambda r, t: (_prob(r, t), LAM, True, _u(r, t), _u(r, t))),
    ("relaxed_logits_backward", lambda r, t: (_u(r, t), _prob(r, t), _prob(r, t), 1.3, -0.7)),
    ("relaxed_logits_backward_tangent",
     lambda r, t: (_u(r, t), _u(r, t), _u(r, t), _prob(r, t), _u(r, t), 1.3, -0.4)),
    ("relaxed_sample_tangent[plain]", lambda r, t: (_prob(r, t), _u(r, t), _u(r, t), _u(r, t), LAM, False)),
    ("relaxed_sample_tangent[improved]", lambda r, t: (_prob(r, t), _u(r, t), _u(r, t), _u(r, t), LAM, True)),
    ("relaxed_sample_tangent[plain, no a_dot]",
     lambda r, t: (_prob(r, t), _u(r, t), _u(r, t), empty2(t), LAM, False)),
    ("relaxed_sample_tangent[improved, no a_dot]",
     lambda r, t: (_prob(r, t), _u(r, t), _u(r, t), empty2(t), LAM, True)),
    ("dz_cond_dlogits", lambda r, t: (_u(r, t, -4, 4), _noise_with_edges(r, t), _hard(r, t))),
    ("mean_sample_forward", lambda r, t: (_u(r, t, -40, 40),)),
    ("leave_one_out_center", lambda r, t: (_u(r, t, -50, 10, shape=(11,)),)),
    ("sum_squares", lambda r, t: (_u(r, t),)),
    ("dot", lambda r, t: (_u(r, t), _u(r, t))),
    ("per_example_dot[k=1]", lambda r, t: (_u(r, t, shape=(6, 5)), _u(r, t, shape=(6, 5)), 1)),
    ("per_example_dot[k=2]", lambda r, t: (_u(r, t, shape=(6, 5)), _u(r, t, shape=(3, 5)), 2)),
    ("per_example_dot[k=R]", lambda r, t: (_u(r, t, shape=(6, 5)), _u(r, t, shape=(1, 5)), 6)),
    ("logmeanexp_rows", lambda r, t: (_lme_rows(r, t),)),
    ("binary_product_table", lambda r, t: (_u(r, t, shape=(12, 5)),)),
    ("group_codes", lambda r, t: ((r.random((6, 12)) < 0.5).astype(t), 8)),
    ("sample_rows", lambda r, t: (uniform_bits(r, (6, 12)), _u(r, t, -4, 4, shape=(6, 12)), 8)),
    ("binary_product_loglik", lambda r, t: (K.group_codes((r.random((6, 12)) < 0.5).astype(t), 8),
                                            K.binary_product_table(_u(r, t, shape=(12, 5))), _u(r, t, shape=(5,)),
                                            (r.random((3, 5)) < 0.5).astype(t), 2)),
    ("binary_product", lambda r, t: (K.group_codes((r.random((6, 12)) < 0.5).astype(t), 8),
                                     K.binary_product_table(_u(r, t, shape=(12, 5))), _u(r, t, shape=(5,)))),
]


# cases with an absent (size-0) argument run with it as a NumPy and as a device array
CASE_PARAMS = [pytest.param(label, make, where, id=label + ("" if where == "host" else "[absent on device]"))
               for label, make in CASES for where in (("host", "device") if "no " in label else ("host",))]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the CPU's log(0) and inf - inf on purpose
@pytest.mark.parametrize("label, make, absent", CASE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_matches_the_cpu(dtype, label, make, absent):
    args = make(np.random.default_rng(zlib.crc32(label.encode())), dtype)
    compare(label.split("[")[0], args, dtype, absent)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_sample_forward_is_exact(dtype):
    rng = np.random.default_rng(2)
    a = uniform(rng, (B, N_OUT), dtype)
    margin = uniform(rng, (B, N_OUT), dtype, 0.05, 1.0) * np.where(rng.random((B, N_OUT)) < 0.5, -1, 1)
    z0 = (margin - a).astype(dtype)              # a + z0 at least 0.05 away from the threshold
    want = K.hard_sample_forward(a, z0)
    got = to_host(C.hard_sample_forward(to_device(a), to_device(z0)))
    assert got.dtype == want.dtype and np.array_equal(got, want) and 0 < want.sum() < want.size


@pytest.mark.parametrize("k", [1, 2, 6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold_samples_is_exact(dtype, k):
    rng = np.random.default_rng(3)
    bits = uniform_bits(rng, (6, 5))
    thr = uniform(rng, (6 // k, 5), dtype, 0.0, 1.0)
    want = K.threshold_samples(bits, thr, k)
    got = to_host(C.threshold_samples(to_device(bits), to_device(thr), k))
    assert got.dtype == want.dtype == dtype and np.array_equal(got, want)
    u = (bits.astype(np.float64) + 0.5) * 2.0 ** -32          # the uniforms the bits stand for
    assert np.array_equal(want, (u > np.repeat(thr, k, axis=0)).astype(dtype)) and 0 < want.sum() < want.size


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (3, 2)])
def test_any_grid_gives_the_same_result(monkeypatch, grid):
    """Kernels are grid-stride loops: a grid of other shapes (several blocks, fewer threads than
    items) computes the same values."""
    rng = np.random.default_rng(4)
    y, a, f = _hard(rng, np.float64), _u(rng, np.float64), _u(rng, np.float64, shape=(7,))
    g = _u(rng, np.float64)
    g[0, 1], g[2, 3] = np.nan, -np.inf
    monkeypatch.setattr(C, "launch", lambda n: grid)
    assert_same("bernoulli_loglik_forward", C.bernoulli_loglik_forward(to_device(y), to_device(a)),
                K.bernoulli_loglik_forward(y, a), 1e-10)
    assert_same("relaxed_sample_forward", C.relaxed_sample_forward(to_device(a), to_device(y), LAM, True),
                K.relaxed_sample_forward(a, y, LAM, True), 1e-10)
    assert_same("leave_one_out_center", C.leave_one_out_center(to_device(f)), K.leave_one_out_center(f), 1e-10)
    assert_same("dot", C.dot(to_device(a), to_device(y)), K.dot(a, y), 1e-10)
    m1, m2 = np.zeros_like(g), np.zeros_like(g)
    m1_d, m2_d = to_device(m1), to_device(m2)
    assert C.ema_moments(to_device(g), m1_d, m2_d, 0.9) == cpu_ema_moments(g, m1, m2, 0.9) == 2
    assert C.all_finite(to_device(g)) is False


# --------------------------------------------------------------------------
# Optimizer and training-loop kernels
# --------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the simulator's Adam at a NaN
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernel_updates_in_place(dtype):
    rng = np.random.default_rng(5)
    p, g = uniform(rng, (N_IN, N_OUT), dtype), uniform(rng, (N_IN, N_OUT), dtype)
    m, v = uniform(rng, (N_IN, N_OUT), dtype, -0.1, 0.1), uniform(rng, (N_IN, N_OUT), dtype, 0.0, 0.1)
    typed = np.dtype(dtype).type
    scalars = (typed(1e-2 * np.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)), typed(0.9), typed(0.999), typed(1e-8))
    dev_arrays = [to_device(x) for x in (p, g, m, v)]
    bad = C.adam_kernel(*dev_arrays, *scalars)
    assert type(bad) is int and bad == cpu_adam_kernel(p, g, m, v, *scalars) == 0
    for name, got, want in zip("pgmv", dev_arrays, (p, g, m, v)):
        assert_same(f"adam {name}", got, want, TOL[np.dtype(dtype)])
    g[2, 3], g[0, 1] = np.inf, np.nan               # counted; Adam's values there are not defined
    assert C.adam_kernel(*[to_device(x) for x in (p, g, m, v)], *scalars) == cpu_adam_kernel(p, g, m, v, *scalars) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_subtract_scaled_updates_in_place_and_sums(dtype):
    rng = np.random.default_rng(8)
    g, e = uniform(rng, (N_IN, N_OUT), dtype), uniform(rng, (N_IN, N_OUT), dtype)
    g_dev = to_device(g)
    got = C.subtract_scaled(g_dev, 0.37, to_device(e))
    want = K.subtract_scaled(g, 0.37, e)
    assert_same("subtract_scaled g", g_dev, g, TOL[np.dtype(dtype)])
    assert all(type(x) is float for x in got), got
    err = rel_err(got, want)
    assert err < TOL[np.dtype(dtype)], f"subtract_scaled sums: {got} against the CPU's {want} (relative error {err:.2e})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_tangent(dtype):
    rng = np.random.default_rng(9)
    h, d = uniform(rng, (B, N_IN), dtype), uniform(rng, (B, N_OUT), dtype)
    assert_same("gram_tangent", C.gram_tangent(to_device(h), to_device(d)), K.gram_tangent(h, d), TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ema_moments_counts_non_finite_entries(dtype):
    rng = np.random.default_rng(6)
    g = uniform(rng, (B, N_OUT), dtype)
    m1, m2 = uniform(rng, (B, N_OUT), dtype), uniform(rng, (B, N_OUT), dtype, 0, 1)
    m1_d, m2_d = to_device(m1), to_device(m2)
    bad = C.ema_moments(to_device(g), m1_d, m2_d, 0.99)
    assert type(bad) is int and bad == cpu_ema_moments(g, m1, m2, 0.99) == 0
    assert_same("m1", m1_d, m1, TOL[np.dtype(dtype)])
    assert_same("m2", m2_d, m2, TOL[np.dtype(dtype)])
    g[0, 0], g[1, 2], g[2, 3] = np.nan, np.inf, -np.inf
    bad = C.ema_moments(to_device(g), m1_d, m2_d, 0.99)
    assert type(bad) is int and bad == cpu_ema_moments(g, m1, m2, 0.99) == 3
    assert_same("m1 (non-finite g)", m1_d, m1, TOL[np.dtype(dtype)])
    assert_same("m2 (non-finite g)", m2_d, m2, TOL[np.dtype(dtype)])


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # the simulator's Adam at g = -inf
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_and_moments_is_the_cpu_pass(dtype):
    rng = np.random.default_rng(10)
    typed = np.dtype(dtype).type
    p, g, m = (uniform(rng, (N_IN, N_OUT), dtype) for _ in range(3))
    v, m1, m2 = (uniform(rng, (N_IN, N_OUT), dtype, 0, 1) for _ in range(3))
    g[1, 2], g[3, 0] = np.nan, -np.inf
    scalars = (typed(1e-2), typed(0.9), typed(0.999), typed(1e-8), typed(0.99))
    dev = [to_device(a) for a in (p, g, m, v, m1, m2)]
    bad = C.adam_and_moments(*dev, *scalars)
    assert type(bad) is int and bad == cpu_adam_and_moments(p, g, m, v, m1, m2, *scalars) == 2
    for name, got, want in zip(("g", "m1", "m2"), dev[1:2] + dev[4:], (g, m1, m2)):
        assert_same(f"adam_and_moments {name}", got, want, TOL[np.dtype(dtype)])
    ok = np.isfinite(g)       # Adam's values at a NaN or inf are not defined (the CPU's fast-math loop)
    for name, got, want in zip("pmv", (dev[0], dev[2], dev[3]), (p, m, v)):
        assert_same(f"adam_and_moments {name}", to_device(to_host(got)[ok]), want[ok], TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite(dtype):
    a = np.random.default_rng(7).uniform(-1, 1, (B, N_OUT)).astype(dtype)
    assert C.all_finite(to_device(a)) is True and cpu_all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[2, 1] = bad
        assert C.all_finite(to_device(b)) is False and not cpu_all_finite(b)


# --------------------------------------------------------------------------
# DeviceArray arithmetic (rebar_np.kernels.dispatch) against NumPy
# --------------------------------------------------------------------------
def host_and_device(dtype, shape=(B, N_OUT), seed=8, lo=-2.0, hi=2.0):
    a = uniform(np.random.default_rng(seed), shape, dtype, lo, hi)
    return a, to_device(a)


def same(got, want, exact=False, tol=None):
    """got (a DeviceArray) has want's dtype and shape, and its values (exactly, or to tol
    relative; by default the tolerance of want's dtype)."""
    assert isinstance(got, DeviceArray), type(got)
    got = to_host(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    err = rel_err(got, want)
    tol = TOL[want.dtype] if tol is None else tol
    assert (np.array_equal(got, want) if exact else err <= tol), f"relative error {err:.3e} (tolerance {tol:.0e})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_operators(dtype):
    s, sd = host_and_device(dtype, lo=0.0, hi=1.0)
    a, ad = host_and_device(dtype, seed=9)
    row, rowd = host_and_device(dtype, (N_OUT,), seed=10)
    col, cold = host_and_device(dtype, (B,), seed=11, lo=0.5, hi=2.0)
    same(2 * sd - 1, 2 * s - 1)
    same(ad + rowd, a + row)
    same(ad + row, a + row)                     # a host row vector is copied over
    same(cold[:, None] * ad, col[:, None] * a)
    same(ad - cold[:, None], a - col[:, None])
    same(ad * ad, a * a)
    same(ad / cold[:, None], a / col[:, None])
    same(1.0 / cold, 1.0 / col)
    same(1 - sd, 1 - s)
    same(-ad, -a)
    same(ad ** 2, a ** 2)
    same(ad / 4.0, a / 4.0)
    same(a - ad, a - a)                         # host array on the left: the reflected operator
    other = np.ones((B, N_OUT), np.float64 if dtype == np.float32 else np.float32)
    same(ad + to_device(other), a + other)      # mixed dtypes promote as in NumPy


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_reductions(dtype):
    a, ad = host_and_device(dtype)
    tol = TOL[np.dtype(dtype)]
    # float32 entries summed into float64: float32's tolerance (see test_device_array_sums_accumulate_in_float64)
    same(ad.sum(axis=0, dtype=np.float64), a.sum(axis=0, dtype=np.float64), tol=tol)
    same(ad.sum(axis=1, dtype=np.float64), a.sum(axis=1, dtype=np.float64), tol=tol)
    same(ad.sum(axis=0), a.sum(axis=0))
    same(ad.sum(axis=-1), a.sum(axis=-1))
    same(np.sum(ad, axis=1), np.sum(a, axis=1))
    total = ad.sum(dtype=np.float64)
    assert np.asarray(total).dtype == np.float64 and rel_err(total, a.sum(dtype=np.float64)) < tol
    assert np.asarray(ad.sum()).dtype == dtype and rel_err(ad.sum(), a.sum()) < tol
    assert rel_err(ad.mean(), a.mean()) < tol
    same(ad.mean(axis=0), a.mean(axis=0))
    same(ad.mean(axis=1, dtype=np.float64), a.mean(axis=1, dtype=np.float64), tol=tol)
    parts = [host_and_device(dtype, seed=s) for s in (1, 2, 3)]
    same(sum(d for _, d in parts), sum(h for h, _ in parts))    # Python's sum() starts from 0
    assert float(to_device(np.array([2.5], dtype))) == 2.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_in_place_operators(dtype):
    a, ad = host_and_device(dtype)
    row, rowd = host_and_device(dtype, (N_OUT,), seed=12)
    col, cold = host_and_device(dtype, (B,), seed=13)
    b, bd = host_and_device(dtype, seed=14)
    d0 = ad
    for op in (operator.iadd, operator.isub, operator.imul):
        for rhs, rhs_d in ((b, bd), (b, b), (row, rowd), (col[:, None], cold[:, None]), (1.5, 1.5), (2, 2)):
            a, ad = op(a, rhs), op(ad, rhs_d)   # a += rhs (a host right-hand side is copied over) ...
            same(ad, a)
    ad /= 3.0
    a /= 3.0
    same(ad, a)
    assert ad is d0                             # in place: the same object, no new allocation
    with pytest.raises(ValueError):
        rowd += ad                              # would change the shape, as in NumPy
    host = np.zeros((B, N_OUT), dtype)
    with pytest.raises(TypeError):
        host += ad                              # a result must never land in host memory silently
    with pytest.raises(TypeError):
        np.asarray(ad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_views_and_copies(dtype):
    a, ad = host_and_device(dtype, (5, 6))
    same(ad[:, :4], a[:, :4], exact=True)
    same(ad[:, 2:5], a[:, 2:5], exact=True)
    same(ad[:, -2:], a[:, -2:], exact=True)
    assert ad[:, :6] is ad                      # the whole width: no copy
    same(ad[1:4], a[1:4], exact=True)
    rows = ad[1:3]
    rows += 1.0                                 # a row slice is a view, as in NumPy
    a[1:3] += 1.0
    same(ad, a, exact=True)
    v, vd = host_and_device(dtype, (7,))
    assert vd[3] == v[3] and vd.shape == (7,) and len(vd) == 7 and vd.ndim == 1
    same(vd[2:5], v[2:5], exact=True)
    same(vd[:, None], v[:, None], exact=True)
    other = np.float64 if dtype == np.float32 else np.float32
    same(ad.astype(other), a.astype(other), exact=True)
    c = ad.astype(dtype)
    assert c is not ad
    same(c, a, exact=True)
    same(ad.reshape(3, 10), a.reshape(3, 10), exact=True)
    same(ad.reshape((30,)), a.reshape((30,)), exact=True)
    same(ad.reshape(-1), a.reshape(-1), exact=True)
    same(ad.copy(), a, exact=True)
    assert ad.flat().shape == (30,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_array_assignment(dtype):
    a, ad = host_and_device(dtype)
    row = np.arange(N_OUT, dtype=dtype)
    ad[:] = 2.5
    a[:] = 2.5
    same(ad, a, exact=True)
    ad[:] = to_device(row)                      # broadcast down the rows
    a[:] = row
    same(ad, a, exact=True)
    b, _ = host_and_device(dtype, seed=15)
    ad[:] = b                                   # a host array is copied over
    a[:] = b
    same(ad, a, exact=True)
    v, vd = host_and_device(dtype, (5,))
    vd[2] = 7.0
    v[2] = 7.0
    same(vd, v, exact=True)
    with pytest.raises(TypeError):
        ad[1:2] = 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_zeros_full_zeros_like_follow_like(dtype):
    _, ad = host_and_device(dtype)
    h = np.ones(3, dtype)
    same(D.zeros((2, 3), dtype, like=ad), np.zeros((2, 3), dtype), exact=True)
    same(D.full((2, 3), -1.25, dtype, like=ad), np.full((2, 3), -1.25, dtype), exact=True)
    same(D.zeros_like(ad), np.zeros((B, N_OUT), dtype), exact=True)
    same(D.zeros_like(ad, dtype=np.float64), np.zeros((B, N_OUT), np.float64), exact=True)
    for host in (D.zeros((2, 3), dtype), D.zeros((2, 3), dtype, like=h), D.full((2,), 3.0, dtype, like=h),
                 D.zeros_like(h)):
        assert type(host) is np.ndarray and host.dtype == dtype


# What DeviceArray does at its edges (gaps found while these tests were written, now fixed).
def test_device_array_strided_column_slice_is_refused():
    _, ad = host_and_device(np.float64, (3, 6))
    with pytest.raises(TypeError, match="no step"):
        ad[:, ::2]


def test_device_array_negative_index_assignment():
    v, vd = host_and_device(np.float64, (5,))
    vd[-1] = 7.0
    v[-1] = 7.0
    same(vd, v, exact=True)
    assert vd[-1] == 7.0


def test_device_array_integer_mean_over_an_axis():
    a = np.arange(6).reshape(2, 3)
    got = to_host(to_device(a).mean(axis=0))
    assert got.dtype == np.float64 and np.array_equal(got, a.mean(axis=0))


@pytest.mark.parametrize("axis", [0, 1, None])
def test_device_array_sums_accumulate_in_float64(axis):
    a = np.random.default_rng(16).uniform(0.0, 1.0, (40, 40)).astype(np.float32)
    got = to_device(a).sum(axis=axis, dtype=np.float64)
    assert rel_err(to_host(got), a.sum(axis=axis, dtype=np.float64)) < 1e-12


def test_twins_accumulate_float32_sums_in_float64():
    """The twins' whole-array and row sums of float32 entries are float64 sums (on the simulator
    too), as the CPU's sum_squares, dot and per_example_dot (k = 1) are."""
    rng = np.random.default_rng(17)
    a, b = (rng.uniform(0.0, 1.0, (40, 40)).astype(np.float32) for _ in range(2))
    ad, bd = to_device(a), to_device(b)
    assert rel_err(C.sum_squares(ad), K.sum_squares(a)) < 1e-12
    assert rel_err(C.dot(ad, bd), K.dot(a, b)) < 1e-12
    assert rel_err(to_host(C.per_example_dot(ad, bd, 1)), K.per_example_dot(a, b, 1)) < 1e-12
