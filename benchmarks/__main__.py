"""Time rebar-np's training step against references measured in the same process.

    python -m benchmarks [--estimators nvil,dynamic_rebar] [--arch linear1,linear2,nonlinear1]
                         [--batch 24] [--repeats 5] [--window 0.5] [--jax] [--threads N]
                         [--json results.json] [--compare old.json]
    python -m benchmarks --scaling [--estimators dynamic_rebar,nvil] [--arch linear2]
                         [--batches 24,64,256,1024] [--widths 200,500,1000] [--jax]
    python -m benchmarks --device cuda --estimators dynamic_rebar,nvil --arch linear2 --batches 24,256,4096
    python -m benchmarks --bound [--arch linear2 | --run RUN] [--samples 5000] [--examples 160] [--threads N]
    python -m benchmarks --markdown RUN.json | --update-docs docs/performance.md [--check]

For each estimator and architecture it times `rebar_np.training.train.train_step` (the exact
step `rebar-np train` runs: estimate, variance monitor and NaN check, Adam on the
model and, at 10x, on the estimator's own parameters) on random binary data of
MNIST's size, and, interleaved with it in the same process (see benchmarks/timing.py),

- `matmul`: NumPy float32 np.matmul running exactly the matrix products of that
  step (benchmarks/macs.py: shapes, transposes, count), so that
  fraction = step's GFLOP/s / matmul's GFLOP/s = time of the products alone / time of the step;
- `jax` (with --jax): the independent jax.jit step of benchmarks/jax_reference.py
  (nvil, concrete, rebar, dynamic_rebar), whose ELBO is first checked against
  rebar_np's for the same parameters, batch and noise;

and, once per linear architecture, `numpy_nvil`, the straightforward NumPy NVIL step of
benchmarks/numpy_reference.py. Rates are medians over `--repeats` windows; the ratio
to JAX is the median of the per-round ratios. Every row records the load: the CPU
cores other processes used while it was measured. --scaling prints a markdown table
of step time against batch size and layer width instead. --device cuda times the
step with everything in GPU memory against the CPU step at each batch size instead.

--bound times the importance-weighted bound instead (`rebar-np eval RUN --samples S`:
rebar_np.training.train.evaluate on --examples random examples of MNIST's size, on as many
threads as `rebar-np eval` uses, or --threads), interleaved with NumPy float32 np.matmul running,
in the same chunks on the same threads, the products it stands for (benchmarks/macs.py:
bound_products: per example q_0, per sample the transforms fed by samples), as if every one were
a matrix product; frac = the products' time / the bound's time (above 1 where its table sums
beat the matrix products). One call takes seconds, so each window is one call. With --run RUN it
evaluates that run's checkpoint on the first --examples test images of its data: a trained
model's samples select table rows unlike an untrained one's, and the time depends on it.

Columns: MMAC = million multiply-adds of the step's matrix products; steps/s = median
wall-clock rate; cpu/s = steps per CPU-second of this process (with --threads 1, the
rate a quiet core would give); GFLOP/s = 2 MMAC steps/s / 1000; matmul = GFLOP/s of
NumPy running the same products; frac = GFLOP/s / matmul; ceil = the ceiling of frac: the rate of
those products followed by the step's exact optimizer pass (Adam with the variance monitor, and
the estimator's own Adam; products_and_optimizer) over matmul's; np_nvil = the NumPy NVIL
step's rate; others = CPU cores used by other processes meanwhile; jax/s, np/jax =
rebar_np / JAX steps/s, jaxMMAC = multiply-adds in JAX's compiled program, jaxfrac =
JAX's GFLOP/s (its own MACs) / matmul.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types

ARCHS = {"linear1": (1, False), "linear2": (2, False), "nonlinear1": (1, True), "nonlinear2": (2, True)}
from .macs import COUNTED_ESTIMATORS as ALL_ESTIMATORS  # noqa: E402  (numpy-only module)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
D = 784


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):          # one line and exit 2, like rebar-np's own CLI
        raise UsageError(message)


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv):
    ap = Parser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--estimators", default=None,
                    help=f"comma-separated, from {','.join(ALL_ESTIMATORS)} (default: all; "
                         "with --scaling: dynamic_rebar,nvil)")
    ap.add_argument("--arch", "--archs", dest="arch", default=None,
                    help=f"comma-separated, from {','.join(ARCHS)} (default linear1,linear2,nonlinear1; "
                         "with --scaling: linear2)")
    ap.add_argument("--batch", "--batch-size", dest="batch", type=int, default=24, help="batch size (default 24)")
    ap.add_argument("--width", type=int, default=200, help="units per stochastic layer (default 200)")
    ap.add_argument("--repeats", type=int, default=5, help="timing windows per measurement; medians are reported")
    ap.add_argument("--window", type=float, default=0.5, help="seconds per timing window (default 0.5)")
    ap.add_argument("--jax", action="store_true", help="also time the JAX reference (needs jax installed)")
    ap.add_argument("--scaling", action="store_true", help="step time against batch size and width")
    ap.add_argument("--batches", type=int_list, default=[24, 64, 256, 1024], help="--scaling batch sizes")
    ap.add_argument("--widths", type=int_list, default=[200, 500, 1000], help="--scaling layer widths")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/Numba/XLA threads (re-executes with OPENBLAS_NUM_THREADS etc. set); "
                         "default: the libraries' own choice")
    ap.add_argument("--step-cores", type=int, default=None,
                    help="with --threads: cores rebar-np's step may use (NUMBA_NUM_THREADS), e.g. "
                         "--threads 1 --step-cores 2: one BLAS and XLA thread, the step's products in "
                         "two blocks on two cores (what rebar-np train picks on a quiet machine)")
    ap.add_argument("--bound", action="store_true",
                    help="time the importance-weighted bound (rebar-np eval) against its products (default "
                         "--arch linear2)")
    ap.add_argument("--samples", type=int, default=5000, help="--bound: samples per example (default 5000)")
    ap.add_argument("--examples", type=int, default=160,
                    help="--bound: examples per timed call (default 160: eight chunks of 20 at 5000 samples)")
    ap.add_argument("--run", default=None, metavar="RUN",
                    help="--bound: a run folder of rebar-np train, whose checkpoint and test split are "
                         "evaluated (default: untrained parameters on random data)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: time rebar_np's step on the GPU against its CPU step at each of --batches "
                         "(examples per second and their ratio; needs a CUDA GPU)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write all results as JSON to PATH")
    ap.add_argument("--compare", default=None, metavar="PATH", help="a previous --json file: print new/old rates")
    args = ap.parse_args(argv)
    default_est = "dynamic_rebar,nvil" if args.scaling else ",".join(ALL_ESTIMATORS)
    default_arch = "linear2" if args.scaling or args.bound else "linear1,linear2,nonlinear1"
    args.estimators = [e for e in (args.estimators or default_est).split(",") if e]
    args.arch = [a for a in (args.arch or default_arch).split(",") if a]
    bad = [e for e in args.estimators if e not in ALL_ESTIMATORS]
    if bad:
        raise UsageError(f"unknown estimator(s) {','.join(bad)}; choose from {','.join(ALL_ESTIMATORS)}")
    bad = [a for a in args.arch if a not in ARCHS]
    if bad:
        raise UsageError(f"unknown architecture(s) {','.join(bad)}; choose from {','.join(ARCHS)}")
    if args.bound and (args.scaling or args.device != "cpu"):
        raise UsageError("--bound times the CPU bound; it cannot be combined with --scaling or --device")
    if args.run is not None and not args.bound:
        raise UsageError("--run goes with --bound")
    if args.run is not None and not os.path.exists(os.path.join(args.run, "checkpoint.h5")):
        raise UsageError(f"--run: no checkpoint.h5 in {args.run}")
    for name in ("batch", "width", "repeats", "samples", "examples"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.window <= 0:
        raise UsageError("--window must be positive")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.step_cores is not None and (args.threads is None or args.step_cores < 1):
        raise UsageError("--step-cores needs --threads and must be at least 1")
    if args.compare and not os.path.exists(args.compare):
        raise UsageError(f"--compare: no such file {args.compare}")
    return args


def set_threads(n, argv, step_cores=None):
    """Thread counts must be set before NumPy, Numba and XLA load: set them and re-execute."""
    want = {v: str(n) for v in THREAD_VARS}
    if step_cores is not None:
        want["NUMBA_NUM_THREADS"] = str(step_cores)
    want["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'false' if n == 1 else 'true'} " \
                        f"intra_op_parallelism_threads={n}"
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    os.environ.update(want)
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", *argv])


# --------------------------------------------------------------------------
# The steps being timed
# --------------------------------------------------------------------------
def make_data(B, n_batches=8, seed=0):
    import numpy as np
    return (np.random.default_rng(seed).random((B * n_batches, D)) < 0.13).astype(np.float32)


def batches(data, B):
    n = data.shape[0] // B
    return [data[i * B:(i + 1) * B] for i in range(n)]


def rebar_np_setup(name, n_layer, nonlinear, H, data):
    """model, params, aux of rebar_np as `rebar-np train` builds them (float32, seed 0)."""
    import numpy as np
    from rebar_np import estimators as E
    from rebar_np.model.sbn import SBN, init_params
    model = SBN("sbn", n_layer, H, nonlinear, data.mean(axis=0, dtype=np.float64))
    from rebar_np.model.packed import packed_copy
    est = E.get(name)
    return est, model, init_params(model, 0, np.float32), packed_copy(est.init_aux(model, 1, np.float32))


def rebar_np_step(name, n_layer, nonlinear, B, H, data, device="cpu", estimate=None):
    """A callable running one rebar_np.training.train.train_step on the next batch (device "cuda": with the
    parameters, optimizer state and batches in GPU memory, as `rebar-np train --device cuda` runs).
    estimate: another implementation of the estimator's estimate function (benchmarks/fused_nvil.py)."""
    import numpy as np
    from rebar_np.training.adam import AdamConfig, adam_init
    from rebar_np.kernels.dispatch import to_device
    from rebar_np.training.train import GradVariance, keep_freed_memory, step_blas_threads, train_step
    step_blas_threads(B)      # one BLAS thread below batch 256, as rebar-np train sets
    keep_freed_memory()       # freed arrays stay in the heap, as rebar-np train sets
    est, model, params, aux = rebar_np_setup(name, n_layer, nonlinear, H, data)
    if estimate is not None:
        est = types.SimpleNamespace(estimate=estimate)
    xs = batches(data, B)
    if device == "cuda":
        params, aux, xs = to_device(params), to_device(aux), to_device(xs)
    opt, aux_opt, monitor, cfg = adam_init(params), adam_init(aux), GradVariance(params, 0.999), AdamConfig()
    rng, state = np.random.default_rng(0), {"t": 0}
    sync = (lambda: None)
    if device == "cuda":
        from numba import cuda
        sync = cuda.synchronize

    def step():
        state["t"] += 1
        train_step(est, model, params, aux, xs[state["t"] % len(xs)], rng, opt, aux_opt, monitor, cfg, 10.0,
                   state["t"])
        sync()
    return step


def products_and_optimizer(name, n_layer, nonlinear, H, data, products):
    """The least any training step with these products does: NumPy running the step's products (as
    `matmul` does), then the step's optimizer pass as train_step runs it (Adam with the variance
    monitor over the model's packed buffers, Adam at 10x over the estimator's own) on a fixed small
    gradient. Its rate over matmul's is the **ceiling** of frac: what a step that spent no time at all
    outside its products and this exact optimizer pass would reach."""
    import numpy as np
    from . import timing as T
    from rebar_np.model.packed import packed_zeros
    from rebar_np.training.adam import AdamConfig, adam_init, adam_update
    from rebar_np.training.train import GradVariance
    est, model, params, aux = rebar_np_setup(name, n_layer, nonlinear, H, data)
    rng = np.random.default_rng(1)
    grads, aux_grads = packed_zeros(params), packed_zeros(aux) if aux else {}
    for g in (*grads.values(), *aux_grads.values()):
        g[...] = 1e-3 * rng.standard_normal(g.shape)
    opt, aux_opt, monitor, cfg = adam_init(params), adam_init(aux), GradVariance(params, 0.999), AdamConfig()
    replay = T.matmul_replay(products)

    def step():
        replay()
        monitor.update_with_adam(params, grads, opt, cfg)
        if aux:
            adam_update(aux, aux_grads, aux_opt, cfg, 10.0)
    return step


def numpy_nvil_step(n_layer, B, H, data):
    import numpy as np
    from .numpy_reference import NumpyNVIL
    ref = NumpyNVIL(data.mean(axis=0, dtype=np.float64), n_layer, H)
    xs, state = batches(data, B), {"t": 0}

    def step():
        state["t"] += 1
        ref.step(xs[state["t"] % len(xs)])
    return step


def jax_step(name, n_layer, nonlinear, B, H, data):
    """The JAX reference's jitted step as a callable (blocking on each step's result), and
    what we know about it: compile time, MACs of its XLA program, and the ELBO check:
    its first step's hard ELBO against rebar_np's for the same parameters, batch and noise."""
    import jax
    import numpy as np
    from .jax_reference import JaxReference, hlo_macs
    est, model, params, aux = rebar_np_setup(name, n_layer, nonlinear, H, data)
    ref = JaxReference(name, model.mean_x, n_layer, H, nonlinear)
    xs = batches(data, B)
    state = ref.init_state(params, aux, seed=0)
    t0 = time.perf_counter()
    macs, flops = hlo_macs(ref.step, state, xs[0])
    u = [np.asarray(ul) for ul in ref.draw_noise(jax.random.split(state["key"])[1], B)]
    state, (f, bad) = ref.step(state, xs[0])
    f = np.asarray(f)
    compile_s = time.perf_counter() - t0
    f_np = est.estimate(model, params, aux, xs[0], u=u).elbo
    diff = float(np.max(np.abs(f - f_np)))
    check = {"max_abs_diff": diff, "max_rel_diff": diff / float(np.max(np.abs(f_np))),
             "elbo_mean_jax": float(np.mean(f)), "elbo_mean_rebar_np": float(np.mean(f_np)),
             "passed": bool(diff <= 1e-4 * float(np.max(np.abs(f_np))))}
    holder = {"state": state, "t": 0}

    def step():
        holder["t"] += 1
        holder["state"], (f, bad) = ref.step(holder["state"], xs[holder["t"] % len(xs)])
        f.block_until_ready()
    return step, {"compile_s": round(compile_s, 2), "hlo_macs": macs, "xla_flops": flops, "elbo_check": check}


# --------------------------------------------------------------------------
# One measured row
# --------------------------------------------------------------------------
def measure(name, arch, B, H, args, data, numpy_nvil_rate=None):
    from . import macs as M
    from . import timing as T
    n_layer, nonlinear = ARCHS[arch]
    products = M.step_products(name, n_layer, nonlinear, B, D, H)
    macs = sum(p.macs for p in products)
    traced = M.traced_products(name, n_layer, nonlinear, B, D, H)
    count_ok = traced == M.counted(products)
    if not count_ok:
        print(f"warning: benchmarks/macs.py's count for {name} {arch} no longer matches the products "
              "rebar_np runs; update step_products", file=sys.stderr)
    candidates = {"rebar_np": rebar_np_step(name, n_layer, nonlinear, B, H, data),
                  "matmul": T.matmul_replay(products),
                  "products_and_optimizer": products_and_optimizer(name, n_layer, nonlinear, H, data, products)}
    jax_info = None
    if args.jax and name in JAX_ESTIMATORS:
        candidates["jax"], jax_info = jax_step(name, n_layer, nonlinear, B, H, data)
        if not jax_info["elbo_check"]["passed"]:
            print(f"warning: JAX and rebar_np ELBOs differ for {name} {arch}: {jax_info['elbo_check']}",
                  file=sys.stderr)
    rates, cpu_rates, load = T.interleaved(candidates, args.repeats, args.window)
    rate, mm_rate = T.median(rates["rebar_np"]), T.median(rates["matmul"])
    gflops, mm_gflops = rate * 2 * macs / 1e9, mm_rate * 2 * macs / 1e9
    row = {"estimator": name, "arch": arch, "batch": B, "width": H,
           "steps_per_s": rate, "ms_per_step": 1e3 / rate, "steps_per_s_windows": rates["rebar_np"],
           "steps_per_cpu_s": T.median(cpu_rates["rebar_np"]),
           "macs": macs, "macs_by_stage": M.macs_by_stage(products), "macs_count_matches_trace": count_ok,
           "gflops": gflops, "matmul_gflops": mm_gflops, "fraction_of_matmul": gflops / mm_gflops,
           "fraction_of_matmul_paired": T.paired_ratio(rates["rebar_np"], rates["matmul"]),
           "fraction_of_matmul_cpu": T.paired_ratio(cpu_rates["rebar_np"], cpu_rates["matmul"]),
           "products_and_optimizer_steps_per_s": T.median(rates["products_and_optimizer"]),
           "ceiling": T.median(rates["products_and_optimizer"]) / mm_rate,
           "load": load}
    if numpy_nvil_rate is not None:
        row["numpy_nvil_steps_per_s"] = numpy_nvil_rate
        row["ratio_to_numpy_nvil"] = rate / numpy_nvil_rate
    if jax_info is not None:
        jr = T.median(rates["jax"])
        jgf = jr * 2 * jax_info["hlo_macs"] / 1e9
        row["jax"] = {"steps_per_s": jr, "ms_per_step": 1e3 / jr, "steps_per_s_windows": rates["jax"],
                      "steps_per_cpu_s": T.median(cpu_rates["jax"]),
                      "ratio_rebar_np_to_jax": T.paired_ratio(rates["rebar_np"], rates["jax"]),
                      "ratio_rebar_np_to_jax_cpu": T.paired_ratio(cpu_rates["rebar_np"], cpu_rates["jax"]),
                      "gflops": jgf, "fraction_of_matmul": jgf / mm_gflops, **jax_info}
    return row


JAX_ESTIMATORS = ("nvil", "concrete", "rebar", "dynamic_rebar")


def fmt(v, spec):
    return "-" if v is None or v != v else format(v, spec)


def run_steps(args, results):
    from . import timing as T
    B, H = args.batch, args.width
    data = make_data(B)
    head = (f"{'estimator':<14}{'arch':<11}{'MMAC':>7}{'steps/s':>9}{'cpu/s':>7}{'GFLOP/s':>9}{'matmul':>8}{'frac':>6}"
            f"{'ceil':>6}{'np_nvil':>8}{'others':>7}")
    if args.jax:
        head += f"{'jax/s':>8}{'np/jax':>7}{'jaxMMAC':>8}{'jaxfrac':>8}"
    print(head)
    for arch in args.arch:
        n_layer, nonlinear = ARCHS[arch]
        ref_rate = None
        if not nonlinear:
            rates, _, _ = T.interleaved({"numpy_nvil": numpy_nvil_step(n_layer, B, H, data)}, args.repeats,
                                        args.window)
            ref_rate = T.median(rates["numpy_nvil"])
        for name in args.estimators:
            row = measure(name, arch, B, H, args, data, ref_rate)
            results["rows"].append(row)
            line = (f"{name:<14}{arch:<11}{row['macs'] / 1e6:>7.1f}{row['steps_per_s']:>9.0f}"
                    f"{row['steps_per_cpu_s']:>7.0f}{row['gflops']:>9.1f}"
                    f"{row['matmul_gflops']:>8.1f}{row['fraction_of_matmul']:>6.2f}{row['ceiling']:>6.2f}"
                    f"{fmt(ref_rate, '.0f'):>8}{fmt(row['load']['other_cores'], '.2f'):>7}")
            if args.jax:
                j = row.get("jax")
                line += (f"{j['steps_per_s']:>8.0f}{j['ratio_rebar_np_to_jax']:>7.2f}{j['hlo_macs'] / 1e6:>8.1f}"
                         f"{j['fraction_of_matmul']:>8.2f}" if j else f"{'-':>8}{'-':>7}{'-':>8}{'-':>8}")
            print(line, flush=True)


def measure_bound(arch, args):
    """One row of --bound: evaluate (what `rebar-np eval` runs) against np.matmul on its products."""
    import numpy as np
    from rebar_np.model.sbn import SBN, init_params
    from rebar_np.training.train import eval_chunking, evaluate
    from . import macs as M
    from . import timing as T
    if args.run is None:
        n_layer, nonlinear = ARCHS[arch]
        H, N, S = args.width, args.examples, args.samples
        x = make_data(N, n_batches=1)
        model = SBN("sbn", n_layer, H, nonlinear, x.mean(axis=0, dtype=np.float64))
        params = init_params(model, 0, np.float32)
    else:
        model, params, x = run_model(args.run, args.examples)
        n_layer, nonlinear, H, N, S = model.n_layer, model.nonlinear, model.n_hidden, x.shape[0], args.samples
        arch = f"{'nonlinear' if nonlinear else 'linear'}{n_layer}"
    workers, per = eval_chunking(N, S, args.threads)
    chunks = [M.bound_products(n_layer, nonlinear, min(per, N - start), S, D, H) for start in range(0, N, per)]
    macs = sum(p.macs for c in chunks for p in c)
    count_ok = M.traced_bound_products(n_layer, nonlinear, 3, 250, D, H) == \
        M.counted_rows(M.bound_products(n_layer, nonlinear, 3, 250, D, H))
    if not count_ok:
        print(f"warning: benchmarks/macs.py's count of the bound ({arch}) no longer matches the products "
              "iw_bound runs; update bound_products", file=sys.stderr)
    evaluate(model, params, x[:2], min(S, 100), workers=1)          # compile the kernels first
    candidates = {"bound": lambda: evaluate(model, params, x, S, seed=0, workers=args.threads),
                  "matmul": T.bound_matmul_replay(chunks, workers)}
    rates, cpu_rates, load = T.interleaved(candidates, args.repeats, args.window, min_calls=1, warmup=0,
                                           warmup_calls=1)
    rate, mm_rate = T.median(rates["bound"]), T.median(rates["matmul"])
    per_call = N * S
    return {"mode": "bound", "arch": arch, "width": H, "examples": N, "samples": S, "workers": workers,
            "model": "untrained (init_params seed 0), random data" if args.run is None else
            f"{os.path.basename(os.path.normpath(args.run))} at step {params_step(args.run)}, test images",
            "examples_per_chunk": per, "samples_per_s": rate * per_call,
            "samples_per_s_windows": [r * per_call for r in rates["bound"]],
            "samples_per_cpu_s": T.median(cpu_rates["bound"]) * per_call,
            "s_per_10000_examples": 1e4 / (rate * N),
            "macs": macs, "macs_per_sample": macs / per_call, "macs_count_matches_trace": count_ok,
            "macs_by_stage": M.macs_by_stage([p for c in chunks for p in c]),
            "gflops": rate * 2 * macs / 1e9, "matmul_gflops": mm_rate * 2 * macs / 1e9,
            "matmul_samples_per_s": mm_rate * per_call, "fraction_of_matmul": rate / mm_rate,
            "fraction_of_matmul_paired": T.paired_ratio(rates["bound"], rates["matmul"]),
            "fraction_of_matmul_cpu": T.paired_ratio(cpu_rates["bound"], cpu_rates["matmul"]), "load": load}


def run_model(run, examples):
    """(model, float32 parameters, first `examples` test images) of a run folder."""
    import numpy as np
    from rebar_np.evaluation.final import load_run
    model, ckpt, data = load_run(run)
    if model.task != "sbn":
        raise ValueError(f"--run: {run} is a {model.task} run; the bound's products are counted for sbn")
    params = {k: v.astype(np.float32) for k, v in ckpt["params"].items()}
    return model, params, np.ascontiguousarray(data["test"][:examples], dtype=np.float32)


def params_step(run):
    from rebar_np.training.checkpoint import load_checkpoint
    return load_checkpoint(os.path.join(run, "checkpoint.h5"))["step"]


def run_bound(args, results):
    print(f"{'arch':<11}{'samples':>8}{'examples':>9}{'workers':>8}{'MMAC/sample':>12}{'samples/s':>11}"
          f"{'GFLOP/s':>9}{'matmul':>8}{'frac':>6}{'others':>7}")
    for arch in ([None] if args.run else args.arch):
        row = measure_bound(arch, args)
        results["bound"].append(row)
        print(f"{row['arch']:<11}{row['samples']:>8}{row['examples']:>9}{row['workers']:>8}"
              f"{row['macs_per_sample'] / 1e6:>12.3f}{row['samples_per_s']:>11.0f}{row['gflops']:>9.1f}"
              f"{row['matmul_gflops']:>8.1f}{row['fraction_of_matmul']:>6.2f}"
              f"{fmt(row['load']['other_cores'], '.2f'):>7}", flush=True)


def run_device(args, results):
    """rebar_np's step on the GPU against its step on the CPU, same estimator, architecture and
    batch, timed interleaved in this process: steps/s, examples/s, and GPU/CPU ratio."""
    from rebar_np.kernels.dispatch import check_device, device_name
    from . import timing as T
    check_device("cuda")
    results["meta"]["gpu"] = device_name()
    print(f"GPU: {results['meta']['gpu']}")
    print(f"{'estimator':<14}{'arch':<11}{'batch':>6}{'cpu steps/s':>12}{'gpu steps/s':>12}{'gpu ex/s':>11}"
          f"{'gpu/cpu':>8}")
    for arch in args.arch:
        n_layer, nonlinear = ARCHS[arch]
        for B in args.batches:
            data = make_data(B, n_batches=4)
            for name in args.estimators:
                cands = {"cpu": rebar_np_step(name, n_layer, nonlinear, B, args.width, data),
                         "cuda": rebar_np_step(name, n_layer, nonlinear, B, args.width, data, "cuda")}
                rates, _, load = T.interleaved(cands, args.repeats, args.window)
                cpu, gpu = T.median(rates["cpu"]), T.median(rates["cuda"])
                row = {"estimator": name, "arch": arch, "batch": B, "width": args.width,
                       "cpu_steps_per_s": cpu, "gpu_steps_per_s": gpu, "gpu_examples_per_s": gpu * B,
                       "gpu_over_cpu": T.paired_ratio(rates["cuda"], rates["cpu"]), "load": load}
                results["device"].append(row)
                print(f"{name:<14}{arch:<11}{B:>6}{cpu:>12.1f}{gpu:>12.1f}{gpu * B:>11.0f}"
                      f"{row['gpu_over_cpu']:>8.2f}", flush=True)


def run_scaling(args, results):
    B_max = max(args.batches)
    data = make_data(B_max, n_batches=4)
    rows = []
    for arch in args.arch:
        for H in args.widths:
            for B in args.batches:
                for name in args.estimators:
                    row = measure(name, arch, B, H, args, data)
                    row["mode"] = "scaling"
                    rows.append(row)
                    results["scaling"].append(row)
                    j = row.get("jax")
                    print(f"  {name:<14}{arch:<10} B={B:<5} H={H:<5} {row['ms_per_step']:9.2f} ms/step "
                          f"{row['gflops']:7.1f} GFLOP/s  frac {row['fraction_of_matmul']:.2f}"
                          + (f"  jax {j['ms_per_step']:.2f} ms/step" if j else "")
                          + f"  (other cores {fmt(row['load']['other_cores'], '.2f')})", flush=True)
    print()
    print(scaling_table(rows, args))


def scaling_table(rows, args):
    """Markdown: one line per (arch, width, batch); per estimator ms/step and the fraction of the
    matrix-product rate (and JAX's ms/step with --jax)."""
    cols = []
    for name in args.estimators:
        cols += [f"{name} ms/step", f"{name} frac"] + ([f"{name} JAX ms/step"] if args.jax and name in JAX_ESTIMATORS
                                                       else [])
    lines = ["| arch | width | batch | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    index = {(r["arch"], r["width"], r["batch"], r["estimator"]): r for r in rows}
    for arch in args.arch:
        for H in args.widths:
            for B in args.batches:
                cells = []
                for name in args.estimators:
                    r = index[arch, H, B, name]
                    cells += [f"{r['ms_per_step']:.2f}", f"{r['fraction_of_matmul']:.2f}"]
                    if args.jax and name in JAX_ESTIMATORS:
                        cells.append(f"{r['jax']['ms_per_step']:.2f}")
                lines.append(f"| {arch} | {H} | {B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(old_path, results):
    with open(old_path) as fh:
        old = json.load(fh)
    key = lambda r: (r["estimator"], r["arch"], r["batch"], r.get("width", 200))
    before = {key(r): r for r in old.get("rows", []) + old.get("scaling", [])}
    print(f"\ncompared with {old_path}: steps/s (bound: samples/s) new / old")
    bound = {(r["arch"], r["samples"], r["width"]): r for r in old.get("bound", [])}
    for r in results.get("bound", []):
        o = bound.get((r["arch"], r["samples"], r["width"]))
        if o:
            print(f"  bound {r['arch']:<11}S={r['samples']:<6}H={r['width']:<5}{o['samples_per_s']:>8.0f} -> "
                  f"{r['samples_per_s']:<8.0f}x{r['samples_per_s'] / o['samples_per_s']:.2f}   frac "
                  f"{o['fraction_of_matmul']:.2f} -> {r['fraction_of_matmul']:.2f}")
    for r in results["rows"] + results["scaling"]:
        o = before.get(key(r))
        if o:
            extra = ""
            if "jax" in r and "jax" in o:
                extra = f"   jax {o['jax']['steps_per_s']:.0f} -> {r['jax']['steps_per_s']:.0f}"
            print(f"  {r['estimator']:<14}{r['arch']:<11}B={r['batch']:<5}H={r.get('width', 200):<5}"
                  f"{o['steps_per_s']:>8.0f} -> {r['steps_per_s']:<8.0f}x{r['steps_per_s'] / o['steps_per_s']:.2f}"
                  + extra)


def saved_runs(argv):
    """--markdown RUN.json...: their tables; --update-docs DOC [--check]: rebuild DOC's marked tables
    (benchmarks/report.py). Nothing is timed."""
    from .report import markdown_table, update_docs
    files = [a for a in argv[1:] if a != "--check"]
    if not files:
        print(f"python -m benchmarks: error: {argv[0]} needs a file", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--markdown":
            print("\n\n".join(markdown_table(f) for f in files))
            return 0
        stale = [doc for doc in files if update_docs(doc, check="--check" in argv)]
    except (OSError, ValueError, KeyError) as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    if "--check" in argv and stale:
        print(f"stale benchmark tables in {', '.join(stale)}: run python -m benchmarks --update-docs "
              + " ".join(stale), file=sys.stderr)
        return 1
    print("\n".join(f"updated {d}" for d in stale) or "the benchmark tables are up to date")
    return 0


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere, often empty):
    rates from different machines are not comparable, and platform.processor() is empty on Linux."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def meta(args, argv):
    import numba
    import numpy as np
    import rebar_np
    here = os.path.dirname(os.path.dirname(os.path.abspath(rebar_np.__file__)))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", here, "status", "--porcelain", "rebar_np"], capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    m = {"version": rebar_np.__version__, "rebar_np_path": here, "git_commit": commit, "rebar_np_dirty": dirty,
         "argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
         "numpy": np.__version__, "numba": numba.__version__, "machine": platform.machine(),
         "processor": platform.processor(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
         "threads": {k: os.environ.get(k) for k in (*THREAD_VARS, "XLA_FLAGS")},
         "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
         "options": {k: v for k, v in vars(args).items()}}
    if args.jax:
        import jax
        m["jax"] = jax.__version__
    return m


def probe(results, one_blas_thread=False):
    """This machine's matrix-product rate on the issue's two reference shapes, for the record
    (one_blas_thread: on one BLAS thread, as each of the bound's workers multiplies)."""
    import contextlib
    import numpy as np
    from threadpoolctl import threadpool_limits
    from . import timing as T
    rng = np.random.default_rng(0)
    out = {}
    for label, (m, k, n) in {"24x784x200": (24, 784, 200), "1024x1024x1024": (1024, 1024, 1024)}.items():
        a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        with threadpool_limits(limits=1, user_api="blas") if one_blas_thread else contextlib.nullcontext():
            rates, _, load = T.interleaved({"mm": lambda: np.matmul(a, b, out=c)}, 3, 0.3)
        out[label] = {"gflops": 2 * m * k * n * T.median(rates["mm"]) / 1e9, "load": load}
        if one_blas_thread:
            out[label]["blas_threads"] = 1
    results["matmul_probe"] = out
    print("matmul probe: " + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s" for k, v in out.items())
          + f" (other processes' cores: {out['24x784x200']['load']['other_cores']})")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--markdown"], ["--update-docs"]):
        return saved_runs(argv)
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        set_threads(args.threads, argv, args.step_cores)
    if args.jax:
        try:
            import jax  # noqa: F401
        except ImportError:
            print("python -m benchmarks: error: --jax needs JAX, which is not installed "
                  "(pip install -e '.[bench]' or pip install jax)", file=sys.stderr)
            return 2
    results = {"meta": meta(args, argv), "rows": [], "scaling": [], "device": [], "bound": []}
    probe(results, one_blas_thread=args.bound)
    others = results["matmul_probe"]["24x784x200"]["load"]["other_cores"]
    if args.threads != 1 and not args.bound and others is not None and others > 0.5:
        print(f"note: other processes are using {others:.1f} cores; multi-threaded BLAS slows down badly "
              "when it competes for cores (try --threads 1)", file=sys.stderr)
    if args.device == "cuda":
        from rebar_np.kernels.dispatch import DeviceError
        try:
            run_device(args, results)
        except DeviceError as e:
            print(f"python -m benchmarks: error: {e}", file=sys.stderr)
            return 2
    elif args.bound:
        try:
            run_bound(args, results)
        except (OSError, ValueError, KeyError) as e:        # a run folder that cannot be read
            print(f"python -m benchmarks: error: --run: {e}", file=sys.stderr)
            return 2
    elif args.scaling:
        run_scaling(args, results)
    else:
        run_steps(args, results)
    results["meta"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.compare:
        compare(args.compare, results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
