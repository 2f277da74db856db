"""Is an estimator unbiased? Its mean over many draws against the exact gradient of a tiny model.

The exact gradient: on a model with L H <= 12 latent bits, E_q[f] = sum_c q(c | x) f(c) sums over
all 2^(L H) configurations c (for the K-sample estimators, the K-sample bound
E[log (1/K) sum_k exp f(b^k)] over all C^K joint configurations), using only the model's forward
pass (model.sbn.hard_pass_at), and its parameter gradient is taken by 4th-order central differences in
float64. So the reference does not share a line with any hand-derived backward pass.

The test: the estimator is called n_draws times with fresh uniform noise from
np.random.default_rng(seed); for every parameter entry j

    z_j = (mean_j - exact_j) / se_j,    se_j = std_j / sqrt(n_draws).

With P entries it fails when max_j |z_j| exceeds the Bonferroni threshold
t = F^{-1}(1 - alpha / (2 P)) (F: Student t with n_draws - 1 degrees of freedom), so a correct
estimator fails with probability at most about alpha = 1e-3 whatever the seed; the seed is fixed,
so the outcome is reproducible. Entries whose estimate does not vary across draws (std ~ 0) cannot
be z-scored; they must match the exact gradient to |mean - exact| <= zero_tol * max(1, max |exact|).

`rebar-np unbiased` runs this on a random tiny model; tests/harness.py runs it against an
independent reference implementation (tests/reference.py).
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 1e-3
ZERO_TOL = 1e-9
MAX_BITS = 12                # 2^12 configurations per example at most
MAX_JOINT = 2 ** 18          # joint configurations of the K-sample bound's enumeration


# --------------------------------------------------------------------------
# The exact gradient, by enumeration and finite differences
# --------------------------------------------------------------------------
def configurations(model):
    """(C, L, H) array of every joint latent configuration, C = 2^(L H)."""
    L, H = model.n_layer, model.n_hidden
    n = L * H
    if n > MAX_BITS:
        raise ValueError(f"{L} layers of {H} units have 2^{n} configurations, too many to enumerate "
                         f"(at most 2^{MAX_BITS}); choose fewer units or layers")
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    return bits.reshape(2 ** n, L, H).astype(np.float64)


def log_probabilities(model, params, x):
    """(log q(c | x_n), f(x_n, c)) for every example n and configuration c, each (B, C)."""
    from ..model.sbn import hard_pass_at
    conf = configurations(model)
    B, C = x.shape[0], conf.shape[0]
    xr = np.repeat(np.asarray(x, dtype=np.float64), C, axis=0)          # row n C + c
    hp = hard_pass_at(model, params, xr, [np.tile(conf[:, l, :], (B, 1)) for l in range(model.n_layer)])
    return sum(hp.logq).reshape(B, C), hp.f.reshape(B, C)


def exact_objective(model, params, x, samples=1):
    """mean_n E[log (1/K) sum_k exp f(b^k)], K = samples, b^k ~ q(b | x_n) independent; for K = 1 the
    ELBO E_q[f]. Sums over all C^K joint configurations of the K samples."""
    lq, f = log_probabilities(model, params, x)
    if samples == 1:
        return float(np.mean(np.sum(np.exp(lq) * f, axis=1)))
    C, K = lq.shape[1], int(samples)
    if C ** K > MAX_JOINT:
        raise ValueError(f"{C}^{K} joint configurations of {K} samples is too many to enumerate; "
                         "choose fewer units, layers or samples")
    idx = np.indices((C,) * K).reshape(K, -1)                      # (K, C^K): each sample's configuration
    log_prob = np.sum(lq[:, idx], axis=1)                          # (B, C^K)
    fk = f[:, idx]                                                 # (B, K, C^K)
    top = fk.max(axis=1)
    bound = top + np.log(np.mean(np.exp(fk - top[:, None, :]), axis=1))
    return float(np.mean(np.sum(np.exp(log_prob) * bound, axis=1)))


def exact_gradient(model, params, x, samples=1, eps=1e-3):
    """The loss gradient -d exact_objective / d theta of every parameter, by the central differences
    (-F(+2e) + 8 F(+e) - 8 F(-e) + F(-2e)) / 12e (truncation error O(e^4), so e = 1e-3 keeps the
    round-off small)."""
    work = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    stencil = ((2.0, -1.0 / 12), (1.0, 8.0 / 12), (-1.0, -8.0 / 12), (-2.0, 1.0 / 12))
    out = {}
    for name, arr in work.items():
        flat = arr.reshape(-1)
        g = np.empty(flat.size)
        for i in range(flat.size):
            old, acc = flat[i], 0.0
            for step, w in stencil:
                flat[i] = old + step * eps
                acc += w * exact_objective(model, work, x, samples)
            flat[i] = old
            g[i] = -acc / eps
        out[name] = g.reshape(arr.shape)
    return out


# --------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------
@dataclass
class UnbiasedResult:
    names: list              # parameter names, in order
    shapes: dict
    mean: dict               # name -> array: sample mean of the estimates
    exact: dict              # name -> array: exact loss gradient
    se: dict                 # name -> array: standard error of the mean
    z: dict                  # name -> array: z-score (0 / inf for deterministic entries that pass / fail)
    deterministic: dict      # name -> bool array: entries with (near) zero sample std
    threshold: float
    alpha: float
    n_draws: int
    n_entries: int
    zero_tol: float
    label: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def max_abs_z(self):
        return max(float(np.max(np.abs(v))) if v.size else 0.0 for v in self.z.values())

    @property
    def passed(self):
        return self.max_abs_z <= self.threshold

    def rows(self):
        """(|z|, name, index, mean, exact, se, z, deterministic) for every entry."""
        out = []
        for name in self.names:
            for idx in np.ndindex(*self.shapes[name]):
                z = float(self.z[name][idx])
                out.append((abs(z), name, idx, float(self.mean[name][idx]), float(self.exact[name][idx]),
                            float(self.se[name][idx]), z, bool(self.deterministic[name][idx])))
        return out

    def worst(self, k=10):
        return sorted(self.rows(), key=lambda r: -r[0])[:k]

    def tensor_rows(self):
        """Per tensor: (name, entries, max |mean - exact|, max |exact|, max |z|, passed)."""
        out = []
        for name in self.names:
            z = np.abs(self.z[name])
            worst = float(z.max()) if z.size else 0.0
            out.append((name, int(z.size), float(np.max(np.abs(self.mean[name] - self.exact[name]))),
                        float(np.max(np.abs(self.exact[name]))), worst, worst <= self.threshold))
        return out

    def message(self, k=10):
        head = (f"{self.label + ': ' if self.label else ''}"
                f"{'PASSED' if self.passed else 'FAILED'} unbiasedness test: max |z| = {self.max_abs_z:.2f}, "
                f"threshold {self.threshold:.2f} (Bonferroni, alpha={self.alpha:g}, P={self.n_entries} entries, "
                f"{self.n_draws} draws); {sum(int(np.sum(d)) for d in self.deterministic.values())} "
                f"deterministic entries")
        lines = [head, f"  {'parameter':<14} {'index':<10} {'mean':>12} {'exact':>12} {'se':>10} {'z':>8}"]
        for _, name, idx, mean, exact, se, z, det in self.worst(k):
            lines.append(f"  {name:<14} {str(idx):<10} {mean:12.6g} {exact:12.6g} {se:10.3g} {z:8.2f}"
                         + ("  (deterministic)" if det else ""))
        return "\n".join(lines)

    __str__ = message


def bonferroni_threshold(n_entries, n_draws, alpha=DEFAULT_ALPHA):
    """Two-sided per-entry critical value so that P tests together have family-wise level alpha."""
    return float(stats.t.isf(alpha / (2.0 * n_entries), n_draws - 1))


def _estimator_fn(estimator, options):
    """A function (model, params, aux, x, u) -> {name: loss gradient}."""
    if callable(estimator):
        def fn(model, params, aux, x, u):
            out = estimator(model, params, aux, x, u)
            return out.grads if hasattr(out, "grads") else out
        return fn
    from .. import estimators as E
    est = E.get(estimator)
    return lambda model, params, aux, x, u: est.estimate(model, params, aux, x, u, options=options).grads


def default_noise_rows(estimator, batch_size, options=None):
    """Rows of each noise array: batch_size, or batch_size K for a named K-sample estimator."""
    if callable(estimator):
        return batch_size
    from .. import estimators as E
    return E.noise_rows(E.get(estimator), batch_size, options)


def draw_estimates(estimator, model, params, aux, x, n_draws, seed, options=None, noise_rows=None, progress=None):
    """(names, shapes, (n_draws, P) array of flattened estimates), noise from default_rng(seed).
    noise_rows: rows of each layer's noise (default: the batch size, or B K for a named K-sample
    estimator). progress: an optional callable told the number of draws done, now and then."""
    fn = _estimator_fn(estimator, options)
    rng = np.random.default_rng(seed)
    names = list(params)
    shapes = {k: np.shape(params[k]) for k in names}
    B = noise_rows or default_noise_rows(estimator, x.shape[0], options)
    H, L = model.n_hidden, model.n_layer
    P = sum(int(np.prod(s)) for s in shapes.values())
    G = np.empty((n_draws, P))
    for i in range(n_draws):
        u = [rng.random((B, H)) for _ in range(L)]
        g = fn(model, params, aux, x, u)
        G[i] = np.concatenate([np.asarray(g[k], dtype=np.float64).reshape(-1) for k in names])
        if progress is not None and (i + 1) % 100 == 0:
            progress(i + 1)
    return names, shapes, G


def check_unbiased(estimator, model, params, aux, x, n_draws, seed=0, alpha=DEFAULT_ALPHA,
                   options=None, exact=None, zero_tol=ZERO_TOL, label=None, noise_rows=None, progress=None):
    """Test E[estimate] == exact loss gradient entry by entry (see the module docstring).

    estimator: a name for rebar_np.estimators.get, or a callable (model, params, aux, x, u)
    returning a dict of loss gradients or an object with .grads.
    exact: the exact gradient, if already computed (exact_gradient otherwise, of the K-sample
    bound for a named K-sample estimator).
    noise_rows: rows of each noise array, for a callable K-sample estimator (B K).
    """
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    aux = {k: np.array(v, dtype=np.float64) for k, v in (aux or {}).items()}
    x = np.asarray(x, dtype=np.float64)
    if exact is None:
        samples = default_noise_rows(estimator, x.shape[0], options) // x.shape[0]
        exact = exact_gradient(model, params, x, samples)
    names, shapes, G = draw_estimates(estimator, model, params, aux, x, n_draws, seed, options, noise_rows,
                                      progress)
    mean_flat = G.mean(axis=0)
    std_flat = G.std(axis=0, ddof=1)
    exact_flat = np.concatenate([np.asarray(exact[k], dtype=np.float64).reshape(-1) for k in names])
    se_flat = std_flat / np.sqrt(n_draws)
    scale = max(1.0, float(np.max(np.abs(exact_flat))))
    det = std_flat <= 1e-12 * np.maximum(1.0, np.abs(mean_flat))
    diff = mean_flat - exact_flat
    z_flat = np.empty_like(diff)
    z_flat[~det] = diff[~det] / se_flat[~det]
    z_flat[det] = np.where(np.abs(diff[det]) <= zero_tol * scale, 0.0, np.inf)

    def unflat(v):
        out, k = {}, 0
        for name in names:
            n = int(np.prod(shapes[name]))
            out[name] = v[k:k + n].reshape(shapes[name])
            k += n
        return out

    P = mean_flat.size
    if label is None:
        label = estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "estimator")
    return UnbiasedResult(names, shapes, unflat(mean_flat), unflat(exact_flat), unflat(se_flat),
                          unflat(z_flat), unflat(det), bonferroni_threshold(P, n_draws, alpha), alpha,
                          n_draws, P, zero_tol, label)


def tiny_instance(estimator, task="sbn", n_layer=2, n_hidden=3, nonlinear=False, n_input=6, batch_size=2,
                  seed=0, options=None):
    """(model, params, aux, x) of a random tiny model for `rebar-np unbiased`: random biases, and the
    estimator's own parameters moved off their initial values (a baseline, eta != 1, r != 0), so that
    no term of the estimator hides behind a zero; the temperature keeps its option's value."""
    from .. import estimators as E
    from .gradcheck import random_instance
    model, params, x, _, rng = random_instance(task, n_layer, n_hidden, nonlinear, n_input, batch_size, seed)
    aux = E.get(estimator).init_aux(model, seed, np.float64, options)
    for k, v in aux.items():
        if k != "tau":
            v += rng.normal(0, 0.3, v.shape)
    return model, params, aux, x
