"""MuProp (docs/math.md, section "Score-function gradients and their baselines"):
per-layer control variates from a first-order expansion of f
around the mean-field values mu, with the expansion's expectation added back analytically.

For each layer l (s0_l = 2 sigma(psi0_l), s1_l = 2 sigma(psi1_l), c_l its own baseline network):

    lin_l    = f'(mu_l) . (b_l - mu_l)                      f'(mu_l) = d f(mu) / d mu_l, held constant
    signal_l = f(b) - s0_l f(mu) - s1_l lin_l - c_l(x)
    G_q   = -(1/B) sum_n [ sum_l signal_{n,l} score_l(b_n) + sum_l s1_l f'(mu_l) . d sigma(a_l) / d theta_q ]
    G_p   = -(1/B) sum_n d log p(x_n, b_n) / d theta_p

where a_l is computed from the *hard* b_{l-1}: E_{b_l}[(b_l - mu_l) score_l] = d sigma(a_l)/d theta,
so the analytic term restores exactly what the linear term removes, and the estimate is
unbiased. The analytic term's backward: dL/da_l = -(s1_l / B) f'(mu_l) sigma(a_l)(1 - sigma(a_l)),
through T_ql. The scalings and baselines are trained on mean_n sum_l signal_{n,l}^2:
    d/dpsi0_l = sum_n (2 signal_l / B)(-f(mu)) ds/dpsi,  d/dpsi1_l = sum_n (2 signal_l / B)(-lin_l) ds/dpsi,
    d/dc_l = -2 signal_l / B.
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.baseline import baseline_backward, baseline_forward, init_baseline, squared_signal_loss
from ..model.relaxed import mean_field_pass
from ..model.sbn import (hard_pass, hard_pass_at, score_function_gradient, score_function_surrogate,
                         transform_backward, zeros_like)
from . import Estimate, merge_options, prepare_noise
from .simple_muprop import scale_of

DEFAULT_OPTIONS = {}


def init_aux(model, seed=0, dtype=np.float32, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    rng = np.random.default_rng(seed)
    aux = {}
    for l in range(model.n_layer):
        aux.update(init_baseline(model, rng, dtype, prefix=f"baseline{l}"))
        aux[f"psi.s0_{l}"] = np.zeros(1, dtype)
        aux[f"psi.s1_{l}"] = np.zeros(1, dtype)
    return aux


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    u = prepare_noise(model, x, u, rng)
    B, L = x.shape[0], model.n_layer
    hp = hard_pass(model, params, x, [K.logistic_noise(ul) for ul in u])
    mf = mean_field_pass(model, params, x)
    h0 = model.q_input(x)
    signals, lins, hiddens = [], [], []
    for l in range(L):
        c_l, hidden = baseline_forward(aux, h0, prefix=f"baseline{l}")
        lin = np.sum(mf.df_dmu[l] * (hp.b[l] - mf.layers[l].s), axis=1)
        s0, _ = scale_of(aux[f"psi.s0_{l}"][0])
        s1, _ = scale_of(aux[f"psi.s1_{l}"][0])
        signals.append(hp.f - s0 * mf.f - s1 * lin - c_l)
        lins.append(lin)
        hiddens.append(hidden)
    grads = score_function_gradient(model, params, x, hp, signals)
    for l in range(L):   # analytic term: -(s1_l / B) f'(mu_l) . d sigma(a_l) / d theta, a_l from hard b_{l-1}
        q = hp.layers[l]
        s1, _ = scale_of(aux[f"psi.s1_{l}"][0])
        da = K.sigmoid_backward(q.sig, (-s1 / B) * mf.df_dmu[l])
        transform_backward(params, grads, f"q{l}", q.cache, da, model.nonlinear, False)
    aux_grads = zeros_like(aux)
    losses = []
    for l in range(L):
        loss, dsignal = squared_signal_loss(signals[l])
        losses.append(loss)
        for name, value in ((f"psi.s0_{l}", mf.f), (f"psi.s1_{l}", lins[l])):
            _, ds_dpsi = scale_of(aux[name][0])
            aux_grads[name][0] = float(np.sum(dsignal * -value, dtype=np.float64)) * ds_dpsi
        baseline_backward(aux, aux_grads, h0, hiddens[l], -dsignal, prefix=f"baseline{l}")
    frozen = {"b": hp.b, "signals": signals, "f": hp.f, "f_mu": mf.f, "lins": lins, "df_dmu": mf.df_dmu}
    return Estimate(grads, aux_grads, hp.f, frozen=frozen,
                    stats={"baseline_loss": lambda: sum(loss() for loss in losses)})


def surrogate(model, params, aux, x, u, frozen, options=None):
    B = x.shape[0]
    model_loss = score_function_surrogate(model, params, x, frozen["b"], frozen["signals"])
    hp = hard_pass_at(model, params, x, frozen["b"])
    h0 = model.q_input(x)
    aux_loss = 0.0
    for l in range(model.n_layer):
        s0, _ = scale_of(aux[f"psi.s0_{l}"][0])
        s1, _ = scale_of(aux[f"psi.s1_{l}"][0])
        model_loss -= s1 / B * float(np.sum(frozen["df_dmu"][l] * hp.layers[l].sig))
        c_l, _ = baseline_forward(aux, h0, prefix=f"baseline{l}")
        aux_loss += float(np.mean((frozen["f"] - s0 * frozen["f_mu"] - s1 * frozen["lins"][l] - c_l) ** 2))
    return model_loss, aux_loss
