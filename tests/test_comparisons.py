"""MuProp / SimpleMuProp derivatives, the variance tools and the comparison runner."""
import json

import numpy as np
import pytest

from rebar_np import estimators as E
from rebar_np.experiments.compare import format_table, plot_comparison, run_comparison
from rebar_np.evaluation.gradcheck import random_instance, run_checks
from rebar_np.model.relaxed import mean_field_pass
from rebar_np.model.sbn import generative_forward, log_q_layers, recognition_forward
from rebar_np.training.train import TrainConfig
from rebar_np.experiments.variance import measure_variance, track_variance


@pytest.mark.parametrize("estimator", ["simple_muprop", "muprop"])
@pytest.mark.parametrize("task,L,nl", [(t, L, nl) for t in ("sbn", "sp") for L in (1, 2, 3) for nl in (False, True)])
def test_muprop_gradcheck(estimator, task, L, nl):
    rows = run_checks(estimator, task, L, 3, nl, n_input=8, batch_size=3, max_entries=80)
    bad = [f"{r.tensor}: rel {r.max_rel_err:.2e}" for r in rows if not r.passed]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("L,nl", [(1, False), (2, True), (3, False)])
def test_mean_field_total_derivative(L, nl):
    model, params, x, u, rng = random_instance("sbn", L, 3, nl, n_input=8, batch_size=4)
    mf = mean_field_pass(model, params, x)

    def f_with(l, delta):
        mus = []

        def sample(k, a):
            m = 1.0 / (1.0 + np.exp(-a)) + (delta if k == l else 0.0)
            mus.append(m)
            return m
        layers = recognition_forward(model, params, model.q_input(x), sample)
        return generative_forward(model, params, x, mus)[0] - sum(log_q_layers(layers))
    assert np.allclose(mf.f, f_with(0, 0.0), rtol=1e-12)
    for l in range(L):
        fd = np.zeros_like(mf.df_dmu[l])
        for j in range(fd.shape[1]):
            d = np.zeros_like(fd)
            d[:, j] = 1e-6
            fd[:, j] = (f_with(l, d) - f_with(l, -d)) / 2e-6
        err = np.max(np.abs(fd - mf.df_dmu[l])) / np.max(np.abs(fd))
        assert err < 1e-6, f"f'(mu_{l}): relative error {err:.2e}"


def synthetic(n=300, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, d)) < rng.uniform(0.05, 0.6, d)).astype(np.float32)
    return {"train": x[:200], "valid": x[200:250], "test": x[250:]}


def test_measured_variance_interval_shrinks_as_one_over_sqrt_k():
    model, params, x, u, rng = random_instance("sbn", 2, 4, False, n_input=12, batch_size=6)
    names = ["nvil", "rebar"]
    auxes = {n: E.get(n).init_aux(model, 0, np.float64) for n in names}
    small = measure_variance(model, params, auxes, x, 200, names, seed=1)
    large = measure_variance(model, params, auxes, x, 3200, names, seed=2)
    for n in names:
        ratio = small[n]["stderr"] / large[n]["stderr"]
        assert 3.0 < ratio < 5.3, f"{n}: stderr ratio {ratio:.2f} for 16x the draws (expected ~4)"
        lo, hi = large[n]["ci"]
        assert lo < large[n]["log_variance"] < hi
        assert abs(small[n]["log_variance"] - large[n]["log_variance"]) < 4 * (small[n]["ci"][1] - small[n]["ci"][0])
    assert large["rebar"]["log_variance"] < large["nvil"]["log_variance"]


def test_track_variance_reports_every_estimator():
    cfg = TrainConfig(n_layer=2, n_hidden=5, batch_size=8, steps=50)
    lines = []
    rows = track_variance(cfg, synthetic(), ["nvil", "muprop", "dynamic_rebar"], "simple_muprop", log=lines.append,
                          report_every=25)
    assert [r["step"] for r in rows] == [25, 50]
    for r in rows:
        assert {"simple_muprop", "nvil", "muprop", "dynamic_rebar"} <= set(r)
        assert all(np.isfinite(r[k]) for k in ("nvil", "muprop", "dynamic_rebar"))
    assert lines[0].startswith("Step 25: train ELBO")


def test_the_table_keeps_its_columns_apart_for_huge_values():
    row = {"estimator": "nvil", "steps": 12, "train_elbo": -1.234e32, "valid_bound": float("-inf"),
           "test_bound": None, "log_grad_var": 7.5e31, "wall_time_s": 3.25, "diverged": True}
    head, line = format_table([row], 5).splitlines()
    assert line.split() == ["nvil", "12", "-1.23e+32", "-inf", "-", "7.5e+31", "3.2", "diverged"], line
    assert len(line.removesuffix("  diverged")) <= len(head)


def test_compare_writes_table_json_and_plot(tmp_path):
    cfg = TrainConfig(n_layer=1, n_hidden=4, batch_size=8, steps=40, eval_every=0, eval_samples=5, report_every=20)
    rows, hist = run_comparison(cfg, synthetic(), ["nvil", "rebar"], str(tmp_path), log=lambda s: None,
                                progress=False)
    assert [r["estimator"] for r in rows] == ["nvil", "rebar"]
    assert all(r["valid_bound"] is not None and r["steps"] == 40 for r in rows)
    table = format_table(rows, 5)
    assert "nvil" in table and "rebar" in table and "valid (5)" in table
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert len(saved["rows"]) == 2 and (tmp_path / "nvil" / "checkpoint.h5").exists()
    png = plot_comparison(hist, str(tmp_path / "c.png"))
    if png is not None:
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
