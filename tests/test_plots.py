"""rebar-np plot and samples: readable PNGs, the missing-matplotlib message, ancestral sampling."""
import itertools
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from rebar_np.evaluation.generate import reconstruct_images, sample_images
from rebar_np.model.sbn import SBN, init_params

mpl_image = pytest.importorskip("matplotlib.image", reason="plots need matplotlib (pip install 'rebar-np[plot]')")


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    for model in ("nvil", "dynamic_rebar"):
        res = run("train", "--task", "omni", "--data-dir", tiny_data_dir, "--n-hidden", 8, "--model", model,
                  "--steps", 16, "--report-every", 2, "--eval-every", 1, "--eval-samples", 3, "--no-progress",
                  "--output", root / model)
        assert res.exit_code == 0, res.output
    return root / "nvil", root / "dynamic_rebar"


def assert_readable_png(path, min_side=300):
    img = mpl_image.imread(str(path))
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    assert img[..., :3].std() > 0.01          # not a blank canvas


def test_plot_one_and_several_runs(two_runs, tmp_path):
    nvil, dyn = two_runs
    res = run("plot", dyn)
    assert res.exit_code == 0, res.output
    assert_readable_png(dyn / "metrics.png")
    res = run("plot", nvil, dyn, "--output", tmp_path / "both.png")
    assert res.exit_code == 0, res.output
    assert_readable_png(tmp_path / "both.png")


def test_a_run_keeps_its_colour_in_every_panel(two_runs, tmp_path, monkeypatch):
    """nvil has no temperature: dynamic_rebar's temperature line must keep dynamic_rebar's colour."""
    import matplotlib.colors
    import matplotlib.pyplot as plt
    from rebar_np.experiments.plots import plot_runs
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_runs([str(d) for d in two_runs], str(tmp_path / "both.png"))
    colours = {}
    for ax in figures[0].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(matplotlib.colors.to_hex(line.get_color()))
    monkeypatch.undo()
    plt.close(figures[0])
    assert len(colours) == 2 and all(len(c) == 1 for c in colours.values()), colours


def test_samples_grid(two_runs, tmp_path):
    res = run("samples", two_runs[1], "--n", 16, "--output", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    assert_readable_png(tmp_path / "s.png")


def test_missing_matplotlib_is_one_clear_line(two_runs, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for args in (["plot", two_runs[0]], ["samples", two_runs[0]]):
        res = run(*args)
        assert res.exit_code == 2
        assert res.output.strip().count("\n") == 0 and "pip install 'rebar-np[plot]'" in res.output


def test_plot_of_a_folder_without_metrics(tmp_path):
    res = run("plot", tmp_path)
    assert res.exit_code == 2 and "no metrics.h5" in res.output


def test_ancestral_samples_have_the_model_marginal():
    """E[pixel means] of ancestral samples = sum_b p(b) sigma(T_p0(2 b_0 - 1) + bias), by enumeration."""
    model = SBN("sbn", 2, 2, False, np.full(3, 0.3))
    params = init_params(model, seed=4, dtype=np.float64)
    params["prior.logits"][:] = [0.8, -1.1]
    sig = lambda a: 1 / (1 + np.exp(-a))
    bern = lambda b, a: np.prod(np.where(b == 1, sig(a), 1 - sig(a)))
    exact = np.zeros(3)
    for b1 in itertools.product([0.0, 1.0], repeat=2):
        b1 = np.array(b1)
        p1 = bern(b1, params["prior.logits"])
        for b0 in itertools.product([0.0, 1.0], repeat=2):
            b0 = np.array(b0)
            p0 = bern(b0, (2 * b1 - 1) @ params["p1.W"] + params["p1.c"])
            exact += p1 * p0 * sig((2 * b0 - 1) @ params["p0.W"] + params["p0.c"] + model.data_bias(np.float64))
    got = sample_images(model, params, 40_000, np.random.default_rng(0))
    assert got.shape == (40_000, 3) and np.all((got > 0) & (got < 1))
    se = got.std(axis=0) / np.sqrt(len(got))
    assert np.all(np.abs(got.mean(axis=0) - exact) < 5 * se)


def test_structured_prediction_keeps_the_real_top_half():
    model = SBN("sp", 1, 3, False, np.full(8, 0.4))
    params = init_params(model, seed=1, dtype=np.float32)
    x = (np.random.default_rng(2).random((5, 8)) < 0.5).astype(np.float32)
    for images in (sample_images(model, params, 5, np.random.default_rng(3), x_cond=x),
                   reconstruct_images(model, params, x, np.random.default_rng(3))):
        assert images.shape == (5, 8)
        np.testing.assert_array_equal(images[:, :4], x[:, :4])
        assert np.all((images[:, 4:] > 0) & (images[:, 4:] < 1))
