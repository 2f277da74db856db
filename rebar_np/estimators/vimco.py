"""VIMCO (Mnih and Rezende 2016): K samples per example, the K-sample bound and its per-sample
leave-one-out baselines.

K samples per example (--samples K, K >= 2), objective L = log (1/K) sum_k exp f(b^k), and for
sample k the baseline is L with sample k replaced by the geometric mean of the others:

    signal_k = L - log (1/K) ( sum_{j != k} exp f(b^j) + exp( mean_{j != k} f(b^j) ) )
                                                              (rebar_np.estimators.bernoulli.vimco_signals)
    G_q = -(1/B) sum_n sum_k (signal_k - w_k) d log q(b_n^k) / d theta_q
    G_p = -(1/B) sum_n sum_k w_k d log p(x_n, b_n^k) / d theta_p,     w_k = softmax_k f(b^k)

(rebar_np.estimators.multisample; the -w_k d log q term is the direct dependence of f on q, which for the
K-sample bound does not vanish in expectation). Unbiased for the gradient of E[L]. Noise: one
(B K, H) array per layer, row n K + k for sample k of example n. No trained parameters.
"""
import numpy as np

from . import bernoulli as bern
from . import multisample as MS
from . import merge_options

DEFAULT_OPTIONS = {"samples": MS.DEFAULT_SAMPLES}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    MS.check_samples(merge_options(DEFAULT_OPTIONS, options))
    return {}


def noise_rows(batch_size, options=None):
    return MS.noise_rows(batch_size, options, DEFAULT_OPTIONS)


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    return MS.k_sample_estimate(model, params, x, u, rng, merge_options(DEFAULT_OPTIONS, options),
                                bern.vimco_signals)


def surrogate(model, params, aux, x, u, frozen, options=None):
    return MS.k_sample_surrogate(model, params, x, frozen, merge_options(DEFAULT_OPTIONS, options)), 0.0
