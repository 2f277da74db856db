"""Dynamic REBAR: REBAR whose temperature is learned too (the paper's "REBAR" column).

Everything is rebar_np.estimators.rebar, with tau = log(lambda) added to the
estimator's own parameters (initialised at log(options["temperature"])) and
trained on the variance objective through dV/dtau, which needs the temperature
derivatives of the relaxed passes (rebar_np.model.relaxed, forward mode through the
reverse pass).
"""
import numpy as np

from . import merge_options
from .rebar import DEFAULT_OPTIONS, init_aux as _rebar_init_aux, rebar_estimate, surrogate  # noqa: F401

TRAIN_TEMPERATURE = True


def init_aux(model, seed=0, dtype=np.float32, options=None):
    return _rebar_init_aux(model, seed, dtype, options, train_temperature=True)


def estimate(model, params, aux, x, u=None, rng=None, options=None):
    if "tau" not in aux:
        raise ValueError("dynamic_rebar needs a learned temperature 'tau' in aux (use its init_aux)")
    return rebar_estimate(model, params, aux, x, u, rng, merge_options(DEFAULT_OPTIONS, options))
