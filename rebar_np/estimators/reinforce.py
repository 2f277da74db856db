"""REINFORCE with the leave-one-out batch baseline
(docs/math.md, section "Score-function gradients and their baselines").

    signal_n = f(b_n) - mean_{m != n} f(b_m)
    g = -(1/B) sum_n [ signal_n sum_l score_l(b_n) + d log p(x_n, b_n) / d theta_p ]

Unbiased because signal_n's baseline depends only on the other examples'
samples, which are independent of b_n. Needs B >= 2. No trained parameters.
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.sbn import hard_pass, score_function_gradient, score_function_surrogate
from . import Estimate, EstimatorError, merge_options, prepare_noise


DEFAULT_OPTIONS = {}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    return {}


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    u = prepare_noise(model, x, u, rng)
    if x.shape[0] < 2:
        raise EstimatorError("reinforce needs a batch of at least 2 (its baseline is the other examples' mean)")
    hp = hard_pass(model, params, x, [K.logistic_noise(ul) for ul in u])
    signal = K.leave_one_out_center(hp.f)
    grads = score_function_gradient(model, params, x, hp, signal)
    return Estimate(grads, {}, hp.f, frozen={"b": hp.b, "signal": signal},
                    stats={"rms_signal": lambda: float(np.sqrt(np.mean(signal.astype(np.float64) ** 2)))})


def surrogate(model, params, aux, x, u, frozen, options=None):
    return score_function_surrogate(model, params, x, frozen["b"], frozen["signal"]), 0.0
