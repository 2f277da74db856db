"""REINFORCE and NVIL are unbiased: on tiny models their mean estimate matches the
exact gradient (enumeration + finite differences) within a Bonferroni-corrected
z-test; and the test has power: a biased REINFORCE fails it."""
from functools import lru_cache

import numpy as np
import pytest

import reference as R
from harness import biased_reinforce, bonferroni_threshold, check_unbiased
from rebar_np import estimators as E
from rebar_np.evaluation.gradcheck import random_instance

# (task, n_layer, n_hidden, nonlinear, batch size, seed, draws); 2^(L H) <= 512 configurations
CASES = {
    "sbn-L1-linear": ("sbn", 1, 3, False, 2, 11, 4000),
    "sbn-L2-nonlinear": ("sbn", 2, 3, True, 2, 12, 4000),
    "sbn-L3-linear": ("sbn", 3, 3, False, 3, 13, 5000),
    "sbn-L3-nonlinear": ("sbn", 3, 3, True, 2, 14, 6000),
    "sp-L1-nonlinear": ("sp", 1, 3, True, 2, 15, 4000),
    "sp-L2-linear": ("sp", 2, 3, False, 3, 16, 4000),
    "omni-L2-nonlinear": ("omni", 2, 2, True, 2, 17, 4000),
}


@lru_cache(maxsize=None)
def case(name):
    """(model, params, nvil aux, x, exact loss gradient, draws) for a named tiny model."""
    task, L, H, nl, B, seed, draws = CASES[name]
    model, params, x, _, rng = random_instance(task, L, H, nl, n_input=6, batch_size=B, seed=seed)
    aux = E.get("nvil").init_aux(model, seed, np.float64)
    aux["baseline.c2"][:] = rng.normal(-3.0, 1.0, 1)      # some baseline, not zero
    return model, params, aux, x, R.exact_gradient(model, params, x), draws


@pytest.mark.parametrize("estimator", ["reinforce", "nvil"])
@pytest.mark.parametrize("name", list(CASES))
def test_estimator_is_unbiased(estimator, name):
    model, params, aux, x, exact, draws = case(name)
    res = check_unbiased(estimator, model, params, aux if estimator == "nvil" else {}, x, draws,
                         seed=1, exact=exact, label=f"{estimator} {name}")
    print(res.message(5))
    assert res.passed, res.message()
    assert res.n_entries == sum(v.size for v in params.values())


@pytest.mark.parametrize("name", ["sbn-L1-linear", "sbn-L2-nonlinear", "sp-L1-nonlinear"])
def test_biased_reinforce_fails(name):
    """Baseline = mean over all examples (itself included): the score term shrinks by 1 - 1/B = 1/2."""
    model, params, aux, x, exact, draws = case(name)
    assert x.shape[0] == 2
    res = check_unbiased(biased_reinforce, model, params, {}, x, draws, seed=1, exact=exact)
    print(res.message(5))
    assert not res.passed, "the harness did not detect a biased estimator:\n" + res.message()
    assert res.max_abs_z > 2 * res.threshold, res.message()
    # the bias is confined to the recognition parameters: every rejected entry is a q* entry
    rejected = {r[1] for r in res.rows() if r[0] > res.threshold}
    assert rejected and all(k.startswith("q") for k in rejected), res.message(20)
    # and, for B = 2, the recognition mean is about half the exact value
    q = [k for k in params if k.startswith("q")]
    m = np.concatenate([res.mean[k].ravel() for k in q])
    e = np.concatenate([res.exact[k].ravel() for k in q])
    ratio = float(m @ e / (e @ e))
    assert 0.4 < ratio < 0.6, f"E[biased] / exact along the exact q gradient = {ratio:.3f}, expected 1/2"


# --------------------------------------------------------------------------
# The harness itself
# --------------------------------------------------------------------------
def test_bonferroni_threshold():
    assert abs(bonferroni_threshold(1, 10**7) - 3.2905) < 1e-3          # two-sided 0.1%
    assert bonferroni_threshold(100, 10**7) > bonferroni_threshold(10, 10**7) > 3.29
    assert bonferroni_threshold(10, 50) > bonferroni_threshold(10, 10**7)   # t, not normal, for few draws


def test_harness_handles_deterministic_entries():
    """Entries that never vary are compared exactly (no division by a zero standard error)."""
    model, params, aux, x, exact, _ = case("sbn-L1-linear")
    est = E.get("reinforce")

    def with_fixed_prior(offset):
        def fn(model, params, aux, x, u):
            res = est.estimate(model, params, aux, x, u)        # an Estimate: the harness takes .grads
            res.grads["prior.logits"] = exact["prior.logits"] + offset
            res.grads["q0.c"] = np.zeros_like(res.grads["q0.c"]) + exact["q0.c"] * (offset == 0)
            return res
        return fn
    ok = check_unbiased(with_fixed_prior(0.0), model, params, {}, x, 500, seed=2, exact=exact)
    assert ok.passed, ok.message()
    assert ok.deterministic["prior.logits"].all() and ok.deterministic["q0.c"].all()
    assert np.all(ok.z["prior.logits"] == 0)
    bad = check_unbiased(with_fixed_prior(1e-6), model, params, {}, x, 500, seed=2, exact=exact)
    assert not bad.passed
    assert np.isinf(bad.max_abs_z)
    assert "prior.logits" in bad.message() and "deterministic" in bad.message()


def test_harness_is_reproducible():
    model, params, aux, x, exact, _ = case("sbn-L1-linear")
    a = check_unbiased("reinforce", model, params, {}, x, 300, seed=5, exact=exact)
    b = check_unbiased("reinforce", model, params, {}, x, 300, seed=5, exact=exact)
    assert a.max_abs_z == b.max_abs_z
    for k in params:
        np.testing.assert_array_equal(a.z[k], b.z[k])


def reinforce_biased_in_top_layer(model, params, aux, x, u):
    """REINFORCE with the leave-one-out signal below, the all-examples baseline in the top layer only."""
    from rebar_np import kernels as K
    from rebar_np.model.sbn import hard_pass, score_function_gradient
    hp = hard_pass(model, params, x, [K.logistic_noise(ul) for ul in u])
    loo = K.leave_one_out_center(hp.f)
    signal = [loo] * (model.n_layer - 1) + [hp.f - hp.f.mean()]
    return score_function_gradient(model, params, x, hp, signal)


def test_bias_in_one_layer_is_caught_and_located():
    model, params, aux, x, exact, draws = case("sbn-L3-linear")
    res = check_unbiased(reinforce_biased_in_top_layer, model, params, {}, x, draws, seed=1, exact=exact)
    print(res.message(5))
    assert not res.passed, res.message()
    rejected = {r[1] for r in res.rows() if r[0] > res.threshold}
    assert rejected and all(k.startswith("q2.") for k in rejected), res.message(20)


# --------------------------------------------------------------------------
# The control-variate estimators (issues 3 and 4): REBAR (per-layer and joint
# control variates, fixed and learned temperature), MuProp, SimpleMuProp.
# Their trained state (eta, temperature, baselines, scalings) is set to
# arbitrary values: unbiasedness must hold for *any* such state.
# --------------------------------------------------------------------------
CV_CASES = ["sbn-L1-linear", "sbn-L2-nonlinear", "sbn-L3-linear", "sp-L2-linear", "omni-L2-nonlinear"]
CV_ESTIMATORS = [("rebar", None), ("rebar", {"joint": True}), ("rebar", {"relaxation": "concrete"}),
                 ("dynamic_rebar", None), ("dynamic_rebar", {"joint": True}),
                 ("muprop", None), ("simple_muprop", None)]


def arbitrary_aux(estimator, model, seed, options=None):
    """The estimator's trained state, moved away from its initial values."""
    rng = np.random.default_rng(seed)
    aux = E.get(estimator).init_aux(model, seed, np.float64, options)
    for k, v in aux.items():
        if k == "tau":
            v[:] = np.log(0.3)                      # lambda = 0.3, not the 0.5 it starts at
        elif k.startswith("psi."):
            v[:] = rng.normal(0.0, 1.0, v.shape)    # eta = 2 sigma(psi) in (0, 2), or a scaling
        elif k.endswith(".c2"):
            v[:] = rng.normal(-3.0, 1.0, v.shape)   # a baseline output far from zero
        else:
            v[:] = rng.normal(0.0, 0.3, v.shape)
    return aux


def option_label(options):
    return ",".join(f"{k}={v}" for k, v in (options or {}).items()) or "default"


@pytest.mark.parametrize("estimator,options", CV_ESTIMATORS,
                         ids=[f"{e}-{option_label(o)}" for e, o in CV_ESTIMATORS])
@pytest.mark.parametrize("name", CV_CASES)
def test_control_variate_estimator_is_unbiased(estimator, options, name):
    model, params, _, x, exact, draws = case(name)
    aux = arbitrary_aux(estimator, model, 3, options)
    res = check_unbiased(estimator, model, params, aux, x, draws, seed=1, exact=exact, options=options,
                         label=f"{estimator}[{option_label(options)}] {name}")
    print(res.message(5))
    assert res.passed, res.message()


@pytest.mark.parametrize("name", ["sbn-L1-linear", "sbn-L2-nonlinear"])
def test_concrete_is_biased(name):
    """The relaxed ELBO's reparameterised gradient is not the gradient of E_q[f]: the harness rejects it."""
    model, params, _, x, exact, draws = case(name)
    res = check_unbiased("concrete", model, params, {}, x, draws, seed=1, exact=exact,
                         options={"temperature": 0.5})
    print(res.message(5))
    assert not res.passed, "concrete passed the unbiasedness test:\n" + res.message()
    assert res.max_abs_z > 3 * res.threshold, res.message()
