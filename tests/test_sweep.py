"""rebar-np sweep: grid files, parallel runs (one process each), skip/resume, the report, a Dask cluster."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from rebar_np.experiments import sweep as S
from rebar_np.training.checkpoint import load_checkpoint
from rebar_np.training.metrics import last_value, read_metrics


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def write_grid(path, data_dir, grid, settings="steps = 8", top=""):
    path.write_text(f'{top}\ndata_dir = "{data_dir}"\n[grid]\n{grid}\n[settings]\n{settings}\n'
                    'task = "omni"\nn_hidden = 8\neval_every = 1\neval_samples = 3\n')
    return path


def test_grid_expansion(tmp_path):
    path = tmp_path / "paper.toml"
    path.write_text('[grid]\nestimator = ["nvil", "rebar(0.1)", "mine"]\narchitecture = ["two_layer", "deep"]\n'
                    'learning_rate = [1e-4, 3e-4]\nseed = [0, 1]\n[settings]\nsteps = 100\n'
                    '[architectures]\ndeep = { n_layer = 3 }\n[estimators]\nmine = { model = "rebar", joint = true }\n')
    grid = S.load_grid(path)
    assert grid.output == str(tmp_path / "paper")
    specs = S.expand(grid)
    assert len(specs) == 3 * 2 * 2 * 2 and len({s.dir for s in specs}) == len(specs)
    by_name = {s.name: s for s in specs}
    s = by_name["rebar-0.1_deep_lr0.0003_seed1"]
    assert s.settings["model"] == "rebar" and s.settings["temperature"] == 0.1 and s.settings["n_layer"] == 3
    assert s.settings["learning_rate"] == 3e-4 and s.settings["seed"] == 1 and s.settings["steps"] == 100
    assert by_name["mine_two-layer_lr0.0001_seed0"].settings["joint"] is True


@pytest.mark.parametrize("body,words", [
    ("[grid]\nestimator = []\n", ["non-empty list"]),
    ("[grid]\nestimator = [\"nvil\"]\narchitecture = [\"huge\"]\n", ["unknown architecture 'huge'"]),
    ("[grid]\nestimator = [\"nope\"]\n", ["unknown estimator 'nope'"]),
    ("[grid]\nlerning_rate = [1]\n", ["unknown [grid] key"]),
    ("[grid]\nseed = [0]\n[settings]\nseed = 1\n", ["both in [grid] and in [settings]"]),
    ("[grid]\nn_layer = [0]\n", ["n-layer must be at least 1"]),
    ("worker = 3\n[grid]\nseed = [0]\n", ["unknown key(s) worker"]),
    ("[grid\n", ["unreadable"]),
])
def test_bad_grids_are_one_line_errors(tmp_path, body, words):
    path = tmp_path / "g.toml"
    path.write_text(body)
    res = run("sweep", path)
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and all(w in res.output for w in words), res.output


def test_two_by_two_sweep_runs_two_at_a_time_skips_and_resumes(tiny_data_dir, tmp_path):
    path = write_grid(tmp_path / "g.toml", tiny_data_dir,
                      'estimator = ["nvil", "dynamic_rebar"]\narchitecture = ["linear", "two_layer"]', top="workers = 2")
    grid = S.load_grid(path)
    specs = S.expand(grid)
    # one run already exists, stopped at step 4 (as if its machine had gone away): the sweep resumes it
    early = specs[1]
    settings = tmp_path / "early.json"
    settings.write_text(json.dumps(early.settings))
    assert run("train", "--config", settings, "--steps", 4, "--output", early.dir, "--data-dir", tiny_data_dir,
               "--no-progress").exit_code == 0
    res = run("sweep", path)
    assert res.exit_code == 0, res.output
    assert "4 runs, 0 finished, 4 to run, 2 at a time" in res.output
    assert f"resume from step 4: {early.name}" in res.output and res.output.count("] start: ") == 3
    assert "up to 2 at once" in res.output and "4 of 4 runs finished" in res.output
    for spec in specs:
        assert load_checkpoint(f"{spec.dir}/checkpoint.h5")["step"] == 8
    rows = json.loads((tmp_path / "g" / "report.json").read_text())["rows"]
    assert len(rows) == 4
    assert {(r["estimator"], r["architecture"]) for r in rows} == {
        (e, a) for e in ("nvil", "dynamic_rebar") for a in ("linear", "two_layer")}
    table = res.output[res.output.index("estimator "):].splitlines()
    assert len([l for l in table[1:] if l.split()[0] in ("nvil", "dynamic_rebar")]) == 4
    for r in rows:   # the table's numbers are the runs' own
        spec = next(s for s in specs if s.cell["estimator"] == r["estimator"] and
                    s.cell["architecture"] == r["architecture"])
        m = read_metrics(f"{spec.dir}/metrics.h5")
        assert r["train_elbo"] == last_value(m, "train_elbo") and r["valid_bound"] == last_value(m, "valid_bound")
    # again: nothing to do; the report alone from the sweep folder
    res = run("sweep", path)
    assert res.exit_code == 0 and "4 finished, 0 to run" in res.output
    res = run("sweep", "--report", tmp_path / "g")
    assert res.exit_code == 0 and "4 of 4 runs finished" in res.output
    # a grid that now asks for other settings than a run folder holds is refused
    write_grid(path, tiny_data_dir, 'estimator = ["nvil", "dynamic_rebar"]\narchitecture = ["linear", "two_layer"]',
               settings="steps = 8\nbatch_size = 12")
    res = run("sweep", path)
    assert res.exit_code == 2 and "other settings" in res.output and "batch_size" in res.output


def test_sweep_on_a_local_dask_cluster(tiny_data_dir, tmp_path):
    pytest.importorskip("dask.distributed", reason="the dask engine is an optional extra: "
                                                   "pip install 'rebar-np[cluster]'")
    path = write_grid(tmp_path / "d.toml", tiny_data_dir, 'estimator = ["nvil"]\nlearning_rate = [1e-4, 3e-2]',
                      top='engine = "dask"\nworkers = 2')
    res = run("sweep", path)
    assert res.exit_code == 0, res.output
    assert res.output.count("submitted (start)") == 2 and "2 of 2 runs finished" in res.output
    specs = S.expand(S.load_grid(path))
    valid = {s.settings["learning_rate"]: last_value(read_metrics(f"{s.dir}/metrics.h5"), "valid_bound")
             for s in specs}
    rows = json.loads((tmp_path / "d" / "report.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["seeds"] == 1
    assert rows[0]["learning_rate"] == max(valid, key=valid.get)       # best learning rate by validation bound
    assert rows[0]["valid_bound"] == max(valid.values())
    assert all(np.isfinite(v) for v in valid.values())


def test_ctrl_c_stops_a_sweep_and_its_runs_save_checkpoints(tiny_data_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    path = write_grid(tmp_path / "c.toml", tiny_data_dir, 'estimator = ["nvil"]\nseed = [0, 1]',
                      settings="steps = 100000000\nreport_every = 10\ncheckpoint_every = 50", top="workers = 2")
    specs = S.expand(S.load_grid(path))
    # Ctrl-C as a terminal gives it: the default SIGINT, and a process group of its own, so that a
    # failure below also ends the sweep's runs instead of leaving them training. A suite run from a
    # background job has SIGINT ignored, which the sweep would inherit (and Python keep); a handler
    # is not inherited (exec resets it to the default), so the sweep starts under one.
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "cli.py", "sweep", str(path)], cwd=Path(cli.__file__).parent,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, found)
    try:
        deadline = time.monotonic() + 240
        while not all((Path(s.dir) / "metrics.h5").exists() for s in specs):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, output
    for spec in specs:
        status = json.loads((Path(spec.dir) / "status.json").read_text())
        assert status["state"] == "interrupted", status     # each run saved once, after its current step
        assert load_checkpoint(Path(spec.dir) / "checkpoint.h5")["step"] == status["step"]
    res = run("sweep", path, "--dry-run")
    assert res.output.count("unfinished (step") == 2
