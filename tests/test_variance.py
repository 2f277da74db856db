"""track_variance's noise: common random numbers (rebar_np.experiments.variance module docstring).

Every tracked estimator draws from its own, identically seeded generator, so estimators that
consume noise the same way see the same u on every step, and the followed trajectory does not
depend on which estimators are tracked beside it.
"""
import numpy as np
import pytest

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


def test_a_tracked_comparison_keeps_its_rows_and_figure_on_disk_as_it_goes(tiny_data_dir, tmp_path):
    """--output and --plot are rewritten after every row, so a long comparison that is stopped keeps
    what it measured; the JSON says whether it finished."""
    import json

    from click.testing import CliRunner

    import cli
    from rebar_np.experiments import variance as VM
    pytest.importorskip("matplotlib")
    seen = []
    real = VM.track_variance

    def spy(*args, on_row=None, **kwargs):       # what is on disk after each row
        def check(rows):
            on_row(rows)
            seen.append((len(rows), json.loads((tmp_path / "v.json").read_text()), (tmp_path / "v.png").exists()))
        return real(*args, on_row=check, **kwargs)

    args = ["variance", "--task", "omni", "--data-dir", tiny_data_dir, "--n-hidden", 8, "--steps", 12,
            "--report-every", 4, "--estimators", "nvil,rebar", "--output", tmp_path / "v.json",
            "--plot", tmp_path / "v.png"]
    import unittest.mock
    with unittest.mock.patch.object(VM, "track_variance", spy):
        res = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert [(n, d["finished"], len(d["rows"]), png) for n, d, png in seen] == [
        (1, False, 1, True), (2, False, 2, True), (3, True, 3, True)]
    final = json.loads((tmp_path / "v.json").read_text())
    assert final["finished"] and [r["step"] for r in final["rows"]] == [4, 8, 12]
    assert set(final["rows"][0]) >= {"step", "train_elbo", "simple_muprop", "nvil", "rebar"}
    res = CliRunner().invoke(cli.main, ["variance", "--checkpoint", str(tmp_path), "--plot", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--plot" in res.output and not (tmp_path / "x.png").exists()


def test_the_comparison_runs_its_steps_in_the_training_step_setting(monkeypatch):
    """track_variance's steps run as rebar-np train's do (train.step_setting: one BLAS thread at small
    batches, the cores chosen by timing each step); without it, on a loaded 2-core machine every
    product waited for the busy second core (about 1 s a step instead of 0.1)."""
    import contextlib
    from rebar_np.experiments import variance
    entered, timed = [], []

    @contextlib.contextmanager
    def setting(batch_size, on_device=False):
        entered.append(batch_size)
        yield type("Cores", (), {"record": lambda self, seconds: timed.append(seconds)})()
    monkeypatch.setattr(variance, "step_setting", setting)
    cfg = TrainConfig(n_layer=1, n_hidden=5, batch_size=8, steps=7, relax_hidden=4)
    track_variance(cfg, synthetic(), ["disarm"], "nvil", log=lambda s: None)
    assert entered == [8] and len(timed) == 7 and all(t > 0 for t in timed)
