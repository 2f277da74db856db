"""A statistical unbiasedness test for gradient estimators, reusable by every estimator.

    res = check_unbiased("reinforce", model, params, aux, x, n_draws=4000, seed=0)
    assert res.passed, res.message()

The exact loss gradient -d E_q[f] / d theta comes from reference.exact_gradient
(enumeration of all latent configurations + finite differences); for the estimators of
the K-sample bound pass exact=reference.exact_multisample_gradient(..., K) (their noise
then has K rows per example, found from the estimator's noise_rows). The estimator
is called n_draws times with fresh uniform noise from np.random.default_rng(seed);
for every parameter entry j,

    z_j = (mean_j - exact_j) / se_j,    se_j = std_j / sqrt(n_draws).

With P entries the test fails when max_j |z_j| exceeds the Bonferroni threshold
t = F^{-1}(1 - alpha / (2 P)) (F: Student t with n_draws - 1 degrees of freedom,
practically the normal), so a correct estimator fails with probability at most
about alpha = 1e-3 for *any* seed; the seed is fixed so the outcome is reproducible.

Entries whose estimate does not vary across draws (std ~ 0, e.g. a parameter an
estimator leaves exactly zero) cannot be z-scored; they must instead match the
exact gradient to |mean - exact| <= zero_tol * scale, scale = max(1, max_j |exact_j|).
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

import reference as R

DEFAULT_ALPHA = 1e-3
ZERO_TOL = 1e-9


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
    from rebar_np import estimators as E
    est = E.get(estimator)
    return lambda model, params, aux, x, u: est.estimate(model, params, aux, x, u, options=options).grads


def default_noise_rows(estimator, batch_size, options=None):
    """Rows of each noise array: batch_size, or batch_size K for a named K-sample estimator."""
    if callable(estimator):
        return batch_size
    from rebar_np import estimators as E
    return E.noise_rows(E.get(estimator), batch_size, options)


def draw_estimates(estimator, model, params, aux, x, n_draws, seed, options=None, noise_rows=None):
    """(names, shapes, (n_draws, P) array of flattened estimates), noise from default_rng(seed).
    noise_rows: rows of each layer's noise (default: the batch size, or B K for a named K-sample estimator)."""
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
    return names, shapes, G


def check_unbiased(estimator, model, params, aux, x, n_draws, seed=0, alpha=DEFAULT_ALPHA,
                   options=None, exact=None, zero_tol=ZERO_TOL, label=None, noise_rows=None):
    """Test E[estimate] == exact loss gradient entry by entry (see the module docstring).

    estimator: a name for rebar_np.estimators.get, or a callable (model, params, aux, x, u)
    returning a dict of loss gradients or an object with .grads.
    exact: the exact gradient, if already computed (reference.exact_gradient otherwise).
    noise_rows: rows of each noise array, for a callable K-sample estimator (B K).
    """
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    aux = {k: np.array(v, dtype=np.float64) for k, v in (aux or {}).items()}
    x = np.asarray(x, dtype=np.float64)
    if exact is None:
        exact = R.exact_gradient(model, params, x)
    names, shapes, G = draw_estimates(estimator, model, params, aux, x, n_draws, seed, options, noise_rows)
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


# --------------------------------------------------------------------------
# Negative control
# --------------------------------------------------------------------------
def biased_reinforce(model, params, aux, x, u):
    """REINFORCE whose baseline is the mean of f over ALL examples, itself included.

    signal_n = f_n - mean_m f_m = (1 - 1/B) (f_n - mean_{m != n} f_m), so the
    score term's expectation shrinks by the factor (1 - 1/B) (1/2 for B = 2):
    a biased estimator the harness must reject.
    """
    from rebar_np import kernels as K
    from rebar_np.model import hard_pass, score_function_gradient
    hp = hard_pass(model, params, x, [K.logistic_noise(np.ascontiguousarray(ul, dtype=x.dtype)) for ul in u])
    return score_function_gradient(model, params, x, hp, hp.f - np.mean(hp.f))
