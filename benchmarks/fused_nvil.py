"""How much of a training step is Python between kernels: NVIL's estimate as one jitted function.

    python -m benchmarks.fused_nvil [--threads 1] [--rounds 8] [--steps 500]

rebar_np computes an estimate as a chain of kernel calls driven by Python (rebar_np.model.sbn,
rebar_np.estimators.nvil): 420 calls for NVIL on a 2-layer SBN (counted by cProfile). This
module computes the same estimate in one Numba function that calls the same product kernels
(kernels.blocking._affine_halves, kernels.blocking._dense_backward_halves) and computes the exponentials of the
log-likelihoods inside its loops (kernels.fastmath._exp_neg_abs_f32), so that nothing runs in Python
between them. The difference between the two steps is what fusing a step would remove.

It is a measurement, not part of training: float32, linear transforms and the free prior vector
(tasks sbn and omni) only, and no CUDA twin. tests/test_benchmarks.py checks that it gives
rebar_np's gradients. Its main times `rebar_np.training.train.train_step` (the step `rebar-np train`
runs) with nvil's estimate and with this one, in alternating rounds in the same process.

The estimate, per example (SPEC section 3; rebar_np.estimators.nvil):
    b_l = 1[a_l + z0_l > 0],  a_l = h_l W_ql + c_ql,  h_0 = x - mean_x,  h_l = 2 b_{l-1} - 1
    f = log p(x, b) - sum_l log q(b_l | b_{l-1}),  c = tanh(h_0 W1 + c1) W2 + c2,  signal = f - c
    dL/da_ql = -(signal / B) (b_l - sigma(a_ql))         (score function, signal held fixed)
    dL/da_pl = -(1 / B) (y_l - sigma(a_pl))              (y_0 = x, y_l = b_{l-1}; prior: y = b_{L-1})
    baseline loss mean(signal^2):  dL/dc = -2 signal / B
"""
import argparse
import sys
import time

import numpy as np
from numba import njit

from rebar_np.kernels.blocking import _affine_halves, _dense_backward_halves, _row_blocks
from rebar_np.kernels.fastmath import _bernoulli_loglik_row, _exp_neg_abs_f32
from rebar_np.kernels.noise import logistic_noise

fused = njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc", "contract", "arcp", "nsz"})


@fused
def _loglik_forward(y, a, ll, sig, e, exponent_bits):
    """ll[i] = log B(y_i; a_i) and sig = sigma(a), e = exp(-|a|) computed row by row: the row
    arithmetic of kernels.bernoulli_loglik_forward (_bernoulli_loglik_row), into given arrays."""
    n, m = a.shape
    e, exponent_bits = e[:m], exponent_bits[:m]
    for i in range(n):
        _exp_neg_abs_f32(a[i], e, exponent_bits)
        ll[i] = _bernoulli_loglik_row(y[i], a[i], e, sig[i])


@fused
def _tanh_forward(pre, h, e, exponent_bits):
    """h = tanh(pre) = sign(pre) (1 - e) / (1 + e), e = exp(-2 |pre|)."""
    n, m = pre.shape
    e, exponent_bits = e[:m], exponent_bits[:m]
    twice = np.empty(m, np.float32)
    for i in range(n):
        for j in range(m):
            twice[j] = np.float32(2.0) * pre[i, j]
        _exp_neg_abs_f32(twice, e, exponent_bits)
        for j in range(m):
            t = (np.float32(1.0) - e[j]) / (np.float32(1.0) + e[j])
            h[i, j] = t if pre[i, j] >= 0 else -t


@fused
def _nvil_estimate(h0, target, data_bias, z0, Wq, cq, Wp, cp, prior, W1, c1, W2, c2,
                   gWq, gcq, gWp, gcp, gprior, gW1, gc1, gW2, gc2,
                   k_fwd_q, k_fwd_p, k_fwd_bl, k_bwd_q, k_bwd_p, k_bwd_bl):
    """The estimate of the module docstring; gradients accumulate into the g* arrays (zeros on entry).
    k_fwd_*, k_bwd_*: blocks per half of each product and weight gradient (kernels.blocking._row_blocks).
    Returns (f, signal, b, baseline loss)."""
    B, L, H = h0.shape[0], len(Wq), prior.shape[0]
    no_term = np.empty((0, 0), np.float32)
    width = max(H, target.shape[1], W1.shape[1])
    e, exponent_bits = np.empty(width, np.float32), np.empty(width, np.int32)
    ll = np.empty(B, np.float32)
    # ---- q: b_l and log q(b_l | .) ----
    b, h, sig_q = np.empty((L, B, H), np.float32), np.empty((L, B, H), np.float32), np.empty((L, B, H), np.float32)
    logq = np.zeros(B, np.float32)
    for l in range(L):
        h_in = h0 if l == 0 else h[l - 1]
        a = _affine_halves(h_in, Wq[l], h_in, no_term, cq[l], np.empty((B, H), np.float32),
                           np.empty((2, B, H), np.float32), k_fwd_q[l])
        for i in range(B):
            for j in range(H):
                b[l, i, j] = np.float32(1.0) if a[i, j] + z0[l][i, j] > 0 else np.float32(0.0)
                h[l, i, j] = np.float32(2.0) * b[l, i, j] - np.float32(1.0)       # the next layer's input
        _loglik_forward(b[l], a, ll, sig_q[l], e, exponent_bits)
        logq += ll
    # ---- p: log p(x, b), the prior term, then top layer down ----
    logp, prior_logits, sig_prior = np.empty(B, np.float32), np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    for i in range(B):
        prior_logits[i] = prior
    _loglik_forward(b[L - 1], prior_logits, logp, sig_prior, e, exponent_bits)
    sig_p = []
    for l in range(L - 1, -1, -1):
        n_out = Wp[l].shape[1]
        a = _affine_halves(h[l], Wp[l], h[l], no_term, cp[l], np.empty((B, n_out), np.float32),
                           np.empty((2, B, n_out), np.float32), k_fwd_p[l])
        if l == 0:
            for i in range(B):
                for j in range(n_out):
                    a[i, j] += data_bias[j]
        sig = np.empty((B, n_out), np.float32)
        _loglik_forward(target if l == 0 else b[l - 1], a, ll, sig, e, exponent_bits)
        logp += ll
        sig_p.append(sig)                                  # sig_p[L - 1 - l]
    f = logp - logq
    # ---- baseline c(x) and the learning signal ----
    n_bl = W1.shape[1]
    pre = _affine_halves(h0, W1, h0, no_term, c1, np.empty((B, n_bl), np.float32),
                         np.empty((2, B, n_bl), np.float32), k_fwd_bl)
    hidden = np.empty((B, n_bl), np.float32)
    _tanh_forward(pre, hidden, e, exponent_bits)
    signal = np.empty(B, np.float32)
    for i in range(B):
        c = c2[0]
        for j in range(n_bl):
            c += hidden[i, j] * W2[j, 0]
        signal[i] = f[i] - c
    # ---- score function: dL/da_ql = -(signal / B) (b_l - sigma(a_ql)) ----
    inv_B = np.float32(1.0 / B)
    da = np.empty((B, H), np.float32)
    for l in range(L):
        for i in range(B):
            for j in range(H):
                da[i, j] = -signal[i] * inv_B * (b[l, i, j] - sig_q[l, i, j])
        h_in = h0 if l == 0 else h[l - 1]
        _dense_backward_halves(h_in, Wq[l], da, gWq[l], gcq[l], no_term, k_bwd_q[l], 1, 1.0)
    # ---- generative: dL/da = -(1 / B) (y - sigma(a)) ----
    for i in range(B):
        for j in range(H):
            gprior[j] -= inv_B * (b[L - 1, i, j] - sig_prior[i, j])
    for l in range(L - 1, -1, -1):
        sig = sig_p[L - 1 - l]
        y = target if l == 0 else b[l - 1]
        da_p = np.empty_like(sig)
        for i in range(B):
            for j in range(sig.shape[1]):
                da_p[i, j] = -inv_B * (y[i, j] - sig[i, j])
        _dense_backward_halves(h[l], Wp[l], da_p, gWp[l], gcp[l], no_term, k_bwd_p[l], 1, 1.0)
    # ---- baseline: dL/dc = -2 signal / B, back through c = tanh(h0 W1 + c1) W2 + c2 ----
    loss = 0.0
    dpre = np.empty((B, n_bl), np.float32)
    for i in range(B):
        loss += np.float64(signal[i]) ** 2
        dc = np.float32(-2.0) * signal[i] * inv_B
        gc2[0] += dc
        for j in range(n_bl):
            gW2[j, 0] += hidden[i, j] * dc
            dpre[i, j] = dc * W2[j, 0] * (np.float32(1.0) - hidden[i, j] * hidden[i, j])
    _dense_backward_halves(h0, W1, dpre, gW1, gc1, no_term, k_bwd_bl, 1, 1.0)
    return f, signal, b, loss / B


def supported(model, params):
    """Why this fused estimate cannot run this model, or None when it can."""
    if model.nonlinear or model.task == "sp":
        return "the fused NVIL estimate covers linear SBNs with a free prior (tasks sbn, omni)"
    if any(v.dtype != np.float32 for v in params.values()):
        return "the fused NVIL estimate is float32 only"
    return None


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    """rebar_np.estimators.nvil.estimate, computed by _nvil_estimate (same arguments, same Estimate fields
    but `frozen`)."""
    from rebar_np.estimators import Estimate, prepare_noise
    reason = supported(model, params)
    if reason:
        raise ValueError(reason)
    u = prepare_noise(model, x, u, rng)
    L, B = model.n_layer, x.shape[0]
    q, p = [f"q{l}" for l in range(L)], [f"p{l}" for l in range(L)]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    aux_grads = {k: np.zeros_like(v) for k, v in aux.items()}
    W = lambda names, d: tuple(d[n + ".W"] for n in names)
    c = lambda names, d: tuple(d[n + ".c"] for n in names)
    h0 = model.q_input(x)
    blocks = lambda rule, names, d: tuple(rule(B, *d[n + ".W"].shape) for n in names)
    f, signal, b, loss = _nvil_estimate(
        h0, model.target(x), model.data_bias(x.dtype), tuple(logistic_noise(ul) for ul in u),
        W(q, params), c(q, params), W(p, params), c(p, params), params["prior.logits"],
        aux["baseline.W1"], aux["baseline.c1"], aux["baseline.W2"], aux["baseline.c2"],
        W(q, grads), c(q, grads), W(p, grads), c(p, grads), grads["prior.logits"],
        aux_grads["baseline.W1"], aux_grads["baseline.c1"], aux_grads["baseline.W2"], aux_grads["baseline.c2"],
        blocks(_row_blocks, q, params), blocks(_row_blocks, p, params), _row_blocks(B, *aux["baseline.W1"].shape),
        blocks(_row_blocks, q, params), blocks(_row_blocks, p, params), _row_blocks(B, *aux["baseline.W1"].shape))
    return Estimate(grads, aux_grads, f, stats={"baseline_loss": loss})


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fused_nvil", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="cores the step may use (numba.set_num_threads)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating timing rounds per step")
    parser.add_argument("--steps", type=int, default=500, help="steps per round")
    parser.add_argument("--n-layer", type=int, default=2)
    args = parser.parse_args(argv)
    import numba
    from .__main__ import make_data, rebar_np_step
    steps = {}
    for name, fn in (("modular", None), ("fused", estimate)):
        steps[name] = rebar_np_step("nvil", args.n_layer, False, 24, 200, make_data(24), estimate=fn)
        numba.set_num_threads(args.threads)
        for _ in range(200):
            steps[name]()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    for name, ts in times.items():
        print(f"nvil linear{args.n_layer}, batch 24, {args.threads} core(s), {name:>7} estimate: "
              f"median {np.median(ts):.3f} ms a step (min {min(ts):.3f}), {1e3 / np.median(ts):.0f} steps/s")
    print(f"fused / modular step time: {np.median(times['fused']) / np.median(times['modular']):.3f}")


if __name__ == "__main__":
    sys.exit(main())
