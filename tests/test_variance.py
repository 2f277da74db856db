"""track_variance's noise: common random numbers (rebar_np.experiments.variance module docstring).

Every tracked estimator draws from its own, identically seeded generator, so estimators that
consume noise the same way see the same u on every step, and the followed trajectory does not
depend on which estimators are tracked beside it.
"""
import numpy as np

from rebar_np import estimators as E
from rebar_np.training.train import TrainConfig
from rebar_np.experiments.variance import track_variance
from test_comparisons import synthetic


def test_tracked_estimators_see_the_same_noise(monkeypatch):
    """Record the noise each estimator draws: one stream, step by step, for every estimator."""
    seen = {}
    for name in ("nvil", "dynamic_rebar", "relax", "arm", "disarm"):
        est = E.get(name)
        real = est.estimate

        def record(model, params, aux, x, u=None, rng=None, options=None, _real=real, _name=name):
            state = rng.bit_generator.state["state"]["state"]
            seen.setdefault(_name, []).append(state)
            return _real(model, params, aux, x, u, rng, options)
        monkeypatch.setattr(est, "estimate", record)
    cfg = TrainConfig(n_layer=2, n_hidden=5, batch_size=8, steps=4, relax_hidden=4)
    track_variance(cfg, synthetic(), ["dynamic_rebar", "relax", "arm", "disarm"], "nvil", log=lambda s: None)
    assert len(seen["nvil"]) == 4 and len(set(seen["nvil"])) == 4
    for name in seen:
        assert seen[name] == seen["nvil"], name


def test_relax_and_dynamic_rebar_agree_on_the_first_step():
    """Same noise and r = 0 at initialisation: on step 1 relax's gradient is dynamic_rebar's, so its
    moment EMAs and reported log variance are too (they part once r has learned)."""
    cfg = TrainConfig(n_layer=2, n_hidden=5, batch_size=8, steps=1, relax_hidden=4)
    row, = track_variance(cfg, synthetic(), ["dynamic_rebar", "relax", "arm"], "nvil", log=lambda s: None,
                          report_every=1)
    assert abs(row["relax"] - row["dynamic_rebar"]) < 1e-6, row
    assert abs(row["arm"] - row["dynamic_rebar"]) > 1e-3, row


def test_the_followed_trajectory_does_not_depend_on_the_tracked_estimators():
    cfg = TrainConfig(n_layer=1, n_hidden=5, batch_size=8, steps=30, relax_hidden=4)
    alone = track_variance(cfg, synthetic(), [], "nvil", log=lambda s: None, report_every=10)
    tracked = track_variance(cfg, synthetic(), ["relax", "disarm"], "nvil", log=lambda s: None, report_every=10)
    assert [r["train_elbo"] for r in alone] == [r["train_elbo"] for r in tracked]
    assert [r["nvil"] for r in alone] != [r["nvil"] for r in tracked]      # measured around a pooled mean
