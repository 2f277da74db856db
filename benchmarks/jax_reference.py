"""An independent JAX implementation of the training step, the yardstick of issue 6.

    ref = JaxReference("dynamic_rebar", mean_x, n_layer=2)
    state = ref.init_state(params, aux, seed=0)       # numpy dicts with rebar_np's names
    state, f = ref.step(state, x)                     # one jit-compiled step (noise drawn inside)

Written from SPEC.md, not from rebar_np (it imports nothing from it): the model of
section 1, the noise of section 2, the estimators of section 3 as *surrogate
losses that JAX differentiates*, and Adam with the defaults of section 4
(beta1 0.9, beta2 0.99999, eps 1e-8, learning rate 3e-4, the estimator's own
parameters at 10x). One step = draw the uniforms u, estimate the gradients, fold
the model gradient into the EMA variance monitor (decay 0.999) with a NaN/inf
count, and update model and estimator parameters, all inside one jax.jit.

Estimators (task sbn; linear or nonlinear transforms, any number of layers):

- nvil: the loss -(1/B) sum_n [ (f - c) sum_l log q(b_l) + log p(x, b) ] with
  f - c held fixed, plus the baseline's mean (f - c)^2 with f held fixed.
- concrete: -(1/B) sum_n f_0(s) with every layer relaxed at lambda = 0.5.
- rebar / dynamic_rebar: per switch layer l, the relaxed ELBO f_l is evaluated
  twice, along the unconditional sample z_l and along the conditional sample z~_l
  of SPEC section 2, written literally: u~ = u' + r (1 - u') (b = 1) or r' u'
  (b = 0) with u' = sigma(-a_l) moving with the logits and r, r' frozen, which has
  the value of u exactly. Then

      G_sf = grad_theta -(1/B) sum_n [ (f - c) sum_l log q(b_l) + log p(x, b) ]
      G_cv = grad_theta -(1/B) sum_n sum_l [ f_l(z) - f_l(z~) - f_l(z~) log q(b_l) ]
      G_k  = G_sf_k + eta_k G_cv_k   (recognition tensors k, eta_k = 2 sigma(psi_k)),  G_k = G_sf_k otherwise

  where f - c and the coefficient f_l(z~) are held fixed *with respect to theta*
  but stay functions of the baseline's parameters and of the temperature. The
  estimator's parameters (psi, the baseline, and tau = log lambda for
  dynamic_rebar) follow jax.grad of V = mean_j G_j^2: reverse mode over the
  reverse-mode gradient G, which JAX differentiates like any other function.
  JAX does not know the two relaxed paths share every value, so it runs both
  (rebar_np runs one), about twice rebar_np's multiply-adds (hlo_macs counts them).

Everything is float32 unless the parameters given are float64 (the checks run
in float64 under jax.enable_x64).
"""
from dataclasses import dataclass

import numpy as np

import jax
import jax.numpy as jnp

ESTIMATORS = ("nvil", "concrete", "rebar", "dynamic_rebar")
N_BASELINE_HIDDEN = 100
U_MIN, U_MAX = 1e-8, 1.0 - 1e-8


@dataclass(frozen=True)
class Config:
    """Training defaults of SPEC section 4."""
    learning_rate: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.99999
    eps: float = 1e-8
    aux_lr_scale: float = 10.0
    ema_decay: float = 0.999
    temperature: float = 0.5      # fixed (concrete, rebar) or initial (dynamic_rebar)


# --------------------------------------------------------------------------
# Parameters (same names and layout as rebar_np, so the same values can be fed to both)
# --------------------------------------------------------------------------
def transform_names(name, nonlinear):
    return [(name + ".W1", name + ".c1"), (name + ".W2", name + ".c2"), (name + ".W3", name + ".c3")] \
        if nonlinear else [(name + ".W", name + ".c")]


def init_params(D, n_layer, n_hidden=200, nonlinear=False, seed=0, dtype=np.float32):
    """Fan-in scaled Gaussian weights N(0, 2 / fan_in), zero biases, zero prior logits."""
    rng = np.random.default_rng(seed)
    H, params = n_hidden, {}

    def add(name, n_in, n_out):
        dims = [n_in, H, H, n_out] if nonlinear else [n_in, n_out]
        for j, (w, c) in enumerate(transform_names(name, nonlinear)):
            params[w] = (rng.standard_normal((dims[j], dims[j + 1])) * np.sqrt(2.0 / dims[j])).astype(dtype)
            params[c] = np.zeros(dims[j + 1], dtype)
    for l in range(n_layer):
        add(f"q{l}", D if l == 0 else H, H)
    for l in range(n_layer):
        add(f"p{l}", H, D if l == 0 else H)
    params["prior.logits"] = np.zeros(H, dtype)
    return params


def init_aux(estimator, D, params, temperature=0.5, seed=1, dtype=np.float32):
    """The estimator's own parameters: baseline c(x) (D -> tanh(100) -> 1), psi per recognition tensor, tau."""
    if estimator == "concrete":
        return {}
    rng = np.random.default_rng(seed)
    Hb = N_BASELINE_HIDDEN
    aux = {"baseline.W1": (rng.standard_normal((D, Hb)) * np.sqrt(2.0 / D)).astype(dtype),
           "baseline.c1": np.zeros(Hb, dtype),
           "baseline.W2": (rng.standard_normal((Hb, 1)) * np.sqrt(2.0 / Hb)).astype(dtype),
           "baseline.c2": np.zeros(1, dtype)}
    if estimator in ("rebar", "dynamic_rebar"):
        for k in params:
            if k.startswith("q"):
                aux["psi." + k] = np.zeros(1, dtype)
    if estimator == "dynamic_rebar":
        aux["tau"] = np.array([np.log(temperature)], dtype)
    return aux


# --------------------------------------------------------------------------
# The model (SPEC section 1)
# --------------------------------------------------------------------------
def log_bernoulli(y, a):
    """log B(y; a) = sum_j y_j a_j - softplus(a_j), per row."""
    return jnp.sum(y * a - jax.nn.softplus(a), axis=-1)


class JaxReference:
    """Jitted functions of one estimator on one architecture (task sbn)."""

    def __init__(self, estimator, mean_x, n_layer=2, n_hidden=200, nonlinear=False, config=Config()):
        if estimator not in ESTIMATORS:
            raise ValueError(f"the JAX reference has no {estimator!r}; it has {', '.join(ESTIMATORS)}")
        self.estimator, self.L, self.H, self.nl, self.cfg = estimator, n_layer, n_hidden, nonlinear, config
        mean_x = np.asarray(mean_x, np.float64)
        m = np.clip(mean_x, 0.001, 0.999)
        self.mean_x, self.data_bias = mean_x, np.log(m) - np.log1p(-m)
        self.hard_elbo = jax.jit(self._hard_elbo)
        estimate = jax.jit(self._estimate)
        # (rebar_np's parameter dicts may be a dict subclass, model/packed.py, which JAX does not take)
        self.estimate = lambda params, aux, x, u: estimate(dict(params), dict(aux), x, u)
        self.step = jax.jit(self._step, donate_argnums=0)

    # ---- passes ----------------------------------------------------------
    def T(self, params, name, h):
        """a = T_name(h): one dense layer, or dense-tanh, dense-tanh, dense."""
        layers = transform_names(name, self.nl)
        for j, (w, c) in enumerate(layers):
            h = h @ params[w] + params[c]
            if j < len(layers) - 1:
                h = jnp.tanh(h)
        return h

    def consts(self, x):
        return jnp.asarray(self.mean_x, x.dtype), jnp.asarray(self.data_bias, x.dtype)

    def log_p(self, params, x, s):
        """log p(x, s) = log B(s_top; prior) + sum_l log B(s_{l-1}; T_pl(2 s_l - 1)) + log B(x; T_p0(2 s_0 - 1) + bias)."""
        _, bias = self.consts(x)
        logp = log_bernoulli(s[-1], params["prior.logits"])
        for l in range(self.L - 1, -1, -1):
            a = self.T(params, f"p{l}", 2.0 * s[l] - 1.0)
            logp = logp + (log_bernoulli(x, a + bias) if l == 0 else log_bernoulli(s[l - 1], a))
        return logp

    def hard(self, params, x, z0=None, b=None):
        """Hard pass: logits a_l, samples b_l = 1[a_l + z0_l > 0] (or the given b), log q(b_l | .) per layer, log p."""
        mean_x, _ = self.consts(x)
        h, a, logq, bs = x - mean_x, [], [], []
        for l in range(self.L):
            al = self.T(params, f"q{l}", h)
            bl = (al + z0[l] > 0).astype(x.dtype) if b is None else b[l]
            a.append(al)
            bs.append(bl)
            logq.append(log_bernoulli(bl, al))
            h = 2.0 * bl - 1.0
        return a, bs, logq, self.log_p(params, x, bs)

    def relaxed_elbo(self, params, x, b, u, z0, l, lam, a_drawn=None):
        """f_l: hard b below layer l, relaxed samples s_k = sigma(z_k / lam + a_k lam / (lam + 1)) from l up.

        a_drawn: when given (the logits at which b_l was drawn, held fixed), layer l
        uses the conditional sample z~_l instead of z_l (SPEC section 2)."""
        mean_x, _ = self.consts(x)
        h, logq, s = x - mean_x, 0.0, list(b)
        for k in range(self.L):
            a = self.T(params, f"q{k}", h)
            if k < l:
                logq, h = logq + log_bernoulli(b[k], a), 2.0 * b[k] - 1.0
                continue
            z = a + z0[k] if (k != l or a_drawn is None) else conditional_z(a, a_drawn, u[k], b[k])
            s[k] = jax.nn.sigmoid(z / lam + a * (lam / (lam + 1.0)))
            logq, h = logq + log_bernoulli(s[k], a), 2.0 * s[k] - 1.0
        return self.log_p(params, x, s) - logq

    def baseline(self, aux, x):
        mean_x, _ = self.consts(x)
        hidden = jnp.tanh((x - mean_x) @ aux["baseline.W1"] + aux["baseline.c1"])
        return (hidden @ aux["baseline.W2"] + aux["baseline.c2"])[:, 0]

    # ---- estimators ------------------------------------------------------
    def _hard_elbo(self, params, x, u):
        _, _, logq, logp = self.hard(params, x, [logistic(ul) for ul in u])
        return logp - sum(logq)

    def _estimate(self, params, aux, x, u):
        """(loss gradient G of the model, gradient of the estimator's own objective, hard ELBO f)."""
        B = x.shape[0]
        z0 = [logistic(ul) for ul in u]
        a, b, logq, logp = self.hard(params, x, z0)
        f = logp - sum(logq)
        if self.estimator == "nvil":
            def loss(p, aux_):
                c = self.baseline(aux_, x)
                _, _, lq, lp = self.hard(p, x, b=b)
                signal = jax.lax.stop_gradient(f - c)
                return -jnp.sum(signal * sum(lq) + lp) / B + jnp.mean((f - c) ** 2)
            G, aux_grads = jax.grad(loss, argnums=(0, 1))(params, aux)
            return G, aux_grads, f
        if self.estimator == "concrete":
            lam = self.cfg.temperature
            G = jax.grad(lambda p: -jnp.sum(self.relaxed_elbo(p, x, b, u, z0, 0, lam)) / B)(params)
            return G, {}, f

        def variance(aux_):
            G = self.rebar_gradient(params, aux_, x, u, z0, a, b, f)
            P = sum(g.size for g in G.values())
            return sum(jnp.sum(g * g) for g in G.values()) / P, G
        (_, G), aux_grads = jax.value_and_grad(variance, has_aux=True)(aux)
        return G, aux_grads, f

    def rebar_gradient(self, params, aux, x, u, z0, a, b, f):
        """G of REBAR (SPEC section 3), a function of aux (psi, baseline, tau) that JAX can differentiate."""
        B, L = x.shape[0], self.L
        lam = jnp.exp(aux["tau"][0]) if "tau" in aux else self.cfg.temperature
        c = self.baseline(aux, x)
        a_drawn = [jax.lax.stop_gradient(al) for al in a]
        # the coefficient f_l(z~): a value with respect to theta, a function of tau
        coef = [self.relaxed_elbo(params, x, b, u, z0, l, lam, a_drawn[l]) for l in range(L)]

        def score_loss(p):      # f and c come from outside p: fixed with respect to theta
            _, _, lq, lp = self.hard(p, x, b=b)
            return -jnp.sum((f - c) * sum(lq) + lp) / B

        def cv_loss(p):
            _, _, lq, _ = self.hard(p, x, b=b)
            total = 0.0
            for l in range(L):
                f_z = self.relaxed_elbo(p, x, b, u, z0, l, lam)
                f_zc = self.relaxed_elbo(p, x, b, u, z0, l, lam, a_drawn[l])
                total = total + jnp.sum(f_z - f_zc - coef[l] * lq[l])
            return -total / B

        G_sf, G_cv = jax.grad(score_loss)(params), jax.grad(cv_loss)(params)
        return {k: G_sf[k] + 2.0 * jax.nn.sigmoid(aux["psi." + k][0]) * G_cv[k] if k.startswith("q") else G_sf[k]
                for k in params}

    # ---- one training step -----------------------------------------------
    def init_state(self, params, aux, seed=0):
        p = {k: jnp.asarray(v) for k, v in params.items()}
        q = {k: jnp.asarray(v) for k, v in aux.items()}
        zeros = lambda d: {k: jnp.zeros_like(v) for k, v in d.items()}
        return {"params": p, "aux": q, "m": zeros(p), "v": zeros(p), "aux_m": zeros(q), "aux_v": zeros(q),
                "ema1": zeros(p), "ema2": zeros(p), "t": jnp.zeros((), jnp.int32),
                "key": jax.random.PRNGKey(seed)}

    def draw_noise(self, key, B, dtype=jnp.float32):
        """u_l ~ U(0, 1)^{B x H}, one array per layer. The step draws its noise with
        draw_noise(jax.random.split(state["key"])[1], ...), so it can be reproduced outside."""
        return [jax.random.uniform(k, (B, self.H), dtype) for k in jax.random.split(key, self.L)]

    def _step(self, state, x):
        """Draw u, estimate, monitor, and Adam on both parameter sets. Returns (state, (f, number of non-finite))."""
        cfg = self.cfg
        params = state["params"]
        dtype = next(iter(params.values())).dtype
        x = x.astype(dtype)
        key, sub = jax.random.split(state["key"])
        u = self.draw_noise(sub, x.shape[0], dtype)
        G, aux_grads, f = self._estimate(params, state["aux"], x, u)
        t = state["t"] + 1
        tf = t.astype(dtype)
        lr_t = cfg.learning_rate * jnp.sqrt(1.0 - cfg.beta2 ** tf) / (1.0 - cfg.beta1 ** tf)

        def adam(p, g, m, v, lr):
            m = {k: cfg.beta1 * m[k] + (1.0 - cfg.beta1) * g[k] for k in p}
            v = {k: cfg.beta2 * v[k] + (1.0 - cfg.beta2) * g[k] * g[k] for k in p}
            return {k: p[k] - lr * m[k] / (jnp.sqrt(v[k]) + cfg.eps) for k in p}, m, v
        new_p, m, v = adam(params, G, state["m"], state["v"], lr_t)
        new_aux, am, av = adam(state["aux"], aux_grads, state["aux_m"], state["aux_v"], lr_t * cfg.aux_lr_scale)
        d = cfg.ema_decay
        ema1 = {k: d * state["ema1"][k] + (1.0 - d) * G[k] for k in G}
        ema2 = {k: d * state["ema2"][k] + (1.0 - d) * G[k] * G[k] for k in G}
        bad = sum(jnp.sum(~jnp.isfinite(g)) for g in G.values()) + jnp.sum(~jnp.isfinite(f))
        bad = bad + sum(jnp.sum(~jnp.isfinite(g)) for g in aux_grads.values())
        return ({"params": new_p, "aux": new_aux, "m": m, "v": v, "aux_m": am, "aux_v": av,
                 "ema1": ema1, "ema2": ema2, "t": t, "key": key}, (f, bad))


# --------------------------------------------------------------------------
# Noise (SPEC section 2)
# --------------------------------------------------------------------------
def logistic(u):
    """z0 = log u - log(1 - u), u clipped into [1e-8, 1 - 1e-8]."""
    u = jnp.clip(u, U_MIN, U_MAX)
    return jnp.log(u) - jnp.log1p(-u)


def conditional_z(a, a_drawn, u, b):
    """REBAR's conditional sample z~ = a + log u~ - log(1 - u~), with u' = sigma(-a) moving with a:

        b = 1:  u~ = u' + r (1 - u'),   r  = (u - u'_0) / (1 - u'_0)
        b = 0:  u~ = r' u',             r' = u / u'_0

    r, r' frozen at the logits a_drawn where b was drawn (u'_0 = sigma(-a_drawn)).
    Written as u~ = u + (u' - u'_0)(1 - r) and u~ = u + r' (u' - u'_0), so its value
    is u exactly and only its derivative with respect to a differs from z's."""
    u = jnp.clip(u, U_MIN, U_MAX)
    up, up0 = jax.nn.sigmoid(-a), jax.nn.sigmoid(-a_drawn)
    u_tilde = jnp.where(b > 0.5, u + (up - up0) * ((1.0 - u) / (1.0 - up0)), u + (u / up0) * (up - up0))
    return a + jnp.log(u_tilde) - jnp.log1p(-u_tilde)


def hlo_macs(jitted, *args):
    """Multiply-adds of the dot products in the optimised XLA program of jitted(*args) (what
    runs, after XLA's simplifications), and XLA's own flop estimate (which also counts
    elementwise work), as (macs, flops)."""
    import re
    compiled = jitted.lower(*args).compile()
    text = compiled.as_text()
    shapes = {}   # instruction name -> dims; HLO names are unique within a module
    for m in re.finditer(r"(%[\w.\-]+) = [a-z0-9]+\[([0-9,]*)\]", text):
        shapes[m.group(1)] = [int(d) for d in m.group(2).split(",") if d]
    macs = 0
    for line in text.splitlines():
        m = re.search(r"(%[\w.\-]+) = [a-z0-9]+\[[0-9,]*\]\S* dot\((%[\w.\-]+), (%[\w.\-]+)\)", line)
        contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
        if not m or contract is None:
            continue
        out, lhs = shapes[m.group(1)], shapes[m.group(2)]
        k = int(np.prod([lhs[int(i)] for i in contract.group(1).split(",") if i]))
        macs += int(np.prod(out)) * k
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan")))
    except Exception:  # cost analysis is best effort and backend-dependent
        flops = float("nan")
    return macs, flops
