"""ARM (Yin and Zhou 2019, augment-REINFORCE-merge) for multilayer SBNs, layer by layer.

For one layer with logits a and uniform noise u, the antithetic pair

    b = 1[u > sigma(-a)],   b~ = 1[1 - u > sigma(-a)]      (logistic noise z0 and -z0)

gives the unbiased estimate  d E[F(b)] / d a  ~=  (F(b) - F(b~)) (u - 1/2)  (rebar_np.estimators.bernoulli.arm).

Multilayer (the DisARM paper's multi-layer treatment): for layer l, hold the hard samples
below it, b_{<l}, fixed; draw the pair (b_l, b~_l) from u_l; continue *each* branch through
the layers above with the same noise u_{>l} (common random numbers); evaluate f on both:

    f_l^+ = f(b_{<l}, b_l, b_{>l}(u_{>l}; b_l))        = f(b), the ordinary hard pass
    f_l^- = f(b_{<l}, b~_l, b_{>l}(u_{>l}; b~_l))      (antithetic_pass)
    g_{a_l} = (f_l^+ - f_l^-) (u_l - 1/2)              per example, (B, H)

and the loss gradient

    G_{q_l} = -(1/B) backprop_{T_ql}(g_{a_l})          (a_l = T_ql(2 b_{l-1} - 1): hard input)
    G_p     = -(1/B) sum_n d log p(x_n, b_n) / d theta_p.

Unbiased: given b_{<l}, F(b_l) = E_{u_{>l}}[f | b_{<=l}] is the same function of b_l on both
branches (they share u_{>l}, which is independent of u_l), so the ARM identity applies to
F; the direct dependence of f on theta_q through -log q has expectation 0 and is dropped,
as in every estimator here. Cost: L + 1 evaluations of f (the hard pass and one antithetic
branch per layer, each recomputed only from layer l up). No trained parameters.
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.sbn import (empty_like, generative_backward, generative_forward, hard_pass, hard_pass_at,
                         transform_backward, transform_forward)
from . import bernoulli as bern
from . import Estimate, merge_options, prepare_noise

DEFAULT_OPTIONS = {}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    return {}


def antithetic_pass(model, params, x, hp, z0, l):
    """f on layer l's antithetic branch: the hard samples of hp below l, noise -z0_l at layer l
    (u_l -> 1 - u_l), z0_k above. Terms below l are reused from hp (they do not see layer l):

        f^- = log p(x, b_{<l}, b~_{>=l}) - sum_{k<l} log q(b_k | .) - sum_{k>=l} log q(b~_k | .)

    Returns (f^- (B,), b~_l).
    """
    L, nl = model.n_layer, model.nonlinear
    samples, logq = list(hp.b), [None] * L
    for k in range(l, L):
        if k == l:   # layer l's input is the hard b_{l-1}: its logits are the hard pass's
            a, noise = hp.layers[l].a, -z0[l]
        else:
            a, _ = transform_forward(params, f"q{k}", 2.0 * samples[k - 1] - 1.0, nl)
            noise = z0[k]
        samples[k] = K.hard_sample_forward(a, noise)
        logq[k], _ = K.bernoulli_loglik_forward(samples[k], a)
    logp, _ = generative_forward(model, params, x, samples, from_layer=l,
                                 prior=(hp.pp.prior_logits, hp.pp.prior_cache))
    f = logp + sum(hp.pp.terms[k] - hp.logq[k] for k in range(l)) - sum(logq[k] for k in range(l, L))
    return f, samples[l]


def antithetic_estimate(model, params, x, u, rng, logit_gradient):
    """The layer-wise antithetic estimator shared by ARM and DisARM (module docstring), with
    logit_gradient(f_diff, u_l, a_l, b_l, b~_l) -> g_{a_l} (B, H), the ascent direction for a_l."""
    u = prepare_noise(model, x, u, rng)
    B, nl = x.shape[0], model.nonlinear
    z0 = [K.logistic_noise(ul) for ul in u]
    hp = hard_pass(model, params, x, z0)
    grads = empty_like(params)       # every tensor receives exactly one product below, written
    generative_backward(model, params, grads, x, hp.b, hp.pp, np.full(B, -1.0 / B, dtype=hp.f.dtype), False,
                        accumulate=False)
    g_a, f_diffs = [], []
    for l in range(model.n_layer):
        q = hp.layers[l]
        f_anti, b_anti = antithetic_pass(model, params, x, hp, z0, l)
        f_diff = hp.f - f_anti
        g = np.ascontiguousarray(logit_gradient(f_diff, u[l], q.a, q.s, b_anti), dtype=q.a.dtype)
        transform_backward(params, grads, f"q{l}", q.cache, g * (-1.0 / B), nl, False, accumulate=False)
        g_a.append(g)
        f_diffs.append(f_diff)
    stats = {"rms_f_diff": lambda: float(np.sqrt(np.mean(np.concatenate(f_diffs).astype(np.float64) ** 2)))}
    return Estimate(grads, {}, hp.f, frozen={"b": hp.b, "g_a": g_a}, stats=stats)


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    return antithetic_estimate(model, params, x, u, rng,
                               lambda f_diff, ul, a, b, b_anti: bern.arm_logit_gradient(f_diff, ul))


def surrogate(model, params, aux, x, u, frozen, options=None):
    """-(1/B) sum_n [ sum_l <g_{a_l}, a_l(theta)> + log p(x_n, b_n) ], with b and g_{a_l} held fixed."""
    hp = hard_pass_at(model, params, x, frozen["b"])
    lin = sum(float(np.sum(g * q.a)) for g, q in zip(frozen["g_a"], hp.layers))
    return -(lin + float(np.sum(hp.logp))) / x.shape[0], 0.0
