"""The free-form part r(z) of RELAX's control variate (Grathwohl et al. 2018): a small tanh network.

    s = sigma(z),   pre = s W1 + ctx V1 + c1,   h = tanh(pre),   r(z; ctx) = h w2 + c2

The network sees sigma(z), not z: a logistic sample has standard deviation pi/sqrt(3) plus its
logit, so z W1 would drive most tanh units into saturation (r piecewise constant in z, rho
near 0). Measured on the 2-layer linear SBN (rebar-np variance, 4200 steps): fed z, relax's
advantage over dynamic_rebar faded and it ended slightly above it; fed sigma(z), it stays
below it throughout.

z: (N, n) logistic samples of one stochastic layer; ctx: (N, m) an optional context that does
not depend on z (for an SBN layer: the data and the hard samples below it, as in the RELAX
authors' code, so r can be specific to each example); W1 (n, M), V1 (m, M) (only with a
context), c1 (M,), w2 (M,), c2 (1,), M the width (an option). The output weights are stored
as a vector w2 so that the network is r = h . w2 + c2 per row.

RELAX needs three things of it:

1. the value r (N,) (control_net_forward);
2. its input gradient rho = dr/dz (N, n), the control variate's reparameterised
   derivative (control_net_input_grad):
       rho = sigma'(z) * [((1 - h^2) * w2) W1^T],   sigma'(z) = s (1 - s);
3. to train r on the variance objective, the parameter gradient of

       S(phi) = sum_n [ <v_n, rho(z_n)> - c_n r(z_n) ]          v: (N, n), c: (N,) held fixed,

   which is how a RELAX gradient estimate depends on phi (rebar_np.estimators.relax,
   rebar_np.estimators.bernoulli.relax). The first part is the parameter derivative of an input
   derivative: forward mode along v, i.e. along s_dot = v' = sigma'(z) v (sigma'(z) does not
   depend on phi): pre_dot = v' W1, h_dot = (1 - h^2) pre_dot, r_dot = h_dot . w2 = <v, rho>,
   then the reverse pass of that tangent (control_net_tangent_backward):
       dS/dc2 = -sum_n c_n
       dS/dw2 = sum_n (h_dot_n - c_n h_n)
       dS/dpre_dot = (1 - h^2) w2                       (through h_dot = (1 - h^2) pre_dot)
       dS/dpre = [ -c_n w2  - 2 h pre_dot w2 ] (1 - h^2)  (through r, and through (1 - h^2) in h_dot)
       dS/dW1 = s^T dS/dpre + v'^T dS/dpre_dot,   dS/dV1 = ctx^T dS/dpre,   dS/dc1 = sum_n dS/dpre
   (the context is held fixed: it has no tangent).
"""
import numpy as np

from ..kernels.dispatch import K

DEFAULT_WIDTH = 32


def init_control_net(n_in, width, rng, dtype, prefix="relax", n_context=0):
    """W1 ~ N(0, 1 / n_in), V1 ~ N(0, 1 / n_context) (when n_context > 0), c1 = 0, w2 = 0, c2 = 0.

    With w2 = 0, r = 0 and rho = 0 exactly, so RELAX starts exactly at dynamic REBAR (same estimate
    for the same noise and the same REBAR parts). Training still moves every parameter: dS/dw2 =
    sum_n (h_dot_n - c_n h_n) is not 0, and once w2 is not, neither are dS/dW1, dS/dV1, dS/dc1."""
    net = {f"{prefix}.W1": (rng.standard_normal((n_in, width)) / np.sqrt(n_in)).astype(dtype)}
    if n_context:
        net[f"{prefix}.V1"] = (rng.standard_normal((n_context, width)) / np.sqrt(n_context)).astype(dtype)
    net.update({
        f"{prefix}.c1": np.zeros(width, dtype),
        f"{prefix}.w2": np.zeros(width, dtype),
        f"{prefix}.c2": np.zeros(1, dtype),
    })
    return net


def control_net_forward(aux, prefix, z, context=None):
    """r(z; ctx) = tanh(sigma(z) W1 + ctx V1 + c1) . w2 + c2. Returns (r (N,), cache = (s, h, ctx))."""
    z = np.ascontiguousarray(z)
    s = K.sigmoid_forward(z)
    pre = K.dense_forward(s, aux[prefix + ".W1"], aux[prefix + ".c1"])
    if context is not None:
        context = np.ascontiguousarray(context, dtype=z.dtype)
        pre += context @ aux[prefix + ".V1"]
    h = K.tanh_forward(pre)
    r = h @ aux[prefix + ".w2"] + aux[prefix + ".c2"][0]
    return r.astype(z.dtype, copy=False), (s, h, context)


def control_net_backward(aux, aux_grads, prefix, cache, dr, need_dz=False):
    """Accumulate dL/dphi given dL/dr (N,): dL/dw2 += h^T dr, dL/dc2 += sum dr, dL/dpre = dr w2 (1 - h^2),
    dL/dW1 += s^T dL/dpre, dL/dV1 += ctx^T dL/dpre, dL/dc1 += sum dL/dpre. Returns dL/dz when need_dz."""
    s, h, context = cache
    aux_grads[prefix + ".w2"] += h.T @ dr
    aux_grads[prefix + ".c2"][0] += dr.sum()
    dpre = K.tanh_backward(h, np.ascontiguousarray(dr[:, None] * aux[prefix + ".w2"][None, :]))
    if context is not None:
        aux_grads[prefix + ".V1"] += context.T @ dpre
    ds = K.dense_backward(s, aux[prefix + ".W1"], dpre, aux_grads[prefix + ".W1"], aux_grads[prefix + ".c1"],
                          need_dz)
    return K.sigmoid_backward(s, ds) if need_dz else ds            # dL/dz = dL/ds sigma'(z)


def control_net_input_grad(aux, prefix, cache):
    """rho = dr/dz = sigma'(z) [((1 - h^2) w2) W1^T], (N, n): the backward of r with dL/dr = 1 and no parameter
    gradients."""
    s, h, _ = cache
    w2 = aux[prefix + ".w2"]
    dpre = K.tanh_backward(h, np.ascontiguousarray(np.broadcast_to(w2, h.shape)))
    return K.sigmoid_backward(s, K.dense_backward_input(aux[prefix + ".W1"], dpre))


def control_net_tangent_backward(aux, aux_grads, prefix, cache, v, c, scale=1.0):
    """Accumulate scale * dS/dphi into aux_grads, S = sum_n [ <v_n, rho(z_n)> - c_n r(z_n) ] (module docstring)."""
    s, h, context = cache
    w2 = aux[prefix + ".w2"]
    W1 = aux[prefix + ".W1"]
    v = np.ascontiguousarray(K.sigmoid_backward(s, v), dtype=h.dtype)  # v' = sigma'(z) v: the tangent of s along z_dot = v
    one_minus_h2 = 1.0 - h * h
    pre_dot = v @ W1                                   # tangent of pre along s_dot = v'
    h_dot = one_minus_h2 * pre_dot
    aux_grads[prefix + ".c2"][0] += scale * -float(np.sum(c, dtype=np.float64))
    aux_grads[prefix + ".w2"] += scale * (h_dot.sum(axis=0) - c @ h)
    dpre_dot = one_minus_h2 * w2                       # through h_dot's factor pre_dot
    dpre = (-c[:, None] * w2 - 2.0 * h * pre_dot * w2) * one_minus_h2
    aux_grads[prefix + ".W1"] += scale * (s.T @ dpre + v.T @ dpre_dot)
    aux_grads[prefix + ".c1"] += scale * dpre.sum(axis=0)
    if context is not None:
        aux_grads[prefix + ".V1"] += scale * (context.T @ dpre)
