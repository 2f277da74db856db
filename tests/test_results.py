"""results/: the sweep files' runs published with their small files, and the table generated from them."""
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from rebar_np.experiments import publish as P
from rebar_np.experiments import sweep as S
from rebar_np.training.metrics import read_metrics

ROOT = Path(cli.__file__).resolve().parent


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_the_committed_results_table_is_what_the_committed_files_say():
    """results/README.md (and README.md's results section) is regenerated from results/ by a command;
    the committed table must be exactly what that command writes."""
    assert P.update_tables(str(ROOT / "results"), check=True) == []
    res = run("results", "table", "--results-dir", ROOT / "results", "--check")
    assert res.exit_code == 0, res.output


def test_the_experiment_files_are_the_papers_grids():
    for name, estimators, n_runs in (("rebar_table1", {"nvil", "muprop", "dynamic_rebar", "rebar(0.1)",
                                                       "concrete(0.1)"}, 45),
                                     ("newer_estimators", {"relax", "arm", "disarm", "vimco"}, 36)):
        grid = S.load_grid(ROOT / "experiments" / f"{name}.toml")
        specs = S.expand(grid)
        assert set(grid.axes["estimator"]) == estimators and len(specs) == n_runs
        assert set(grid.axes["architecture"]) == {"linear", "two_layer", "nonlinear"}
        assert set(grid.axes["learning_rate"]) == {1e-4, 3e-4, 1e-3}
        assert all(s.settings["steps"] == 2_000_000 for s in specs)
        # runs live outside the tracked tree (runs/ is ignored); only results/ is published
        assert os.path.relpath(grid.output, ROOT).startswith("runs" + os.sep)
        subset = S.select(grid, specs, ["learning_rate=3e-4", "architecture=two_layer"])
        assert len(subset) == len(estimators) and all(s.settings["learning_rate"] == 3e-4 for s in subset)


@pytest.mark.parametrize("only,words", [
    (["lr=3e-4"], ["lr is not a [grid] key", "learning_rate"]),
    (["learning_rate=5e-4"], ["'5e-4' is not among", "0.0003"]),
    (["learning_rate"], ["KEY=VALUE"]),
])
def test_only_names_what_is_wrong(tmp_path, only, words):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\nestimator = ["nvil"]\nlearning_rate = [3e-4, 1e-3]\n[settings]\nsteps = 10\n')
    res = run("sweep", path, "--dry-run", *[a for o in only for a in ("--only", o)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert all(w in res.output for w in words), res.output


def test_publish_copies_small_files_computes_the_final_bound_and_tabulates(tiny_data_dir, tmp_path):
    grid_path = tmp_path / "g.toml"
    grid_path.write_text(f'output = "sweep"\ndata_dir = "{tiny_data_dir}"\nworkers = 1\n[grid]\n'
                         'estimator = ["nvil", "concrete(0.1)"]\narchitecture = ["two_layer"]\n'
                         '[settings]\nsteps = 8\ntask = "omni"\nn_hidden = 8\neval_every = 1\neval_samples = 3\n')
    grid = S.load_grid(grid_path)
    specs = S.expand(grid)
    # one run finished, one stopped half-way: the second is published as far as it got
    for spec, steps in zip(specs, (8, 4)):
        settings = tmp_path / f"{spec.name}.json"
        settings.write_text(json.dumps(spec.settings))
        res = run("train", "--config", settings, "--steps", steps, "--output", spec.dir, "--data-dir",
                  tiny_data_dir, "--no-progress")
        assert res.exit_code == 0, res.output
    # as if the second had been started for 8 steps and its machine had gone away at step 4
    config = Path(specs[1].dir) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "steps": 8}))
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text(f"# Results\n\n{P.BEGIN}\n{P.END}\n")
    res = run("results", "publish", grid_path, "--results-dir", results, "--no-progress")
    assert res.exit_code == 0, res.output
    done, partial = (results / "sweep" / s.name for s in specs)
    assert sorted(os.listdir(done)) == ["config.json", "eval-test-5000.json", "metrics.h5", "metrics.png"]
    assert "checkpoint.h5" not in os.listdir(partial) and (partial / "metrics.png").exists()
    assert not (Path(specs[1].dir) / "eval-test-5000.json").exists()     # unfinished: no final bound
    assert (results / "sweep" / "two_layer_lr0.0003.png").exists()
    final = json.loads((done / "eval-test-5000.json").read_text())
    assert final["samples"] == 5000 and final["step"] == 8

    text = (results / "README.md").read_text()
    rows = [l for l in text.splitlines() if l.startswith("| two layer")]
    assert len(rows) == 2
    cells = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[1:-1]] for r in rows}
    m = read_metrics(done / "metrics.h5")
    nvil = cells["`nvil`"]
    assert nvil[3] == "8" and nvil[4] == f"{m['train_elbo'][-1]:.2f}" and nvil[8] == f"{final['bound']:.2f}"
    assert nvil[11] == "-99.60"                                        # the paper's number beside ours
    assert cells["`concrete(0.1)`"][3] == "4 of 8 (unfinished)" and cells["`concrete(0.1)`"][8] == "–"

    # the check passes on what publish wrote, and fails once a file says something else
    assert run("results", "table", "--results-dir", results, "--check").exit_code == 0
    cfg = json.loads((done / "config.json").read_text())
    cfg["learning_rate"] = 1e-3
    (done / "config.json").write_text(json.dumps(cfg))
    res = run("results", "table", "--results-dir", results, "--check")
    assert res.exit_code == 1 and "differs" in res.output
    assert run("results", "table", "--results-dir", results).exit_code == 0
    assert "| 0.001 |" in (results / "README.md").read_text()
