"""The commands other than train (eval, compare, variance, gradcheck, samples, plot, data import):
bad options and paths are one line and exit 2 before any work, a computed result is never lost or
replaced, a diverging run is one line and exit 3, and compare keeps and resumes its runs."""
import gzip
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from rebar_np import estimators as E
from rebar_np.training.checkpoint import load_checkpoint
from test_runs import assert_same_training_state, interrupt_at

def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_one_line(res, code, *words):
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tiny(data_dir, *more):
    return ["--task", "omni", "--data-dir", data_dir, "--n-hidden", 8, "--n-layer", 1, *more]


def compare_args(data_dir, out, estimators="nvil,rebar", steps=8, *more):
    return ["compare", "--estimators", estimators, *tiny(data_dir), "--steps", steps, "--eval-samples", 3,
            "--no-progress", "--output", out, *more]


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("command_inputs") / "run"
    res = run("train", *tiny(tiny_data_dir, "--model", "nvil"), "--steps", 8, "--eval-every", 0, "--no-progress",
              "--output", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Make every command's expensive part fail the test if it starts."""
    import rebar_np.experiments.compare
    import rebar_np.evaluation.final
    import rebar_np.evaluation.gradcheck
    import rebar_np.evaluation.unbiased
    import rebar_np.experiments.plots
    import rebar_np.experiments.variance

    def started(*a, **k):
        raise AssertionError("the work started before the inputs were checked")
    for mod, name in [(rebar_np.experiments.compare, "train"), (rebar_np.experiments.variance, "track_variance"),
                      (rebar_np.experiments.variance, "measure_variance"), (rebar_np.evaluation.final, "evaluate"),
                      (rebar_np.experiments.plots, "draw_samples"), (rebar_np.experiments.plots, "plot_runs"),
                      (rebar_np.evaluation.gradcheck, "run_checks"), (rebar_np.evaluation.unbiased, "tiny_instance"),
                      (rebar_np.evaluation.unbiased, "check_unbiased")]:
        monkeypatch.setattr(mod, name, started)


def _empty_gz(t):
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (t.tmp / name).write_bytes(b"")
    return t.tmp


def _truncated_gz(t):
    whole = gzip.compress(b"\0\0\x08\x03" + bytes(200))
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (t.tmp / name).write_bytes(whole[:len(whole) // 2])
    return t.tmp


def _read_only_copy(t):
    copy = t.tmp / "ro"
    shutil.copytree(t.run, copy)
    copy.chmod(0o555)
    return copy


root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")

BAD = [
    # eval
    (lambda t: ["eval", t.run, "--limit", -1], ["limit"]),
    pytest.param(lambda t: ["eval", _read_only_copy(t)], ["cannot write"], marks=root),
    (lambda t: ["eval", t.run, "--samples", 2 ** 63], ["samples", "2^63 - 1"]),
    (lambda t: ["eval", t.run, "--seed", -1], ["seed", "-1"]),
    # gradcheck
    (lambda t: ["gradcheck", "--eps", 0], ["--eps"]),
    (lambda t: ["gradcheck", "--eps", "nan"], ["--eps"]),
    (lambda t: ["gradcheck", "--eps", 1], ["--eps"]),
    (lambda t: ["gradcheck", "--tol", -1], ["--tol"]),
    (lambda t: ["gradcheck", "--tol", "nan"], ["--tol"]),
    (lambda t: ["gradcheck", "--batch-size", 0], ["--batch-size"]),
    (lambda t: ["gradcheck", "--n-input", 0], ["--n-input"]),
    (lambda t: ["gradcheck", "--all", "--model", "rebar"], ["--all", "--model"]),
    (lambda t: ["gradcheck", "--all", "--task", "omni"], ["--all", "--task"]),
    (lambda t: ["gradcheck", "--all", "--n-layer", 1], ["--all", "--n-layer"]),
    (lambda t: ["gradcheck", "--all", "--linear"], ["--all", "--nonlinear/--linear"]),
    # variance
    (lambda t: ["variance", "--estimators", ","], ["--estimators", "no estimator"]),
    (lambda t: ["variance", "--estimators", "nvil,nvil"], ["--estimators", "twice"]),
    (lambda t: ["variance", "--output", ""], ["--output", "empty"]),
    (lambda t: ["variance", "--output", t.tmp / "missing" / "v.json"], ["--output", "does not exist"]),
    (lambda t: ["variance", "--steps", 0], ["steps"]),
    (lambda t: ["variance", "--plot", t.tmp / "v.txt"], ["--plot", ".txt", ".png"]),
    (lambda t: ["variance", "--output", t.tmp / "v.png", "--plot", t.tmp / "v.png"], ["--output and --plot"]),
    (lambda t: ["variance", "--checkpoint", t.run, "--draws", 1], ["--draws"]),
    (lambda t: ["variance", "--checkpoint", t.run, "--batch-size", 0], ["batch-size"]),
    (lambda t: ["variance", "--checkpoint", t.run, "--batch-size", 1000, "--data-dir", t.data], ["--batch-size"]),
    # sizes beyond the machine's memory: refused before allocating (a MemoryError or the OOM killer otherwise)
    (lambda t: ["gradcheck", "--n-hidden", 10 ** 8], ["--n-hidden", "must be smaller", "GiB"]),
    (lambda t: ["gradcheck", "--n-layer", 10 ** 8], ["--n-layer", "must be smaller"]),
    (lambda t: ["gradcheck", "--n-input", 10 ** 8], ["--n-input", "must be smaller"]),
    (lambda t: ["gradcheck", "--batch-size", 10 ** 8], ["--batch-size", "must be smaller"]),
    (lambda t: ["unbiased", "--n-input", 10 ** 8], ["--n-input", "must be smaller"]),
    (lambda t: ["unbiased", "--batch-size", 10 ** 8], ["--batch-size", "must be smaller"]),
    (lambda t: ["unbiased", "--draws", 10 ** 12], ["--draws", "must be smaller"]),
    (lambda t: ["unbiased", "--model", "vimco", "--samples", 10 ** 8], ["--samples", "must be smaller"]),
    (lambda t: ["variance", "--checkpoint", t.run, "--draws", 10 ** 12, "--data-dir", t.data],
     ["--draws", "must be smaller"]),
    # samples, plot
    (lambda t: ["samples", t.run, "--n", 100000], ["--n"]),
    (lambda t: ["samples", t.run, "--n", 0], ["--n"]),
    (lambda t: ["samples", t.run, "--output", ""], ["--output", "empty"]),
    (lambda t: ["samples", t.run, "--output", t.tmp / "missing" / "s.png"], ["--output", "does not exist"]),
    (lambda t: ["plot", t.run, "--output", ""], ["--output", "empty"]),
    (lambda t: ["plot", t.run, "--output", t.tmp / "p.gif"], ["--output", ".gif"]),
    (lambda t: ["samples", t.run, "--output", t.tmp / "s.bmp"], ["--output", ".bmp"]),
    (lambda t: ["plot", t.run, "--output", t.tmp / "missing" / "p.png"], ["--output", "does not exist"]),
    # compare (and its output folder must not be created)
    (lambda t: compare_args(t.data, t.out, ","), ["--estimators", "no estimator"]),
    (lambda t: compare_args(t.data, t.out, "nvil,nvil"), ["--estimators", "twice"]),
    (lambda t: compare_args(t.data, t.out, "nvil,nope"), ["nope"]),
    (lambda t: compare_args(t.data, t.out, "nvil", 0), ["steps"]),
    (lambda t: compare_args(t.data, t.out, "nvil", 8, "--batch-size", 0), ["batch-size"]),
    (lambda t: compare_args(t.data, t.out, "nvil", 8, "--batch-size", 1000), ["batch-size"]),
    (lambda t: compare_args(t.data, t.out, "nvil", 8, "--eval-samples", 0), ["eval-samples"]),
    (lambda t: compare_args(t.data, t.out, "relax", 8, "--relax-hidden", -1), ["relax-hidden"]),
    (lambda t: compare_args(t.tmp / "no-data", t.out, "nvil"), ["no-data"]),
    (lambda t: compare_args(t.data, "", "nvil"), ["--output", "empty"]),
    (lambda t: compare_args(t.data, t.afile / "out", "nvil"), ["--output", "not a folder"]),
    # data import
    (lambda t: ["data", "import", "omniglot", t.tmp / "empty.mat", "--data-dir", t.out], ["empty.mat", "empty"]),
    (lambda t: ["data", "import", "omniglot", t.afile, "--data-dir", t.out], ["afile", "MATLAB"]),
    (lambda t: ["data", "import", "omniglot", t.tmp, "--data-dir", t.out], ["folder", "chardata.mat"]),
    (lambda t: ["data", "import", "mnist-grey", _empty_gz(t), "--data-dir", t.out], ["train-images", "empty"]),
    (lambda t: ["data", "import", "mnist-grey", _truncated_gz(t), "--data-dir", t.out],
     ["train-images", "decompress"]),
    (lambda t: ["data", "import", "mnist-grey", t.tmp / "nothing", "--data-dir", t.out], ["nothing", "folder"]),
]


@pytest.mark.parametrize("make_args,words", BAD, ids=lambda v: " ".join(map(str, v)) if isinstance(v, list) else "")
def test_bad_options_and_paths_are_one_line_before_any_work(make_args, words, tiny_run, tiny_data_dir, tmp_path,
                                                            no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)          # a default output folder would land here, not in the work tree
    (tmp_path / "empty.mat").write_bytes(b"")
    (tmp_path / "afile").write_bytes(b"12345678")   # 8 bytes: no MATLAB file
    t = SimpleNamespace(run=tiny_run, data=tiny_data_dir, tmp=tmp_path, out=tmp_path / "out",
                        afile=tmp_path / "afile")
    assert_one_line(run(*make_args(t)), 2, *words)
    assert not t.out.exists()                       # no folder made for a command that did not start
    assert not list(tmp_path.glob("runs"))


def _eval(t):
    return ["eval", t.run, "--samples", 3], "test bound (3 samples"


def _variance(t):
    return ["variance", "--estimators", "nvil", *tiny(t.data), "--steps", 4, "--output", t.tmp / "v.json"], "step"


@pytest.mark.parametrize("command", [_eval, _variance])
def test_a_result_that_cannot_be_written_is_still_shown(command, tiny_run, tiny_data_dir, tmp_path, monkeypatch):
    """The disk fills or turns read-only after the checks: the result is on the console, then one line."""
    import rebar_np.training.rundir

    def read_only(path, obj):
        raise OSError(30, "Read-only file system")
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    args, shown = command(SimpleNamespace(run=run_dir, data=tiny_data_dir, tmp=tmp_path))
    monkeypatch.setattr(rebar_np.training.rundir, "write_json", read_only)
    res = run(*args)
    line = assert_one_line(res, 2, "could not write", "Read-only file system", "printed above")
    assert shown in res.stdout, res.output
    assert res.output.index(shown) < res.output.index(line)


def test_a_partial_evaluation_never_replaces_a_full_one(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert run("eval", run_dir, "--samples", 3).exit_code == 0
    full = (run_dir / "eval-test-3.json").read_bytes()
    res = run("eval", run_dir, "--samples", 3, "--limit", 5)
    assert res.exit_code == 0, res.output
    assert "eval-test-3-first5.json" in res.output
    part = json.loads((run_dir / "eval-test-3-first5.json").read_text())
    assert part["examples"] == 5 and part["split_examples"] == 24
    assert (run_dir / "eval-test-3.json").read_bytes() == full
    res = run("eval", run_dir, "--samples", 3, "--limit", 1000)     # past the split's end: the whole split
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "eval-test-3.json").read_text())["examples"] == 24
    assert sorted(p.name for p in run_dir.glob("eval-*")) == ["eval-test-3-first5.json", "eval-test-3.json"]


def diverge_after(monkeypatch, model, calls):
    """Make the estimator's model gradient NaN from its calls-th call on."""
    mod = E.get(model)
    real, n = mod.estimate, {"calls": 0}

    def estimate(*a, **k):
        n["calls"] += 1
        res = real(*a, **k)
        if n["calls"] >= calls:
            res.grads[next(iter(res.grads))] = res.grads[next(iter(res.grads))] * np.nan
        return res
    monkeypatch.setattr(mod, "estimate", estimate)


@pytest.mark.parametrize("command", ["variance", "compare"])
def test_divergence_is_one_line_and_exit_3(command, tiny_data_dir, tmp_path, monkeypatch):
    diverge_after(monkeypatch, "nvil", 3)
    out = tmp_path / "out"
    if command == "variance":
        res = run("variance", "--follow", "rebar", "--estimators", "nvil,rebar", *tiny(tiny_data_dir), "--steps", 8)
        assert_one_line(res, 3, "training diverged", "nvil", "step 3")
        return
    res = run(*compare_args(tiny_data_dir, out))
    assert_one_line(res, 3, "training diverged", "nvil", "step 3", str(out))
    rows = {r["estimator"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    assert rows["rebar"]["steps"] == 8 and rows["rebar"]["diverged"] is None      # the other run finished
    assert "step 3" in rows["nvil"]["diverged"]
    assert load_checkpoint(out / "rebar" / "checkpoint.h5")["step"] == 8
    assert json.loads((out / "nvil" / "status.json").read_text())["state"] == "diverged"


@pytest.mark.parametrize("command,model,lr", [("train", "dynamic_rebar", 1e30), ("train", "relax", 1e30),
                                              ("train", "dynamic_rebar", 20), ("variance", "dynamic_rebar", 100)])
def test_a_learned_temperature_out_of_range_is_divergence(command, model, lr, tiny_data_dir, tmp_path):
    """A huge (finite) learning rate moves dynamic_rebar's and relax's log temperature tau so far that
    exp(tau) is 0 (or inf): the next relaxed sample would divide by it (a ZeroDivisionError traceback).
    At lr 20 the first step moves tau by about 200, where exp is 0 or inf in float32 (what the step
    computes) but not in float64."""
    out = tmp_path / "run"
    if command == "train":
        res = run("train", "--model", model, *tiny(tiny_data_dir), "--steps", 8, "--eval-every", 0,
                  "--learning-rate", lr, "--no-progress", "--output", out)
        assert_one_line(res, 3, "training diverged", "temperature", "step 1")
        assert json.loads((out / "status.json").read_text())["state"] == "diverged"
        return
    res = run("variance", "--follow", "nvil", "--estimators", f"nvil,{model}", *tiny(tiny_data_dir), "--steps", 8,
              "--learning-rate", lr)
    assert_one_line(res, 3, "training diverged", model, "temperature")


def test_compare_keeps_finished_runs_and_resumes_interrupted_ones(tiny_data_dir, tmp_path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(*compare_args(tiny_data_dir, whole)).exit_code == 0
    interrupt_at(monkeypatch, "rebar", 3)             # Ctrl-C in rebar's step 3, after nvil finished
    res = run(*compare_args(tiny_data_dir, parts))
    assert res.exit_code == 130 and "run the same command again" in res.output, res.output
    monkeypatch.undo()
    nvil_ckpt = (parts / "nvil" / "checkpoint.h5").read_bytes()
    res = run(*compare_args(tiny_data_dir, parts))
    assert res.exit_code == 0, res.output
    assert "nvil: finished (step 8)" in res.output and "rebar: resuming from step 3" in res.output
    assert (parts / "nvil" / "checkpoint.h5").read_bytes() == nvil_ckpt              # kept, not retrained
    for name in ("nvil", "rebar"):                                                    # resumed exactly
        assert_same_training_state(whole / name / "checkpoint.h5", parts / name / "checkpoint.h5")
    table = [l.split() for l in res.output.splitlines() if l.split()[:1] in (["nvil"], ["rebar"])]
    assert [r[:2] for r in table] == [["nvil", "8"], ["rebar", "8"]]                  # every estimator reported
    rows = json.loads((parts / "comparison.json").read_text())["rows"]
    assert [r["estimator"] for r in rows] == ["nvil", "rebar"] and all(r["valid_bound"] is not None for r in rows)
    res = run(*compare_args(tiny_data_dir, parts, "nvil,rebar", 12))                # more steps: both continue
    assert res.exit_code == 0 and "nvil: resuming from step 8" in res.output, res.output
    assert load_checkpoint(parts / "nvil" / "checkpoint.h5")["step"] == 12


@pytest.mark.parametrize("change,words", [
    (["nvil,rebar", 8, "--n-hidden", 9], ["nvil", "other settings", "n_hidden"]),
    (["nvil,rebar", 8, "--learning-rate", 1e-3], ["nvil", "other settings", "learning_rate"]),
    (["rebar,nvil", 4], ["step 8", "past --steps 4"]),
])
def test_compare_refuses_a_folder_holding_another_run(change, words, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    assert run(*compare_args(tiny_data_dir, out, "nvil")).exit_code == 0
    before = {p: p.read_bytes() for p in (out / "nvil").iterdir() if p.is_file()}
    assert_one_line(run(*compare_args(tiny_data_dir, out, *change)), 2, *words)
    assert {p: p.read_bytes() for p in (out / "nvil").iterdir() if p.is_file()} == before
    assert not (out / "rebar").exists()            # refused before anything was trained



@pytest.mark.parametrize("name,magic", [("p.png", b"\x89PNG"), ("p.svg", b"<?xml"), ("p", b"\x89PNG")])
def test_a_figure_is_written_at_the_path_named_in_its_format(name, magic, tiny_run, tmp_path):
    """The figure lands at the path the command names (matplotlib alone appends .png to a name without
    an extension, while the command said it wrote the name), written whole (a temporary renamed)."""
    pytest.importorskip("matplotlib")
    res = run("plot", tiny_run, "--output", tmp_path / name)
    assert res.exit_code == 0 and f"wrote {tmp_path / name}" in res.output, res.output
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
