"""RELAX (Grathwohl et al. 2018) for multilayer SBNs: REBAR whose control variate gains a learned
free-form term, with every control-variate parameter and the temperature tuned on the variance.

Per switch layer l (rebar_np.estimators.rebar, rebar_np.model.relaxed), REBAR's control variate
eta f_l(z) becomes

    c_l(z) = eta f_l(z) + r_l(z_l; x, b_{<l}),   r_l = a small tanh network (rebar_np.model.control_net,
             width an option) of the layer's logistic sample z_l = a_l + z0_l and, as its context,
             the data and the hard samples below layer l (options["context"], default on; the
             RELAX authors' multilayer code conditions r the same way)

and, since the conditional path z~ has the value of z and differs only in dz/da_l, the ascent
estimate per example is

    g = [f(b) - c(x)] sum_l score_l
        + sum_l ( -c_l(z~) score_l + d c_l(z)/d theta - d c_l(z~)/d theta )
    d c_l(z)/d theta - d c_l(z~)/d theta = backprop_{T_ql}( (eta g_z + rho_l) (1 - dz~/da_l) ),  rho_l = dr_l/dz_l.

So for each tensor k of T_ql the loss gradient is

    G_k = -(1/B) [ A_k + eta_k E_k + R_k ]
    A_k = backprop( (f - c) (b_l - sigma(a_l)) ),   E_k = backprop( g_z m_l - f_l (b_l - sigma(a_l)) )   (as REBAR)
    R_k = backprop( rho_l m_l - r_l (b_l - sigma(a_l)) ),   m_l = 1 - dz~/da_l,

and the generative tensors get d log p(x, b) / d theta_p. Unbiased for any eta, r and lambda:
R is REBAR's argument applied to r_l, a function of z_l and of a context that does not depend
on b_l (its value on both paths is r_l(z_l), and only the switch layer's dz/da differs).

Tuning: minimise V = (1/P) sum_j G_j^2 over psi (eta = 2 sigma(psi), per recognition tensor),
the baseline c, tau = log lambda and r's parameters phi_l. The first three are REBAR's
(dynamic_rebar's) formulas unchanged, since r depends on neither eta nor lambda (its input
is z, not the relaxed sample). For phi_l, with a_dot_l[G] the forward-mode derivative of
a_l along the parameter direction G (so sum_j G_j backprop(w)_j = sum_n <a_dot_l[G], w>_n):

    dV/dphi_l = (2/P) sum_j G_j dG_j/dphi_l = -(2/(P B)) dS_l/dphi_l,
    S_l = sum_n [ <a_dot_l[G]_n m_l,n, rho_l(z_l,n)> - <a_dot_l[G]_n, score_l,n> r_l(z_l,n) ],

which rebar_np.model.control_net.control_net_tangent_backward differentiates (forward mode of rho
along v = a_dot_l[G] m_l, then its reverse pass). eta, c, lambda and r move at 10x the
learning rate (the training loop's aux optimizer).

aux parameters: REBAR's ``baseline.*``, ``psi.<q tensor>``, ``tau`` and, per layer l,
``relax{l}.W1`` (H, M), ``relax{l}.V1`` (D + l H, M) (the context's weights), ``relax{l}.c1`` (M,),
``relax{l}.w2`` (M,), ``relax{l}.c2`` (1,).
"""
import numpy as np

from ..kernels.dispatch import K
from ..model.baseline import baseline_backward
from ..model.control_net import (DEFAULT_WIDTH, control_net_forward, control_net_input_grad,
                                 control_net_tangent_backward, init_control_net)
from ..model.relaxed import relaxed_pass
from ..model.sbn import hard_pass_at, is_recognition, score_function_surrogate, transform_backward, zeros_like
from . import Estimate, EstimatorError, merge_options
from .rebar import (apply_control_variates, logit_tangents, check_options as check_rebar_options, conditional_z0,
                    eta_of, hard_part, init_aux as rebar_init_aux, temperature, variance_and_eta_grads)

DEFAULT_OPTIONS = {"temperature": 0.5, "relaxation": "muprop", "hidden": DEFAULT_WIDTH, "context": True}


def check_options(options):
    check_rebar_options(options)
    h = options["hidden"]
    if not isinstance(h, (int, np.integer)) or isinstance(h, bool) or h < 1:
        raise EstimatorError(f"relax hidden width must be a positive integer, got {h!r}")
    if not isinstance(options["context"], bool):
        raise EstimatorError(f"relax context must be True or False, got {options['context']!r}")


def init_aux(model, seed=0, dtype=np.float32, options=None):
    options = merge_options(DEFAULT_OPTIONS, options)
    check_options(options)
    rebar_opts = {k: options[k] for k in ("temperature", "relaxation")}
    aux = rebar_init_aux(model, seed, dtype, rebar_opts, train_temperature=True)
    rng = np.random.default_rng([seed, 8])
    for l in range(model.n_layer):
        n_context = model.n_cond + l * model.n_hidden if options["context"] else 0
        aux.update(init_control_net(model.n_hidden, int(options["hidden"]), rng, dtype, f"relax{l}", n_context))
    return aux


def context_of(h0, b, l, options):
    """What r_l sees besides z_l: [x - mean_x, 2 b_0 - 1, ..., 2 b_{l-1} - 1] (the data and the hard
    samples below layer l, none of which depends on b_l), or None when options["context"] is off."""
    if not options["context"]:
        return None
    return np.concatenate([h0] + [2.0 * b[k] - 1.0 for k in range(l)], axis=1)


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    options = merge_options(DEFAULT_OPTIONS, options)
    check_options(options)
    if "tau" not in aux:
        raise EstimatorError("relax needs a learned temperature 'tau' in aux (use its init_aux)")
    improved = options["relaxation"] == "muprop"
    lam = temperature(aux, options)
    B, L, nl = x.shape[0], model.n_layer, model.nonlinear
    u, z0, hp, h0, c, hidden, grads = hard_part(model, params, aux, x, u, rng)

    # control variates per switch layer l: E (REBAR's, scaled by eta) and R (r's, unscaled)
    E = {k: np.empty_like(v) for k, v in params.items() if is_recognition(k)}    # each written once below
    R = {k: np.empty_like(params[k]) for k in E}
    per_layer = []
    for l in range(L):
        q = hp.layers[l]
        rp = relaxed_pass(model, params, x, hp, z0, l, lam, improved, True)
        m = 1.0 - K.dz_cond_dlogits(q.a, u[l], q.s)          # (dz - dz~)/da_l, with dz/da = 1
        score_da = q.s - q.sig                               # d log q(b_l) / d a_l
        r, rcache = control_net_forward(aux, f"relax{l}", q.a + z0[l], context_of(h0, hp.b, l, options))
        rho = control_net_input_grad(aux, f"relax{l}", rcache)
        transform_backward(params, E, f"q{l}", q.cache, rp.g_z[l] * m - rp.f[:, None] * score_da, nl, False,
                           accumulate=False)
        transform_backward(params, R, f"q{l}", q.cache, rho * m - r[:, None] * score_da, nl, False,
                           accumulate=False)
        per_layer.append((rp, m, score_da, r, rcache))
    eta = {k: eta_of(aux, k) for k in E}
    for k in R:
        grads[k] -= R[k] * (1.0 / B)
    sums = apply_control_variates(grads, E, eta, B)            # G_k = g_k - R_k / B - (eta_k / B) E_k

    # tuning gradients of V = mean_j G_j^2 (REBAR's for psi, c and tau; r's below)
    aux_grads = zeros_like(aux)
    P, V = variance_and_eta_grads(grads, sums, eta, B, aux_grads)
    dc = np.zeros(B, dtype=np.float64)
    dtau = 0.0
    for l, (rp, m, score_da, r, rcache) in enumerate(per_layer):
        q = hp.layers[l]
        a_dot_G, a_dot_eG = logit_tangents(params, f"q{l}", q.cache, nl, grads, eta, True)
        a_dot_G_score = K.per_example_dot(score_da, a_dot_G, 1)     # <a_dot_G, score>_n, float64
        dc += (2.0 / (P * B)) * a_dot_G_score
        w = rp.g_z_dot[l] * m - rp.f_dot[:, None] * score_da
        dtau += -(2.0 / (P * B)) * K.dot(a_dot_eG, w)
        # dV/dphi_l = -(2/(P B)) dS_l/dphi_l, S_l = sum_n [<A m, rho> - <A, score> r], A = a_dot_l[G]
        control_net_tangent_backward(aux, aux_grads, f"relax{l}", rcache, a_dot_G * m,
                                     a_dot_G_score.astype(r.dtype), -2.0 / (P * B))
    baseline_backward(aux, aux_grads, h0, hidden, dc.astype(c.dtype))
    aux_grads["tau"][0] = dtau

    r_l = [p[3] for p in per_layer]
    frozen = {"b": hp.b, "signal": hp.f - c, "f_l": [p[0].f for p in per_layer], "r_l": r_l,
              "z0": z0, "a": [q.a for q in hp.layers]}
    stats = {"temperature": lam, "eta_mean": float(np.mean(list(eta.values()))), "variance_objective": V,
             "rms_r": lambda: float(np.sqrt(np.mean(np.concatenate(r_l).astype(np.float64) ** 2)))}
    return Estimate(grads, aux_grads, hp.f, frozen=frozen, stats=stats)


def surrogate(model, params, aux, x, u, frozen, options=None):
    """Per-tensor functions whose gradients are this estimator's G_k (b, f - c, f_l, r_l held fixed):

        generative k:   -(1/B) sum_n [ (f - c) sum_l log q(b_l) + log p(x, b) ]
        q tensor k:     the same  - (eta_k / B) sum_n [ f_l(z) - f_l(z~) - f_l log q(b_l) ]
                                  - (1 / B) sum_n [ r_l(z_l) - r_l(z~_l) - r_l log q(b_l) ]

    with z_l = a_l + z0_l and z~_l = a_l + z0~_l (rebar.conditional_z0), a_l the hard logits
    moving with the parameters. aux_loss is V itself, recomputed by the estimator (noise fixed).
    """
    options = merge_options(DEFAULT_OPTIONS, options)
    improved = options["relaxation"] == "muprop"
    lam = temperature(aux, options)
    b, z0 = frozen["b"], frozen["z0"]
    hp = hard_pass_at(model, params, x, b)
    base = score_function_surrogate(model, params, x, b, frozen["signal"])
    B, L = x.shape[0], model.n_layer
    out = {k: base for k in params}
    for l in range(L):
        a = hp.layers[l].a
        z0c = list(z0)
        z0c[l] = conditional_z0(a, frozen["a"][l], u[l], b[l])
        f_z = relaxed_pass(model, params, x, hp, z0, l, lam, improved, False).f
        f_zc = relaxed_pass(model, params, x, hp, z0c, l, lam, improved, False).f
        e_l = float(np.sum(f_z - f_zc) - np.sum(frozen["f_l"][l] * hp.logq[l]))
        ctx = context_of(model.q_input(x), b, l, options)
        r_z, _ = control_net_forward(aux, f"relax{l}", a + z0[l], ctx)
        r_zc, _ = control_net_forward(aux, f"relax{l}", a + z0c[l], ctx)
        e_r = float(np.sum(r_z - r_zc) - np.sum(frozen["r_l"][l] * hp.logq[l]))
        for k in params:
            if k.startswith(f"q{l}."):
                out[k] = base - eta_of(aux, k) / B * e_l - e_r / B
    V = estimate(model, params, aux, x, u, options=options).stat("variance_objective")
    return out, V
