"""K samples per example: the shared machinery of the estimators of the K-sample bound
(rebar_np.estimators.vimco and reinforce_loo).

For each example x_n, K independent samples b_n^1..b_n^K from q(b | x_n), f_k = f(b_n^k), and

    L_n = log (1/K) sum_k exp f_k                     (the K-sample importance-weighted bound)
    d L_n / d theta = sum_k signal_k d log q(b^k) / d theta_q  +  sum_k w_k d f_k / d theta,

w_k = exp f_k / sum_j exp f_j, signal_k a learning signal whose baseline does not depend on
b^k (any such baseline keeps the estimate unbiased, as b^k is independent of the other
samples). Unlike the single-sample ELBO, the direct term w_k d f_k / d theta_q = -w_k d log q(b^k)
/ d theta_q does *not* vanish in expectation (w_k depends on all K samples) and is kept:

    G_q = -(1/B) sum_n sum_k (signal_k - w_k) d log q(b_n^k | .) / d theta_q
    G_p = -(1/B) sum_n sum_k w_k d log p(x_n, b_n^k) / d theta_p

Layout: the B K rows of a pass are example-major, row n K + k is sample k of example n
(np.repeat(x, K, axis=0), as rebar_np.evaluation.bound.iw_bound). The noise is one (B K, H) uniform
array per layer. K multiplies the compute, not the batch: the gradient is still the
average over the B examples, and Estimate.elbo is L_n, the K-sample bound of each example.
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.sbn import generative_backward, hard_pass, hard_pass_at, score_backward, zeros_like
from . import Estimate, EstimatorError, merge_options, prepare_noise

DEFAULT_SAMPLES = 5


def check_samples(options):
    k = options["samples"]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise EstimatorError(f"samples must be an integer of at least 2 (the leave-one-out baselines need "
                             f"another sample), got {k!r}")
    return int(k)


def noise_rows(batch_size, options, defaults):
    """Rows of each layer's noise array for a batch of batch_size examples: batch_size K."""
    return batch_size * check_samples(merge_options(defaults, options))


def k_sample_estimate(model, params, x, u, rng, options, signals_fn):
    """The K-sample gradient (module docstring) with signals_fn(F (B, K)) -> (L (B,), signal (B, K), w (B, K))."""
    Ks = check_samples(options)
    model.check_batch(x)
    B = x.shape[0]
    xk = np.repeat(x, Ks, axis=0)
    u = prepare_noise(model, xk, u, rng)
    hp = hard_pass(model, params, xk, [K.logistic_noise(ul) for ul in u])
    bound, signal, w = signals_fn(hp.f.reshape(B, Ks))
    dt = hp.f.dtype
    dlogq = ((w - signal) / B).reshape(-1).astype(dt)        # d loss / d log q(b^k): -(signal_k - w_k) / B
    dlogp = (-w / B).reshape(-1).astype(dt)                 # d loss / d log p(x, b^k): -w_k / B
    grads = zeros_like(params)
    score_backward(model, params, grads, hp.layers, dlogq)
    generative_backward(model, params, grads, xk, hp.b, hp.pp, dlogp, False)
    stats = {"rms_signal": lambda: float(np.sqrt(np.mean(signal ** 2))),
             "ess": lambda: float(np.mean(1.0 / np.sum(w ** 2, axis=1)))}
    return Estimate(grads, {}, bound.astype(dt), frozen={"b": hp.b, "dlogq": dlogq, "dlogp": dlogp}, stats=stats)


def k_sample_surrogate(model, params, x, frozen, options):
    """sum_rows [ dlogq_row log q(b_row | .) + dlogp_row log p(x, b_row) ] with b and both weights held fixed."""
    Ks = check_samples(options)
    xk = np.repeat(x, Ks, axis=0)
    hp = hard_pass_at(model, params, xk, frozen["b"])
    return float(np.sum(frozen["dlogq"] * sum(hp.logq)) + np.sum(frozen["dlogp"] * hp.logp))
