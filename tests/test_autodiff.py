"""tests/autodiff.py against central finite differences: every operation, broadcasting,
shared subexpressions, and second derivatives (the gradient of a gradient)."""
import numpy as np
import pytest

import autodiff as ad


def fd(fn, arrays, eps=1e-6):
    """Central differences of the scalar fn(list of arrays) with respect to each array."""
    out = []
    for arr in arrays:
        g = np.empty_like(arr)
        flat, gflat = arr.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            fp = fn(arrays)
            flat[i] = old - eps
            fm = fn(arrays)
            flat[i] = old
            gflat[i] = (fp - fm) / (2 * eps)
        out.append(g)
    return out


def check(fn, arrays, tol=1e-7):
    """fn maps a list of Vars (or arrays) to a scalar; autodiff gradient against FD."""
    xs = [ad.Var(a) for a in arrays]
    got = ad.grad_values(fn(xs), xs)
    want = fd(lambda arrs: float(fn([ad.Var(a) for a in arrs]).value), arrays)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


rng = np.random.default_rng(0)
A, B_, C = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(4,))
POS = rng.uniform(0.5, 2.0, (3, 4))
W = rng.normal(size=(3, 4))          # fixed weights so that each case is a generic scalar

CASES = {
    "add/sub broadcast": (lambda v: ad.sum(W * (v[0] + v[1] - 2.0 * v[1])), [A, C]),
    "mul/div broadcast": (lambda v: ad.sum(W * (v[0] * v[1] / v[2])), [A, C, POS]),
    "rdiv, neg, scalar": (lambda v: ad.sum(W * (3.0 / v[0] - v[1]) * v[2]), [POS, A, np.array(0.7)]),
    "(1,) parameter": (lambda v: ad.sum(W * v[0] * ad.sigmoid(v[1])), [A, np.array([0.3])]),
    "matmul, transpose": (lambda v: ad.sum(ad.tanh(v[0] @ v[1]) @ v[1].T * W), [A, B_]),
    "tanh, sigmoid": (lambda v: ad.sum(W * ad.tanh(v[0]) * ad.sigmoid(3.0 * v[0])), [A]),
    "softplus (large |a|)": (lambda v: ad.sum(W * ad.softplus(40.0 * v[0])), [A]),
    "log, exp": (lambda v: ad.sum(W * ad.log(v[0]) * ad.exp(v[1])), [POS, A]),
    "sum/mean axes": (lambda v: ad.sum(ad.sum(v[0] * W, axis=1) * ad.mean(v[0], axis=1))
                      + ad.mean(ad.sum(v[0] * v[0], axis=0) * v[1]), [A, C]),
    "where": (lambda v: ad.sum(W * ad.where(A > 0, v[0] * v[0], 2.0 * v[0])), [A]),
    "getitem, reshape, concat": (lambda v: ad.sum(ad.concatenate([v[0][:, 1:3], ad.reshape(v[1], (4, 2))[:3]], axis=1)
                                                  * W), [A, B_]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_first_derivatives(name):
    fn, arrays = CASES[name]
    check(fn, [np.array(a, dtype=np.float64) for a in arrays])


def test_shared_subexpression_and_unused_input():
    def fn(v):
        h = ad.tanh(v[0] @ v[1])          # used twice
        return ad.sum(h * h) + ad.sum(h)
    check(fn, [A.copy(), B_.copy()])
    x, unused = ad.Var(A), ad.Var(C)
    gx, gu = ad.grad(ad.sum(x), [x, unused])
    assert np.all(gx.value == 1.0) and np.all(gu.value == 0.0)


def test_stop_gradient_is_constant():
    """d/dx [x * stop(x W)] = stop(x W): only the unstopped factor is differentiated."""
    x = ad.Var(A)
    (g,) = ad.grad_values(ad.sum(x * ad.stop_gradient(x * W)), [x])
    np.testing.assert_array_equal(g, A * W)


def test_second_derivatives():
    """d/dy of sum(G^2) with G = d f / d x, against FD of the autodiff gradient (as REBAR's variance needs)."""
    def G_of(x, y):
        f = ad.sum(ad.softplus(x @ y) * ad.tanh(x)[:, :2]) + ad.sum(ad.sigmoid(y) * ad.log(ad.exp(y) + 1.0))
        (G,) = ad.grad(f, [x])
        return G

    def V(arrs):
        G = G_of(ad.Var(arrs[0]), ad.Var(arrs[1]))
        return float(ad.sum(G * G).value)

    x0, y0 = A[:, :4].copy(), B_.copy()
    x, y = ad.Var(x0), ad.Var(y0)
    G = G_of(x, y)
    gx, gy = ad.grad_values(ad.sum(G * G), [x, y])
    wx, wy = fd(V, [x0, y0])
    np.testing.assert_allclose(gx, wx, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(gy, wy, rtol=1e-7, atol=1e-7)


def test_grad_needs_scalar():
    with pytest.raises(ValueError):
        ad.grad(ad.Var(A), [ad.Var(A)])
