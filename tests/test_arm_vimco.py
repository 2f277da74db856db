"""The layer-wise antithetic estimators arm, disarm (of the ELBO) and the K-sample estimators
vimco, reinforce_loo (of the K-sample bound) on multilayer SBNs:

1. Unbiasedness: each passes the exact-enumeration harness (Bonferroni z-test, fixed seed) on tiny
   models with 1 and 2 layers, linear and nonlinear; the K-sample estimators against the exact
   gradient of the K-sample bound (reference.exact_multisample_gradient).
2. Power: deliberately wrong variants fail the same test (VIMCO without its direct -w d log q
   term, VIMCO judged against the ELBO's gradient, DisARM without its factor 1/2).
3. Gradcheck: every gradient matches finite differences of the estimator's surrogate.
4. The shortcuts: the antithetic branch reuses the hard pass below layer l exactly; the K-sample
   signals are stable and match a direct computation; DisARM's variance is below ARM's.
"""
from functools import lru_cache

import numpy as np
import pytest

import reference as R
from harness import check_unbiased
from rebar_np.estimators import bernoulli as bern
from rebar_np import estimators as E
from rebar_np import kernels as K
from rebar_np.estimators.arm import antithetic_pass
from rebar_np.evaluation.gradcheck import random_instance, run_checks
from rebar_np.model.sbn import hard_pass
from rebar_np.experiments.variance import measure_variance

DRAWS = 4000
# (task, n_layer, n_hidden, nonlinear, batch size, seed, K for the K-sample bound); C^K <= 4096
CASES = {
    "sbn-L1-linear": ("sbn", 1, 3, False, 2, 11, 3),
    "sbn-L2-nonlinear": ("sbn", 2, 3, True, 2, 12, 2),
    "sbn-L2-linear": ("sbn", 2, 2, False, 3, 21, 3),
    "sp-L2-nonlinear": ("sp", 2, 2, True, 2, 16, 2),
}


@lru_cache(maxsize=None)
def case(name):
    """(model, params, x, exact ELBO loss gradient, rng) for a named tiny model."""
    task, L, H, nl, B, seed, _ = CASES[name]
    model, params, x, _, rng = random_instance(task, L, H, nl, n_input=6, batch_size=B, seed=seed)
    return model, params, x, R.exact_gradient(model, params, x), rng


@lru_cache(maxsize=None)
def exact_bound_gradient(name):
    model, params, x, _, _ = case(name)
    return R.exact_multisample_gradient(model, params, x, CASES[name][6])


def assert_unbiased(res):
    print(res.message(5))
    assert res.passed, res.message()


# --------------------------------------------------------------------------
# 1. unbiasedness
# --------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["arm", "disarm"])
@pytest.mark.parametrize("name", list(CASES))
def test_antithetic_estimators_are_unbiased(estimator, name):
    model, params, x, exact, _ = case(name)
    assert_unbiased(check_unbiased(estimator, model, params, {}, x, DRAWS, seed=1, exact=exact,
                                   label=f"{estimator} {name}"))


@pytest.mark.parametrize("estimator", ["vimco", "reinforce_loo"])
@pytest.mark.parametrize("name", list(CASES))
def test_k_sample_estimators_are_unbiased_for_the_k_sample_bound(estimator, name):
    model, params, x, _, _ = case(name)
    Ks = CASES[name][6]
    assert_unbiased(check_unbiased(estimator, model, params, {}, x, DRAWS, seed=3, exact=exact_bound_gradient(name),
                                   options={"samples": Ks}, label=f"{estimator} K={Ks} {name}"))


def test_exact_k_sample_bound_reference():
    """K = 1 is the ELBO; the bound grows with K toward log p(x) (reference sanity)."""
    model, params, x, _, _ = case("sbn-L1-linear")
    e1 = R.exact_multisample_objective(model, params, x, 1)
    assert abs(e1 - R.exact_objective(model, params, x)) < 1e-10
    e2, e3 = (R.exact_multisample_objective(model, params, x, k) for k in (2, 3))
    assert e1 < e2 < e3 < float(np.mean(R.exact_log_marginal(model, params, x)))


# --------------------------------------------------------------------------
# 2. the test has power against each estimator's easy mistakes
# --------------------------------------------------------------------------
def vimco_without_direct_term(model, params, aux, x, u):
    """VIMCO's signals with the -w_k d log q(b^k) term dropped (as if f's q-dependence averaged out)."""
    from rebar_np.estimators import multisample as MS

    def signals(F):
        L, s, w = bern.vimco_signals(F)
        return L, s + w, w      # k_sample_estimate uses (signal - w): this leaves the bare signal
    return MS.k_sample_estimate(model, params, x, u, None, {"samples": 3}, signals)


def test_vimco_without_its_direct_term_is_caught():
    name = "sbn-L2-linear"
    model, params, x, _, _ = case(name)
    res = check_unbiased(vimco_without_direct_term, model, params, {}, x, DRAWS, seed=3,
                         exact=exact_bound_gradient(name), noise_rows=x.shape[0] * 3)
    assert not res.passed, res.message()
    assert {r[1] for r in res.rows() if r[0] > res.threshold} <= {k for k in params if k.startswith("q")}


def test_k_sample_estimator_is_not_an_elbo_estimator():
    model, params, x, exact, _ = case("sbn-L2-linear")
    res = check_unbiased("vimco", model, params, {}, x, DRAWS, seed=3, exact=exact, options={"samples": 3})
    assert not res.passed, res.message()


def test_disarm_without_its_half_is_caught(monkeypatch):
    real = bern.disarm_logit_gradient
    monkeypatch.setattr(bern, "disarm_logit_gradient", lambda f_diff, a, b, b_anti: 2.0 * real(f_diff, a, b, b_anti))
    model, params, x, exact, _ = case("sbn-L1-linear")
    res = check_unbiased("disarm", model, params, {}, x, DRAWS, seed=1, exact=exact)
    assert not res.passed, res.message()


# --------------------------------------------------------------------------
# 3. gradcheck
# --------------------------------------------------------------------------
GRADCHECK = [("sbn", 1, False), ("sbn", 2, True), ("sp", 3, False), ("omni", 2, True)]


@pytest.mark.parametrize("estimator,options", [("arm", None), ("disarm", None), ("vimco", {"samples": 3}),
                                               ("reinforce_loo", {"samples": 2})])
@pytest.mark.parametrize("task,L,nl", GRADCHECK)
def test_gradcheck(estimator, options, task, L, nl):
    rows = run_checks(estimator, task, L, 3, nl, n_input=8, batch_size=3, max_entries=60, options=options)
    bad = [f"{r.tensor}: rel {r.max_rel_err:.2e}" for r in rows if not r.passed]
    assert not bad, "; ".join(bad)
    assert any(r.tensor.startswith(f"q{L - 1}.") for r in rows)


# --------------------------------------------------------------------------
# 4. shortcuts and properties
# --------------------------------------------------------------------------
@pytest.mark.parametrize("task,L,nl", [("sbn", 1, False), ("sbn", 3, True), ("sp", 2, False)])
def test_antithetic_branch_reuses_the_hard_pass_exactly(task, L, nl):
    """f on layer l's antithetic branch == a from-scratch pass with u_l -> 1 - u_l."""
    model, params, x, u, rng = random_instance(task, L, 3, nl, n_input=8, batch_size=4)
    z0 = [K.logistic_noise(ul) for ul in u]
    hp = hard_pass(model, params, x, z0)
    for l in range(L):
        f_anti, b_anti = antithetic_pass(model, params, x, hp, z0, l)
        z_flip = [K.logistic_noise(1.0 - ul) if k == l else K.logistic_noise(ul) for k, ul in enumerate(u)]
        ref = hard_pass(model, params, x, z_flip)
        np.testing.assert_allclose(f_anti, ref.f, rtol=1e-12, atol=1e-10)
        np.testing.assert_array_equal(b_anti, ref.b[l])
        for k in range(l):
            np.testing.assert_array_equal(ref.b[k], hp.b[k])
        assert np.any(b_anti != hp.b[l])


def test_k_sample_signals_match_a_direct_computation_and_are_stable():
    rng = np.random.default_rng(0)
    F = rng.normal(-100.0, 3.0, (4, 5))
    L, s, w = bern.vimco_signals(F)
    Lr, sr, _ = bern.loo_bound_signals(F)
    lme = lambda v: float(np.log(np.mean(np.exp(v - v.max()))) + v.max())
    for n in range(4):
        assert abs(L[n] - lme(F[n])) < 1e-12 and abs(Lr[n] - L[n]) < 1e-12
        np.testing.assert_allclose(w[n], np.exp(F[n] - F[n].max()) / np.sum(np.exp(F[n] - F[n].max())))
        for k in range(5):
            others = np.delete(F[n], k)
            assert abs(s[n, k] - (L[n] - lme(np.append(others, others.mean())))) < 1e-10
            assert abs(sr[n, k] - (L[n] - lme(others))) < 1e-10
    # one sample dominating by 800 nats: exp underflows, the signals must stay finite and exact
    G = np.array([[0.0, -800.0, -801.0]])
    _, s, w = bern.vimco_signals(G)
    _, sr, _ = bern.loo_bound_signals(G)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(sr))
    assert abs(sr[0, 0] - (np.log(1 / 3) - (np.log(0.5) - 800.0 + np.log1p(np.exp(-1.0))))) < 1e-9


def test_k_sample_estimate_reports_the_k_sample_bound():
    model, params, x, u, rng = random_instance("sbn", 2, 3, False, n_input=8, batch_size=4)
    Ks = 4
    uk = [rng.random((4 * Ks, 3)) for _ in range(2)]
    res = E.get("vimco").estimate(model, params, {}, x, uk, options={"samples": Ks})
    f = hard_pass(model, params, np.repeat(x, Ks, axis=0), [K.logistic_noise(ul) for ul in uk]).f.reshape(4, Ks)
    np.testing.assert_allclose(res.elbo, np.log(np.mean(np.exp(f), axis=1)), rtol=1e-10)
    with pytest.raises(E.EstimatorError, match="samples"):
        E.get("vimco").estimate(model, params, {}, x, uk, options={"samples": 1})
    with pytest.raises(ValueError, match="noise"):
        E.get("reinforce_loo").estimate(model, params, {}, x, u, options={"samples": Ks})


def test_disarm_has_lower_variance_than_arm():
    model, params, x, u, rng = random_instance("sbn", 2, 4, False, n_input=12, batch_size=6)
    table = measure_variance(model, params, {"arm": {}, "disarm": {}}, x, 1500, ["arm", "disarm"], seed=4)
    assert table["disarm"]["ci"][1] < table["arm"]["ci"][0], table
