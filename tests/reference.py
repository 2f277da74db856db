"""An independent plain-NumPy (float64) implementation of SPEC sections 1-2.

Nothing here calls rebar_np: the model object is only read for its
configuration (task, n_layer, n_hidden, nonlinear, mean_x), and parameters are
the dict of named arrays documented in rebar_np/model/sbn.py's module docstring:

- transform ``name``, linear:    a = h W + c                 (``name.W``, ``name.c``)
- transform ``name``, nonlinear: a = tanh(tanh(h W1 + c1) W2 + c2) W3 + c3
- ``q{l}``: logits of q(b_l | .) from x - mean_x (l = 0) or 2 b_{l-1} - 1
- ``p{l}``: logits of p(x | b_0) (l = 0, plus the constant data bias
  logit(clip(mean_x, 0.001, 0.999))) or of p(b_{l-1} | b_l), from 2 b_l - 1
- the top layer's prior: the free vector ``prior.logits`` (sbn, omni) or the
  transform ``prior`` of x_top - mean_top (sp)
- task sp: q and the prior see the top half x[:, :D // 2]; p models the bottom
  half x[:, D // 2:] (all L layers on both sides).

Layers are numbered from 0 (next to the data) to L - 1 (top), as in rebar_np.

Gradients are *loss* gradients (of minus the objective), computed by central
finite differences of the functions below, never by hand; the exact gradient
of -E_q[f] comes from enumerating every latent configuration.
"""
import numpy as np

U_MIN = 1e-8
U_MAX = 1.0 - 1e-8
BASELINE_PREFIX = "baseline"


# --------------------------------------------------------------------------
# Elementary functions
# --------------------------------------------------------------------------
def softplus(a):
    """log(1 + exp(a)), stable for any a."""
    a = np.asarray(a, dtype=np.float64)
    return np.maximum(a, 0.0) + np.log1p(np.exp(-np.abs(a)))


def sigmoid(a):
    a = np.asarray(a, dtype=np.float64)
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_bernoulli(y, a):
    """sum_j [y_j a_j - softplus(a_j)] over the last axis."""
    return np.sum(y * a - softplus(a), axis=-1)


def logistic(u):
    """log u - log(1 - u) with u clipped into [1e-8, 1 - 1e-8]."""
    u = np.clip(np.asarray(u, dtype=np.float64), U_MIN, U_MAX)
    return np.log(u) - np.log1p(-u)


def transform(params, name, h, nonlinear):
    if nonlinear:
        h1 = np.tanh(h @ params[name + ".W1"] + params[name + ".c1"])
        h2 = np.tanh(h1 @ params[name + ".W2"] + params[name + ".c2"])
        return h2 @ params[name + ".W3"] + params[name + ".c3"]
    return h @ params[name + ".W"] + params[name + ".c"]


# --------------------------------------------------------------------------
# How the data enter
# --------------------------------------------------------------------------
def split(model, x):
    """(q's input x_cond - mean_cond, the target pixels, the target pixels' means)."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(model.mean_x, dtype=np.float64)
    D = x.shape[1]
    assert D == mean.size
    if model.task == "sp":
        n = D // 2
        return x[:, :n] - mean[:n], x[:, n:], mean[n:]
    return x - mean, x, mean


def data_bias(target_mean):
    m = np.clip(target_mean, 0.001, 0.999)
    return np.log(m) - np.log(1.0 - m)


# --------------------------------------------------------------------------
# q, p and the ELBO at given hard samples
# --------------------------------------------------------------------------
def recognition_logits(model, params, x, b):
    """[a_0 .. a_{L-1}]: a_0 = T_q0(x - mean), a_l = T_ql(2 b_{l-1} - 1)."""
    h, _, _ = split(model, x)
    out = []
    for l in range(model.n_layer):
        a = transform(params, f"q{l}", h, model.nonlinear)
        out.append(a)
        h = 2.0 * np.asarray(b[l], dtype=np.float64) - 1.0
    return out


def log_q(model, params, x, b):
    """[log q(b_l | .) per layer], each (B,)."""
    return [log_bernoulli(np.asarray(bl, dtype=np.float64), a)
            for bl, a in zip(b, recognition_logits(model, params, x, b))]


def prior_logits(model, params, x):
    h, _, _ = split(model, x)
    if model.task == "sp":
        return transform(params, "prior", h, model.nonlinear)
    return np.broadcast_to(params["prior.logits"], (x.shape[0], model.n_hidden))


def log_p(model, params, x, b):
    """log p(x, b) (log p(x_bottom, b | x_top) for sp), (B,)."""
    b = [np.asarray(bl, dtype=np.float64) for bl in b]
    L = model.n_layer
    _, target, target_mean = split(model, x)
    lp = log_bernoulli(b[L - 1], prior_logits(model, params, x))
    for l in range(L - 1, 0, -1):
        lp = lp + log_bernoulli(b[l - 1], transform(params, f"p{l}", 2.0 * b[l] - 1.0, model.nonlinear))
    logits_x = transform(params, "p0", 2.0 * b[0] - 1.0, model.nonlinear) + data_bias(target_mean)
    return lp + log_bernoulli(target, logits_x)


def elbo(model, params, x, b):
    """Per-example f(b) = log p(x, b) - sum_l log q(b_l | .), (B,)."""
    return log_p(model, params, x, b) - sum(log_q(model, params, x, b))


def sample_b(model, params, x, u):
    """Hard samples b_l = 1[a_l + log u_l - log(1 - u_l) > 0], layer by layer."""
    h, _, _ = split(model, x)
    b = []
    for l in range(model.n_layer):
        a = transform(params, f"q{l}", h, model.nonlinear)
        bl = (a + logistic(u[l]) > 0).astype(np.float64)
        b.append(bl)
        h = 2.0 * bl - 1.0
    return b


# --------------------------------------------------------------------------
# Exact expectations by enumeration
# --------------------------------------------------------------------------
def all_configurations(model):
    """(C, L, H) array of every joint latent configuration, C = 2^(L H)."""
    L, H = model.n_layer, model.n_hidden
    n = L * H
    if n > 16:
        raise ValueError(f"2^{n} configurations is too many to enumerate")
    C = 2 ** n
    bits = (np.arange(C)[:, None] >> np.arange(n)[None, :]) & 1
    return bits.reshape(C, L, H).astype(np.float64)


def enumerate_terms(model, params, x):
    """(log q(c | x_n), log p(x_n, c)) for every example n and configuration c, each (B, C)."""
    x = np.asarray(x, dtype=np.float64)
    B = x.shape[0]
    conf = all_configurations(model)
    C = conf.shape[0]
    xr = np.repeat(x, C, axis=0)                                  # row n*C + c
    b = [np.tile(conf[:, l, :], (B, 1)) for l in range(model.n_layer)]
    lq = sum(log_q(model, params, xr, b)).reshape(B, C)
    lp = log_p(model, params, xr, b).reshape(B, C)
    return lq, lp


def exact_objective(model, params, x):
    """mean_n E_{q(b | x_n)}[f(b)], by summing over all 2^(L H) configurations."""
    lq, lp = enumerate_terms(model, params, x)
    return float(np.mean(np.sum(np.exp(lq) * (lp - lq), axis=1)))


def exact_log_marginal(model, params, x):
    """log p(x_n) = log sum_c p(x_n, c) per example (the limit of the IW bound), (B,)."""
    _, lp = enumerate_terms(model, params, x)
    m = lp.max(axis=1, keepdims=True)
    return m[:, 0] + np.log(np.sum(np.exp(lp - m), axis=1))


def exact_multisample_objective(model, params, x, n_samples):
    """mean_n E[log (1/K) sum_k exp f(b^k)] for K = n_samples independent b^k ~ q(b | x_n): the
    K-sample importance-weighted bound, by summing over all C^K joint configurations of the K samples."""
    lq, lp = enumerate_terms(model, params, x)                    # (B, C)
    f = lp - lq
    C, K = lq.shape[1], int(n_samples)
    if C ** K > 2 ** 20:
        raise ValueError(f"{C}^{K} joint configurations is too many to enumerate")
    idx = np.indices((C,) * K).reshape(K, -1)                     # (K, C^K): the configuration of each sample
    log_prob = np.sum(lq[:, idx], axis=1)                         # (B, C^K): sum_k log q(c_k | x_n)
    fk = f[:, idx]                                                # (B, K, C^K)
    m = fk.max(axis=1)
    bound = m + np.log(np.mean(np.exp(fk - m[:, None, :]), axis=1))
    return float(np.mean(np.sum(np.exp(log_prob) * bound, axis=1)))


def exact_multisample_gradient(model, params, x, n_samples, eps=1e-3, order=4):
    """Gradient of the exact loss -exact_multisample_objective with respect to every parameter."""
    g = fd_gradient(lambda p: exact_multisample_objective(model, p, x, n_samples), params, eps, order)
    return {k: -v for k, v in g.items()}


# --------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------
def fd_gradient(fn, arrays, eps=1e-3, order=4):
    """d fn / d arrays by central differences on float64 copies; fn takes the dict.

    order 2: (f(v+e) - f(v-e)) / 2e;  order 4: (-f(v+2e) + 8 f(v+e) - 8 f(v-e) + f(v-2e)) / 12e
    (truncation error O(e^4), so a larger e keeps the round-off small).
    """
    work = {k: np.array(v, dtype=np.float64) for k, v in arrays.items()}
    if order == 2:
        stencil = ((1.0, 0.5), (-1.0, -0.5))
    elif order == 4:
        stencil = ((2.0, -1.0 / 12), (1.0, 8.0 / 12), (-1.0, -8.0 / 12), (-2.0, 1.0 / 12))
    else:
        raise ValueError("order must be 2 or 4")
    out = {}
    for name, arr in work.items():
        flat = arr.reshape(-1)
        g = np.empty(flat.size)
        for i in range(flat.size):
            old = flat[i]
            acc = 0.0
            for step, w in stencil:
                flat[i] = old + step * eps
                acc += w * fn(work)
            flat[i] = old
            g[i] = acc / eps
        out[name] = g.reshape(arr.shape)
    return out


def exact_gradient(model, params, x, eps=1e-3, order=4):
    """Gradient of the exact loss -exact_objective with respect to every parameter."""
    g = fd_gradient(lambda p: exact_objective(model, p, x), params, eps, order)
    return {k: -v for k, v in g.items()}


# --------------------------------------------------------------------------
# The estimators, by their surrogate definition
# --------------------------------------------------------------------------
def leave_one_out_signal(f):
    """f_n - mean_{m != n} f_m."""
    f = np.asarray(f, dtype=np.float64)
    B = f.size
    return np.array([f[n] - np.mean(np.delete(f, n)) for n in range(B)])


def baseline(model, aux, x, prefix=BASELINE_PREFIX):
    """NVIL's c(x) = tanh((x - mean) W1 + c1) W2 + c2, (B,)."""
    h, _, _ = split(model, x)
    hidden = np.tanh(h @ aux[prefix + ".W1"] + aux[prefix + ".c1"])
    return (hidden @ aux[prefix + ".W2"] + aux[prefix + ".c2"])[:, 0]


def score_surrogate(model, params, x, b, signal):
    """-(1/B) sum_n [signal_n sum_l log q(b_nl | .) + log p(x_n, b_n)], b and signal fixed."""
    return -float(np.mean(signal * sum(log_q(model, params, x, b)) + log_p(model, params, x, b)))


def reinforce_gradient(model, params, x, u, eps=1e-3):
    """REINFORCE's loss gradient at noise u: signal = f_n minus the mean of f over the other examples."""
    b = sample_b(model, params, x, u)
    signal = leave_one_out_signal(elbo(model, params, x, b))
    return fd_gradient(lambda p: score_surrogate(model, p, x, b, signal), params, eps)


def nvil_gradient(model, params, aux, x, u, eps=1e-3):
    """NVIL's loss gradient at noise u: signal = f - c(x)."""
    b = sample_b(model, params, x, u)
    signal = elbo(model, params, x, b) - baseline(model, aux, x)
    return fd_gradient(lambda p: score_surrogate(model, p, x, b, signal), params, eps)


def nvil_aux_gradient(model, params, aux, x, u, eps=1e-3):
    """Gradient of NVIL's baseline loss mean_n (f_n - c(x_n))^2 with f fixed, w.r.t. the baseline."""
    f = elbo(model, params, x, sample_b(model, params, x, u))
    return fd_gradient(lambda a: float(np.mean((f - baseline(model, a, x)) ** 2)), aux, eps)
