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


@pytest.mark.parametrize("mode", ["track to files", "track to the console", "draws"])
def test_ctrl_c_keeps_what_was_measured_and_says_where(mode, tiny_data_dir, tmp_path, monkeypatch):
    """Ctrl-C stops between two steps (or draws): never a traceback (a KeyboardInterrupt raised inside a
    compiled kernel printed "SystemError: ... returned a result with an exception set"), exit 130, the
    rows measured so far on disk and in the table, and one line saying where they are."""
    import json
    import os
    import signal

    from click.testing import CliRunner

    import cli
    pytest.importorskip("matplotlib")
    data = ["--task", "omni", "--data-dir", str(tiny_data_dir), "--n-hidden", "8", "--n-layer", "1"]
    runner = CliRunner()
    if mode == "draws":
        res = runner.invoke(cli.main, ["train", "--model", "nvil", *data, "--steps", "4", "--eval-every", "0",
                                       "--no-progress", "--output", str(tmp_path / "run")])
        assert res.exit_code == 0, res.output
    est = E.get("nvil")
    real, calls = est.estimate, []

    def estimate(*a, **k):                     # Ctrl-C during nvil's 10th gradient (step 10, or draw 10)
        calls.append(1)
        if len(calls) == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(est, "estimate", estimate)
    files = ["--output", str(tmp_path / "v.json")] + (["--plot", str(tmp_path / "v.png")] if mode != "draws" else [])
    if mode == "draws":
        args = ["variance", "--checkpoint", str(tmp_path / "run"), "--data-dir", str(tiny_data_dir), "--draws", "50",
                "--estimators", "nvil", *files]
    else:
        args = ["variance", *data, "--estimators", "nvil,rebar", "--steps", "40", "--report-every", "4",
                *(files if mode == "track to files" else [])]
    res = runner.invoke(cli.main, args)
    assert res.exit_code == 130 and "Traceback" not in res.output, res.output
    line, = [l for l in res.stderr.splitlines() if l.strip()]
    assert line.startswith("Error: interrupted (SIGINT)"), line
    assert len(calls) == 10                                       # it stopped after the step (draw) it was in
    if mode == "draws":
        assert "50 draws" in line and "nothing was written" in line and not (tmp_path / "v.json").exists()
        return
    assert "the 2 row(s) measured so far (to step 8 of 40)" in line, line
    assert [l.split()[0] for l in res.stdout.splitlines() if l.split()[:1] in (["4"], ["8"])] == ["4", "8"]
    if mode == "track to files":
        assert f"kept in {tmp_path / 'v.json'} and {tmp_path / 'v.png'}" in line, line
        saved = json.loads((tmp_path / "v.json").read_text())
        assert [r["step"] for r in saved["rows"]] == [4, 8] and saved["finished"] is False
        assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "printed above" in line and "--output" in line, line
    assert not list(tmp_path.glob(".tmp-*"))
