"""RELAX on multilayer SBNs (rebar_np.estimators.relax) and its control network r (rebar_np.model.control_net):

1. Unbiasedness: relax passes the exact-enumeration harness on tiny models with 1 and 2 layers,
   linear and nonlinear, both relaxations, r with and without its context (the data and the hard
   samples below), from a state far from its initialisation (a strong r, eta != 1, lambda = 0.3);
   and the test has power: RELAX without the reparameterised derivative of r fails it.
2. Gradcheck: the model gradient (including r's input derivative on both paths) and every tuning
   gradient (eta, baseline, temperature, r's parameters through the variance objective) match
   finite differences; a 1% error in either of r's hand derivatives is caught and located.
3. r's three derivatives (input gradient, parameter gradient, and the mixed derivative of
   S = sum <v, dr/dz> - c r) match finite differences on their own.
4. The initialisation: r = 0 (w2 = 0), so relax's first estimates equal dynamic_rebar's for the
   same noise, and every parameter of r still learns.
"""
from functools import lru_cache

import numpy as np
import pytest

from harness import check_unbiased
from rebar_np.model import control_net as CN
from rebar_np import estimators as E
from rebar_np.training.adam import AdamConfig, adam_init, adam_update
from rebar_np.evaluation.gradcheck import finite_difference, random_instance, run_checks
from test_arm_vimco import CASES, DRAWS, GRADCHECK, assert_unbiased, case


@lru_cache(maxsize=None)
def relax_aux(name, context=True):
    """A RELAX state far from its initialisation: a strong random r, eta != 1, some baseline."""
    model, params, x, _, _ = case(name)
    rng = np.random.default_rng(CASES[name][5] + 100)
    aux = E.get("relax").init_aux(model, 0, np.float64, {"hidden": 4, "context": context})
    for k, v in aux.items():
        if k.startswith("relax") and not k.endswith(("W1", "V1")):
            v[:] = rng.normal(0, 2.0, v.shape)
        elif k.startswith("psi."):
            v[:] = rng.normal(0, 0.5, v.shape)
    aux["baseline.c2"][:] = -3.0
    aux["tau"][:] = np.log(0.3)
    return aux


@pytest.mark.parametrize("relaxation,context", [("muprop", True), ("concrete", False)])
@pytest.mark.parametrize("name", list(CASES))
def test_relax_is_unbiased(name, relaxation, context):
    """r_l sees z_l and (context) the data and the hard samples below layer l."""
    model, params, x, exact, _ = case(name)
    assert_unbiased(check_unbiased("relax", model, params, relax_aux(name, context), x, DRAWS, seed=2, exact=exact,
                                   options={"hidden": 4, "relaxation": relaxation, "context": context},
                                   label=f"relax {name}"))


def test_relax_without_the_derivative_of_r_is_caught(monkeypatch):
    import rebar_np.estimators.relax as RX
    real = RX.control_net_input_grad
    monkeypatch.setattr(RX, "control_net_input_grad", lambda aux, prefix, cache: 0.0 * real(aux, prefix, cache))
    name = "sbn-L2-linear"
    model, params, x, exact, _ = case(name)
    res = check_unbiased("relax", model, params, relax_aux(name), x, DRAWS, seed=2, exact=exact,
                         options={"hidden": 4})
    assert not res.passed, res.message()
    assert {r[1] for r in res.rows() if r[0] > res.threshold} <= {k for k in params if k.startswith("q")}


@pytest.mark.parametrize("task,L,nl,relaxation", [(t, L, nl, "muprop" if k % 2 == 0 else "concrete")
                                                   for k, (t, L, nl) in enumerate(GRADCHECK + [("sbn", 3, True)])])
def test_relax_gradcheck(task, L, nl, relaxation):
    context = relaxation == "muprop"
    rows = run_checks("relax", task, L, 3, nl, n_input=8, batch_size=3, max_entries=60,
                      options={"relaxation": relaxation, "hidden": 5, "context": context})
    bad = [f"{r.tensor}: rel {r.max_rel_err:.2e}" for r in rows if not r.passed]
    assert not bad, "; ".join(bad)
    names = {r.tensor for r in rows}
    for l in range(L):
        assert {f"aux:relax{l}.{p}" for p in ("W1", "c1", "w2", "c2")} <= names
        assert (f"aux:relax{l}.V1" in names) == context
    assert "aux:tau" in names and any(n.startswith("aux:psi.") for n in names)


@pytest.mark.parametrize("term", ["tangent", "input_grad"])
def test_gradcheck_catches_a_wrong_r_derivative(monkeypatch, term):
    """Drop one term of r's hand derivatives: the check must name the tensors it feeds."""
    import rebar_np.estimators.relax as RX
    if term == "tangent":
        real = RX.control_net_tangent_backward

        def wrong(aux, aux_grads, prefix, cache, v, c, scale=1.0):
            real(aux, aux_grads, prefix, cache, v, c, scale)
            aux_grads[prefix + ".W1"] *= 1.01
        monkeypatch.setattr(RX, "control_net_tangent_backward", wrong)
    else:
        real = RX.control_net_input_grad
        monkeypatch.setattr(RX, "control_net_input_grad", lambda aux, p, cache: 1.01 * real(aux, p, cache))
    rows = run_checks("relax", "sbn", 2, 3, False, n_input=8, batch_size=3, max_entries=30, options={"hidden": 4})
    failed = {r.tensor for r in rows if not r.passed}
    if term == "tangent":
        assert failed == {"aux:relax0.W1", "aux:relax1.W1"}
    else:
        assert {"q0.W", "q1.W"} <= failed


@pytest.mark.parametrize("with_context", [False, True])
def test_control_net_derivatives_match_finite_differences(with_context):
    rng = np.random.default_rng(3)
    net = CN.init_control_net(5, 4, rng, np.float64, prefix="r", n_context=7 if with_context else 0)
    net["r.w2"][:] = rng.normal(0, 1, 4)
    net["r.c1"][:] = rng.normal(0, 1, 4)
    z = rng.normal(0, 2, (6, 5))
    ctx = rng.normal(0, 1, (6, 7)) if with_context else None
    v, c = rng.normal(0, 1, (6, 5)), rng.normal(0, 1, 6)
    r, cache = CN.control_net_forward(net, "r", z, ctx)
    rho = CN.control_net_input_grad(net, "r", cache)
    # rho = dr/dz, row by row (the context held fixed)
    zd = {"z": z.copy()}
    fd = finite_difference(lambda: float(np.sum(CN.control_net_forward(net, "r", zd["z"], ctx)[0])), zd)["z"][1]
    np.testing.assert_allclose(rho.ravel(), fd, rtol=1e-7, atol=1e-9)
    # parameter gradient of sum_n dr_n r_n, and of S = sum_n <v_n, rho_n> - c_n r_n

    def S():
        rr, cc = CN.control_net_forward(net, "r", z, ctx)
        return float(np.sum(v * CN.control_net_input_grad(net, "r", cc)) - np.sum(c * rr))
    for fn, fill in ((lambda: float(np.sum(c * CN.control_net_forward(net, "r", z, ctx)[0])),
                      lambda g: CN.control_net_backward(net, g, "r", cache, c)),
                     (S, lambda g: CN.control_net_tangent_backward(net, g, "r", cache, v, c))):
        g = {k: np.zeros_like(p) for k, p in net.items()}
        fill(g)
        for k, (idx, vals) in finite_difference(fn, net).items():
            np.testing.assert_allclose(g[k].ravel()[idx], vals, rtol=1e-6, atol=1e-8, err_msg=k)
    assert ("r.V1" in net) == with_context


# --------------------------------------------------------------------------
# 4. initialisation: RELAX starts exactly at dynamic REBAR
# --------------------------------------------------------------------------
@pytest.mark.parametrize("nonlinear,relaxation,context", [(False, "muprop", True), (True, "concrete", False)])
def test_relax_starts_exactly_at_dynamic_rebar(nonlinear, relaxation, context):
    """w2 = 0 at initialisation: r = 0 and rho = 0, so with the same REBAR parts (baseline, eta,
    lambda) and the same noise u, relax's model gradient and REBAR-part tuning gradients are
    dynamic_rebar's. r's own gradients: w2 and c2 move first (dV/dw2 != 0), W1, V1 and c1 follow
    once w2 != 0 -- a few steps of the aux optimizer move all of them."""
    model, params, x, u, _ = random_instance("sbn", 2, 4, nonlinear, n_input=8, batch_size=5, seed=4)
    opts = {"relaxation": relaxation}
    ropts = {**opts, "hidden": 6, "context": context}
    d_aux = E.get("dynamic_rebar").init_aux(model, 3, np.float64, opts)
    r_aux = E.get("relax").init_aux(model, 3, np.float64, ropts)
    assert set(d_aux) <= set(r_aux)
    for k in d_aux:
        np.testing.assert_array_equal(r_aux[k], d_aux[k], err_msg=k)
    for l in range(model.n_layer):
        assert not np.any(r_aux[f"relax{l}.w2"]) and not np.any(r_aux[f"relax{l}.c2"])
    d = E.get("dynamic_rebar").estimate(model, params, d_aux, x, u, options=opts)
    r = E.get("relax").estimate(model, params, r_aux, x, u, options=ropts)
    assert r.stat("rms_r") == 0.0
    for k in params:
        np.testing.assert_allclose(r.grads[k], d.grads[k], rtol=1e-12, atol=1e-14, err_msg=k)
    for k in d_aux:
        np.testing.assert_allclose(r.aux_grads[k], d.aux_grads[k], rtol=1e-12, atol=1e-14, err_msg=k)
    first = [f"relax{l}.{p}" for l in range(model.n_layer) for p in ("W1", "c1") + (("V1",) if context else ())]
    assert all(np.any(r.aux_grads[f"relax{l}.w2"]) for l in range(model.n_layer))
    assert not any(np.any(r.aux_grads[k]) for k in first)          # dV/dW1 carries a factor w2 = 0
    # training proceeds: a few aux steps on fresh noise move every parameter of r
    rng, opt, start = np.random.default_rng(5), adam_init(r_aux), {k: v.copy() for k, v in r_aux.items()}
    for _ in range(3):
        res = E.get("relax").estimate(model, params, r_aux, x, rng=rng, options=ropts)
        adam_update(r_aux, res.aux_grads, opt, AdamConfig(1e-2))
    assert all(np.any(res.aux_grads[k]) for k in first)
    for k in r_aux:
        if k.startswith("relax"):
            assert np.all(r_aux[k] != start[k]), k
