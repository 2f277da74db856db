"""rebar_np against the independent reference implementation (tests/reference.py):
same samples, same ELBO, same REINFORCE / NVIL gradients at the same noise; and
the importance-weighted bound behaves as a bound between the ELBO and log p(x)."""
import numpy as np
import pytest
from scipy.special import logsumexp

import reference as R
from rebar_np import estimators as E
from rebar_np import kernels as K
from rebar_np.evaluation.gradcheck import random_instance
from rebar_np.evaluation.bound import iw_bound, uniform_bits
from rebar_np.model.sbn import SBN, draw_noise, hard_pass, init_params

CASES = [(task, L, nl) for task in ("sbn", "sp") for L in (1, 2, 3) for nl in (False, True)]
GRAD_TOL = 1e-6


def instance(task, L, nl, seed=0, n_input=6, n_hidden=3, batch_size=3):
    model, params, x, u, rng = random_instance(task, L, n_hidden, nl, n_input=n_input,
                                               batch_size=batch_size, seed=seed)
    return model, params, x, u, rng


def nvil_aux(model, rng):
    aux = E.get("nvil").init_aux(model, 1, np.float64)
    aux["baseline.c1"][:] = rng.normal(0, 0.5, aux["baseline.c1"].shape)
    aux["baseline.c2"][:] = -4.0                   # a baseline far from zero, so c(x) matters
    return aux


def assert_grads_match(label, got, want, tol=GRAD_TOL):
    assert set(got) == set(want), f"{label}: parameter names differ: {sorted(set(got) ^ set(want))}"
    lines, worst = [], 0.0
    for k in want:
        g, w = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        assert g.shape == w.shape, f"{label} {k}: shape {g.shape} != {w.shape}"
        scale = max(float(np.max(np.abs(w))), float(np.max(np.abs(g))), 1e-12)
        rel = float(np.max(np.abs(g - w))) / scale
        worst = max(worst, rel)
        lines.append(f"  {k:<14} rel {rel:.2e}  scale {scale:.2e}")
    assert worst < tol, f"{label}: relative error {worst:.2e} >= {tol:.0e}\n" + "\n".join(lines)


@pytest.mark.parametrize("task,L,nl", CASES)
def test_samples_and_elbo_match_reference(task, L, nl):
    model, params, x, u, _ = instance(task, L, nl)
    res = E.get("reinforce").estimate(model, params, {}, x, u)
    b = R.sample_b(model, params, x, u)
    for l in range(L):
        assert np.array_equal(res.frozen["b"][l], b[l]), f"layer {l}: hard samples differ"
    assert 0 < np.mean(np.concatenate(b)) < 1, "degenerate instance: all samples equal"
    f = R.elbo(model, params, x, b)
    err = np.max(np.abs(res.elbo - f) / np.maximum(1.0, np.abs(f)))
    assert err < 1e-10, f"hard ELBO differs from the reference: {res.elbo} vs {f} (rel {err:.2e})"


@pytest.mark.parametrize("task,L,nl", CASES)
def test_reinforce_matches_reference(task, L, nl):
    model, params, x, u, _ = instance(task, L, nl)
    res = E.get("reinforce").estimate(model, params, {}, x, u)
    assert_grads_match(f"reinforce {task} L={L} nl={nl}", res.grads, R.reinforce_gradient(model, params, x, u))


@pytest.mark.parametrize("task,L,nl", CASES)
def test_nvil_matches_reference(task, L, nl):
    model, params, x, u, rng = instance(task, L, nl)
    aux = nvil_aux(model, rng)
    res = E.get("nvil").estimate(model, params, aux, x, u)
    label = f"nvil {task} L={L} nl={nl}"
    assert_grads_match(label, res.grads, R.nvil_gradient(model, params, aux, x, u))
    assert_grads_match(label + " (baseline)", res.aux_grads, R.nvil_aux_gradient(model, params, aux, x, u))
    # reinforce and nvil differ only in the recognition gradients
    rf = E.get("reinforce").estimate(model, params, {}, x, u)
    for k in params:
        if not k.startswith("q"):
            np.testing.assert_allclose(res.grads[k], rf.grads[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_reference_signals():
    f = np.array([3.0, -1.0, 4.0])
    np.testing.assert_allclose(R.leave_one_out_signal(f), K.leave_one_out_center(f), rtol=1e-14)
    model, params, x, u, rng = instance("sp", 2, True)
    aux = nvil_aux(model, rng)
    from rebar_np.model.baseline import baseline_forward
    c, _ = baseline_forward(aux, model.q_input(x))
    np.testing.assert_allclose(R.baseline(model, aux, x), c, rtol=1e-12)


def test_noise_drawn_from_rng_when_not_given():
    model, params, x, _, _ = instance("sbn", 2, False)
    for name in ("reinforce", "nvil"):
        est = E.get(name)
        aux = est.init_aux(model, 0, np.float64)
        a = est.estimate(model, params, aux, x, rng=np.random.default_rng(5))
        b = est.estimate(model, params, aux, x, draw_noise(model, x.shape[0], np.random.default_rng(5), np.float64))
        for k in params:
            np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=f"{name} {k}")


# --------------------------------------------------------------------------
# Exact expectations: the reference's enumeration against sampling
# --------------------------------------------------------------------------
def exact_per_example(model, params, x):
    lq, lp = R.enumerate_terms(model, params, x)
    return np.sum(np.exp(lq) * (lp - lq), axis=1), R.exact_log_marginal(model, params, x)


@pytest.mark.parametrize("task,L,nl", [("sbn", 2, True), ("sp", 3, False)])
def test_enumeration_against_sampled_elbo(task, L, nl):
    model, params, x, _, _ = instance(task, L, nl, seed=4)
    lq, _ = R.enumerate_terms(model, params, x)
    np.testing.assert_allclose(np.exp(lq).sum(axis=1), 1.0, rtol=1e-12, err_msg="q does not sum to one")
    elbo, logpx = exact_per_example(model, params, x)
    assert np.all(elbo < logpx), f"ELBO {elbo} above log p(x) {logpx}"
    assert abs(R.exact_objective(model, params, x) - elbo.mean()) < 1e-12
    # rebar_np's sampled ELBO has the enumerated expectation
    n = 20000
    rng = np.random.default_rng(0)
    xr = np.repeat(x, n, axis=0)
    z0 = [K.logistic_noise(ul) for ul in draw_noise(model, xr.shape[0], rng, np.float64)]
    f = hard_pass(model, params, xr, z0).f.reshape(x.shape[0], n)
    z = (f.mean(axis=1) - elbo) / (f.std(axis=1, ddof=1) / np.sqrt(n))
    assert np.all(np.abs(z) < 4.5), f"sampled ELBO mean off the enumerated one: z = {z}"


def test_iw_bound_between_elbo_and_log_marginal():
    model, params, x, _, _ = instance("sbn", 2, False, seed=2, batch_size=2)
    elbo, logpx = exact_per_example(model, params, x)
    assert np.all(logpx - elbo > 0.05), f"gap too small to test: {logpx - elbo}"
    rng = np.random.default_rng(1)
    reps = 4000

    def draws(k, reps):
        xr = np.tile(x, (reps, 1))          # rows r*B + n
        return iw_bound(model, params, xr, k, rng).reshape(reps, x.shape[0])

    means, ses = {}, {}
    for k, n in ((1, reps), (10, reps // 4), (100, reps // 40)):
        v = draws(k, n)
        means[k], ses[k] = v.mean(axis=0), v.std(axis=0, ddof=1) / np.sqrt(n)
    # k = 1 is the ELBO itself, in expectation
    z1 = (means[1] - elbo) / ses[1]
    assert np.all(np.abs(z1) < 4.5), f"iw_bound(k=1) mean {means[1]} vs ELBO {elbo}: z = {z1}"
    # larger k: at least the ELBO, increasing in k, at most log p(x)
    for k in (10, 100):
        assert np.all(means[k] > elbo + 4 * ses[k]), f"k={k}: {means[k]} not above the ELBO {elbo}"
        assert np.all(means[k] < logpx + 4 * ses[k]), f"k={k}: {means[k]} above log p(x) {logpx}"
    assert np.all(means[100] > means[10] - 4 * np.hypot(ses[10], ses[100])), (means[10], means[100])
    # and it converges to log p(x): by the delta method its sd is sqrt(Var_q[w] / k) / p(x), w = p(x, b) / q(b)
    k = 5000
    big = iw_bound(model, params, x, k, rng)
    lq, lp = R.enumerate_terms(model, params, x)
    sd = np.sqrt((np.sum(np.exp(2 * lp - lq - 2 * logpx[:, None]), axis=1) - 1) / k)
    assert np.all(np.abs(big - logpx) < 5 * sd), \
        f"iw_bound(k={k}) {big} vs log p(x) {logpx} (sd {sd}, ELBO {elbo})"
    assert np.all(5 * sd < 0.5 * (logpx - elbo)), "the convergence check would not tell log p(x) from the ELBO"


@pytest.mark.parametrize("nonlinear", [True, False])
@pytest.mark.parametrize("products", ["tables", "matrix"])
@pytest.mark.parametrize("chunk", [1, 7, 100, 250])
def test_iw_bound_matches_reference_at_the_same_noise(chunk, products, nonlinear, monkeypatch):
    """iw_bound draws, chunk by chunk, 32 random bits per unit, uniform_bits(rng, (B * k_chunk, H))
    per layer, standing for u = (bits + 1/2) 2^-32, with rows n * k_chunk .. (n + 1) * k_chunk - 1
    for example n; at that noise it must equal log mean exp of the reference ELBOs, however the
    samples are chunked, with the samples' products done by tables or (tables too large to
    pay) by matrix products, and (linear transforms) the table products scored in the same pass."""
    from rebar_np.kernels import tables
    if products == "matrix":
        monkeypatch.setattr(tables, "TABLE_MAX_BYTES", 0)
    model, params, x, _, _ = instance("sp", 2, nonlinear, seed=5, batch_size=3)
    B, k = x.shape[0], 250
    got = iw_bound(model, params, x, k, np.random.default_rng(3), chunk=chunk)
    rng = np.random.default_rng(3)
    fs, done = [], 0
    while done < k:
        kc = min(chunk, k - done)
        u = [(uniform_bits(rng, (B * kc, model.n_hidden)) + 0.5) * 2.0 ** -32 for _ in range(model.n_layer)]
        xr = np.repeat(x, kc, axis=0)
        fs.append(R.elbo(model, params, xr, R.sample_b(model, params, xr, u)).reshape(B, kc))
        done += kc
    want = logsumexp(np.concatenate(fs, axis=1), axis=1) - np.log(k)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_iw_bound_float32_agrees_with_float64(nonlinear):
    """The float32 bound (its one-pass kernels: kernels.sample_rows, kernels.binary_product_loglik)
    against the float64 one at the same noise, on a model wide enough for whole table groups."""
    model, params, x, _, _ = instance("sbn", 2, nonlinear, seed=8, n_input=40, n_hidden=23, batch_size=4)
    want = iw_bound(model, params, x, 230, np.random.default_rng(4))
    got = iw_bound(model, {k: v.astype(np.float32) for k, v in params.items()}, x.astype(np.float32), 230,
                   np.random.default_rng(4))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_reference_is_independent_of_model_helpers():
    """A model built by hand (not random_instance) gives the same ELBO through both implementations."""
    mean_x = np.array([0.2, 0.5, 0.9, 0.0005, 0.7])
    model = SBN("sbn", 2, 2, True, mean_x)
    params = init_params(model, 7, np.float64)
    rng = np.random.default_rng(7)
    for v in params.values():
        v += rng.normal(0, 0.3, v.shape)
    x = (rng.random((4, 5)) < 0.5).astype(np.float64)
    u = draw_noise(model, 4, rng, np.float64)
    res = E.get("reinforce").estimate(model, params, {}, x, u)
    np.testing.assert_allclose(res.elbo, R.elbo(model, params, x, R.sample_b(model, params, x, u)), rtol=1e-12)


@pytest.mark.parametrize("task,L,nl", [("sbn", 2, True), ("sp", 3, False), ("sp", 1, True)])
def test_odd_width_and_float32(task, L, nl):
    """n_input = 7 (sp splits 3 | 4) against the reference; float32 estimates keep float32 and
    agree with float64 at the same noise (the samples are the same here)."""
    model, params, x, u, rng = instance(task, L, nl, seed=3, n_input=7, batch_size=4)
    if task == "sp":
        assert (model.n_cond, model.n_target) == (3, 4)
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}
    for name in ("reinforce", "nvil"):
        est = E.get(name)
        aux = nvil_aux(model, rng) if name == "nvil" else {}
        r64 = est.estimate(model, params, aux, x, u)
        want = (R.reinforce_gradient(model, params, x, u) if name == "reinforce"
                else R.nvil_gradient(model, params, aux, x, u))
        assert_grads_match(f"{name} {task} n_input=7", r64.grads, want)
        r32 = est.estimate(model, f32(params), f32(aux), x.astype(np.float32), [a.astype(np.float32) for a in u])
        for l in range(L):
            assert np.array_equal(r32.frozen["b"][l], r64.frozen["b"][l]), f"{name}: float32 samples differ"
        assert r32.elbo.dtype == np.float32
        assert all(v.dtype == np.float32 for v in r32.grads.values())
        assert all(v.dtype == np.float32 for v in r32.aux_grads.values())
        assert_grads_match(f"{name} float32 vs float64", r32.grads, r64.grads, 1e-4)
        if aux:
            assert_grads_match(f"{name} float32 vs float64 (baseline)", r32.aux_grads, r64.aux_grads, 1e-4)
