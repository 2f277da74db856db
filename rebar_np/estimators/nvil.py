"""NVIL: REINFORCE with an input-dependent learned baseline c(x)
(docs/math.md, section "Score-function gradients and their baselines").

    signal_n = f(b_n) - c(x_n)
    g = -(1/B) sum_n [ signal_n sum_l score_l(b_n) + d log p(x_n, b_n) / d theta_p ]
    c is trained on  mean_n signal_n^2  (f held fixed), at 10x the learning rate.

Unbiased for any c, since c(x) does not depend on b. No variance normalisation
(as in the TF reference).
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.baseline import baseline_backward, baseline_forward, init_baseline, squared_signal_loss
from ..model.sbn import hard_pass, score_function_gradient, score_function_surrogate, zeros_like
from . import Estimate, merge_options, prepare_noise


DEFAULT_OPTIONS = {}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    return init_baseline(model, np.random.default_rng(seed), dtype)


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    u = prepare_noise(model, x, u, rng)
    hp = hard_pass(model, params, x, [K.logistic_noise(ul) for ul in u])
    h0 = model.q_input(x)
    c, hidden = baseline_forward(aux, h0)
    signal = hp.f - c
    grads = score_function_gradient(model, params, x, hp, signal)
    # baseline: d/dc of mean (f - c)^2 = -2 (f - c) / B
    loss, dsignal = squared_signal_loss(signal)
    aux_grads = zeros_like(aux)
    baseline_backward(aux, aux_grads, h0, hidden, -dsignal)
    return Estimate(grads, aux_grads, hp.f, frozen={"b": hp.b, "signal": signal, "f": hp.f},
                    stats={"baseline_loss": loss})


def surrogate(model, params, aux, x, u, frozen, options=None):
    c, _ = baseline_forward(aux, model.q_input(x))
    return (score_function_surrogate(model, params, x, frozen["b"], frozen["signal"]),
            float(np.mean((frozen["f"] - c) ** 2)))
