"""rebar_np's estimators against automatic differentiation of SPEC's surrogates.

Every gradient rebar_np derives by hand is recomputed here by the tape-based
reverse-mode autodiff of tests/autodiff.py, from an SBN written again on autodiff
Vars (SPEC section 1) and each estimator's "stop-gradient" surrogate: a scalar
whose gradient *is* the estimator, with the learning signals (and other
quantities SPEC holds fixed) entering as constants. Same parameters, batch and
noise; float64; max relative error per tensor below 1e-6.

Nothing here calls rebar_np's passes: rebar_np is used only to build the random
instance (rebar_np.evaluation.gradcheck.random_instance, read for its configuration and
arrays), to initialise the estimators' own parameters, and as the thing checked.
Parameter names follow rebar_np/model/sbn.py's docstring (also tests/reference.py):
``q{l}.*``, ``p{l}.*``, ``prior.logits`` or ``prior.*``, linear ``.W .c`` or
nonlinear ``.W1 .c1 .W2 .c2 .W3 .c3``; layers numbered 0 (data side) to L - 1.

Covered: reinforce, nvil, simple_muprop, muprop (model and aux gradients), concrete,
rebar and dynamic_rebar (model gradients, and the eta / baseline / temperature
gradients of the variance objective V = mean_j G_j^2, by differentiating the
autodiff model gradient G a second time).
"""
import numpy as np
import pytest

import autodiff as ad
from rebar_np import estimators as E
from rebar_np.evaluation.gradcheck import random_instance

U_MIN, U_MAX = 1e-8, 1.0 - 1e-8          # SPEC section 2: clip u before the logs
TOL = 1e-6
SPEC_DEFAULTS = {"temperature": 0.5, "relaxation": "muprop"}   # SPEC sections 2 and 4


# --------------------------------------------------------------------------
# The SBN of SPEC section 1, on autodiff Vars (P: {name: Var})
# --------------------------------------------------------------------------
def data(model, x):
    """(q's input x - mean_x, the pixels p scores, their data bias logit(clip(mean, 0.001, 0.999))).
    Task sp: q and the prior see the top half x[:, :D // 2], p scores the bottom half."""
    mean = np.asarray(model.mean_x, dtype=np.float64)
    n = x.shape[1] // 2 if model.task == "sp" else 0
    cond = x[:, :n] - mean[:n] if model.task == "sp" else x - mean
    target_mean = np.clip(mean[n:], 0.001, 0.999)
    return cond, x[:, n:], np.log(target_mean) - np.log1p(-target_mean)


def transform(P, name, h, nonlinear):
    """linear: h W + c;  nonlinear: tanh(tanh(h W1 + c1) W2 + c2) W3 + c3."""
    if nonlinear:
        h1 = ad.tanh(h @ P[name + ".W1"] + P[name + ".c1"])
        h2 = ad.tanh(h1 @ P[name + ".W2"] + P[name + ".c2"])
        return h2 @ P[name + ".W3"] + P[name + ".c3"]
    return h @ P[name + ".W"] + P[name + ".c"]


def log_bernoulli(y, a):
    """log B(y; a) = sum_j [y_j a_j - softplus(a_j)], per example (for hard and relaxed y)."""
    return ad.sum(y * a - ad.softplus(a), axis=1)


def recognition(model, P, x, sample):
    """a_0 = T_q0(x - mean), a_l = T_ql(2 s_{l-1} - 1), s_l = sample(l, a_l). Returns ([a_l], [s_l])."""
    h, _, _ = data(model, x)
    logits, samples = [], []
    for l in range(model.n_layer):
        a = transform(P, f"q{l}", h, model.nonlinear)
        s = sample(l, a)
        logits.append(a)
        samples.append(s)
        h = 2.0 * s - 1.0
    return logits, samples


def log_p(model, P, x, s):
    """log p(x, s) = log B(s_{L-1}; prior) + sum_{l>=1} log B(s_{l-1}; T_pl(2 s_l - 1))
    + log B(target; T_p0(2 s_0 - 1) + data bias); the prior is T_prior(x_top - mean) for sp."""
    cond, target, bias = data(model, x)
    L = model.n_layer
    prior = transform(P, "prior", cond, model.nonlinear) if model.task == "sp" else P["prior.logits"]
    lp = log_bernoulli(s[L - 1], prior)
    for l in range(L - 1, 0, -1):
        lp = lp + log_bernoulli(s[l - 1], transform(P, f"p{l}", 2.0 * s[l] - 1.0, model.nonlinear))
    return lp + log_bernoulli(target, transform(P, "p0", 2.0 * s[0] - 1.0, model.nonlinear) + bias)


def elbo(model, P, x, sample):
    """f = log p(x, s) - sum_l log B(s_l; a_l) for the values s that `sample` produces.
    Returns (f, log p, [log q_l], [a_l], [s_l])."""
    a, s = recognition(model, P, x, sample)
    logq = [log_bernoulli(sl, al) for sl, al in zip(s, a)]
    lp = log_p(model, P, x, s)
    f = lp
    for lq in logq:
        f = f - lq
    return f, lp, logq, a, s


def logistic(u):
    uc = np.clip(u, U_MIN, U_MAX)
    return np.log(uc) - np.log1p(-uc)


def hard_pass(model, P, x, u):
    """b_l = 1[a_l + log u_l - log(1 - u_l) > 0]: constants (hard samples are not differentiated)."""
    z0 = [logistic(ul) for ul in u]
    return elbo(model, P, x, lambda l, a: ad.Var((a.value + z0[l] > 0).astype(np.float64)))


def mean_field(model, P, x):
    """f(mu) with mu_l = sigma(a_l) (SPEC section 3), and f'(mu_l) = d f(mu) / d mu_l, the total
    derivative through every later use of mu_l: mu_l = sigma(a_l) + e_l with e_l = 0, d f / d e_l."""
    B, H = x.shape[0], model.n_hidden
    e = [ad.Var(np.zeros((B, H))) for _ in range(model.n_layer)]
    f, _, _, _, mu = elbo(model, P, x, lambda l, a: ad.sigmoid(a) + e[l])
    df_dmu = ad.grad_values(ad.sum(f), e)
    return f.value, [m.value for m in mu], df_dmu


def conditional_noise(a, u, b):
    """z0~ as a function of the logits a (SPEC section 2): u' = sigma(-a) moves with a while
    r = (u - u')/(1 - u') (b = 1) or r' = u / u' (b = 0) stay at their current values;
    u~ = u' + r (1 - u') or r' u', and z0~ = log u~ - log(1 - u~) (value: z0)."""
    uc = np.clip(u, U_MIN, U_MAX)
    up = ad.sigmoid(-a)
    r1, r0 = (uc - up.value) / (1.0 - up.value), uc / up.value
    ut = ad.where(b > 0.5, up + r1 * (1.0 - up), r0 * up)
    return ad.log(ut) - ad.log(1.0 - ut)


def relaxed_elbo(model, P, x, b, u, l, lam, improved, conditional=()):
    """f_l (SPEC section 3): hard b_k below the switch layer l, relaxed s_k from l up,
    s_k = sigma(z_k / lam + a_k lam / (lam + 1)) (improved) or sigma(z_k / lam), z_k = a_k + z0_k.

    conditional: the layers k whose z_k takes the derivative of the conditional noise z~_k,
    computed at the *hard* logits T_qk(2 b_{k-1} - 1) ({l} for per-layer REBAR, where those are
    a_l itself; every layer for the joint variant). The value stays z_k exactly,
    z_k + (z0~ - stop(z0~)), so f_l(z) and f_l(z~) are equal in value as in exact arithmetic.
    """
    z0 = [logistic(ul) for ul in u]

    def sample(k, a):
        if k < l:
            return ad.Var(b[k])
        z = a + z0[k]
        if k in conditional:
            a_hard = a if k == l else transform(P, f"q{k}", 2.0 * b[k - 1] - 1.0, model.nonlinear)
            zc = conditional_noise(a_hard, u[k], b[k])
            z = z + (zc - ad.stop_gradient(zc))
        t = z / lam + a * (lam / (lam + 1.0)) if improved else z / lam
        return ad.sigmoid(t)
    return elbo(model, P, x, sample)[0]


def baseline(A, x_cond, prefix="baseline"):
    """c(x) = tanh((x - mean) W1 + c1) W2 + c2, (B,) (rebar_np/model/baseline.py's layout)."""
    hidden = ad.tanh(x_cond @ A[prefix + ".W1"] + A[prefix + ".c1"])
    return ad.reshape(hidden @ A[prefix + ".W2"] + A[prefix + ".c2"], (-1,))


def scale(psi):
    """2 sigma(psi): eta of REBAR, s, s0, s1 of the MuProps."""
    return 2.0 * ad.sigmoid(psi)


def as_vars(d):
    return {k: ad.Var(np.array(v, dtype=np.float64)) for k, v in d.items()}


def grads_of(loss, V):
    names = list(V)
    return dict(zip(names, ad.grad(loss, [V[k] for k in names])))


def values(d):
    return {k: v.value for k, v in d.items()}


# --------------------------------------------------------------------------
# The estimators' surrogates; each returns (model grads, aux grads, extra)
# --------------------------------------------------------------------------
def score_loss(signal, lp, logq):
    """-(1/B) sum_n [signal_n sum_l log q(b_l | .) + log p(x_n, b_n)]: signal constant (a list:
    one per layer). The direct term -d log q / d theta of f is left out (expectation 0), as in SPEC."""
    total = lp
    for l, lq in enumerate(logq):
        total = total + (signal[l] if isinstance(signal, list) else signal) * lq
    return -ad.mean(total)


def leave_one_out(f):
    return np.array([f[n] - np.mean(np.delete(f, n)) for n in range(f.size)])


def ad_reinforce(model, params, aux, x, u, options, signal_fn=leave_one_out):
    P = as_vars(params)
    f, lp, logq, _, b = hard_pass(model, P, x, u)
    return values(grads_of(score_loss(signal_fn(f.value), lp, logq), P)), {}, {"b": b, "f": f.value}


def ad_nvil(model, params, aux, x, u, options):
    P, A = as_vars(params), as_vars(aux)
    f, lp, logq, _, b = hard_pass(model, P, x, u)
    c = baseline(A, data(model, x)[0])
    signal = f.value - c
    return (values(grads_of(score_loss(signal.value, lp, logq), P)),
            values(grads_of(ad.mean(signal * signal), A)), {"b": b, "f": f.value})


def ad_simple_muprop(model, params, aux, x, u, options):
    """signal = f(b) - s f(mu) - c(x); s and c trained on mean signal^2."""
    P, A = as_vars(params), as_vars(aux)
    f, lp, logq, _, b = hard_pass(model, P, x, u)
    f_mu, _, _ = mean_field(model, P, x)
    signal = f.value - scale(A["psi.scale"]) * f_mu - baseline(A, data(model, x)[0])
    return (values(grads_of(score_loss(signal.value, lp, logq), P)),
            values(grads_of(ad.mean(signal * signal), A)), {"b": b, "f": f.value})


def ad_muprop(model, params, aux, x, u, options):
    """Per layer l: signal_l = f(b) - s0_l f(mu) - s1_l f'(mu_l).(b_l - mu_l) - c_l(x), and the
    analytic term s1_l f'(mu_l).sigma(a_l) (a_l from the hard b_{l-1}) added to the surrogate;
    s0, s1, c trained on mean_n sum_l signal_l^2 (f, f(mu), the linear term fixed)."""
    P, A = as_vars(params), as_vars(aux)
    f, lp, logq, a, b = hard_pass(model, P, x, u)
    f_mu, mu, df_dmu = mean_field(model, P, x)
    cond = data(model, x)[0]
    loss = 0.0
    aux_loss = 0.0
    signals = []
    for l in range(model.n_layer):
        s0, s1 = scale(A[f"psi.s0_{l}"]), scale(A[f"psi.s1_{l}"])
        lin = np.sum(df_dmu[l] * (b[l].value - mu[l]), axis=1)
        signal = f.value - s0 * f_mu - s1 * lin - baseline(A, cond, f"baseline{l}")
        signals.append(signal.value)
        aux_loss = aux_loss + ad.mean(signal * signal)
        loss = loss - ad.mean(s1.value * ad.sum(df_dmu[l] * ad.sigmoid(a[l]), axis=1))
    loss = loss + score_loss(signals, lp, logq)
    return values(grads_of(loss, P)), values(grads_of(aux_loss, A)), {"b": b, "f": f.value}


def ad_concrete(model, params, aux, x, u, options):
    """-(1/B) sum_n f_0(s_n): every layer relaxed, reparameterised."""
    opts = {**SPEC_DEFAULTS, **(options or {})}
    P = as_vars(params)
    f, _, _, _, b = hard_pass(model, P, x, u)
    f0 = relaxed_elbo(model, P, x, None, u, 0, opts["temperature"], opts["relaxation"] == "muprop")
    return values(grads_of(-ad.mean(f0), P)), {}, {"b": b, "f": f.value}


def ad_rebar(model, params, aux, x, u, options, coef_tracks_tau=True, conditional=True):
    """SPEC's REBAR estimate, per recognition tensor k (eta_k = 2 sigma(psi_k)):

        G_k = d/d theta_k { -(1/B) sum_n [ (f - c) sum_l log q_l + log p
                                          + eta_k sum_l ( f_l(z) - f_l(z~) - f_l(z~)|const log q_l ) ] }

    (f, and f_l(z~) as a coefficient, held fixed; generative tensors get no eta term).
    Joint variant: one term, f_0 (every layer relaxed, every layer conditional) with the summed score.
    condition_above: per layer, with every layer from l up conditional (the TF reference's way).
    V = mean_j G_j^2 over all model entries; its gradient with respect to psi, the baseline
    and tau (dynamic_rebar, lam = exp(tau)) is autodiff of the autodiff gradient G. The
    coefficient f_l(z~) is a function of tau (params held constant), unless coef_tracks_tau
    is False (a deliberately wrong variant, for the teeth test).
    """
    opts = {**SPEC_DEFAULTS, "joint": False, **(options or {})}
    improved = opts["relaxation"] == "muprop"
    P, A = as_vars(params), as_vars(aux)
    P_const = as_vars(params)
    lam = ad.exp(A["tau"]) if "tau" in A else ad.Var(float(opts["temperature"]))
    f, lp, logq, _, b = hard_pass(model, P, x, u)
    bv = [bl.value for bl in b]
    signal = f.value - baseline(A, data(model, x)[0])        # depends on the baseline only
    base = score_loss(signal, lp, logq)
    cv = 0.0
    L = model.n_layer
    for l in ([0] if opts["joint"] else range(L)):
        cond = range(L) if opts["joint"] else range(l, L) if opts.get("condition_above") else (l,)
        coef = relaxed_elbo(model, P_const, x, bv, u, l, lam if coef_tracks_tau else lam.value, improved, cond)
        f_z = relaxed_elbo(model, P, x, bv, u, l, lam, improved)
        f_zc = relaxed_elbo(model, P, x, bv, u, l, lam, improved, cond if conditional else ())
        score = logq[l]
        if opts["joint"]:
            for lq in logq[1:]:
                score = score + lq
        cv = cv + (f_z - f_zc - coef * score)
    G_base, G_cv = grads_of(base, P), grads_of(-ad.mean(cv), P)
    G = {}
    for k in P:
        G[k] = G_base[k] + scale(A["psi." + k]) * G_cv[k] if k.startswith("q") else G_base[k]
    n_entries = float(np.sum([g.value.size for g in G.values()]))
    V = 0.0
    for g in G.values():
        V = V + ad.sum(g * g)
    V = V / n_entries
    gen_cv = {k: G_cv[k].value for k in P if not k.startswith("q")}
    return values(G), values(grads_of(V, A)), {"b": b, "f": f.value, "gen_cv": gen_cv, "V": float(V.value)}


AUTODIFF = {"reinforce": ad_reinforce, "nvil": ad_nvil, "simple_muprop": ad_simple_muprop,
            "muprop": ad_muprop, "concrete": ad_concrete, "rebar": ad_rebar, "dynamic_rebar": ad_rebar}


# --------------------------------------------------------------------------
# Instances and the comparison
# --------------------------------------------------------------------------
def instance(name, task, L, nl, seed=0, options=None):
    """A tiny random model (7 pixels: sp splits 3 | 4; 3 units per layer; batch 4) and an aux
    with nonzero biases, scalings != 1 and, for dynamic_rebar, a temperature != the default."""
    model, params, x, u, rng = random_instance(task, L, 3, nl, n_input=7, batch_size=4, seed=seed)
    aux = E.get(name).init_aux(model, seed + 1, np.float64, options)
    for k, v in aux.items():
        if k == "tau":
            v[:] = np.log(0.37)
        elif v.ndim == 1:
            v[:] = rng.normal(0, 0.5, v.shape)
    for k in aux:
        if k.startswith("baseline") and k.endswith(".c2"):
            aux[k][:] += -3.0           # a baseline far from zero, so that c(x) matters
    return model, params, aux, x, u


def compare(label, got, want, tol=TOL):
    """Max relative error per tensor (max |got - want| / max(max |want|, max |got|)); a table on failure."""
    assert set(got) == set(want), f"{label}: names differ: {sorted(set(got) ^ set(want))}"
    rows, worst = [], 0.0
    for k in sorted(want):
        g, w = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        assert g.shape == w.shape, f"{label} {k}: shape {g.shape} != {w.shape}"
        scale_ = max(float(np.max(np.abs(w))), float(np.max(np.abs(g))), 1e-12)
        rel = float(np.max(np.abs(g - w))) / scale_
        worst = max(worst, rel)
        rows.append(f"  {k:<16} rel {rel:9.2e}  scale {scale_:9.2e}{'   <-- FAIL' if rel >= tol else ''}")
    assert worst < tol, f"{label}: max relative error {worst:.2e} >= {tol:.0e}\n" + "\n".join(rows)
    return worst


def check(name, task, L, nl, seed=0, options=None):
    model, params, aux, x, u = instance(name, task, L, nl, seed, options)
    res = E.get(name).estimate(model, params, aux, x, u, options=options)
    grads, aux_grads, extra = AUTODIFF[name](model, params, aux, x, u, options)
    label = f"{name} {task} L={L} nonlinear={nl} {options or ''}"
    for l in range(L):
        assert np.array_equal(res.frozen["b"][l], extra["b"][l].value), f"{label}: hard samples of layer {l} differ"
    np.testing.assert_allclose(res.elbo, extra["f"], rtol=1e-10, err_msg=f"{label}: hard ELBO")
    compare(label, res.grads, grads)
    compare(label + " (aux)", res.aux_grads, aux_grads)
    if "V" in extra:
        np.testing.assert_allclose(res.stat("variance_objective"), extra["V"], rtol=1e-10)
        scale_ = max(float(np.max(np.abs(g))) for g in grads.values())
        for k, g in extra["gen_cv"].items():   # SPEC: the generative tensors get no control-variate term
            assert np.max(np.abs(g)) < 1e-9 * scale_, f"{label}: {k} would get a control-variate term"
    return model, params, aux, x, u, res


CASES = [(task, L, nl) for task in ("sbn", "omni", "sp") for L in (1, 2, 3) for nl in (False, True)]


@pytest.mark.parametrize("name", ["reinforce", "nvil", "simple_muprop", "muprop", "concrete", "rebar",
                                  "dynamic_rebar"])
@pytest.mark.parametrize("task,L,nl", CASES)
def test_estimator_matches_autodiff(name, task, L, nl):
    check(name, task, L, nl)


@pytest.mark.parametrize("name,options", [
    ("concrete", {"relaxation": "concrete", "temperature": 0.3}),
    ("rebar", {"relaxation": "concrete", "temperature": 0.3}),
    ("rebar", {"temperature": 1.7}),
    ("dynamic_rebar", {"relaxation": "concrete"}),
    ("rebar", {"joint": True}),
    ("dynamic_rebar", {"joint": True, "temperature": 0.8}),
    ("rebar", {"condition_above": True}),
    ("dynamic_rebar", {"condition_above": True, "relaxation": "concrete"}),
])
@pytest.mark.parametrize("task,L,nl", [("sbn", 2, True), ("sp", 3, False)])
def test_relaxation_options_match_autodiff(name, options, task, L, nl):
    check(name, task, L, nl, seed=1, options=options)


# --------------------------------------------------------------------------
# The comparison has teeth
# --------------------------------------------------------------------------
def test_one_perturbed_entry_fails():
    model, params, aux, x, u, res = check("muprop", "sp", 2, True)
    grads, aux_grads, _ = ad_muprop(model, params, aux, x, u, None)
    for source in (grads, aux_grads):
        k = max(source, key=lambda k: np.max(np.abs(source[k])))
        bad = {n: v.copy() for n, v in source.items()}
        bad[k].reshape(-1)[0] += 1e-5 * np.max(np.abs(bad[k]))
        with pytest.raises(AssertionError, match="FAIL"):
            compare("perturbed", bad, source)


def test_wrong_baselines_fail():
    model, params, aux, x, u = instance("reinforce", "sbn", 2, True)
    res = E.get("reinforce").estimate(model, params, aux, x, u)
    # the mean over the whole batch (including the example itself) instead of the others'
    grads, _, _ = ad_reinforce(model, params, aux, x, u, None, signal_fn=lambda f: f - f.mean())
    with pytest.raises(AssertionError, match="FAIL"):
        compare("reinforce with a batch-mean baseline", res.grads, grads)
    # nvil with the baseline left out is reinforce with signal f
    model, params, aux, x, u = instance("nvil", "sp", 2, False)
    res = E.get("nvil").estimate(model, params, aux, x, u)
    grads, _, _ = ad_reinforce(model, params, aux, x, u, None, signal_fn=lambda f: f)
    with pytest.raises(AssertionError, match="FAIL"):
        compare("nvil without c(x)", res.grads, grads)


def test_wrong_rebar_variants_fail():
    model, params, aux, x, u = instance("dynamic_rebar", "sbn", 2, True)
    res = E.get("dynamic_rebar").estimate(model, params, aux, x, u)
    # the coefficient f_l(z~) held constant in tau: only dV/dtau changes, and the check sees it
    grads, aux_grads, _ = ad_rebar(model, params, aux, x, u, None, coef_tracks_tau=False)
    compare("model grads", res.grads, grads)
    with pytest.raises(AssertionError, match=r"tau .*FAIL"):
        compare("dV/dtau without the coefficient's tau derivative", res.aux_grads, aux_grads)
    # no conditional path (f_l(z~) = f_l(z)): the control variate loses its gradient term
    grads, _, _ = ad_rebar(model, params, aux, x, u, None, conditional=False)
    with pytest.raises(AssertionError, match="FAIL"):
        compare("rebar without the conditional derivative", res.grads, grads)
