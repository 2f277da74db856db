"""Time rebar-np's training step against references measured in the same process.

    python -m benchmarks [--estimators nvil,reinforce] [--archs linear1,linear2,nonlinear1]
                         [--batch-size 24] [--seconds 3] [--json results.json]

For each estimator and architecture it times `rebar_np.train.train_step` (the
exact step `rebar-np train` runs: estimate, variance monitor and NaN check, Adam
updates) on random binary data of MNIST's size, after warm-up, and reports the
median steps/s over several timing windows. In the same process it times

- `numpy_nvil`: the straightforward NumPy NVIL step of benchmarks/numpy_reference.py
  (same architecture and batch), the yardstick of issue 2;
- `matmul`: this machine's float32 matrix-product rate for the step's own shapes,

and reports each estimator's ratio to the NumPy step and its achieved GFLOP/s
(2 x multiply-adds of the step's dense layers / time) as a fraction of the
measured matrix-product rate. Results are printed and written as JSON.
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

from rebar_np import __version__
from rebar_np import estimators as E
from rebar_np.adam import AdamConfig, adam_init
from rebar_np.model import SBN, init_params
from rebar_np.train import GradVariance, train_step

from .numpy_reference import NumpyNVIL

ARCHS = {"linear1": (1, False), "linear2": (2, False), "nonlinear1": (1, True), "nonlinear2": (2, True)}


def time_windows(fn, seconds, windows=5):
    """Median rate (calls per second) over `windows` windows of about seconds/windows each."""
    per = seconds / windows
    rates = []
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= per:
                break
        rates.append(n / dt)
    return float(np.median(rates))


def dense_shapes(n_layer, nonlinear, D=784, H=200, baseline=True):
    """(n_in, n_out) of every dense layer a score-function step runs forward (q, p and baseline)."""
    shapes = []
    for l in range(n_layer):
        ins = [D if l == 0 else H, H]
        outs = [H, D if l == 0 else H]
        for n_in, n_out in zip(ins, outs):
            shapes += [(n_in, H), (H, H), (H, n_out)] if nonlinear else [(n_in, n_out)]
    if baseline:
        shapes += [(D, 100), (100, 1)]
    return shapes


def step_macs(n_layer, nonlinear, B, D=784, H=200):
    """Multiply-adds of a score-function step: each dense layer's forward (B n_in n_out) and its
    weight gradient (the same again); hard samples need no input gradients."""
    return sum(2 * B * i * o for i, o in dense_shapes(n_layer, nonlinear, D, H))


def matmul_rate(n_layer, nonlinear, B, seconds, D=784, H=200):
    """GFLOP/s of float32 products with the step's shapes (forward h W and weight gradient h^T da)."""
    rng = np.random.default_rng(0)
    mats = [(rng.random((B, i), dtype=np.float32), rng.random((i, o), dtype=np.float32),
             rng.random((B, o), dtype=np.float32)) for i, o in dense_shapes(n_layer, nonlinear, D, H)]

    def run():
        for h, W, da in mats:
            h @ W
            h.T @ da
    rate = time_windows(run, seconds)
    return rate * 2 * step_macs(n_layer, nonlinear, B, D, H) / 1e9


def bench_estimator(name, n_layer, nonlinear, B, seconds, data):
    mean_x = data.mean(axis=0, dtype=np.float64)
    model = SBN("sbn", n_layer, 200, nonlinear, mean_x)
    params = init_params(model, 0, np.float32)
    est = E.get(name)
    aux = est.init_aux(model, 1, np.float32)
    opt, aux_opt = adam_init(params), adam_init(aux)
    monitor = GradVariance(params, 0.999)
    cfg = AdamConfig()
    rng = np.random.default_rng(0)
    state = {"i": 0}

    def step():
        i = state["i"] = (state["i"] + 1) % (data.shape[0] // B)
        train_step(est, model, params, aux, data[i * B:(i + 1) * B], rng, opt, aux_opt, monitor, cfg, 10.0,
                   i + 1)
    for _ in range(20):
        step()
    return time_windows(step, seconds)


def bench_numpy(n_layer, B, seconds, data):
    ref = NumpyNVIL(data.mean(axis=0, dtype=np.float64), n_layer)
    state = {"i": 0}

    def step():
        i = state["i"] = (state["i"] + 1) % (data.shape[0] // B)
        ref.step(data[i * B:(i + 1) * B])
    for _ in range(20):
        step()
    return time_windows(step, seconds)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--estimators", default=",".join(E.ESTIMATORS))
    ap.add_argument("--archs", default="linear1,linear2,nonlinear1")
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per measurement (after warm-up)")
    ap.add_argument("--json", default="benchmarks/results.json")
    args = ap.parse_args(argv)
    B = args.batch_size
    data = (np.random.default_rng(0).random((B * 200, 784)) < 0.13).astype(np.float32)
    results = {"version": __version__, "python": sys.version.split()[0], "machine": platform.machine(),
               "processor": platform.processor(), "numpy": np.__version__, "batch_size": B, "rows": []}
    print(f"{'estimator':<16}{'arch':<12}{'steps/s':>10}{'numpy_nvil':>12}{'ratio':>8}"
          f"{'GFLOP/s':>10}{'matmul':>9}{'frac':>7}")
    for arch in args.archs.split(","):
        n_layer, nonlinear = ARCHS[arch]
        mm = matmul_rate(n_layer, nonlinear, B, args.seconds)
        ref = bench_numpy(n_layer, B, args.seconds, data) if not nonlinear else float("nan")
        for name in args.estimators.split(","):
            rate = bench_estimator(name, n_layer, nonlinear, B, args.seconds, data)
            gflops = rate * 2 * step_macs(n_layer, nonlinear, B) / 1e9
            row = {"estimator": name, "arch": arch, "steps_per_s": rate, "numpy_nvil_steps_per_s": ref,
                   "ratio_to_numpy_nvil": rate / ref, "step_macs": step_macs(n_layer, nonlinear, B),
                   "gflops": gflops, "matmul_gflops": mm, "fraction_of_matmul": gflops / mm}
            results["rows"].append(row)
            print(f"{name:<16}{arch:<12}{rate:>10.0f}{ref:>12.0f}{rate / ref:>8.2f}{gflops:>10.1f}{mm:>9.1f}"
                  f"{gflops / mm:>7.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
