"""The vectorisable float32 functions of kernels/fastmath.py (exp_f32, log_f32, log1p_f32, softplus_f32,
sigmoid_f32, tanh_f32) against the correctly rounded float32 of NumPy's float64 value.

The error of a result is its distance in ulps from that reference: the number of float32 values
between them (so it is exact across binades and on the subnormal grid). Each function's docstring
states "Max error N ulp"; the test reads N from there and checks it over a grid of every k-th float32
of the function's range (about a million points, all binades alike), a uniform grid where the
function bends, every float32 in narrow bands around its thresholds and branch points, and its edges.
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import fastmath as bench  # noqa: E402
from rebar_np.kernels import fastmath  # noqa: E402

F32_MAX = float(np.finfo(np.float32).max)
TINY = float(np.finfo(np.float32).tiny)              # smallest normal float32; subnormals below


def ordinal(v):
    """Position of each float32 on the number line (+0 and -0 both 0), as int64."""
    i = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def from_ordinal(o):
    o = np.asarray(o, np.int64)
    return np.where(o < 0, (-o) | 0x80000000, o).astype(np.uint32).view(np.float32)


def every_kth(lo, hi, points):
    """About `points` float32 values evenly spaced by position between lo and hi (all binades alike)."""
    a, b = int(ordinal(np.float32(lo))), int(ordinal(np.float32(hi)))
    return from_ordinal(np.arange(a, b + 1, max(1, (b - a) // points), dtype=np.int64))


def band(centre, width=20000):
    """Every float32 within `width` positions of centre."""
    c = int(ordinal(np.float32(centre)))
    return from_ordinal(np.arange(c - width, c + width + 1, dtype=np.int64))


def ulp_errors(got, want64):
    """|got - float32(want64)| in ulps; 0 where both are NaN, inf where only one is."""
    want = want64.astype(np.float32)
    d = np.abs(ordinal(got) - ordinal(want)).astype(np.float64)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    d[nan_got & nan_want] = 0.0
    d[nan_got ^ nan_want] = np.inf
    return d


def softplus64(x):
    return np.logaddexp(0.0, x)


def expit_normal(x):
    """sigma(x) with values below the smallest normal float32 read as 0 (sigmoid_f32 never returns subnormals)."""
    s = expit(x)
    return np.where(s < TINY, 0.0, s)


# name: (float64 reference, every-k-th range, uniform range, band centres, edges {input: output})
LN2 = float(np.log(2.0))
CASES = {
    "exp": (np.exp, (-104.0, 89.0), (-20.0, 20.0), [0.0, 1.0, -87.33655, -103.97208, 88.72284, LN2 / 2],
            {0.0: 1.0, -0.0: 1.0, 1e-45: 1.0, -1e-45: 1.0, TINY: 1.0, 88.8: np.inf, F32_MAX: np.inf,
             np.inf: np.inf, -104.0: 0.0, -F32_MAX: 0.0, -np.inf: 0.0, -100.0: 3.7200760e-44}),
    "log": (np.log, (0.0, F32_MAX), (0.25, 4.0), [1.0, TINY, 0.70710677, 1.4142135, 2.0, F32_MAX],
            {0.0: -np.inf, -0.0: -np.inf, 1.0: 0.0, -1e-45: np.nan, -1.0: np.nan, -np.inf: np.nan,
             np.inf: np.inf, 1e-45: -103.27893, F32_MAX: 88.72284}),
    "log1p": (np.log1p, (-1.0, F32_MAX), (-0.99, 4.0), [0.0, -0.29289323, 0.41421354, -1.0, 1.0, 1.8284271],
              {0.0: 0.0, -0.0: 0.0, 1e-45: 1e-45, -1e-45: -1e-45, TINY: TINY, -1.0: -np.inf,
               -1.0000001: np.nan, -np.inf: np.nan, np.inf: np.inf, F32_MAX: 88.72284}),
    "softplus": (softplus64, (-110.0, F32_MAX), (-20.0, 20.0), [0.0, -0.8813736, 16.635532, -87.33655,
                                                                 -103.97208],
                 {0.0: LN2, -0.0: LN2, np.inf: np.inf, F32_MAX: F32_MAX, -np.inf: 0.0, -F32_MAX: 0.0,
                  -110.0: 0.0, 1e-45: LN2}),
    "sigmoid": (expit_normal, (-110.0, F32_MAX), (-20.0, 20.0), [0.0, -87.33655, 16.635532, -103.97208],
                {0.0: 0.5, -0.0: 0.5, 1e-45: 0.5, np.inf: 1.0, F32_MAX: 1.0, -np.inf: 0.0, -F32_MAX: 0.0,
                 -110.0: 0.0, -88.0: 0.0, -87.3: 1.2192434e-38}),
    "tanh": (np.tanh, (-F32_MAX, F32_MAX), (-10.0, 10.0), [0.0, 0.625, -0.625, 9.010913, -9.010913],
             {0.0: 0.0, 1e-45: 1e-45, -1e-45: -1e-45, TINY: TINY, np.inf: 1.0, -np.inf: -1.0,
              F32_MAX: 1.0, -F32_MAX: -1.0, 20.0: 1.0}),
}


def stated_bound(fn):
    """The "Max error N ulp" of fn's docstring."""
    m = re.search(r"[Mm]ax error\s+(\d+(?:\.\d+)?)\s+ulp", fn.__doc__ or "")
    assert m, f"{fn.__name__}'s docstring states no 'Max error N ulp'"
    return float(m.group(1))


@pytest.mark.parametrize("name", list(CASES))
def test_within_stated_ulps(name):
    ref, (lo, hi), (ulo, uhi), centres, edges = CASES[name]
    scalar, array = getattr(fastmath, f"{name}_f32"), getattr(fastmath, f"{name}_f32_array")
    bound = stated_bound(scalar)
    x = np.concatenate([every_kth(lo, hi, 1_000_000), np.linspace(ulo, uhi, 400_001, dtype=np.float32)]
                       + [band(c) for c in centres])
    x = x[(x >= np.float32(lo)) & (x <= np.float32(hi))]
    with np.errstate(all="ignore"):
        err = ulp_errors(array(x), ref(x.astype(np.float64)))
    i = int(np.argmax(err))
    assert err[i] <= bound, (f"{name}_f32 off by {err[i]:.0f} ulp at x = {x[i]!r} (docstring: {bound:g}); "
                             f"{int(np.sum(err > bound))} of {x.size} points beyond")
    print(f"{name}_f32: max {err[i]:.0f} ulp at x = {x[i]!r} over {x.size} points")


@pytest.mark.parametrize("name", list(CASES))
def test_edges(name):
    """Infinities, signed zeros, subnormal inputs and outputs, NaN: the values the docstrings state,
    exactly where they are 0, +-1, 1/2, +-inf or NaN, within the stated bound elsewhere."""
    edges = CASES[name][4]
    scalar, array = getattr(fastmath, f"{name}_f32"), getattr(fastmath, f"{name}_f32_array")
    x = np.array(list(edges) + [np.nan, -np.nan], dtype=np.float32)
    want = np.array(list(edges.values()) + [np.nan, np.nan], dtype=np.float64)
    with np.errstate(all="ignore"):
        got = array(x)
    err = ulp_errors(got, want)
    exact = ~np.isfinite(want) | np.isin(np.abs(want), [0.0, 0.5, 1.0])
    allowed = np.where(exact, 0.0, stated_bound(scalar))
    bad = [(float(a), float(g), float(w)) for a, g, w, e, t in zip(x, got, want.astype(np.float32), err, allowed)
           if e > t]
    assert not bad, f"{name}_f32 (input, got, want): {bad}"


def test_logistic_noise_within_4_ulp():
    """logistic_noise_f32 (float32 logistic_noise): log(u) - log(1 - u) with u and 1 - u clipped below
    at 1e-8, within the docstring's 4 ulp over [0, 1], relative precision kept near u = 1/2."""
    u = np.concatenate([every_kth(0.0, 1.0, 1_000_000), np.linspace(0.0, 1.0, 200_001, dtype=np.float32)]
                       + [band(c) for c in (0.5, 0.41421354, 0.58578646, 1e-8, 1.0, 0.25, 0.75)])
    u = u[(u >= 0) & (u <= 1)]
    v = np.clip(u.astype(np.float64), 1e-8, 1.0 - 1e-8)
    err = ulp_errors(fastmath._logistic_noise_f32(u), np.log(v) - np.log1p(-v))
    i = int(np.argmax(err))
    assert err[i] <= 4, f"logistic_noise_f32 off by {err[i]:.0f} ulp at u = {u[i]!r}"
    print(f"logistic_noise_f32: max {err[i]:.0f} ulp at u = {u[i]!r} over {u.size} points")


@pytest.mark.parametrize("name", list(bench.FUNCTIONS))
def test_benchmark_compares_the_same_function(name):
    """benchmarks/fastmath.py times, for each function, a libm loop and a NumPy route that compute the
    same values as the fastmath function on the benchmark's inputs (the NumPy sigma to 1e-6 absolute:
    its tanh form loses relative precision in the tail)."""
    libm, numpy_route, draw = bench.FUNCTIONS[name]
    x = draw(np.random.default_rng(1), 4800).astype(np.float32)
    fast = getattr(fastmath, f"{name}_f32_array")(x)
    for route, fn in (("libm", libm), ("numpy", numpy_route)):
        out = np.empty_like(x)
        fn(x, out)
        tol = 1e-6 if name == "sigmoid" else 2e-6 * np.abs(fast)
        bad = np.abs(out - fast) > tol
        assert not np.any(bad), f"{name}: the {route} route differs at x = {x[bad][:3]}"
