"""DisARM (Dong, Mnih and Tucker 2020) for multilayer SBNs, layer by layer.

The same antithetic pair and the same L + 1 evaluations of f as ARM (rebar_np.estimators.arm:
layer l's pair (b_l, b~_l) from u_l and 1 - u_l, the layers above continued with shared noise),
with the augmentation u integrated out given the pair:

    g_{a_l} = 1/2 (f_l^+ - f_l^-) (b_l - b~_l) sigma(|a_l|)          per example, (B, H)
    G_{q_l} = -(1/B) backprop_{T_ql}(g_{a_l}),   G_p = -(1/B) sum_n d log p(x_n, b_n) / d theta_p.

DisARM = E[ARM | b, b~] (rebar_np.estimators.bernoulli.disarm_logit_gradient), so it is unbiased whenever
ARM is and its variance is never larger. No trained parameters.
"""
import numpy as np

from . import bernoulli as bern
from . import merge_options
from .arm import antithetic_estimate, surrogate  # noqa: F401  (the same surrogate: g_{a_l} frozen)

DEFAULT_OPTIONS = {}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    return {}


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    return antithetic_estimate(model, params, x, u, rng,
                               lambda f_diff, ul, a, b, b_anti: bern.disarm_logit_gradient(f_diff, a, b, b_anti))
