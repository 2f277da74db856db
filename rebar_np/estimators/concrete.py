"""Concrete (the "Gumbel-softmax" baseline; docs/math.md, section "The Concrete relaxation"): the reparameterised
gradient of the relaxed ELBO at a fixed temperature. Biased.

Every layer is relaxed (switch layer 0 of rebar_np.model.relaxed), s_l = sigma(t_l) with
t_l = (a_l + z0_l)/lam (+ a_l lam/(lam + 1) for the muprop relaxation), and

    G = -(1/B) sum_n d f_0(s_n) / d theta        for all parameters,

f_0 = log p(x, s) - sum_l log B(s_l; a_l). The gradient is exact for the relaxed
objective and biased for E_q[f(b)]: the unbiasedness test shows it (tests/).
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.relaxed import relaxed_pass
from ..model.sbn import empty_like, hard_pass
from . import Estimate, merge_options, prepare_noise
from .rebar import check_options

DEFAULT_OPTIONS = {"temperature": 0.5, "relaxation": "muprop"}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    check_options(merge_options(DEFAULT_OPTIONS, options))
    return {}


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    options = merge_options(DEFAULT_OPTIONS, options)
    check_options(options)
    u = prepare_noise(model, x, u, rng)
    z0 = [K.logistic_noise(ul) for ul in u]
    hp = hard_pass(model, params, x, z0)                 # the hard ELBO is what training reports
    grads = empty_like(params)           # the relaxed pass from layer 0 writes every tensor once,
    rp = relaxed_pass(model, params, x, hp, z0, 0, options["temperature"],   # of -(1/B) sum_n f_0(s_n)
                      options["relaxation"] == "muprop", False, grads=grads, dlogits_l=True, accumulate=False,
                      weight=-1.0 / x.shape[0])
    return Estimate(grads, {}, hp.f, frozen={"b": hp.b, "z0": z0},
                    stats={"relaxed_elbo": lambda: float(np.mean(rp.f))})


def surrogate(model, params, aux, x, u, frozen, options=None):
    """-(1/B) sum_n f_0(s_n): the relaxed ELBO at the frozen noise (hard samples play no part)."""
    options = merge_options(DEFAULT_OPTIONS, options)
    hp = hard_pass(model, params, x, frozen["z0"])
    rp = relaxed_pass(model, params, x, hp, frozen["z0"], 0, options["temperature"],
                      options["relaxation"] == "muprop", False)
    return -float(np.mean(rp.f)), 0.0
