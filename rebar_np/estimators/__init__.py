"""Gradient estimators behind one small interface.

Every estimator is a module with

    init_aux(model, seed=0, dtype=np.float32, options=None) -> dict
        the estimator's own trained parameters (baseline network, eta, temperature);
        an empty dict when it has none.
    estimate(model, params, aux, x, u=None, rng=None, options=None) -> Estimate
        x: (B, D) batch; u: one uniform-noise array (B, H) per stochastic layer,
        drawn from ``rng`` (a numpy Generator, default seed 0) when not given.
        The result is a deterministic function of (params, aux, x, u, options).
        options: estimator settings that are not trained (see each module's
        DEFAULT_OPTIONS, e.g. temperature and relaxation for REBAR); None = defaults.
    surrogate(model, params, aux, x, u, frozen, options=None) -> (model_loss, aux_loss)
        scalar functions whose gradients with respect to params and aux are, by
        construction, Estimate.grads and Estimate.aux_grads, with the quantities
        in Estimate.frozen (hard samples, stop-gradient learning signals) held
        fixed. This is what the finite-difference checker differentiates.
        model_loss may be a dict {parameter name: scalar} when each tensor's
        gradient is that of a different function (REBAR's per-tensor eta).

Gradients are of the *loss* (the negative objective), averaged over the batch:
what the optimizer consumes.

The K-sample estimators (K_SAMPLE_ESTIMATORS, option "samples") optimise the K-sample
bound instead of the ELBO; they take K noise rows per example, and their module has

    noise_rows(batch_size, options=None) -> batch_size K

(see noise_rows below and rebar_np.estimators.multisample); Estimate.elbo is then the K-sample bound.

Besides one module per estimator (ESTIMATORS, found by get), this folder holds

    multisample.py  the K-sample passes and gradient shared by vimco and reinforce_loo
    bernoulli.py    every estimator for one layer of independent bits and any f of yours (no SBN),
                    and the formulas the SBN estimators share (ARM/DisARM logit gradients,
                    K-sample signals)
"""
from dataclasses import dataclass, field
import importlib

import numpy as np

ESTIMATORS = ("reinforce", "nvil", "simple_muprop", "muprop", "concrete", "rebar", "dynamic_rebar",
              "relax", "arm", "disarm", "reinforce_loo", "vimco")
# estimators of the K-sample bound log (1/K) sum_k exp f(b^k) (option "samples"), not of the ELBO
K_SAMPLE_ESTIMATORS = ("reinforce_loo", "vimco")


class EstimatorError(ValueError):
    """Unknown estimator name or unusable input (one-line message)."""


@dataclass
class Estimate:
    grads: dict        # loss gradient for every model parameter (same keys as params)
    aux_grads: dict    # gradient of the estimator's own objective for every aux parameter
    elbo: np.ndarray   # (B,) per-example hard ELBO f(b)
    frozen: dict = field(default_factory=dict)   # stop-gradient quantities, for surrogate()
    stats: dict = field(default_factory=dict)    # scalars worth logging (read through stat / stat_values)

    def stat(self, name):
        """stats[name] as a float. A value may be a function of no arguments that computes it when
        read: the training loop logs stats at its report lines only, so a statistic that costs a
        pass over the gradients (REBAR's variance objective) is not computed at every step."""
        value = self.stats[name]
        return float(value()) if callable(value) else value

    def stat_values(self):
        """Every stat as a float (see stat)."""
        return {k: self.stat(k) for k in self.stats}


def get(name):
    """The estimator module called ``name``."""
    if name not in ESTIMATORS:
        raise EstimatorError(f"unknown model {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return importlib.import_module(f"{__name__}.{name}")


def noise_rows(est, batch_size, options=None):
    """Rows of each layer's uniform-noise array for a batch: batch_size, or batch_size K for a K-sample estimator."""
    fn = getattr(est, "noise_rows", None)
    return fn(batch_size, options) if fn is not None else batch_size


def merge_options(defaults, options):
    """defaults updated with options, refusing names the estimator does not know."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise EstimatorError(f"unknown estimator option(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def prepare_noise(model, x, u, rng):
    """Check the batch, and the noise if given; otherwise draw it
    (docs/math.md, section "Noise and samples").
    The noise is drawn on the host (so a run's noise does not depend on the device)
    and copied to the device when x lives there."""
    from ..kernels.dispatch import is_device, to_device, to_host
    from ..model.sbn import check_noise, draw_noise
    model.check_batch(x)
    if u is None:
        rng = np.random.default_rng(0) if rng is None else rng
        u = draw_noise(model, x.shape[0], rng, x.dtype)
    elif not all(is_device(ul) and ul.dtype == x.dtype for ul in u):
        u = [np.ascontiguousarray(to_host(ul), dtype=x.dtype) for ul in u]
    check_noise(model, u, x.shape[0])
    return to_device(u) if is_device(x) else u
