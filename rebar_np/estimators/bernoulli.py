"""Gradient estimators for one layer of independent Bernoulli variables, for your own models.

    b ~ prod_j Bernoulli(b_j; sigma(a_j)),   a: logits of shape (..., H)
    objective: E_b[f(b)] for a function f you supply

Each estimator returns an unbiased estimate of d E[f(b)] / d a, the *ascent* direction,
with the shape of a. Its randomness is explicit: the uniform noise u has the shape of a
((K,) + a.shape for the K-sample estimators), and the estimate is a deterministic function
of (a, u). f maps b of shape (..., H) to values of shape (...) and must accept extra
leading axes (the K-sample estimators and the antithetic pairs call it on stacked
samples). Only b is passed to f: f must not depend on a itself.

Noise conventions (docs/math.md, section "Noise and samples"; the same as the SBN estimators'):

    z = a + log u - log(1 - u)   (logistic sample),   b = 1[z > 0] = 1[u > sigma(-a)]
    antithetic partner:  b~ = 1[a - log u + log(1 - u) > 0]  (noise 1 - u)

| function | estimate of d E[f] / d a |
|---|---|
| reinforce(f, a, u, baseline) | (f(b) - baseline) (b - sigma(a)) |
| reinforce_loo(f, a, u) | (1/K) sum_k (f(b_k) - mean_{j != k} f(b_j)) (b_k - sigma(a)), K samples |
| arm(f, a, u) | (f(b) - f(b~)) (u - 1/2)  (Yin and Zhou 2019) |
| disarm(f, a, u) | 1/2 (f(b) - f(b~)) (b - b~) sigma(|a|)  (Dong et al. 2020: ARM with u integrated out given b, b~) |
| vimco(f, a, u) | of E[log (1/K) sum_k exp f(b_k)] instead: sum_k (L - L_{-k}) (b_k - sigma(a)) (Mnih and Rezende 2016) |
| rebar(f, df_ds, a, u, ...) | [f(b) - eta f(s~)] (b - sigma(a)) + eta g_z (1 - dz~/da)  (Tucker et al. 2017) |
| relax(f, df_ds, a, u, net, ...) | rebar with eta f(s) replaced by eta f(s) + r(z), r a tanh network (Grathwohl et al. 2018) |

The relaxation-based estimators also need df_ds(s), the derivative of f at a continuous
s in (0, 1)^H (same shape as s); there s = sigma(z / lam + a lam / (lam + 1)) (the "muprop"
relaxation, default) or sigma(z / lam) ("concrete"), g_z = df/ds s (1 - s) / lam, and z~ is
REBAR's conditional sample given b, equal to z in value, with dz~/da = 1 - u'/u (b = 1) or
1 - (1 - u')/(1 - u) (b = 0), u' = sigma(-a) (rebar_np.kernels.dz_cond_dlogits).

The SBN estimators (rebar_np.estimators.arm, disarm, vimco, reinforce_loo, relax) apply
these same formulas layer by layer; the pieces they share are the *_logit_gradient and
*_signals functions below.

Example (the README has a longer one, with every estimator, which tests/test_bernoulli.py runs):

    import numpy as np
    from rebar_np.estimators import bernoulli as bern
    target = np.array([0.45, 0.2, 0.8])
    f = lambda b: -np.sum((b - target) ** 2, axis=-1)              # any function of binary vectors
    a = np.zeros(3)
    rng = np.random.default_rng(0)
    for step in range(2000):                                        # gradient ascent on E[f(b)]
        a += 0.1 * bern.disarm(f, a, rng.random(3))
    # sigma(a) -> (0, 0, 1) for the coordinates with target < 1/2 and > 1/2
"""
from dataclasses import dataclass

import numpy as np

from ..kernels.dispatch import K
from ..model.control_net import (DEFAULT_WIDTH, control_net_forward, control_net_input_grad,  # noqa: F401
                                 control_net_tangent_backward, init_control_net)

RELAXATIONS = ("muprop", "concrete")


class BernoulliError(ValueError):
    """Shapes or settings that do not fit (one-line message)."""


# --------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------
def _rows(v):
    """(..., H) -> contiguous (N, H) view for the 2-D kernels."""
    v = np.ascontiguousarray(v)
    return v.reshape(-1, v.shape[-1])


def _check(a, u, lead=()):
    a = np.asarray(a)
    if a.ndim < 1:
        raise BernoulliError("logits a must have at least one axis (the variables)")
    u = np.asarray(u, dtype=a.dtype if a.dtype.kind == "f" else np.float64)
    if u.shape != tuple(lead) + a.shape:
        raise BernoulliError(f"noise u must have shape {tuple(lead) + a.shape}, got {u.shape}")
    a = a.astype(u.dtype, copy=False)
    return a, u


def logistic(u):
    """z0 = log u - log(1 - u) (u clipped into [1e-8, 1 - 1e-8]), any shape."""
    return K.logistic_noise(_rows(u)).reshape(np.shape(u))


def hard_sample(a, u):
    """b = 1[a + log u - log(1 - u) > 0], a Bernoulli(sigma(a)) sample (a broadcast against u)."""
    a = np.broadcast_to(a, np.shape(u))
    return K.hard_sample_forward(_rows(a), _rows(logistic(u))).reshape(np.shape(u))


def sigmoid(a):
    return K.sigmoid_forward(_rows(a)).reshape(np.shape(a))


def score(a, b):
    """d log Bernoulli(b; sigma(a)) / d a = b - sigma(a)."""
    return b - sigmoid(np.broadcast_to(a, np.shape(b)))


# --------------------------------------------------------------------------
# Formulas shared with the SBN estimators
# --------------------------------------------------------------------------
def arm_logit_gradient(f_diff, u):
    """ARM: (f(b) - f(b~)) (u - 1/2), f_diff = f(b) - f(b~) of shape (...), u (..., H)."""
    return f_diff[..., None] * (u - 0.5)


def disarm_logit_gradient(f_diff, a, b, b_anti):
    """DisARM: 1/2 (f(b) - f(b~)) (b - b~) sigma(|a|).

    This is E[ARM | b, b~]: the pair differs in coordinate j only when u_j falls outside
    [sigma(-|a_j|), sigma(|a_j|)], where E[u_j - 1/2 | b_j, b~_j] = (b_j - b~_j) sigma(|a_j|) / 2,
    and it is 0 where they agree (the interval is symmetric about 1/2).
    """
    return (0.5 * f_diff)[..., None] * (b - b_anti) * sigmoid(np.abs(a))


def _logsumexp_without_self(F, replace=None):
    """log sum_{j != k} exp F[..., j] (replace=None), or log(sum_{j != k} exp F_j + exp replace[..., k]),
    for every k, stably (each term is its own log-sum-exp, no subtraction of exponentials)."""
    K_ = F.shape[-1]
    G = np.broadcast_to(F[..., None, :], F.shape + (K_,)).copy()      # G[..., k, j] = F[..., j]
    diag = np.arange(K_)
    G[..., diag, diag] = -np.inf if replace is None else replace
    m = np.max(G, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(G - m), axis=-1, keepdims=True)))[..., 0]


def iw_bound_and_weights(F):
    """L = log (1/K) sum_k exp F_k and the normalised weights w_k = exp F_k / sum_j exp F_j, over the last axis."""
    F = np.asarray(F, dtype=np.float64)
    m = np.max(F, axis=-1, keepdims=True)
    e = np.exp(F - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return (m + np.log(s / F.shape[-1]))[..., 0], e / s


def vimco_signals(F):
    """VIMCO's per-sample learning signals for the K-sample bound L = log (1/K) sum_k exp F_k:

        signal_k = L - L_{-k},   L_{-k} = log (1/K) (sum_{j != k} exp F_j + exp(mean_{j != k} F_j))

    (sample k replaced by the geometric mean of the others). Returns (L, signals, w), w the
    normalised weights; F has K >= 2 samples on the last axis.
    """
    F = np.asarray(F, dtype=np.float64)
    K_ = F.shape[-1]
    L, w = iw_bound_and_weights(F)
    geo = (np.sum(F, axis=-1, keepdims=True) - F) / (K_ - 1)          # mean_{j != k} F_j
    L_minus = _logsumexp_without_self(F, geo) - np.log(K_)
    return L, L[..., None] - L_minus, w


def loo_bound_signals(F):
    """The plain leave-one-out signals for the K-sample bound: signal_k = L - log (1/(K-1)) sum_{j != k} exp F_j
    (the (K-1)-sample bound of the other samples, which does not depend on sample k). Returns (L, signals, w)."""
    F = np.asarray(F, dtype=np.float64)
    K_ = F.shape[-1]
    L, w = iw_bound_and_weights(F)
    return L, L[..., None] - (_logsumexp_without_self(F) - np.log(K_ - 1)), w


def loo_mean_signals(F):
    """f_k - mean_{j != k} f_j over the last axis (the leave-one-out baseline of E[f], Kool et al. 2019)."""
    F = np.asarray(F, dtype=np.float64)
    K_ = F.shape[-1]
    return F - (np.sum(F, axis=-1, keepdims=True) - F) / (K_ - 1)


# --------------------------------------------------------------------------
# Score-function estimators
# --------------------------------------------------------------------------
def reinforce(f, a, u, baseline=0.0):
    """(f(b) - baseline) (b - sigma(a)), baseline a constant (or array of shape (...)) not depending on b."""
    a, u = _check(a, u)
    b = hard_sample(a, u)
    return (np.asarray(f(b)) - baseline)[..., None] * score(a, b)


def _k_samples(f, a, u):
    if u.ndim != a.ndim + 1 or u.shape[0] < 2:
        raise BernoulliError(f"K-sample estimators need noise of shape (K,) + {a.shape} with K >= 2, got {u.shape}")
    a, u = _check(a, u, lead=(u.shape[0],))
    b = hard_sample(a, u)                                   # (K, ..., H)
    F = np.moveaxis(np.asarray(f(b), dtype=np.float64), 0, -1)   # (..., K)
    return a, b, F


def reinforce_loo(f, a, u):
    """(1/K) sum_k (f(b_k) - mean_{j != k} f(b_j)) (b_k - sigma(a)), u of shape (K,) + a.shape, K >= 2."""
    a, b, F = _k_samples(f, a, u)
    sig = np.moveaxis(loo_mean_signals(F), -1, 0)           # (K, ...)
    return np.mean(sig[..., None] * score(a, b), axis=0).astype(a.dtype)


def vimco(f, a, u):
    """Estimate of d E[log (1/K) sum_k exp f(b_k)] / d a (f a log-weight), u of shape (K,) + a.shape, K >= 2:

        sum_k (L - L_{-k}) (b_k - sigma(a))          (vimco_signals)

    If your f depends on a too, add sum_k w_k d f(b_k) / d a with w from iw_bound_and_weights.
    """
    a, b, F = _k_samples(f, a, u)
    _, signals, _ = vimco_signals(F)
    return np.sum(np.moveaxis(signals, -1, 0)[..., None] * score(a, b), axis=0).astype(a.dtype)


# --------------------------------------------------------------------------
# Antithetic estimators
# --------------------------------------------------------------------------
def _antithetic_pair(f, a, u):
    a, u = _check(a, u)
    pair = np.stack([u, 1.0 - u])                            # (2, ..., H): noise u and 1 - u
    b2 = hard_sample(a, pair)
    F = np.asarray(f(b2))
    return a, u, b2[0], b2[1], F[0] - F[1]


def arm(f, a, u):
    """ARM: (f(b) - f(b~)) (u - 1/2), two evaluations of f (the antithetic pair)."""
    a, u, b, b_anti, f_diff = _antithetic_pair(f, a, u)
    return arm_logit_gradient(f_diff, u).astype(a.dtype)


def disarm(f, a, u):
    """DisARM: 1/2 (f(b) - f(b~)) (b - b~) sigma(|a|), the same two evaluations of f as ARM."""
    a, u, b, b_anti, f_diff = _antithetic_pair(f, a, u)
    return disarm_logit_gradient(f_diff, a, b, b_anti).astype(a.dtype)


# --------------------------------------------------------------------------
# Relaxation-based estimators
# --------------------------------------------------------------------------
def relaxed_sample(a, u, temperature=0.5, relaxation="muprop"):
    """s = sigma(z / lam + a lam / (lam + 1)) (muprop) or sigma(z / lam) (concrete), z = a + log u - log(1 - u)."""
    if relaxation not in RELAXATIONS:
        raise BernoulliError(f"unknown relaxation {relaxation!r}; choose muprop or concrete")
    if not temperature > 0:
        raise BernoulliError(f"temperature must be positive, got {temperature}")
    a = np.broadcast_to(a, np.shape(u))
    return K.relaxed_sample_forward(_rows(a), _rows(logistic(u)), float(temperature),
                                    relaxation == "muprop").reshape(np.shape(u))


@dataclass
class RelaxedTerms:
    """What rebar and relax share: samples, the relaxed value and its z-derivative, the conditional path."""
    b: np.ndarray           # hard sample
    z: np.ndarray           # logistic sample a + z0 (equal in value to the conditional z~)
    score: np.ndarray       # b - sigma(a)
    f_b: np.ndarray         # f(b), (...)
    f_s: np.ndarray         # f(s) = f(s~), (...)
    g_z: np.ndarray         # d f(s) / d z = df/ds s (1 - s) / lam
    m: np.ndarray           # 1 - dz~/da: (d f(s(z)) - d f(s(z~))) / da = g_z m


def _relaxed_terms(f, df_ds, a, u, temperature, relaxation):
    a, u = _check(a, u)
    s = relaxed_sample(a, u, temperature, relaxation)
    b = hard_sample(a, u)
    lam = float(temperature)
    z = a + logistic(u)
    g_z = np.asarray(df_ds(s)) * s * (1.0 - s) / lam           # ds/dz = s (1 - s) / lam (both relaxations)
    m = 1.0 - K.dz_cond_dlogits(_rows(a), _rows(u), _rows(b)).reshape(a.shape)
    return a, RelaxedTerms(b, z, score(a, b), np.asarray(f(b)), np.asarray(f(s)), g_z, m)


def rebar(f, df_ds, a, u, eta=1.0, temperature=0.5, relaxation="muprop"):
    """REBAR for one layer:  [f(b) - eta f(s~)] (b - sigma(a)) + eta [d f(s(z))/da - d f(s(z~))/da]
                           = [f(b) - eta f(s)] (b - sigma(a)) + eta g_z (1 - dz~/da)
    (z~ has the value of z, so f(s~) = f(s) and only dz/da differs; see the module docstring)."""
    a, t = _relaxed_terms(f, df_ds, a, u, temperature, relaxation)
    return ((t.f_b - eta * t.f_s)[..., None] * t.score + eta * t.g_z * t.m).astype(a.dtype)


def init_relax_net(n_variables, width=DEFAULT_WIDTH, seed=0, dtype=np.float64, n_context=0):
    """Parameters of RELAX's r(z; ctx) for H = n_variables and an optional context of n_context
    features per row (rebar_np.model.control_net), keys 'relax.*'."""
    return init_control_net(n_variables, width, np.random.default_rng(seed), dtype, "relax", n_context)


@dataclass
class RelaxResult:
    grad: np.ndarray        # the estimate of d E[f] / d a (shape of a)
    variance_grads: dict    # d V / d eta ("eta") and d V / d r's parameters ("relax.*"), V = mean(grad^2)
    variance: float         # V


def relax(f, df_ds, a, u, net, eta=1.0, temperature=0.5, relaxation="muprop", context=None):
    """RELAX for one layer, with control variate c(z) = eta f(s(z)) + r(z), r = the network `net` (init_relax_net;
    with a context, an array (..., m) of features that do not depend on b, r(z; context)):

        g = [f(b) - eta f(s) - r(z)] (b - sigma(a)) + (eta g_z + rho(z)) (1 - dz~/da),   rho = dr/dz

    and, to tune eta and r, the gradients of the single-sample variance proxy V = mean_j g_j^2
    (minimise V by gradient descent with them):
        dV/deta = mean_j 2 g_j (-f(s) score_j + g_z,j m_j)
        dV/dphi = d/dphi sum_n [ <v_n, rho(z_n)> - c_n r(z_n) ],  v = (2 g / P) m,  c_n = <2 g_n / P, score_n>
    (rebar_np.model.control_net.control_net_tangent_backward), P the number of entries of g.
    """
    a, t = _relaxed_terms(f, df_ds, a, u, temperature, relaxation)
    z = _rows(t.z)
    if (context is None) != ("relax.V1" not in net):
        raise BernoulliError("pass a context exactly when the network was made with n_context > 0")
    r, cache = control_net_forward(net, "relax", z, None if context is None else _rows(context))
    rho = control_net_input_grad(net, "relax", cache).reshape(a.shape)
    r = r.reshape(a.shape[:-1])
    g = (t.f_b - eta * t.f_s - r)[..., None] * t.score + (eta * t.g_z + rho) * t.m
    P = g.size
    dV_dg = 2.0 * g / P
    grads = {k: np.zeros_like(v) for k, v in net.items()}
    grads["eta"] = float(np.sum(dV_dg * (-t.f_s[..., None] * t.score + t.g_z * t.m)))
    control_net_tangent_backward(net, grads, "relax", cache, _rows(dV_dg * t.m),
                                 np.sum(dV_dg * t.score, axis=-1).reshape(-1).astype(z.dtype))
    return RelaxResult(g.astype(a.dtype), grads, float(np.mean(g.astype(np.float64) ** 2)))
