"""REBAR's relaxed passes and the shortcuts rebar_np takes, each proved here:

1. The conditional path z~ has the same *value* as z (only its derivative differs):
   f_l(z) == f_l(z~) at the current parameters.
2. Hence grad f_l(z) - grad f_l(z~) is zero for every parameter except those of
   T_ql (the switch layer's recognition transform): the generative parameters get
   no control-variate term, and the relaxed passes need no parameter gradients.
   Checked by brute-force finite differences over *all* parameters.
3. The relaxed pass reuses the hard pass below the switch layer: its f_l equals a
   relaxed ELBO recomputed from scratch (hard samples below l fed in explicitly).
4. The three derivatives the relaxed pass returns (d f_l / d z_k, d f_l / d tau,
   d^2 f_l / d z_l d tau) agree with finite differences, for both relaxations.
5. Every REBAR-family gradient (model, eta, baseline, temperature) passes gradcheck.
"""
import numpy as np
import pytest

from rebar_np import kernels as K
from rebar_np.estimators.rebar import conditional_z0
from rebar_np.evaluation.gradcheck import finite_difference, random_instance, run_checks
from rebar_np.model.sbn import generative_forward, hard_pass, hard_pass_at, log_q_layers, recognition_forward
from rebar_np.model.relaxed import relaxed_pass

CASES = [(task, L, nl) for task in ("sbn", "sp") for L in (1, 2, 3) for nl in (False, True)]


def setup(task, L, nl, seed=0):
    model, params, x, u, rng = random_instance(task, L, 3, nl, n_input=8, batch_size=4, seed=seed)
    z0 = [K.logistic_noise(ul) for ul in u]
    return model, params, x, u, z0


@pytest.mark.parametrize("task,L,nl", CASES)
def test_paths_equal_in_value_and_differ_only_in_T_ql(task, L, nl):
    model, params, x, u, z0 = setup(task, L, nl)
    hp = hard_pass(model, params, x, z0)
    b, a0 = hp.b, [q.a.copy() for q in hp.layers]
    for l in range(L):
        def paths():
            h = hard_pass_at(model, params, x, b)
            zc = list(z0)
            zc[l] = conditional_z0(h.layers[l].a, a0[l], u[l], b[l])
            return (relaxed_pass(model, params, x, h, z0, l, 0.6, True, False).f,
                    relaxed_pass(model, params, x, h, zc, l, 0.6, True, False).f)
        f_z, f_zc = paths()
        np.testing.assert_allclose(f_z, f_zc, rtol=0, atol=1e-9)                      # shortcut 1
        diff = finite_difference(lambda: float(np.sum(np.subtract(*paths()))), params, 1e-6)
        for name, (_, vals) in diff.items():
            if name.startswith(f"q{l}."):
                continue
            assert np.max(np.abs(vals)) < 1e-7, f"{name} gets a control-variate term: {np.max(np.abs(vals)):.2e}"
        assert max(np.max(np.abs(v)) for k, (_, v) in diff.items() if k.startswith(f"q{l}.")) > 1e-4


def relaxed_from_scratch(model, params, x, b, z0, l, lam, improved):
    """f_l with no reuse: hard samples below l, relaxed from l up, every term recomputed."""
    samples = []

    def sample(k, a):
        s = b[k] if k < l else K.relaxed_sample_forward(a, z0[k], lam, improved)
        samples.append(s)
        return s
    layers = recognition_forward(model, params, model.q_input(x), sample)
    logq = log_q_layers(layers)
    logp, _ = generative_forward(model, params, x, samples)
    return logp - sum(logq)


@pytest.mark.parametrize("task,L,nl", CASES)
def test_reuse_below_the_switch_layer_is_exact(task, L, nl):
    model, params, x, u, z0 = setup(task, L, nl)
    hp = hard_pass(model, params, x, z0)
    for l in range(L):
        for improved in (True, False):
            f = relaxed_pass(model, params, x, hp, z0, l, 0.4, improved, False).f
            ref = relaxed_from_scratch(model, params, x, hp.b, z0, l, 0.4, improved)
            np.testing.assert_allclose(f, ref, rtol=1e-12, atol=1e-10)                  # shortcut 3


@pytest.mark.parametrize("task,L,nl", [c for c in CASES if c[0] == "sbn"] + [("sp", 2, True)])
@pytest.mark.parametrize("improved", [True, False])
def test_relaxed_derivatives_match_finite_differences(task, L, nl, improved):
    model, params, x, u, z0 = setup(task, L, nl)
    hp = hard_pass(model, params, x, z0)
    lam, eps = 0.7, 1e-6
    for l in range(L):
        rp = relaxed_pass(model, params, x, hp, z0, l, lam, improved, True)
        f_of = lambda zz, lm: relaxed_pass(model, params, x, hp, zz, l, lm, improved, False)
        # d f_l / d z_k for every relaxed layer k (each example's f depends on its own row only)
        for k in range(l, L):
            fd = np.zeros_like(rp.g_z[k])
            for j in range(fd.shape[1]):
                zp, zm = [z.copy() for z in z0], [z.copy() for z in z0]
                zp[k][:, j] += eps
                zm[k][:, j] -= eps
                fd[:, j] = (f_of(zp, lam).f - f_of(zm, lam).f) / (2 * eps)
            err = np.max(np.abs(fd - rp.g_z[k])) / np.max(np.abs(fd))
            assert err < 1e-6, f"d f_{l}/d z_{k}: relative error {err:.2e}"
        # temperature: f_l and g_z at tau +- eps
        tau = np.log(lam)
        hi, lo = f_of(z0, np.exp(tau + eps)), f_of(z0, np.exp(tau - eps))
        fd_f = (hi.f - lo.f) / (2 * eps)
        err = np.max(np.abs(fd_f - rp.f_dot)) / np.max(np.abs(fd_f))
        assert err < 1e-6, f"d f_{l}/d tau: relative error {err:.2e}"
        for k in range(l, L):
            fd_g = (hi.g_z[k] - lo.g_z[k]) / (2 * eps)
            err = np.max(np.abs(fd_g - rp.g_z_dot[k])) / np.max(np.abs(fd_g))
            assert err < 1e-6, f"d g_z[{k}]/d tau (switch {l}): relative error {err:.2e}"


@pytest.mark.parametrize("estimator", ["rebar", "dynamic_rebar"])
@pytest.mark.parametrize("task,L,nl", [("sbn", 1, False), ("sbn", 2, True), ("sbn", 3, False),
                                       ("sp", 2, False), ("omni", 3, True)])
@pytest.mark.parametrize("joint", [False, True])
def test_rebar_gradcheck(estimator, task, L, nl, joint):
    rows = run_checks(estimator, task, L, 3, nl, n_input=8, batch_size=3, max_entries=60,
                      options={"joint": joint, "relaxation": "muprop" if L != 2 else "concrete"})
    bad = [f"{r.tensor}: rel {r.max_rel_err:.2e}" for r in rows if not r.passed]
    assert not bad, "; ".join(bad)
    names = {r.tensor for r in rows}
    assert ("aux:tau" in names) == (estimator == "dynamic_rebar")
    assert any(n.startswith("aux:psi.") for n in names) and any(n.startswith("aux:baseline.") for n in names)



@pytest.mark.parametrize("estimator", ["rebar", "dynamic_rebar"])
@pytest.mark.parametrize("task,L", [("sbn", 1), ("sbn", 3), ("sp", 2)])
@pytest.mark.parametrize("joint", [False, True])
def test_gram_route_gives_the_same_estimate(monkeypatch, estimator, task, L, joint):
    """A linear q transform's G_k, its variance sums and logit tangents through the Gram matrix
    (recognition_gradient) equal those of E_k and the tangent product, to float64 rounding."""
    import rebar_np.estimators.rebar as R
    from rebar_np import estimators as E
    model, params, x, u, _ = random_instance(task, L, 5, False, n_input=12, batch_size=4, seed=3)
    est, options = E.get(estimator), {"joint": joint}

    def run(gram):
        monkeypatch.setattr(R, "gram_pays", lambda B, shape: gram)
        aux = est.init_aux(model, 0, np.float64, options)
        for i, k in enumerate(sorted(aux)):
            if k.startswith("psi."):
                aux[k][:] = 0.1 * i - 1.0               # a different eta per tensor, W and c included
        return est.estimate(model, params, aux, x, u=u, options=options)

    gram, plain = run(True), run(False)
    for group in ("grads", "aux_grads"):
        for k, want in getattr(plain, group).items():
            got = getattr(gram, group)[k]
            err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)
            assert err < 1e-12, f"{estimator} {group}[{k}]: relative error {err:.2e} between the routes"
    assert abs(gram.stat("variance_objective") / plain.stat("variance_objective") - 1) < 1e-12


@pytest.mark.parametrize("joint", [False, True])
def test_dynamic_rebar_gradcheck_through_the_gram_route(monkeypatch, joint):
    import rebar_np.estimators.rebar as R
    monkeypatch.setattr(R, "gram_pays", lambda B, shape: True)
    rows = run_checks("dynamic_rebar", "sbn", 2, 3, False, n_input=8, batch_size=3, max_entries=60,
                      options={"joint": joint})
    bad = [f"{r.tensor}: rel {r.max_rel_err:.2e}" for r in rows if not r.passed]
    assert not bad, "; ".join(bad)


def test_gram_route_is_taken_at_batch_24():
    from rebar_np.estimators.rebar import gram_pays
    assert gram_pays(24, (784, 200)) and gram_pays(24, (200, 200))
    assert not gram_pays(320, (784, 200)) and not gram_pays(200, (200, 200))

@pytest.mark.parametrize("task,L,nl", [("sbn", 2, False), ("sp", 3, True)])
def test_concrete_gradcheck(task, L, nl):
    rows = run_checks("concrete", task, L, 3, nl, n_input=8, batch_size=3)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]


def test_gradcheck_catches_a_wrong_temperature_gradient(monkeypatch):
    import rebar_np.estimators.dynamic_rebar as D
    real = D.rebar_estimate

    def off_by_one_percent(*a, **k):
        res = real(*a, **k)
        res.aux_grads["tau"] *= 1.01
        return res
    monkeypatch.setattr(D, "rebar_estimate", off_by_one_percent)
    rows = run_checks("dynamic_rebar", "sbn", 2, 3, False, n_input=8, batch_size=3, max_entries=20)
    assert [r.tensor for r in rows if not r.passed] == ["aux:tau"]


@pytest.mark.parametrize("estimator,options", [("nvil", None), ("dynamic_rebar", None), ("rebar", {"joint": True}),
                                               ("relax", None), ("muprop", None), ("concrete", None)])
@pytest.mark.parametrize("task,L,nl,H,D,B,dtype", [("sbn", 2, False, 3, 8, 4, np.float64),
                                                   ("sp", 2, True, 3, 8, 4, np.float64),
                                                   ("sbn", 2, False, 200, 784, 24, np.float32)])
def test_written_gradients_do_not_depend_on_what_memory_held(monkeypatch, estimator, options, task, L, nl, H, D,
                                                              B, dtype):
    """Gradients whose first backward writes instead of adding (score_function_gradient, REBAR's E,
    RELAX's E and R, concrete's relaxed pass) start from np.empty: the estimate must not depend
    on what that memory held. With every new float array filled with NaN it is the same, bit for
    bit, as without; the last shape runs the products in blocks (BLAS with beta = 0)."""
    from rebar_np import estimators as E
    model, params, x, u, rng = random_instance(task, L, H, nl, n_input=D, batch_size=B)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x, u = x.astype(dtype), [ul.astype(dtype) for ul in u]
    est = E.get(estimator)

    def run():
        aux = est.init_aux(model, 0, dtype, options)
        return est.estimate(model, params, aux, x, u=u, options=options)

    clean = run()
    empty, empty_like = np.empty, np.empty_like

    def nan_filled(a):
        if a.dtype.kind == "f":
            a.fill(np.nan)
        return a
    monkeypatch.setattr(np, "empty", lambda *a, **k: nan_filled(empty(*a, **k)))
    monkeypatch.setattr(np, "empty_like", lambda *a, **k: nan_filled(empty_like(*a, **k)))
    dirty = run()
    monkeypatch.undo()
    for group in ("grads", "aux_grads"):
        for k, want in getattr(clean, group).items():
            got = getattr(dirty, group)[k]
            assert np.all(np.isfinite(got)), f"{estimator} {group}[{k}]: NaN from uninitialised memory"
            assert np.array_equal(got, want), f"{estimator} {group}[{k}] differs"

