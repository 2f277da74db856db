"""A statistical unbiasedness test for gradient estimators, reusable by every estimator (the test
itself is rebar_np.evaluation.unbiased, which `rebar-np unbiased` also runs; here its exact gradient comes
from the independent reference implementation).

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
import numpy as np

import reference as R
from rebar_np.evaluation import unbiased as U
from rebar_np.evaluation.unbiased import (DEFAULT_ALPHA, ZERO_TOL, UnbiasedResult, bonferroni_threshold,  # noqa: F401
                                          default_noise_rows, draw_estimates)


def check_unbiased(estimator, model, params, aux, x, n_draws, seed=0, alpha=DEFAULT_ALPHA,
                   options=None, exact=None, zero_tol=ZERO_TOL, label=None, noise_rows=None):
    """rebar_np.evaluation.unbiased.check_unbiased, with the exact gradient from the independent reference
    (tests/reference.py) unless given: the tests compare the estimators with code that shares
    nothing with the package."""
    if exact is None:
        exact = R.exact_gradient(model, {k: np.array(v, dtype=np.float64) for k, v in params.items()},
                                 np.asarray(x, dtype=np.float64))
    return U.check_unbiased(estimator, model, params, aux, x, n_draws, seed, alpha, options, exact, zero_tol,
                            label, noise_rows)


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
    from rebar_np.model.sbn import hard_pass, score_function_gradient
    hp = hard_pass(model, params, x, [K.logistic_noise(np.ascontiguousarray(ul, dtype=x.dtype)) for ul in u])
    return score_function_gradient(model, params, x, hp, hp.f - np.mean(hp.f))
