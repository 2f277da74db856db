"""Finite-difference checking of every hand-derived gradient.

The checker works on any scalar function of a dict of arrays:

    fd = finite_difference(fn, arrays, eps)      # central differences, float64
    rows = compare(analytic, fd)                 # per-tensor errors

For an estimator, the function differentiated is its ``surrogate`` (the loss
whose gradient the estimator returns once its stop-gradient quantities are
held fixed; see rebar_np.estimators). ``check_estimator`` does both the model
parameters and the estimator's own parameters, in float64, on a small random
instance, and returns one row per tensor.

Errors per tensor (over the checked entries):
    max abs error = max_i |g_i - fd_i|
    max rel error = max abs error / max(max_i |fd_i|, max_i |g_i|, 1e-12)
The relative error is measured against the tensor's scale, so that entries
whose true derivative is (nearly) zero do not produce meaningless ratios.
"""
from dataclasses import dataclass

import numpy as np

from .. import estimators as E
from ..model.sbn import SBN, init_params, draw_noise

DEFAULT_EPS = 1e-6
DEFAULT_TOL = 1e-5


@dataclass
class CheckRow:
    tensor: str
    max_abs_err: float
    max_rel_err: float
    n_checked: int
    passed: bool


def finite_difference(fn, arrays, eps=DEFAULT_EPS, max_entries=None, rng=None):
    """Central differences (fn(v + eps) - fn(v - eps)) / (2 eps) for entries of every array.

    arrays: dict of float64 arrays, perturbed in place and restored. When an array
    has more than max_entries entries, a random subset (from rng) is checked.
    fn may return a scalar, or a dict {name: scalar} giving each array its own function.
    Returns {name: (flat indices, fd values)}.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    out = {}
    for name, arr in arrays.items():
        if arr.dtype != np.float64:
            raise TypeError(f"finite differences need float64 arrays; {name} is {arr.dtype}")
        flat = arr.reshape(-1)
        idx = np.arange(flat.size)
        if max_entries is not None and flat.size > max_entries:
            idx = np.sort(rng.choice(flat.size, max_entries, replace=False))
        vals = np.empty(idx.size)
        for k, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            fp = _pick(fn(), name)
            flat[i] = old - eps
            fm = _pick(fn(), name)
            flat[i] = old
            vals[k] = (fp - fm) / (2 * eps)
        out[name] = (idx, vals)
    return out


def _pick(value, name):
    return value[name] if isinstance(value, dict) else value


def compare(analytic, fd, tol=DEFAULT_TOL, prefix=""):
    """One CheckRow per tensor: analytic gradients against finite differences."""
    rows = []
    for name, (idx, vals) in fd.items():
        g = np.asarray(analytic[name], dtype=np.float64).reshape(-1)[idx]
        abs_err = float(np.max(np.abs(g - vals))) if idx.size else 0.0
        scale = max(float(np.max(np.abs(vals))) if idx.size else 0.0,
                    float(np.max(np.abs(g))) if idx.size else 0.0, 1e-12)
        rel = abs_err / scale
        rows.append(CheckRow(prefix + name, abs_err, rel, int(idx.size), rel <= tol))
    return rows


def to_float64(d):
    return {k: np.array(v, dtype=np.float64) for k, v in d.items()}


def check_estimator(name, model, params, aux, x, u, eps=DEFAULT_EPS, tol=DEFAULT_TOL,
                    max_entries=None, rng=None, options=None):
    """Check an estimator's model and aux gradients against finite differences of its surrogate."""
    est = E.get(name)
    params, aux = to_float64(params), to_float64(aux)
    x = np.asarray(x, dtype=np.float64)
    u = [np.asarray(ul, dtype=np.float64) for ul in u]
    res = est.estimate(model, params, aux, x, u, options=options)
    frozen = res.frozen
    fd_model = finite_difference(lambda: est.surrogate(model, params, aux, x, u, frozen, options)[0],
                                 params, eps, max_entries, rng)
    rows = compare(res.grads, fd_model, tol)
    if aux:
        fd_aux = finite_difference(lambda: est.surrogate(model, params, aux, x, u, frozen, options)[1],
                                   aux, eps, max_entries, rng)
        rows += compare(res.aux_grads, fd_aux, tol, prefix="aux:")
    return rows


def check_relaxed_logp(model, params, x, rng, eps=DEFAULT_EPS, tol=DEFAULT_TOL):
    """Check the generative backward at continuous samples: d log p(x, s) / d s_l and / d theta_p.

    This path (dL/ds through each term's scored value and through the next
    transform's input) is what the relaxed estimators differentiate.
    """
    from ..model.sbn import generative_backward, generative_forward, zeros_like
    params = to_float64(params)
    x = np.asarray(x, dtype=np.float64)
    s = {f"s{l}": rng.uniform(0.05, 0.95, (x.shape[0], model.n_hidden)) for l in range(model.n_layer)}
    samples = lambda: [s[f"s{l}"] for l in range(model.n_layer)]
    logp, pp = generative_forward(model, params, x, samples())
    grads = zeros_like(params)
    ds = generative_backward(model, params, grads, x, samples(), pp, np.ones(x.shape[0]), True)
    fn = lambda: float(np.sum(generative_forward(model, params, x, samples())[0]))
    gen = {k: v for k, v in params.items() if not k.startswith("q")}
    rows = compare(grads, finite_difference(fn, gen, eps, None, rng), tol, prefix="logp/")
    rows += compare({f"s{l}": ds[l] for l in range(model.n_layer)},
                    finite_difference(fn, s, eps, None, rng), tol, prefix="logp/")
    return rows


def random_instance(task="sbn", n_layer=2, n_hidden=4, nonlinear=False, n_input=16, batch_size=5, seed=0):
    """A small random model, parameters (float64, with nonzero biases), binary batch and noise."""
    rng = np.random.default_rng(seed)
    mean_x = rng.uniform(0.1, 0.9, n_input)
    model = SBN(task, n_layer, n_hidden, nonlinear, mean_x)
    params = init_params(model, seed, np.float64)
    for k, v in params.items():
        if v.ndim == 1:
            v[:] = rng.normal(0, 0.5, v.shape)
    x = (rng.random((batch_size, n_input)) < mean_x).astype(np.float64)
    u = draw_noise(model, batch_size, rng, np.float64)
    return model, params, x, u, rng


def run_checks(estimator, task, n_layer, n_hidden, nonlinear, n_input=16, batch_size=5, seed=0,
               eps=DEFAULT_EPS, tol=DEFAULT_TOL, max_entries=None, options=None):
    """Everything `rebar-np gradcheck` checks for one configuration: the estimator's
    gradients (model and aux) and the model's relaxed-sample backward."""
    model, params, x, u, rng = random_instance(task, n_layer, n_hidden, nonlinear, n_input, batch_size, seed)
    rows = E.noise_rows(E.get(estimator), batch_size, options)
    if rows != batch_size:   # K-sample estimators: K noise rows per example
        u = draw_noise(model, rows, rng, np.float64)
    aux = E.get(estimator).init_aux(model, seed, np.float64, options)
    for k, v in aux.items():
        if v.ndim == 1 and k != "tau":   # random biases and eta != 1, so no term hides behind a zero
            v[:] = rng.normal(0, 0.5, v.shape)
    rows = check_estimator(estimator, model, params, aux, x, u, eps, tol, max_entries, rng, options)
    rows += check_relaxed_logp(model, params, x, rng, eps, tol)
    return rows
