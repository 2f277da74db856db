"""Adam (Kingma & Ba), in the TF form the reference uses (the paper's defaults: rebar_np.training.train.TrainConfig).

    t <- t + 1
    m <- beta1 m + (1 - beta1) g
    v <- beta2 v + (1 - beta2) g^2
    theta <- theta - lr_t m / (sqrt(v) + eps),   lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)

State is plain data mirroring the parameters: {"m": {name: array}, "v": {...}, "t": int}.
"""
from dataclasses import dataclass

import numpy as np

from numba import prange

from ..kernels.blocking import _half, _in_halves
from ..kernels.dispatch import twin, zeros_like
from ..kernels.jit import arith_kernel, kernel, split_kernel
from ..model.packed import Packed, flat_buffers, packed_zeros


@dataclass(frozen=True)
class AdamConfig:
    learning_rate: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.99999
    eps: float = 1e-8


def adam_init(params):
    """Zero moments mirroring params (each in one buffer when params is a Packed dict)."""
    if isinstance(params, Packed):
        return {"m": packed_zeros(params), "v": packed_zeros(params), "t": 0}
    return {"m": {k: zeros_like(v) for k, v in params.items()},
            "v": {k: zeros_like(v) for k, v in params.items()},
            "t": 0}


@kernel
def adam_entry(p, g, m, v, i, lr_t, beta1, beta2, eps):
    """Entry i of one Adam update, in place: the update of the module docstring.

    Compiled without fast-math: with it, LLVM computed the square root and the division
    approximately in the vector loop and exactly in its scalar remainder, so an entry's update
    depended on where in its tensor it lay (measured: 6 of 5,000 entries of 100-entry tensors
    differed from the same entries inside a longer array). Now an entry's update depends on its
    values alone, whatever the tensor's layout (one buffer or one array per tensor, halves or not),
    at the same speed: the pass is bound by memory traffic.

    The new moments are kept in locals, not read back from m and v: a read after the
    store made LLVM give up the vector loop (157,000 float32 entries: 127 us, against
    41 us this way). Inlined into the loops that call it (adam_kernel, and the
    training loop's pass that also folds the variance monitor, train.adam_and_moments).
    """
    one = beta1 / beta1
    gi = g[i]
    mi = beta1 * m[i] + (one - beta1) * gi
    vi = beta2 * v[i] + (one - beta2) * gi * gi
    m[i], v[i] = mi, vi
    p[i] -= lr_t * mi / (np.sqrt(vi) + eps)


@arith_kernel
def adam_kernel(p, g, m, v, lr_t, beta1, beta2, eps):
    """One Adam update of a flat (contiguous) tensor, in place. Returns the number of
    non-finite entries of g: the same pass serves as the training loop's NaN/inf check
    (this loop keeps NaN and inf semantics).

    The scalars arrive already in the arrays' dtype (see adam_update), so the
    loop stays in float32 when training in float32 and vectorises.
    """
    pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    bad = 0
    for i in range(pf.size):
        bad += 0 if np.isfinite(gf[i]) else 1
        adam_entry(pf, gf, mf, vf, i, lr_t, beta1, beta2, eps)
    return bad


@split_kernel
def adam_kernel_halves(p, g, m, v, lr_t, beta1, beta2, eps):
    """adam_kernel on the two halves of the flat tensors, one per core when the step's thread
    may use two (train.StepCores). The update is elementwise, so the result is adam_kernel's
    exactly (tests/test_train.py::test_adam_and_the_monitor_in_halves_are_the_one_pass_updates);
    the gain is a second core's share of the memory traffic (7 streams over the tensor: 1.85x
    faster for 400,000 entries)."""
    pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    n = pf.size
    bad = 0
    for part in prange(2):
        lo, hi = _half(n, part)
        bad += adam_kernel(pf[lo:hi], gf[lo:hi], mf[lo:hi], vf[lo:hi], lr_t, beta1, beta2, eps)
    return bad


def first_non_finite(grads):
    """The name of the first tensor of grads with a NaN or inf, or None."""
    return next((k for k, g in grads.items() if not np.all(np.isfinite(g))), None)


def step_size(state, cfg, lr_scale=1.0):
    """Count one more step in state and return its lr_t (module docstring) for learning rate
    cfg.learning_rate * lr_scale."""
    state["t"] += 1
    t = state["t"]
    return cfg.learning_rate * lr_scale * np.sqrt(1.0 - cfg.beta2 ** t) / (1.0 - cfg.beta1 ** t)


def adam_update(params, grads, state, cfg, lr_scale=1.0):
    """Apply one Adam step to every tensor of params (in place) with learning rate
    cfg.learning_rate * lr_scale. Returns the name of the first tensor whose gradient has a
    NaN or inf, or None (found in the same pass; the update has then been applied anyway)."""
    lr_t = step_size(state, cfg, lr_scale)
    kernel = twin(adam_kernel, next(iter(params.values()), None))
    flat = flat_buffers(params, grads, state["m"], state["v"])
    if flat is not None:              # one call over the buffers: the same update of every entry
        typed = flat[0].dtype.type
        update = adam_kernel_halves if _in_halves(flat[0]) else adam_kernel
        if not update(*flat, typed(lr_t), typed(cfg.beta1), typed(cfg.beta2), typed(cfg.eps)):
            return None
        return first_non_finite(grads)
    first_bad = None
    for k, p in params.items():
        typed = p.dtype.type
        update = adam_kernel_halves if kernel is adam_kernel and _in_halves(p) else kernel
        if update(p, grads[k], state["m"][k], state["v"][k],
                  typed(lr_t), typed(cfg.beta1), typed(cfg.beta2), typed(cfg.eps)) and first_bad is None:
            first_bad = k
    return first_bad
