"""REBAR's relaxed passes: the relaxed ELBO of one switch layer, its reverse pass
down to the switch layer's logistic sample, and the temperature tangents of both.

Notation (docs/math.md, sections "Noise and samples" to "The variance objective and its gradients";
layers numbered from 0): for switch layer l the
relaxed ELBO f_l uses the hard samples b_k below l and relaxed samples from l up,

    a_k = T_qk(h_k),   h_l = 2 b_{l-1} - 1 (or x - mean_x),   h_k = 2 s_{k-1} - 1 for k > l
    z_k = a_k + z0_k,  t_k = z_k / lam + c a_k,  s_k = sigma(t_k),  c = lam / (lam + 1) (improved) or 0
    f_l = log p(x, b_{<l}, s_{>=l}) - sum_{k<l} log q(b_k | .) - sum_{k>=l} log B(s_k; a_k)

Only three derivatives of f_l are ever needed, and this module computes exactly those.

1. g_z = d f_l / d z_l (B, H), the total derivative with respect to the switch
   layer's logistic sample (and d f_l / d z_k for the layers above, which the
   joint variant uses). REBAR's two relaxed paths (unconditional z_l and
   conditional z~_l) have the same value and differ only in dz/da_l, so

       d f_l(z) / d theta - d f_l(z~) / d theta = backprop_{T_ql}( g_z (1 - dz~/da_l) ),

   which touches only the parameters of T_ql (its input h_l is hard). Neither
   relaxed path's full parameter gradient is needed: what cancels is not computed.
   The reverse pass, top layer down (per example, so dL/df = 1):
       ds_k = d log p / d s_k (generative_backward)  - a_k                    (the -log B(s_k; a_k) term)
       dt_k = ds_k s_k (1 - s_k)
       d f_l / d z_k = dt_k / lam
       k > l:  da_k = dt_k (1/lam + c) - (s_k - sigma(a_k)),   ds_{k-1} += 2 T_qk^T(da_k)

2. df_l / dtau, tau = log lam: a reverse pass gives it for free,
       df_l / dtau = sum_k < dt_k, dt_k/dtau|explicit >,   dt/dtau|explicit = -z / lam + a lam / (lam + 1)^2
   (the second term only for the improved relaxation).

3. dg_z / dtau: the temperature derivative of a *gradient*. It is obtained by
   forward mode through the forward and the reverse pass above: every primal
   quantity q gets a tangent q_dot = dq/dtau, propagated alongside it:
       forward:  a_l_dot = 0;  s_k_dot = s_k (1 - s_k) [a_k_dot (1/lam + c) + dt_k/dtau|explicit];
                 a_k_dot = T_qk'(2 s_{k-1}_dot) for k > l;  generative logits likewise from 2 s_k_dot
       reverse:  each line's tangent by the product rule, e.g.
                 dt_k_dot = ds_k_dot s_k (1 - s_k) + ds_k (1 - 2 s_k) s_k_dot,
                 da_k_dot = dt_k_dot (1/lam + c) + dt_k (-1/lam + lam/(lam+1)^2) - (s_k_dot - sigma'(a_k) a_k_dot),
                 (1 - h^2)_dot = -2 h h_dot inside nonlinear transforms,
                 g_z_dot = dt_l_dot / lam - dt_l / lam           (d(1/lam)/dtau = -1/lam).
   The kernels' *_tangent functions are these lines, one per primal kernel.
"""
from dataclasses import dataclass

import numpy as np

from ..kernels.dispatch import K, full, zeros, zeros_like
from .sbn import (QLayer, generative_forward, generative_backward, transform_backward, transform_forward,
                  transform_backward_input, transform_backward_input_tangent, transform_tangent)


@dataclass
class RelaxedPass:
    """One switch layer's relaxed ELBO and the derivatives REBAR needs (lists are indexed by
    layer; entries below the switch layer are None)."""
    l: int
    layers: list            # QLayer (a_k, s_k, cache, sigma(a_k)) for k >= l
    f: np.ndarray           # (B,) f_l
    g_z: list               # g_z[k] = d f_l / d z_k (B, H) for k >= l (REBAR per layer uses k = l only)
    f_dot: np.ndarray = None     # (B,) d f_l / d tau          (when tangents were asked for)
    g_z_dot: list = None         # d g_z[k] / d tau


def relaxed_pass(model, params, x, hp, z0, l, lam, improved, tangent, grads=None, dlogits_l=None, accumulate=True,
                 weight=1.0):
    """f_l, g_z and, when tangent, their temperature derivatives, for switch layer l.

    hp: the hard pass (its samples, logits and per-term log-likelihoods are reused
    below the switch layer, where f_l and f agree term by term); z0: logistic noise.
    grads: when given (no tangents), also accumulate the reparameterised gradient
    sum_n d f_l / d theta of the parameters above the switch layer's logits into
    it, and, with dlogits_l = the per-example weight of the switch layer's own
    logits path (e.g. for l = 0: the concrete estimator), of T_ql's parameters.
    accumulate=False writes that gradient instead (grads may arrive uninitialised); only for
    l = 0 with dlogits_l, where it covers every parameter.
    The terms below the switch layer are hard and not differentiated.
    weight: the reverse pass differentiates weight * f_l (every example alike; no tangents): with
    weight = -1/B the gradient written is the loss gradient -(1/B) sum_n d f_l / d theta itself, and
    no pass over it is needed to scale it; g_z is then d(weight f_l)/dz too.
    """
    if tangent and weight != 1.0:
        raise ValueError("relaxed_pass weighs f_l (weight != 1) only without tangents")
    if not accumulate and not (l == 0 and dlogits_l and grads is not None):
        raise ValueError("relaxed_pass writes its gradient (accumulate=False) only from layer 0 with dlogits_l")
    L, nl = model.n_layer, model.nonlinear
    B = x.shape[0]
    ones = full(B, weight, hp.f.dtype, like=hp.f)           # dL/df_l per example
    # ---- forward: relaxed from layer l up ------------------------------------
    layers, samples, logq = [None] * L, list(hp.b), [None] * L
    for k in range(l, L):
        if k == l:   # the switch layer's input is hard, so its logits are the hard pass's
            a, cache = hp.layers[l].a, hp.layers[l].cache
        else:
            a, cache = transform_forward(params, f"q{k}", 2.0 * samples[k - 1] - 1.0, nl)
        s = K.relaxed_sample_forward(a, z0[k], lam, improved)
        ll, sig = K.bernoulli_loglik_forward(s, a)
        layers[k], samples[k], logq[k] = QLayer(a, s, cache, sig), s, ll
    logp, pp = generative_forward(model, params, x, samples, from_layer=l,
                                  prior=(hp.pp.prior_logits, hp.pp.prior_cache))
    f = logp + sum(hp.pp.terms[k] - hp.logq[k] for k in range(l)) - sum(logq[k] for k in range(l, L))

    # ---- forward tangents in tau ----------------------------------------------
    if tangent:
        e2 = np.empty((0, 0), dtype=f.dtype)
        s_dot, t_exp, a_dot, qt = [None] * L, [None] * L, [None] * L, [None] * L
        for k in range(l, L):
            q = layers[k]
            if k > l:
                a_dot[k], qt[k] = transform_tangent(params, f"q{k}", q.cache, 2.0 * s_dot[k - 1], nl)
            s_dot[k], t_exp[k] = K.relaxed_sample_tangent(q.s, q.a, z0[k], e2 if k == l else a_dot[k],
                                                          lam, improved)
        ap_dot, pt = [None] * L, [None] * L
        for k in range(l, L):
            ap_dot[k], pt[k] = transform_tangent(params, f"p{k}", pp.caches[k], 2.0 * s_dot[k], nl)

    # ---- reverse: d f_l / d s_k from the generative terms ----------------------
    if not tangent:
        ds = generative_backward(model, params, grads, x, samples, pp, ones, True, accumulate)
    else:
        ds, ds_dot = [None] * L, [None] * L
        ds[L - 1] = K.bernoulli_loglik_backward_sample(pp.prior_logits, ones)
        ds_dot[L - 1] = zeros_like(ds[L - 1])      # the prior's logits do not depend on tau
        for k in range(L - 1, l - 1, -1):
            y = model.target(x) if k == 0 else samples[k - 1]
            y_dot = s_dot[k - 1] if k - 1 >= l else e2
            da = K.bernoulli_loglik_backward(y, pp.sigs[k], ones)
            da_dot = K.bernoulli_loglik_backward_tangent(y_dot, pp.sigs[k], ap_dot[k], ones)
            dh, dh_dot = transform_backward_input_tangent(params, f"p{k}", pp.caches[k], pt[k], da, da_dot, nl)
            ds[k] += 2.0 * dh
            ds_dot[k] += 2.0 * dh_dot
            if k - 1 >= l:                                # s_{k-1} is the value this term scores
                ds[k - 1] = K.bernoulli_loglik_backward_sample(pp.logits[k], ones)
                ds_dot[k - 1] = K.bernoulli_loglik_backward_sample(ap_dot[k], ones)

    # ---- reverse through the recognition side, top down to the switch layer ----
    inv_lam = 1.0 / lam
    c = lam / (lam + 1.0) if improved else 0.0
    dc_dtau = lam / (lam + 1.0) ** 2 if improved else 0.0
    f_dot = zeros(B, np.float64, like=f) if tangent else None
    g_z, g_z_dot = [None] * L, [None] * L
    for k in range(L - 1, l - 1, -1):
        q = layers[k]
        ds[k] -= q.a if weight == 1.0 else weight * q.a          # -log B(s_k; a_k), d/ds_k = -a_k
        dt = K.sigmoid_backward(q.s, ds[k])                       # dt_k = ds_k s_k (1 - s_k)
        g_z[k] = dt * inv_lam                                     # dt/dz = 1/lam
        if tangent:
            if k > l:
                ds_dot[k] -= a_dot[k]
            dt_dot = K.sigmoid_backward_tangent(q.s, s_dot[k], ds[k], ds_dot[k])
            f_dot += K.per_example_dot(dt, t_exp[k], 1)
            g_z_dot[k] = (dt_dot - dt) * inv_lam                  # d(1/lam)/dtau = -1/lam
        if k > l:
            da = K.relaxed_logits_backward(dt, q.s, q.sig, inv_lam + c, weight)
            if tangent:
                da_dot = K.relaxed_logits_backward_tangent(dt, dt_dot, s_dot[k], q.sig, a_dot[k],
                                                           inv_lam + c, -inv_lam + dc_dtau)
                dh, dh_dot = transform_backward_input_tangent(params, f"q{k}", q.cache, qt[k], da, da_dot, nl)
                ds_dot[k - 1] += 2.0 * dh_dot
            elif grads is not None:
                dh = transform_backward(params, grads, f"q{k}", q.cache, da, nl, True, accumulate)
            else:
                dh = transform_backward_input(params, f"q{k}", q.cache, da, nl)
            ds[k - 1] += 2.0 * dh
        elif grads is not None and dlogits_l:   # the switch layer's logits (input hard, not differentiated)
            da = K.relaxed_logits_backward(dt, q.s, q.sig, inv_lam + c, weight)
            transform_backward(params, grads, f"q{k}", q.cache, da, nl, False, accumulate)
    return RelaxedPass(l, layers, f, g_z, f_dot.astype(f.dtype) if tangent else None,
                       g_z_dot if tangent else None)


@dataclass
class MeanFieldPass:
    """The deterministic mean-field pass of MuProp and its total derivatives."""
    layers: list            # QLayer (a_l, mu_l = sigma(a_l), cache, sigma(a_l)) per layer
    f: np.ndarray           # (B,) f(mu) = log p(x, mu) - sum_l log B(mu_l; a_l)
    df_dmu: list            # df_dmu[l] = d f(mu) / d mu_l (B, H): the total derivative, through every
                            # later use of mu_l (its own -log B term, the generative terms, a_{l+1})


def mean_field_pass(model, params, x, derivatives=True):
    """f(mu) and d f(mu) / d mu_l for mu_0 = sigma(T_q0(x - mean_x)), mu_l = sigma(T_ql(2 mu_{l-1} - 1)).

    Reverse pass, top layer down (per example):
        dmu_l = d log p / d mu_l (generative_backward) - a_l        (the -log B(mu_l; a_l) term's value)
        da_l  = dmu_l mu_l (1 - mu_l) - (mu_l - sigma(a_l))        (the second part is 0: mu_l = sigma(a_l))
        dmu_{l-1} += 2 T_ql^T(da_l)
    The derivative of mu_l itself through a_l is not part of d f / d mu_l (the total derivative
    with respect to the value mu_l), exactly as MuProp's f'(mu_l) is defined.
    """
    from .sbn import log_q_layers, mean_sampler, recognition_forward
    L, nl = model.n_layer, model.nonlinear
    layers = recognition_forward(model, params, model.q_input(x), mean_sampler)
    logq = log_q_layers(layers)
    mus = [q.s for q in layers]
    logp, pp = generative_forward(model, params, x, mus)
    if not derivatives:
        return MeanFieldPass(layers, logp - sum(logq), None)
    ones = full(x.shape[0], 1.0, logp.dtype, like=logp)
    ds = generative_backward(model, params, None, x, mus, pp, ones, True)
    df_dmu = [None] * L
    for l in range(L - 1, -1, -1):
        q = layers[l]
        ds[l] -= q.a
        df_dmu[l] = ds[l]
        if l > 0:
            da = K.sigmoid_backward(q.s, ds[l])          # mu_l = sigma(a_l); the log B term's d/da is 0 here
            ds[l - 1] += 2.0 * transform_backward_input(params, f"q{l}", q.cache, da, nl)
    return MeanFieldPass(layers, logp - sum(logq), df_dmu)
