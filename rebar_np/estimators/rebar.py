"""REBAR with one control variate per stochastic layer, fixed temperature
(docs/math.md, sections "REBAR for one layer" and "REBAR for several layers").

The ascent estimate of the recognition gradient, per example:

    g = [f(b) - c(x)] sum_l score_l
        + sum_l eta * ( -f_l(z~) score_l + d f_l(z)/d theta - d f_l(z~)/d theta )

and the generative parameters get d log p(x, b) / d theta_p. The two relaxed
paths have equal values and differ only through dz/da_l at the switch layer
(rebar_np.model.relaxed), so for each tensor k of T_ql the loss gradient is

    G_k = -(1/B) [ A_k + eta_k E_k ],
    A_k = sum_n (f_n - c_n) score_{n,k}                          (backprop of (f - c)(b_l - sigma(a_l)))
    E_k = sum_n backprop_{T_ql}( g_z (1 - dz~/da_l) - f_l (b_l - sigma(a_l)) )_k

with g_z = d f_l / d z_l. The generative tensors get no control-variate term.
Each q tensor's G_k is written once, from both parts (recognition_gradient): for a linear
T_ql at batch 24 through the Gram matrix h h^T, so that neither E_W nor the product h G_W of
the tuning below is formed. The Gram route is the readable one, backprop of dA and dE through
T_ql, rearranged: the same G_k, variance sums and logit tangents to float64 rounding
(tests/test_rebar.py::test_gram_route_gives_the_same_estimate).

Tuning (docs/math.md, section "The variance objective and its gradients"): V = (1/P) sum_j G_j^2
over all P model-gradient entries, minimised over psi (eta = 2 sigma(psi), one
per recognition tensor), the baseline c and, for dynamic_rebar, tau = log lambda:

    dV/dpsi_k = (2/P) sum_{j in k} G_j (-E_j / B) * 2 sigma(psi_k)(1 - sigma(psi_k))
    dV/dc_n   = (2/(P B)) sum_l < b_l - sigma(a_l), a_dot_l[G] >_n
    dV/dtau   = -(2/(P B)) sum_l sum_n < a_dot_l[eta G], g_z_dot (1 - dz~/da_l) - f_l_dot (b_l - sigma(a_l)) >_n

where a_dot_l[v] is the forward-mode derivative of a_l = T_ql(h_l) in the parameter
direction v (so sum_j v_j backprop(w)_j = sum_n <a_dot[v], w>_n), and f_l_dot,
g_z_dot are the temperature tangents of rebar_np.model.relaxed. eta, c and tau move at
10x the learning rate (the training loop's aux optimizer).

Joint variant (options["joint"]): one control variate, the ELBO with every layer
relaxed (f_0), the summed score, and every layer's conditional noise z~_k drawn
given b_k at the *hard* logits a_k(b_{k-1}); then E_k uses g_z = d f_0 / d z_k and
the coefficient f_0 for every layer, and the estimator stays unbiased (each
layer's conditional derivative is matched by that layer's score term). The TF
reference's "non-quadratic" REBAR is this variant.

condition_above (options["condition_above"], per layer only): the conditional path of switch
layer l also carries the conditional derivative of every layer k > l, its noise z~_k tied to the
hard logits a_k(b_{k-1}), as the TF reference's per-layer ("quadratic") estimator does. Then
d f_l(z)/d theta - d f_l(z~)/d theta = sum_{k >= l} backprop_{T_qk}( d f_l/d z_k (1 - dz~_k/da_k) ),
while only score_l multiplies f_l(z~): nothing cancels the extra terms' expectation, and the
estimator is biased from two stochastic layers up (`rebar-np unbiased --model rebar --n-layer 2
--condition-above` shows it). It exists to reproduce the reference, not to be used.

aux parameters: ``baseline.*`` (rebar_np.model.baseline), ``psi.<q tensor>`` (1,) and,
for dynamic_rebar, ``tau`` (1,). rebar keeps lambda = options["temperature"].
"""
import numpy as np

from ..kernels.dispatch import K, empty_like, zeros
from ..model.baseline import baseline_backward, baseline_forward, init_baseline
from ..model.relaxed import relaxed_pass
from ..model.sbn import (hard_pass, hard_pass_at, is_recognition, score_function_gradient,
                         score_function_surrogate, transform_backward, transform_tangent, zeros_like)
from . import Estimate, EstimatorError, merge_options, prepare_noise

DEFAULT_OPTIONS = {"temperature": 0.5, "relaxation": "muprop", "joint": False, "condition_above": False}
TRAIN_TEMPERATURE = False


def check_options(options):
    if options["relaxation"] not in ("muprop", "concrete"):
        raise EstimatorError(f"unknown relaxation {options['relaxation']!r}; choose muprop or concrete")
    if not options["temperature"] > 0:
        raise EstimatorError(f"temperature must be positive, got {options['temperature']}")
    if options.get("joint") and options.get("condition_above"):
        raise EstimatorError("condition_above is an option of the per-layer estimator; the joint one already "
                             "conditions every layer")


def init_aux(model, seed=0, dtype=np.float32, options=None, train_temperature=TRAIN_TEMPERATURE):
    options = merge_options(DEFAULT_OPTIONS, options)
    check_options(options)
    aux = init_baseline(model, np.random.default_rng(seed), dtype)
    for name in model.param_shapes():
        if is_recognition(name):
            aux["psi." + name] = np.zeros(1, dtype)       # eta = 2 sigma(0) = 1
    if train_temperature:
        aux["tau"] = np.array([np.log(options["temperature"])], dtype)
    return aux


def temperature(aux, options):
    """lambda: exp(tau) when it is trained (dynamic_rebar), else the fixed option."""
    return float(np.exp(aux["tau"][0])) if "tau" in aux else float(options["temperature"])


def eta_of(aux, name):
    """eta = 2 sigma(psi), as a Python float (a NumPy float64 would promote float32 arrays)."""
    return float(2.0 / (1.0 + np.exp(-float(aux["psi." + name][0]))))


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    return rebar_estimate(model, params, aux, x, u, rng, merge_options(DEFAULT_OPTIONS, options))


def rebar_estimate(model, params, aux, x, u, rng, options):
    check_options(options)
    train_tau = "tau" in aux
    improved = options["relaxation"] == "muprop"
    lam = temperature(aux, options)
    B, L, nl = x.shape[0], model.n_layer, model.nonlinear
    # the generative gradient; each q tensor's G_k is written per layer below, with its control variate
    u, z0, hp, h0, c, hidden, grads = hard_part(model, params, aux, x, u, rng, recognition=False)
    eta = {k: eta_of(aux, k) for k in params if is_recognition(k)}
    dlogq = -(hp.f - c) / B                                  # the score part's weight, -(f - c) / B

    # Per layer (default): switch layer l, its own z_l and score_l. Joint: one relaxed
    # pass with every layer relaxed, every layer's z_k and the summed score.
    # condition_above: the TF reference's per-layer estimator, whose conditional path also lets
    # the noise of every layer k > l carry its conditional derivative (biased from two layers up);
    # then T_qk's E collects d f_l / d z_k from every switch layer l <= k (`above`).
    sums, per_layer = {}, []       # sums: (|G_k|^2, <G_k, E_k>) per q tensor, for the variance objective
    joint_rp = relaxed_pass(model, params, x, hp, z0, 0, lam, improved, train_tau) if options["joint"] else None
    above, above_dot = [None] * L, [None] * L
    for l in range(L):
        q = hp.layers[l]
        rp = joint_rp or relaxed_pass(model, params, x, hp, z0, l, lam, improved, train_tau)
        g_z, g_z_dot = rp.g_z[l], rp.g_z_dot[l] if train_tau else None
        if above[l] is not None:
            g_z, g_z_dot = g_z + above[l], g_z_dot + above_dot[l] if train_tau else None
        if options["condition_above"]:
            for k in range(l + 1, L):
                above[k] = rp.g_z[k] if above[k] is None else above[k] + rp.g_z[k]
                if train_tau:
                    above_dot[k] = rp.g_z_dot[k] if above_dot[k] is None else above_dot[k] + rp.g_z_dot[k]
        m = 1.0 - K.dz_cond_dlogits(q.a, u[l], q.s)          # (dz - dz~)/da_l, with dz/da = 1
        score_da = q.s - q.sig                               # d log q(b_l) / d a_l
        dA = dlogq[:, None] * score_da                        # -(1/B) A's dL/da_l: -(f - c)(b_l - sigma(a_l)) / B
        dE = g_z * m - rp.f[:, None] * score_da              # E's dL/da_l
        tangents = recognition_gradient(params, grads, f"q{l}", q.cache, nl, dA, dE, eta, B, sums, train_tau)
        per_layer.append((rp, g_z_dot, m, score_da, tangents))

    # tuning gradients of V = mean_j G_j^2
    aux_grads = zeros_like(aux)
    P, V = variance_and_eta_grads(grads, sums, eta, B, aux_grads)
    dc = zeros(B, np.float64, like=x)
    dtau = 0.0
    for rp, g_z_dot, m, score_da, (a_dot_G, a_dot_eG) in per_layer:
        dc += (2.0 / (P * B)) * K.per_example_dot(score_da, a_dot_G, 1)
        if train_tau:
            w = g_z_dot * m - rp.f_dot[:, None] * score_da
            dtau += -(2.0 / (P * B)) * K.dot(a_dot_eG, w)
    baseline_backward(aux, aux_grads, h0, hidden, dc.astype(c.dtype))
    if train_tau:
        aux_grads["tau"][0] = dtau

    frozen = {"b": hp.b, "signal": hp.f - c, "f_l": [rp.f for rp, _, _, _, _ in per_layer], "z0": z0,
              "a": [q.a for q in hp.layers]}
    stats = {"temperature": lam, "eta_mean": sum(eta.values()) / len(eta), "variance_objective": V}
    return Estimate(grads, aux_grads, hp.f, frozen=frozen, stats=stats)


def recognition_gradient(params, grads, name, cache, nonlinear, dA, dE, eta, B, sums, with_eta):
    """Write G_k = A'_k - (eta_k / B) E_k into grads for every tensor k of T_name, where
    A'_k = backprop_{T_name}(dA)_k (the score part, its -1/B included) and E_k = backprop_{T_name}(dE)_k;
    record (|G_k|^2, <G_k, E_k>) in sums[k]; return the logit tangents (a_dot_G, a_dot_eG) of
    logit_tangents (a_dot_eG None unless with_eta).

    A linear transform a = h W + c needs neither E_W nor the tangent's product h G_W when the
    batch is small (gram_pays). Backprop is linear in dL/da, so with D = dA - (eta_W / B) dE

        G_W = h^T D,   G_c = sum_n dA - (eta_c / B) sum_n dE,   E_c = sum_n dE,

    and the rest follows from the Gram matrix h h^T (kernels.gram_tangent), Y = h h^T D = h G_W:

        |G_W|^2 = <h^T D, h^T D> = <D, Y>,   <G_W, E_W> = <h^T D, h^T dE> = <dE, Y>,
        a_dot_G = Y + G_c,   a_dot_eG = eta_W Y + eta_c G_c.

    Otherwise (nonlinear, or a large batch) A' and E are backpropagated into the gradients and
    combined by apply_control_variates, and logit_tangents gives the tangents.
    """
    if not nonlinear and gram_pays(B, params[name + ".W"].shape):
        (h,) = cache
        W, bias = name + ".W", name + ".c"
        eta_W, eta_c = eta[W], eta[bias]
        D = dA - (eta_W / B) * dE
        K.dense_backward(h, params[W], D, grads[W], grads[bias], False, accumulate=False)  # G_W; sum_n D
        E_c = dE.sum(axis=0)
        G_c = grads[bias]
        G_c += ((eta_W - eta_c) / B) * E_c                  # sum_n D -> sum_n dA - (eta_c / B) sum_n dE
        Y = K.gram_tangent(h, D)
        sums[W] = (K.dot(D, Y), K.dot(dE, Y))
        sums[bias] = (K.sum_squares(G_c), K.dot(G_c, E_c))
        return Y + G_c, (eta_W * Y + eta_c * G_c) if with_eta else None
    transform_backward(params, grads, name, cache, dA, nonlinear, False, accumulate=False)
    E = {k: empty_like(v) for k, v in params.items() if k.startswith(name + ".")}   # each written once
    transform_backward(params, E, name, cache, dE, nonlinear, False, accumulate=False)
    sums.update(apply_control_variates(grads, E, eta, B))
    return logit_tangents(params, name, cache, nonlinear, grads, eta, with_eta)


def gram_pays(B, shape):
    """Whether recognition_gradient takes the Gram route for a weight of this (n_in, n_out) shape at
    batch B: it costs B^2 (n_in + n_out) multiply-adds where the other route's E_W and h G_W cost
    2 B n_in n_out and two more passes over W, so below B = 2 n_in n_out / (n_in + n_out)
    (319 for 784 x 200, 200 for 200 x 200)."""
    n_in, n_out = shape
    return B * (n_in + n_out) < 2 * n_in * n_out


def hard_part(model, params, aux, x, u, rng, recognition=True):
    """What every REBAR-family estimate starts from: the noise (drawn when u is None),
    z0 = logistic noise, the hard pass, the baseline c(x) and the score-function part
    of the gradient -(1/B) [A + d log p] with learning signal f - c (recognition=False:
    -(1/B) d log p only, the q tensors left for the caller to write).
    Returns (u, z0, hard pass, h0 = q input, c, the baseline's hidden layer, grads)."""
    u = prepare_noise(model, x, u, rng)
    z0 = [K.logistic_noise(ul) for ul in u]
    hp = hard_pass(model, params, x, z0)
    h0 = model.q_input(x)
    c, hidden = baseline_forward(aux, h0)
    return u, z0, hp, h0, c, hidden, score_function_gradient(model, params, x, hp, hp.f - c, recognition)


def apply_control_variates(grads, E, eta, B):
    """G_k = g_k - (eta_k / B) E_k in place for every tensor k of E. Returns, per k, the sums the
    variance objective needs of the result, (|G_k|^2, <G_k, E_k>), taken in the same pass."""
    return {k: K.subtract_scaled(grads[k], eta[k] / B, E[k]) for k in E}


def variance_and_eta_grads(grads, sums, eta, B, aux_grads):
    """V = (1/P) sum_j G_j^2 and its psi gradients, written into aux_grads["psi.<k>"]:
    G_k = ... - (eta_k / B) E_k, so dV/deta_k = -(2 / (P B)) <G_k, E_k>, and
    eta = 2 sigma(psi) gives deta/dpsi = 2 sigma(psi) (1 - sigma(psi)).
    sums: (|G_k|^2, <G_k, E_k>) of the tensors with a control variate (apply_control_variates);
    the others' |G_k|^2 are summed by V. Returns (P, V), V a function of no arguments: none of
    the tuning gradients needs V's value, which is only logged (Estimate.stat), and the
    generative tensors' sums are a pass over most of the gradient (2-layer linear: 39 us of
    a 2.2 ms step on two cores)."""
    P = sum(g.size for g in grads.values())

    def V():
        return sum(sums[k][0] if k in sums else K.sum_squares(g) for k, g in grads.items()) / P

    for k, (_, products) in sums.items():
        dV_deta = -(2.0 / (P * B)) * products
        e = eta[k] / 2.0                                       # sigma(psi)
        aux_grads["psi." + k][0] = dV_deta * 2.0 * e * (1.0 - e)
    return P, V


def logit_tangents(params, name, cache, nonlinear, grads, eta, with_eta):
    """The tangents of the layer's logits a = T_name(h) along the gradient G and,
    when with_eta, along eta * G (each tensor k scaled by its eta_k), h held fixed.

    Both are linear in the direction. For a linear transform they share the one
    product:  a_dot_G = h G_W + G_c  and  a_dot_eG = eta_W (h G_W) + eta_c G_c,
    so the second costs no matrix product (tested against autodiff, linear and
    nonlinear, in tests/test_autodiff_reference.py). A nonlinear transform runs
    the tangent pass twice.
    """
    if not with_eta:
        return transform_tangent(params, name, cache, None, nonlinear, direction=grads)[0], None
    if nonlinear:
        eta_grads = {k: eta[k] * grads[k] for k in eta if k.startswith(name + ".")}
        return (transform_tangent(params, name, cache, None, nonlinear, direction=grads)[0],
                transform_tangent(params, name, cache, None, nonlinear, direction=eta_grads)[0])
    (h,) = cache
    e2, e1 = np.empty((0, 0), h.dtype), np.empty(0, h.dtype)
    hG = K.dense_tangent(e2, params[name + ".W"], h, grads[name + ".W"], e1)   # h G_W (Numba's BLAS)
    eta_W, eta_c = eta[name + ".W"], eta[name + ".c"]
    G_c = grads[name + ".c"]
    return hG + G_c, eta_W * hG + eta_c * G_c


def conditional_z0(a_now, a0, u, b):
    """The conditional path's noise term z0~ = log(u~ / (1 - u~)) at logits a_now, with r = (u - u0')/(1 - u0')
    (b = 1) or r' = u / u0' (b = 0) frozen at the logits a0 where b was drawn: u~ = u' + r (1 - u')
    or r' u', u' = sigma(-a_now). Equal in value to z0 at a_now = a0; only its derivative differs."""
    uc = np.clip(u.astype(np.float64), K.U_MIN, K.U_MAX)
    up0, up = 1.0 / (1.0 + np.exp(a0.astype(np.float64))), 1.0 / (1.0 + np.exp(a_now.astype(np.float64)))
    ut = np.where(b > 0.5, up + (uc - up0) / (1.0 - up0) * (1.0 - up), uc / up0 * up)
    return (np.log(ut) - np.log1p(-ut)).astype(a_now.dtype)


def surrogate(model, params, aux, x, u, frozen, options=None):
    """Per-tensor functions whose gradients are this estimator's G_k (b, f - c, f_l held fixed):

        generative k:   -(1/B) sum_n [ (f - c) sum_l log q(b_l) + log p(x, b) ]
        q tensor k:     the same  - (eta_k / B) sum_n [ f_l(z) - f_l(z~) - f_l log q(b_l) ]

    where f_l(z~) runs the switch layer on the conditional noise of conditional_z0 (with
    condition_above, every layer from l up, and q_l's term sums those of the switch layers <= l:
    each of them moves with T_ql).
    aux_loss is V itself, recomputed by the estimator (its noise fixed).
    """
    options = merge_options(DEFAULT_OPTIONS, options)
    improved = options["relaxation"] == "muprop"
    lam = temperature(aux, options)
    b, z0 = frozen["b"], frozen["z0"]
    hp = hard_pass_at(model, params, x, b)
    base = score_function_surrogate(model, params, x, b, frozen["signal"])
    B, L = x.shape[0], model.n_layer
    out = {k: base for k in params}
    # conditional noise, a function of each layer's *hard* logits (moving with params)
    z0c_all = [conditional_z0(hp.layers[l].a, frozen["a"][l], u[l], b[l]) for l in range(L)]
    e = []
    for l in range(L):
        if options["joint"]:    # one relaxed ELBO, conditional at every layer, summed score
            f_z = relaxed_pass(model, params, x, hp, z0, 0, lam, improved, False).f
            f_zc = relaxed_pass(model, params, x, hp, z0c_all, 0, lam, improved, False).f
        else:                   # switch layer l, conditional at layer l only (condition_above: and above)
            z0c = list(z0)
            for k in range(l, L if options["condition_above"] else l + 1):
                z0c[k] = z0c_all[k]
            f_z = relaxed_pass(model, params, x, hp, z0, l, lam, improved, False).f
            f_zc = relaxed_pass(model, params, x, hp, z0c, l, lam, improved, False).f
        e.append(float(np.sum(f_z - f_zc) - np.sum(frozen["f_l"][l] * hp.logq[l])))
    for l in range(L):     # q_l's control variate: e_l (condition_above: and every e_k below, k < l)
        e_l = sum(e[:l + 1]) if options["condition_above"] else e[l]
        for k in params:
            if k.startswith(f"q{l}."):
                out[k] = base - eta_of(aux, k) / B * e_l
    V = estimate(model, params, aux, x, u, options=options).stat("variance_objective")
    return out, V
