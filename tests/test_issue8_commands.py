"""The issue-8 estimators in train, variance, compare and gradcheck: options reach them, bad values
are one-line errors, the K-sample estimators are measured around their own expectation."""
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from rebar_np import estimators as E
from rebar_np.experiments.compare import run_comparison
from rebar_np.training.train import TrainConfig, train
from rebar_np.experiments.variance import Tracked, log_variances, track_variance
from test_cli import assert_one_line_error
from test_comparisons import synthetic

NEW = ["relax", "arm", "disarm", "reinforce_loo", "vimco"]


def run(*args):
    return CliRunner().invoke(cli.main, list(args))


@pytest.mark.parametrize("args,words", [
    (["train", "--model", "vimco", "--samples", "1"], ["samples", "at least 2"]),
    (["train", "--model", "nvil", "--samples", "3"], ["--samples", "vimco", "nvil"]),
    (["train", "--model", "arm", "--relax-hidden", "8"], ["--relax-hidden", "relax"]),
    (["train", "--model", "relax", "--relax-hidden", "0"], ["relax-hidden"]),
    (["train", "--model", "vimco", "--samples", "two"], ["samples"]),
    (["variance", "--estimators", "arm,vimco", "--samples", "1"], ["samples"]),
    (["variance", "--estimators", "arm,armm"], ["unknown model", "armm"]),
    (["compare", "--estimators", "relax", "--relax-hidden", "-1"], ["relax-hidden"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # compare's default output folder is runs/compare-<time> here, not in the work tree
    assert_one_line_error(run(*args), *words)
    assert not (tmp_path / "runs").exists()


def test_options_reach_the_estimators():
    assert TrainConfig(model="vimco", samples=3).estimator_options() == {"samples": 3}
    assert TrainConfig(model="reinforce_loo").estimator_options() == {"samples": 5}
    assert TrainConfig(model="relax", relax_hidden=7, temperature=0.3).estimator_options() == \
        {"temperature": 0.3, "relaxation": "muprop", "hidden": 7}
    assert TrainConfig(model="disarm", samples=3).estimator_options() == {}
    res = run("train", "--help")
    assert "--samples" in res.output and "--relax-hidden" in res.output and "vimco" in res.output


def test_training_with_each_new_estimator(tmp_path):
    """A few steps each; K multiplies the compute and not the batch; relax's r is saved with the run."""
    data = synthetic()
    for name in NEW:
        cfg = TrainConfig(model=name, n_layer=2, n_hidden=4, batch_size=8, steps=30, eval_every=0, report_every=10,
                          samples=3, relax_hidden=6, output=str(tmp_path / name))
        res = train(cfg, data, log=lambda s: None, progress=False)
        assert res.step == 30 and len(res.history) == 3
        assert all(np.isfinite(h["train_elbo"]) and np.isfinite(h["log_grad_var"]) for h in res.history)
        if name == "relax":
            assert res.aux["relax1.W1"].shape == (4, 6) and "tau" in res.aux
    # the K-sample estimators draw B K noise rows for a batch of B, and report the K-sample bound per example
    est = E.get("vimco")
    assert E.noise_rows(est, 8, {"samples": 3}) == 24 and E.noise_rows(E.get("arm"), 8) == 8


def test_compare_runs_the_new_estimators(tmp_path):
    cfg = TrainConfig(n_layer=1, n_hidden=4, batch_size=8, steps=20, eval_every=0, eval_samples=5, report_every=10,
                      samples=2)
    rows, _ = run_comparison(cfg, synthetic(), ["disarm", "vimco"], str(tmp_path), log=lambda s: None,
                             progress=False)
    assert [r["estimator"] for r in rows] == ["disarm", "vimco"]
    assert all(np.isfinite(r["train_elbo"]) and r["valid_bound"] is not None for r in rows)


def test_variance_measures_k_sample_estimators_around_their_own_mean():
    """Two estimators with unit variance around different means (the ELBO's gradient and the
    K-sample bound's): each must read log variance 0, not be pulled toward the other's mean."""
    decay, t = 0.999, 50
    corr = 1.0 - decay ** t

    def tracked(name, mean, options):
        return Tracked(name, {}, {}, None, options, {"w": np.full(4, mean * corr)},
                       {"w": np.full(4, (mean * mean + 1.0) * corr)})
    rows = log_variances([tracked("nvil", 0.0, {}), tracked("disarm", 0.0, {}), tracked("vimco", 5.0, {"samples": 3}),
                          tracked("reinforce_loo", 5.0, {"samples": 3}), tracked("concrete", 2.0, {})], t, decay)
    for name in ("nvil", "disarm", "vimco", "reinforce_loo"):
        assert abs(rows[name]) < 1e-9, rows
    assert abs(rows["concrete"] - np.log(1.0 + 4.0)) < 1e-9          # biased: around the ELBO estimators' mean


def test_track_variance_reports_the_new_estimators():
    cfg = TrainConfig(n_layer=2, n_hidden=5, batch_size=8, steps=30, samples=3, relax_hidden=4)
    rows = track_variance(cfg, synthetic(), ["nvil", "dynamic_rebar"] + NEW, "disarm", log=lambda s: None,
                          report_every=15)
    assert [r["step"] for r in rows] == [15, 30]
    assert all(np.isfinite(r[n]) for r in rows for n in ["nvil", "dynamic_rebar"] + NEW)


def test_variance_command_prints_a_log_variance_for_each_estimator():
    """The acceptance command's shape, on a tiny model: one column per estimator, a finite number in each."""
    names = ["nvil", "rebar", "dynamic_rebar", "relax", "arm", "disarm"]
    res = run("variance", "--task", "sbn", "--n-layer", "2", "--n-hidden", "4", "--batch-size", "4", "--steps", "3",
              "--estimators", ",".join(names))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = next(i for i, l in enumerate(lines) if l.split()[:1] == ["step"])
    assert lines[head].split() == ["step", "simple_muprop"] + names
    values = [float(v) for v in lines[head + 1].split()[1:]]
    assert len(values) == 7 and all(np.isfinite(values))


@pytest.mark.parametrize("model", ["vimco", "disarm"])     # relax: tests/test_relax.py (slower)
def test_gradcheck_command(model):
    res = run("gradcheck", "--model", model, "--n-layer", "2", "--n-hidden", "3", "--n-input", "6",
              "--batch-size", "3")
    assert res.exit_code == 0, res.output
    rows = [l for l in res.output.splitlines() if l.endswith("pass") or l.endswith("FAIL")]
    assert rows and all(l.endswith("pass") for l in rows)
    assert any(l.startswith("q1.W") for l in rows)
