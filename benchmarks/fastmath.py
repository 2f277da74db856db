"""ns per element of the float32 functions of rebar_np/kernels/fastmath.py against libm and NumPy.

    python -m benchmarks.fastmath [--repeats 5] [--window 0.1] [--sizes 24x200,24x784]

For each function, on a float32 array of each size (the step's layer widths at batch 24):
  fastmath  one jitted loop calling kernels.fastmath.<name>_f32 (vectorised, no calls)
  libm      the same loop calling np.exp / np.log / np.log1p / np.tanh, which Numba (no SVML here)
            turns into a call of libm's expf / logf / log1pf / tanhf per element
  numpy     NumPy's ufuncs into a preallocated output: np.exp, np.log, np.log1p, np.tanh (SIMD
            in NumPy), softplus as np.logaddexp(0, a), sigma(a) as 1/2 + tanh(a/2)/2 (four passes,
            the non-row route of kernels.activations.sigmoid_forward)
The three are timed in interleaved rounds in one process (benchmarks.timing.interleaved), so that
the machine's load hits them alike; the ratios are medians of the per-round ratios.
"""
import argparse

import numpy as np

from rebar_np.kernels import fastmath as F
from rebar_np.kernels.jit import arith_kernel

from . import timing as T
from .__main__ import cpu_model


@arith_kernel
def _libm_exp(x, out):
    for i in range(x.size):
        out[i] = np.exp(x[i])


@arith_kernel
def _libm_log(x, out):
    for i in range(x.size):
        out[i] = np.log(x[i])


@arith_kernel
def _libm_log1p(x, out):
    for i in range(x.size):
        out[i] = np.log1p(x[i])


@arith_kernel
def _libm_softplus(x, out):
    for i in range(x.size):
        out[i] = max(x[i], np.float32(0.0)) + np.log1p(np.exp(-abs(x[i])))


@arith_kernel
def _libm_sigmoid(x, out):
    for i in range(x.size):
        e = np.exp(-abs(x[i]))
        r = np.float32(1.0) / (np.float32(1.0) + e)
        out[i] = r if x[i] >= 0 else e * r


@arith_kernel
def _libm_tanh(x, out):
    for i in range(x.size):
        out[i] = np.tanh(x[i])


def _numpy_sigmoid(x, out):
    np.multiply(x, np.float32(0.5), out=out)
    np.tanh(out, out=out)
    out *= np.float32(0.5)
    out += np.float32(0.5)


# name: (libm loop, NumPy route, inputs drawn from rng)
FUNCTIONS = {
    "exp": (_libm_exp, lambda x, out: np.exp(x, out=out), lambda r, n: r.normal(0.0, 4.0, n)),
    "log": (_libm_log, lambda x, out: np.log(x, out=out), lambda r, n: r.uniform(1e-3, 10.0, n)),
    "log1p": (_libm_log1p, lambda x, out: np.log1p(x, out=out), lambda r, n: r.uniform(-0.9, 10.0, n)),
    "softplus": (_libm_softplus, lambda x, out: np.logaddexp(np.float32(0.0), x, out=out),
                 lambda r, n: r.normal(0.0, 4.0, n)),
    "sigmoid": (_libm_sigmoid, _numpy_sigmoid, lambda r, n: r.normal(0.0, 4.0, n)),
    "tanh": (_libm_tanh, lambda x, out: np.tanh(x, out=out), lambda r, n: r.normal(0.0, 2.0, n)),
}


def measure(name, shape, repeats, window, seed=0):
    """{candidate: ns per element} and {candidate: fastmath's speed-up over it} for one function and size."""
    libm, numpy_route, draw = FUNCTIONS[name]
    n = int(np.prod(shape))
    x = draw(np.random.default_rng(seed), n).astype(np.float32)
    out = np.empty_like(x)
    fast = getattr(F, f"{name}_f32_array")
    candidates = {"fastmath": lambda: fast(x), "libm": lambda: libm(x, out), "numpy": lambda: numpy_route(x, out)}
    rates, _, _ = T.interleaved(candidates, repeats, window, warmup=0.2)
    ns = {k: 1e9 / (T.median(v) * n) for k, v in rates.items()}
    speedup = {k: T.paired_ratio(rates["fastmath"], rates[k]) for k in ("libm", "numpy")}
    return ns, speedup


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fastmath", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--window", type=float, default=0.1, help="seconds per candidate per round (default 0.1)")
    ap.add_argument("--sizes", default="24x200,24x784", help="array shapes, comma-separated (default 24x200,24x784)")
    ap.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated subset of " + ",".join(FUNCTIONS))
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    names = args.functions.split(",")
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown:
        ap.error(f"--functions: unknown {', '.join(unknown)} (choose from {', '.join(FUNCTIONS)})")
    print(f"CPU: {cpu_model()}; ns per float32 element, medians of {args.repeats} interleaved rounds; "
          "speed-up = fastmath's rate over the other's, median of per-round ratios\n")
    print("| function | size | fastmath ns | libm loop ns | NumPy ns | vs libm | vs NumPy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        for shape in shapes:
            ns, up = measure(name, shape, args.repeats, args.window)
            print(f"| {name} | {'x'.join(map(str, shape))} | {ns['fastmath']:.2f} | {ns['libm']:.2f} | "
                  f"{ns['numpy']:.2f} | {up['libm']:.1f}x | {up['numpy']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
