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


def test_publish_copies_small_files_computes_the_final_bound_and_tabulates(tiny_data_dir, tmp_path, monkeypatch):
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

    # publishing one run again redraws its architecture's figure with every run published there
    from rebar_np.experiments import plots
    drawn, real_plot = {}, plots.plot_runs

    def spy(dirs, path, labels=None, **kw):
        drawn[os.path.basename(str(path))] = list(labels)
        return real_plot(dirs, path, labels=labels, **kw)
    monkeypatch.setattr(plots, "plot_runs", spy)
    res = run("results", "publish", grid_path, "--results-dir", results, "--no-progress", "--only", "estimator=nvil")
    assert res.exit_code == 0, res.output
    assert drawn["two_layer_lr0.0003.png"] == ["nvil", "concrete(0.1)"], drawn
    monkeypatch.undo()

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


@pytest.fixture(scope="module")
def published(tiny_data_dir, tmp_path_factory):
    """A one-run sweep, trained (8 steps) and published: (grid file, sweep folder, results folder)."""
    root = tmp_path_factory.mktemp("published")
    grid_path = root / "g.toml"
    grid_path.write_text(f'output = "sweep"\ndata_dir = "{tiny_data_dir}"\nworkers = 1\n[grid]\n'
                         'estimator = ["nvil"]\narchitecture = ["two_layer"]\n'
                         '[settings]\nsteps = 8\ntask = "omni"\nn_hidden = 8\neval_every = 0\n')
    spec, = S.expand(S.load_grid(grid_path))
    settings = root / "settings.json"
    settings.write_text(json.dumps(spec.settings))
    res = run("train", "--config", settings, "--output", spec.dir, "--data-dir", tiny_data_dir, "--no-progress")
    assert res.exit_code == 0, res.output
    results = root / "results"
    results.mkdir()
    (results / "README.md").write_text(f"# Results\n\n{P.BEGIN}\n{P.END}\n")
    res = run("results", "publish", grid_path, "--results-dir", results, "--no-progress")
    assert res.exit_code == 0, res.output
    return grid_path, Path(spec.dir), results


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _older_run(src, out):           # the published copy is further along than the run folder now is
    from rebar_np.training.metrics import MetricsLog
    log = MetricsLog(out / "metrics.h5")
    log.append({"step": 100, "wall_time": 9.0, "train_elbo": -500.0})
    log.flush(force=True)


def _run_went_on(src):              # the run's table has changed since it was published
    from rebar_np.training.metrics import MetricsLog
    log = MetricsLog(src / "metrics.h5")
    log.data["wall_time"][-1] += 1.0
    log._dirty = True
    log.flush(force=True)


def _copy_fails_midway(src, monkeypatch):
    import shutil
    _run_went_on(src)
    real, calls = shutil.copyfile, []

    def copyfile(a, b, **kw):
        calls.append(a)
        if len(calls) == 3:                # config.json and metrics.h5 copied, then the disk is full
            raise OSError(28, "No space left on device", b)
        return real(a, b, **kw)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


DAMAGE = [
    ("empty metrics", lambda src, out, mp: (src / "metrics.h5").write_bytes(b""), ["metrics.h5", "unreadable"]),
    ("truncated metrics", lambda src, out, mp: (src / "metrics.h5").write_bytes(
        (src / "metrics.h5").read_bytes()[:900]), ["metrics.h5", "unreadable"]),
    ("eval not JSON", lambda src, out, mp: (src / "eval-test-5000.json").write_text("{"), ["eval-test-5000.json"]),
    ("eval a list", lambda src, out, mp: (src / "eval-test-5000.json").write_text("[]"),
     ["eval-test-5000.json", "damaged"]),
    ("eval without bound", lambda src, out, mp: (src / "eval-test-5000.json").write_text('{"step": 8}'),
     ["eval-test-5000.json", "damaged"]),
    ("config without model", lambda src, out, mp: (src / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((src / "config.json").read_text()).items() if k != "model"})),
     ["model"]),
    ("published further along", lambda src, out, mp: _older_run(src, out), ["step 100", "only step 8", "move"]),
    ("published other settings", lambda src, out, mp: (out / "config.json").write_text(json.dumps(
        {**json.loads((out / "config.json").read_text()), "learning_rate": 1e-3})), ["other settings"]),
    ("README without markers", lambda src, out, mp: (_run_went_on(src), (out.parent.parent / "README.md")
                                                     .write_text("# Results\n")), ["README.md", "markers"]),
    ("a copy fails midway", lambda src, out, mp: _copy_fails_midway(src, mp), ["No space left on device"]),
]


@pytest.mark.parametrize("damage,words", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_publish_never_replaces_published_files_with_damaged_or_older_ones(damage, words, published, tmp_path,
                                                                          monkeypatch):
    """A damaged run folder, a published copy that is further along or of another run, or a copy that
    fails half-way: one line, exit 2, and results/ exactly as it was (nothing is written until every
    file has been read; each run's files are renamed over the published ones together)."""
    import shutil
    grid_src, sweep_src, results_src = published
    shutil.copytree(grid_src.parent, tmp_path / "w")
    grid, src, results = tmp_path / "w" / "g.toml", tmp_path / "w" / sweep_src.relative_to(grid_src.parent), \
        tmp_path / "w" / "results"
    out = results / "sweep" / src.name
    damage(src, out, monkeypatch)
    before = _files(results)
    res = run("results", "publish", grid, "--results-dir", results, "--no-progress")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    line, = [l for l in res.stderr.splitlines() if l.strip()]
    assert line.startswith("Error: ") and all(w in line for w in words), line
    assert _files(results) == before
    assert not [p for p in results.rglob(".tmp-*")]


@pytest.mark.parametrize("name,text,words", [
    ("eval-test-5000.json", "[]", ["eval-test-5000.json", "damaged"]),
    ("eval-test-5000.json", '{"step": 8, "bound": "x"}', ["eval-test-5000.json", "damaged"]),
    ("config.json", "[]", ["config.json", "JSON object"]),
    ("config.json", "{}", ["config.json", "lacks", "model"]),
    ("config.json", '{"model": "nvil", "n_layer": "two"}', ["config.json", "n_layer"]),
])
def test_the_table_names_a_damaged_published_file_in_one_line(name, text, words, published, tmp_path):
    import shutil
    results = tmp_path / "results"
    shutil.copytree(published[2], results)
    (results / "sweep" / published[1].name / name).write_text(text)
    before = (results / "README.md").read_bytes()
    for check in ([], ["--check"]):
        res = run("results", "table", "--results-dir", results, *check)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        line, = [l for l in res.stderr.splitlines() if l.strip()]
        assert line.startswith("Error: ") and all(w in line for w in words), line
    assert (results / "README.md").read_bytes() == before
