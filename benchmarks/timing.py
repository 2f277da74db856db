"""Timing under a noisy, shared 2-core machine: interleaved windows, medians, and a
record of how much CPU the *other* processes took while we measured.

    rates, cpu_rates, load = interleaved({"rebar_np": step, "jax": jax_step}, repeats=5, window=0.5)

Each candidate is warmed up, then timed in `repeats` rounds; in every round each
candidate gets one window of at least `window` seconds (and at least `min_calls`
calls), one after the other, so that a load change hits all candidates alike.
The per-round ratio of two candidates is then a paired comparison (see paired_ratio).
"""
import os
import time

import numpy as np


# --------------------------------------------------------------------------
# Load: other processes' CPU use while we measure (Linux /proc; loadavg elsewhere)
# --------------------------------------------------------------------------
def _busy_seconds():
    """CPU seconds all processes have been busy since boot (None if /proc/stat is unreadable)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_seconds():
    t = os.times()
    return t.user + t.system


class LoadMeter:
    """Between start() and stop(): wall time, our CPU seconds, and the average number of
    cores busy with *other* processes (total busy CPU minus ours, over wall time)."""

    def start(self):
        self.t0, self.busy0, self.self0 = time.perf_counter(), _busy_seconds(), _self_seconds()
        self.loadavg0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        return self

    def stop(self):
        wall = time.perf_counter() - self.t0
        busy1, self1 = _busy_seconds(), _self_seconds()
        ours = self1 - self.self0
        others = (busy1 - self.busy0 - ours) / wall if busy1 is not None and self.busy0 is not None else None
        return {"wall_s": round(wall, 3), "our_cores": round(ours / wall, 2),
                "other_cores": None if others is None else round(max(others, 0.0), 2),
                "loadavg_1m": [round(self.loadavg0, 2),
                               round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None]}


# --------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------
def window_rate(fn, window, min_calls=2):
    """(calls per wall-clock second, calls per CPU second of this process) of fn over one
    window of at least `window` seconds and min_calls calls. With one thread, the second
    is what the rate would be if no other process competed for the core (cache sharing aside)."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= window and n >= min_calls:
            return n / dt, n / max(time.process_time() - c0, 1e-9)


def warm_up(fn, seconds=0.5, min_calls=3):
    """A few calls first (compilation, caches, allocator), then until `seconds` have passed."""
    t0 = time.perf_counter()
    n = 0
    while n < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        n += 1


def interleaved(candidates, repeats, window, min_calls=2, warmup=0.5, warmup_calls=3):
    """{name: [wall-clock rate per round]} and {name: [CPU-time rate per round]} for the
    callables in `candidates`, timed in interleaved rounds (see the module docstring), and
    the LoadMeter record of the whole measurement."""
    for fn in candidates.values():
        warm_up(fn, warmup, warmup_calls)
    meter = LoadMeter().start()
    rates = {name: [] for name in candidates}
    cpu_rates = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            wall, cpu = window_rate(fn, window, min_calls)
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
    return rates, cpu_rates, meter.stop()


def median(rates):
    return float(np.median(rates))


def paired_ratio(a, b):
    """Median over rounds of a_r / b_r: the ratio of two interleaved candidates."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


# --------------------------------------------------------------------------
# The matrix products of a step, replayed with NumPy
# --------------------------------------------------------------------------
def matmul_replay(products, seed=0):
    """A callable running, with np.matmul on float32 and preallocated outputs, every product
    of `products` (benchmarks.macs.Product) in the layout the kernels use: h @ W, h.T @ da
    (a transposed view), da @ W.T (a transposed view)."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    ops = []
    for p in products:
        B, i, o = p.B, p.n_in, p.n_out
        if p.kind == "gram":             # h h^T, then (h h^T) d
            h = f32(B, i)
            ops.append((h, h.T, np.empty((B, B), np.float32)))
            a, b = f32(B, B), f32(B, o)
        elif p.kind in ("fwd", "tan_in", "tan_par"):
            a, b = f32(B, i), f32(i, o)
        elif p.kind == "dW":
            a, b = f32(B, i).T, f32(B, o)
        else:  # dh
            a, b = f32(B, o), f32(i, o).T
        ops.append((a, b, np.empty((a.shape[0], b.shape[1]), np.float32)))

    def run():
        for a, b, out in ops:
            np.matmul(a, b, out=out)
    return run


def bound_matmul_replay(chunks, workers):
    """A callable running, with np.matmul on float32, the products of the importance-weighted bound
    as rebar_np.training.train.evaluate runs the bound: `chunks` (one list of benchmarks.macs.Product
    per chunk of examples, bound_products) shared among `workers` threads, one BLAS thread each
    (with workers > 1). A thread's operands are allocated on its first use of a shape and kept,
    as evaluate's freed arrays stay in the heap (train.keep_freed_memory)."""
    from concurrent.futures import ThreadPoolExecutor
    import threading

    from threadpoolctl import threadpool_limits
    local = threading.local()

    def operands(B, i, o):
        cache = local.__dict__.setdefault("cache", {})
        if (B, i, o) not in cache:
            rng = np.random.default_rng(B * 7919 + i * 31 + o)
            cache[B, i, o] = (rng.standard_normal((B, i), dtype=np.float32),
                              rng.standard_normal((i, o), dtype=np.float32), np.empty((B, o), np.float32))
        return cache[B, i, o]

    def chunk(products):
        for p in products:
            a, b, out = operands(p.B, p.n_in, p.n_out)
            np.matmul(a, b, out=out)

    pool = ThreadPoolExecutor(max_workers=workers)

    def run():
        with threadpool_limits(limits=1 if workers > 1 else None, user_api="blas"):
            for f in [pool.submit(chunk, products) for products in chunks]:
                f.result()
    return run
