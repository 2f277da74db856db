"""The single-layer estimator API (rebar_np.estimators.bernoulli) on a user's own function, not an SBN:

1. every estimator is unbiased for d E[f(b)] / d a (vimco: for d E[log mean_k exp f(b_k)] / d a),
   against the exact gradient by enumeration, with the harness's Bonferroni z-test;
2. relax's variance-tuning gradients (eta and r's parameters) match finite differences;
3. the README's example runs as written and finds the optimum;
4. bad shapes and settings are one-line errors.
"""
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from harness import bonferroni_threshold
from rebar_np.estimators import bernoulli as bern
from rebar_np.evaluation.gradcheck import finite_difference

README = Path(__file__).resolve().parents[1] / "README.md"
H = 3
A = np.array([[0.3, -1.2, 2.0], [-0.4, 0.9, 0.1]])          # logits, a batch of 2 independent layers
V = np.array([[1.0, -2.0, 0.5], [0.3, 0.8, -1.5]])


def f(b):
    """A user's nonlinear objective of binary vectors (any leading axes), row by row."""
    t = np.sum(b * V, axis=-1)
    return np.sin(2.0 * t) + 0.5 * t * t + b[..., 0] * b[..., 2]


def df_ds(s):
    t = np.sum(s * V, axis=-1, keepdims=True)
    return (2.0 * np.cos(2.0 * t) + t) * V + np.stack([s[..., 2], 0 * s[..., 0], s[..., 0]], axis=-1)


CONF = np.array(list(itertools.product([0.0, 1.0], repeat=H)))     # (8, H)


def probs(a):
    """q(c) for every configuration c, per row of a: (rows, 8)."""
    p = 1.0 / (1.0 + np.exp(-a))
    return np.prod(np.where(CONF[None] > 0.5, p[:, None, :], 1.0 - p[:, None, :]), axis=-1)


def exact_mean_gradient():
    """d E[f(b)] / d a = sum_c q(c) f(c) (c - sigma(a)), row by row."""
    q, p = probs(A), 1.0 / (1.0 + np.exp(-A))
    fc = f(np.broadcast_to(CONF[:, None, :], (8, 2, H))).T      # (2, 8): f of every configuration, per row
    return np.einsum("nc,nc,ncj->nj", q, fc, CONF[None] - p[:, None, :])


def exact_bound_gradient(K=2):
    """d E[log (1/K) sum_k exp f(b_k)] / d a, by enumerating the 8^K joint configurations."""
    q, p = probs(A), 1.0 / (1.0 + np.exp(-A))
    fc = f(np.broadcast_to(CONF[:, None, :], (8, 2, H))).T
    g = np.zeros_like(A)
    for combo in itertools.product(range(8), repeat=K):
        w = np.prod(q[:, combo], axis=1)
        L = np.log(np.mean(np.exp(fc[:, combo]), axis=1))
        g += (w * L)[:, None] * sum(CONF[c][None] - p for c in combo)
    return g


def z_test(estimator, exact, n_draws, seed, noise_shape):
    rng = np.random.default_rng(seed)
    G = np.stack([estimator(rng.random(noise_shape)) for _ in range(n_draws)]).reshape(n_draws, -1)
    z = (G.mean(axis=0) - exact.ravel()) / (G.std(axis=0, ddof=1) / np.sqrt(n_draws))
    return float(np.max(np.abs(z))), bonferroni_threshold(exact.size, n_draws)


NET = bern.init_relax_net(H, width=5, seed=1)
NET["relax.w2"][:] = np.random.default_rng(2).normal(0, 2.0, 5)

ESTIMATORS = {
    "reinforce": (lambda u: bern.reinforce(f, A, u, baseline=1.0), A.shape),
    "reinforce_loo": (lambda u: bern.reinforce_loo(f, A, u), (3,) + A.shape),
    "arm": (lambda u: bern.arm(f, A, u), A.shape),
    "disarm": (lambda u: bern.disarm(f, A, u), A.shape),
    "rebar": (lambda u: bern.rebar(f, df_ds, A, u, eta=0.7, temperature=0.4), A.shape),
    "rebar-concrete": (lambda u: bern.rebar(f, df_ds, A, u, temperature=0.6, relaxation="concrete"), A.shape),
    "relax": (lambda u: bern.relax(f, df_ds, A, u, NET, eta=1.3, temperature=0.4).grad, A.shape),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_is_unbiased_for_a_users_function(name):
    fn, shape = ESTIMATORS[name]
    zmax, t = z_test(fn, exact_mean_gradient(), 20000, 7, shape)
    assert zmax < t, f"{name}: max |z| {zmax:.2f} > {t:.2f}"


def test_vimco_is_unbiased_for_the_k_sample_bound():
    zmax, t = z_test(lambda u: bern.vimco(f, A, u), exact_bound_gradient(2), 20000, 8, (2,) + A.shape)
    assert zmax < t, f"max |z| {zmax:.2f} > {t:.2f}"


def test_the_z_test_has_power():
    """Using the relaxed sample in the score term (a classic slip) is biased and fails."""
    def wrong(u):
        s = bern.relaxed_sample(A, u, 0.4)
        return (f(bern.hard_sample(A, u)) - f(s))[..., None] * bern.score(A, bern.hard_sample(A, u))
    zmax, t = z_test(wrong, exact_mean_gradient(), 20000, 7, A.shape)
    assert zmax > 2 * t


def test_estimates_are_deterministic_in_the_noise_and_disarm_beats_arm():
    rng = np.random.default_rng(3)
    U = rng.random((4000,) + A.shape)
    arm = np.stack([bern.arm(f, A, u) for u in U])
    disarm = np.stack([bern.disarm(f, A, u) for u in U])
    np.testing.assert_array_equal(disarm[5], bern.disarm(f, A, U[5]))
    assert np.mean(np.var(disarm, axis=0)) < 0.8 * np.mean(np.var(arm, axis=0))
    # a 1-D layer works the same as one row of a batch
    np.testing.assert_allclose(bern.disarm(f, A[1], U[0, 1]), disarm[0, 1])


@pytest.mark.parametrize("with_context", [False, True])
def test_relax_variance_gradients_match_finite_differences(with_context):
    rng = np.random.default_rng(4)
    u = rng.random(A.shape)
    if with_context:   # r(z; ctx) with per-row features the user supplies
        net, ctx = bern.init_relax_net(H, width=5, seed=3, n_context=2), rng.normal(0, 1, (2, 2))
        net["relax.w2"][:] = rng.normal(0, 2.0, 5)
    else:
        net, ctx = {k: v.copy() for k, v in NET.items()}, None
    net["relax.c1"][:] = rng.normal(0, 1, 5)
    tun = {"eta": np.array([1.3])}
    res = bern.relax(f, df_ds, A, u, net, eta=1.3, temperature=0.4, context=ctx)
    V = lambda: bern.relax(f, df_ds, A, u, net, eta=float(tun["eta"][0]), temperature=0.4, context=ctx).variance
    for arrays, key in ((net, None), (tun, "eta")):
        for k, (idx, vals) in finite_difference(V, arrays).items():
            g = np.ravel(res.variance_grads[k])[idx]
            assert np.max(np.abs(g - vals)) <= 1e-6 * max(np.max(np.abs(vals)), 1e-3), (k, g, vals)
    assert ("relax.V1" in res.variance_grads) == with_context
    if with_context:
        return
    # the variance gradients are useful: a few descent steps on eta and r lower V on fresh noise
    U = rng.random((400,) + A.shape)
    mean_v = lambda n, e: np.mean([bern.relax(f, df_ds, A, uu, n, eta=e).variance for uu in U])
    net2, eta = {k: v.copy() for k, v in NET.items()}, 1.3
    before = mean_v(net2, eta)
    for uu in rng.random((300,) + A.shape):
        r = bern.relax(f, df_ds, A, uu, net2, eta=eta)
        eta -= 0.05 * r.variance_grads["eta"]
        for k in net2:
            net2[k] -= 0.05 * r.variance_grads[k]
    assert mean_v(net2, eta) < before


def test_readme_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = [b for b in blocks if "bernoulli" in b]
    assert example, "README has no example of rebar_np.estimators.bernoulli"
    scope = {}
    exec(compile(example[0], "README.md", "exec"), scope)
    # the example's f is the user's own function of a binary vector, and the ascent found its maximiser
    best = max(itertools.product([0.0, 1.0], repeat=scope["a"].size), key=lambda c: scope["f"](np.array(c)))
    np.testing.assert_array_equal((bern.sigmoid(scope["a"]) > 0.5).astype(float), best)
    for k in ("g_arm", "g_loo", "g_rebar"):
        assert scope[k].shape == scope["a"].shape and np.all(np.isfinite(scope[k]))
    assert scope["res"].grad.shape == scope["a"].shape and "eta" in scope["res"].variance_grads


@pytest.mark.parametrize("call,words", [
    (lambda: bern.arm(f, A, np.zeros((3, 3))), "noise u must have shape"),
    (lambda: bern.vimco(f, A, np.zeros(A.shape)), "K >= 2"),
    (lambda: bern.reinforce_loo(f, A, np.zeros((1,) + A.shape)), "K >= 2"),
    (lambda: bern.rebar(f, df_ds, A, np.full(A.shape, 0.5), relaxation="gumbel"), "unknown relaxation"),
    (lambda: bern.rebar(f, df_ds, A, np.full(A.shape, 0.5), temperature=0.0), "temperature must be positive"),
    (lambda: bern.relax(f, df_ds, A, np.full(A.shape, 0.5), NET, context=np.zeros((2, 1))), "context"),
])
def test_bad_input_is_a_one_line_error(call, words):
    with pytest.raises(bern.BernoulliError, match=words) as err:
        call()
    assert "\n" not in str(err.value)
