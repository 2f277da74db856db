"""SimpleMuProp (docs/math.md, section "Score-function gradients and their baselines"):
REINFORCE with the mean-field ELBO as a scaled baseline.

    signal_n = f(b_n) - s f(mu_n) - c(x_n),        s = 2 sigma(psi) (psi = 0: s = 1)
    G = -(1/B) sum_n [ signal_n sum_l score_l(b_n) + d log p(x_n, b_n) / d theta_p ]

f(mu) is the ELBO at the deterministic mean-field values (rebar_np.model.relaxed.mean_field_pass);
it and c depend on x only, so the estimate is unbiased for any s and c. s and c are
trained on mean_n signal_n^2 (f and f(mu) held fixed):
    d/dpsi = sum_n (2 signal_n / B)(-f(mu_n)) ds/dpsi,   ds/dpsi = s (1 - s/2)
    d/dc_n = -2 signal_n / B   (then backprop through the baseline network)
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.baseline import baseline_backward, baseline_forward, init_baseline, squared_signal_loss
from ..model.relaxed import mean_field_pass
from ..model.sbn import hard_pass, score_function_gradient, score_function_surrogate, zeros_like
from . import Estimate, merge_options, prepare_noise

DEFAULT_OPTIONS = {}


def scale_of(psi):
    """s = 2 sigma(psi) as a Python float, and ds/dpsi = s (1 - s/2)."""
    s = float(2.0 / (1.0 + np.exp(-float(psi))))
    return s, s * (1.0 - s / 2.0)


def init_aux(model, seed=0, dtype=np.float32, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    aux = init_baseline(model, np.random.default_rng(seed), dtype)
    aux["psi.scale"] = np.zeros(1, dtype)
    return aux


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    merge_options(DEFAULT_OPTIONS, options)
    u = prepare_noise(model, x, u, rng)
    hp = hard_pass(model, params, x, [K.logistic_noise(ul) for ul in u])
    f_mu = mean_field_pass(model, params, x, derivatives=False).f
    h0 = model.q_input(x)
    c, hidden = baseline_forward(aux, h0)
    s, ds_dpsi = scale_of(aux["psi.scale"][0])
    signal = hp.f - s * f_mu - c
    grads = score_function_gradient(model, params, x, hp, signal)
    loss, dsignal = squared_signal_loss(signal)
    aux_grads = zeros_like(aux)
    aux_grads["psi.scale"][0] = float(np.sum(dsignal * -f_mu, dtype=np.float64)) * ds_dpsi
    baseline_backward(aux, aux_grads, h0, hidden, -dsignal)
    return Estimate(grads, aux_grads, hp.f, frozen={"b": hp.b, "signal": signal, "f": hp.f, "f_mu": f_mu},
                    stats={"baseline_loss": loss, "scale": s})


def surrogate(model, params, aux, x, u, frozen, options=None):
    c, _ = baseline_forward(aux, model.q_input(x))
    s, _ = scale_of(aux["psi.scale"][0])
    return (score_function_surrogate(model, params, x, frozen["b"], frozen["signal"]),
            float(np.mean((frozen["f"] - s * frozen["f_mu"] - c) ** 2)))
