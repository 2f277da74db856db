"""Run folders: config.json, metrics.h5, exact resume after Ctrl-C and SIGKILL, final evaluation."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from rebar_np import __version__
from rebar_np.training.checkpoint import load_checkpoint
from rebar_np.training.metrics import read_metrics
from rebar_np.training.train import TrainConfig, train

from conftest import write_tiny_omniglot

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def tiny(data_dir, model="nvil", *more):
    return ["--task", "omni", "--data-dir", data_dir, "--n-hidden", 8, "--model", model, "--no-progress", *more]


def interrupt_at(monkeypatch, model, call):
    """Make the estimator send this process a SIGINT (Ctrl-C) during its call-th step."""
    from rebar_np import estimators as E
    mod = E.get(model)
    real, n = mod.estimate, {"calls": 0}

    def estimate(*a, **k):
        n["calls"] += 1
        if n["calls"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(mod, "estimate", estimate)


def assert_same_training_state(path_a, path_b):
    """Everything a checkpoint holds is bit-identical, except the wall-clock time."""
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert a["step"] == b["step"]
    for group in ("params", "aux", "ema"):
        assert a[group].keys() == b[group].keys()
        for k in a[group]:
            np.testing.assert_array_equal(a[group][k], b[group][k], err_msg=f"{group} {k}")
    for name in ("model", "aux"):
        assert a["opt"][name]["t"] == b["opt"][name]["t"]
        for m in ("m", "v"):
            for k in a["opt"][name][m]:
                np.testing.assert_array_equal(a["opt"][name][m][k], b["opt"][name][m][k])
    sa, sb = dict(a["train_state"]), dict(b["train_state"])
    sa.pop("wall_time"), sb.pop("wall_time")
    np.testing.assert_array_equal(sa.pop("order"), sb.pop("order"))
    assert sa == sb


def assert_same_metrics(dir_a, dir_b):
    a, b = read_metrics(dir_a / "metrics.h5"), read_metrics(dir_b / "metrics.h5")
    assert list(a) == list(b)
    for c in a:
        if c != "wall_time":
            np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    assert np.all(np.diff(b["wall_time"]) >= 0)


@pytest.mark.parametrize("model", ["nvil", "dynamic_rebar"])
def test_stop_and_resume_equals_uninterrupted_bit_for_bit(model, tiny_data_dir, tmp_path, monkeypatch):
    args = [*tiny(tiny_data_dir, model), "--steps", 30, "--report-every", 5, "--eval-every", 2, "--eval-samples", 4]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run("train", *args, "--output", full).exit_code == 0
    # Ctrl-C in step 11: in the middle of an epoch (4 steps each) and of a report window
    interrupt_at(monkeypatch, model, 11)
    res = run("train", *args, "--output", parts)
    assert res.exit_code == 130, res.output
    assert load_checkpoint(parts / "checkpoint.h5")["step"] == 11
    assert json.loads((parts / "status.json").read_text())["state"] == "interrupted"
    monkeypatch.undo()
    res = run("train", "--resume", parts, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "from step 11" in res.output
    assert_same_training_state(full / "checkpoint.h5", parts / "checkpoint.h5")
    assert_same_metrics(full, parts)
    assert (full / "config.json").read_text() == (parts / "config.json").read_text()
    status = json.loads((parts / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 30 and status["checkpoint_step"] == 30


def test_run_folder_contents(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    res = run("train", *tiny(tiny_data_dir, "dynamic_rebar"), "--steps", 12, "--report-every", 3, "--eval-every", 2,
              "--eval-samples", 3, "--output", out)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    settings = {f.name for f in fields(TrainConfig)} - {"output"}
    assert settings <= set(config) and config["version"] == __version__
    assert config["model"] == "dynamic_rebar" and config["n_hidden"] == 8 and config["steps"] == 12
    assert config["data"]["dir"] == str(tiny_data_dir)
    with h5py.File(tiny_data_dir / "omniglot.h5", "r") as f:   # the data files' own checksums
        for split in ("train", "valid", "test"):
            assert config["data"]["splits"][split]["sha256"] == f[split].attrs["sha256"]
    with h5py.File(out / "metrics.h5", "r") as f:               # h5py alone reads it
        assert list(f["step"][()]) == [3, 6, 8, 9, 12]           # every 3 steps, and evaluations (epoch 2, end)
        for c in ("wall_time", "train_elbo", "log_grad_var", "temperature", "valid_bound", "test_bound",
                  "eta.q0.W", "eta.q1.c", "eta_mean"):
            assert f[c].shape == (5,), c
        valid = f["valid_bound"][()]
        assert np.isnan(valid[[0, 1, 3]]).all() and np.isfinite(valid[[2, 4]]).all()
        assert np.all(np.diff(f["temperature"][()]) != 0)        # dynamic_rebar learns lambda
        assert f["step"].maxshape == (None,)                     # appendable
    ckpt = load_checkpoint(out / "checkpoint.h5")
    assert ckpt["step"] == 12 and ckpt["train_state"]["ema_t"] == 12
    assert json.loads(ckpt["train_state"]["rng_noise"])["bit_generator"] == "PCG64"
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    repo = Path(__file__).resolve().parent.parent             # the code's commit, from a git checkout
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert config["environment"]["rebar_np_commit"].split("+")[0] == head.stdout.strip()
        record = {**config, "environment": {**config["environment"], "rebar_np_commit": "0" * 40}}
        (out / "config.json").write_text(json.dumps(record))   # as if the run had started at another commit
        res = run("train", "--resume", out, "--steps", 13, "--no-progress")
        assert res.exit_code == 0 and f"Warning: rebar_np_commit {'0' * 40} -> " in res.output, res.output



def test_dynamic_binarization_resumes_exactly(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    grey = rng.random((200, 20)).astype(np.float32)
    binary = (rng.random((100, 20)) < 0.3).astype(np.float32)
    data = {"train": grey, "valid": binary[:50], "test": binary[50:]}
    cfg = lambda out: TrainConfig(model="nvil", n_layer=2, n_hidden=5, batch_size=8, steps=60, eval_every=0,
                                  report_every=7, binarization="dynamic", output=str(out))
    full = train(cfg(tmp_path / "full"), data, log=lambda s: None, progress=False)
    interrupt_at(monkeypatch, "nvil", 33)                 # epoch 2 (25 steps each), its 8th batch
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "parts"), data, log=lambda s: None, progress=False)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "parts" / "checkpoint.h5")
    assert ckpt["step"] == 33 and ckpt["train_state"]["position"] == 8 * 8
    resumed = train(cfg(tmp_path / "parts"), data, log=lambda s: None, progress=False, resume=ckpt)
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], resumed.params[k])
    assert_same_training_state(tmp_path / "full" / "checkpoint.h5", tmp_path / "parts" / "checkpoint.h5")


KILL_DURING_THIRD_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import rebar_np.training.checkpoint as C
real, saves = C._write_dict, [0]
def dying(group, d):
    if group.name == "/aux":           # params are written, aux is next: die in the middle of the file
        saves[0] += 1
        if saves[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(group, d)
C._write_dict = dying
import cli
cli.main(sys.argv[1:])
"""

KILL_BEFORE_THIRD_RENAME = """
import os, signal, sys
from contextlib import contextmanager
sys.path.insert(0, {root!r})
import rebar_np.training.checkpoint as C
real, saves = C.atomic_path, [0]
@contextmanager
def dying(path, *a, **k):             # the new checkpoint is on disk under its temporary name: die
    with real(path, *a, **k) as tmp:  # before it replaces the old one
        yield tmp
        if os.path.basename(path) == "checkpoint.h5":
            saves[0] += 1
            if saves[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
C.atomic_path = dying
import cli
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("killer,left_on_disk", [(KILL_DURING_THIRD_SAVE, False), (KILL_BEFORE_THIRD_RENAME, True)],
                         ids=["while-building", "before-the-rename"])
def test_sigkill_in_the_middle_of_a_checkpoint_write_keeps_the_last_good_one(killer, left_on_disk, tiny_data_dir,
                                                                             tmp_path):
    """The checkpoint is built in memory and then written under a temporary name and renamed: a kill
    while it is built leaves nothing of it on disk, a kill after its bytes are written and before the
    rename leaves the temporary file, which the resume removes; either way the last good one is used."""
    args = [*tiny(tiny_data_dir, "dynamic_rebar"), "--steps", 24, "--checkpoint-every", 5, "--report-every", 5,
            "--eval-every", 0]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run("train", *args, "--output", full).exit_code == 0
    proc = subprocess.run([sys.executable, "-c", killer.format(root=str(ROOT)), "train",
                           *map(str, args), "--output", str(parts)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in os.listdir(parts) if p.startswith(".tmp-")]
    assert bool(leftovers) == left_on_disk, leftovers             # the new file of step 15, if it got that far
    assert load_checkpoint(parts / "checkpoint.h5")["step"] == 10
    res = run("train", "--resume", parts, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "from step 10" in res.output
    assert not [p for p in os.listdir(parts) if p.startswith(".tmp-")]
    assert_same_training_state(full / "checkpoint.h5", parts / "checkpoint.h5")
    assert_same_metrics(full, parts)


def test_sigkill_during_training_then_resume_continues_from_the_last_checkpoint(tiny_data_dir, tmp_path):
    out = tmp_path / "killed"
    args = [*tiny(tiny_data_dir), "--checkpoint-every", 25, "--report-every", 10, "--eval-every", 0]
    proc = subprocess.Popen([sys.executable, "cli.py", "train", *map(str, args), "--steps", "100000000",
                             "--output", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "checkpoint.h5").exists() and (out / "metrics.h5").exists()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.02)
        with h5py.File(out / "metrics.h5", "r") as f:          # read by h5py alone, while it trains
            steps = f["step"][()]
            elbo = f["train_elbo"][()]
        assert proc.poll() is None                               # ... and it was still running
        assert len(steps) >= 1 and np.all(steps % 10 == 0) and np.all(np.isfinite(elbo))
    finally:
        proc.kill()
        proc.wait()
    stopped_at = load_checkpoint(out / "checkpoint.h5")["step"]
    assert stopped_at % 25 == 0
    target = stopped_at + 13
    res = run("train", "--resume", out, "--steps", target, "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"from step {stopped_at}" in res.output
    full = tmp_path / "full"
    assert run("train", *args, "--steps", target, "--output", full).exit_code == 0
    assert_same_training_state(full / "checkpoint.h5", out / "checkpoint.h5")
    assert_same_metrics(full, out)


def test_nan_stops_the_run_and_says_so(tiny_data_dir, tmp_path, monkeypatch):
    import rebar_np.estimators.nvil as nvil
    real, calls = nvil.estimate, [0]

    def poisoned(*a, **k):
        res = real(*a, **k)
        calls[0] += 1
        if calls[0] == 6:
            res.grads["q0.W"][0, 0] = np.nan
        return res
    monkeypatch.setattr(nvil, "estimate", poisoned)
    out = tmp_path / "run"
    res = run("train", *tiny(tiny_data_dir), "--steps", 20, "--eval-every", 0, "--output", out)
    assert res.exit_code == 3
    assert "step 6" in res.output and "last good checkpoint kept" in res.output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "diverged" and "step 6" in status["message"] and status["checkpoint_step"] == 4
    assert load_checkpoint(out / "checkpoint.h5")["step"] == 4
    assert list(read_metrics(out / "metrics.h5")["step"]) == [4]


def test_resume_refuses_what_it_cannot_do_exactly(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    args = [*tiny(tiny_data_dir), "--steps", 8, "--eval-every", 0]
    assert run("train", *args, "--output", out).exit_code == 0
    other_data = write_tiny_omniglot(tmp_path, seed=1)
    for cmd, words in [
        (["train", *args, "--output", out], ["already holds a run", "--resume"]),
        (["train", "--resume", out, "--model", "rebar"], ["--model cannot change"]),
        (["train", "--resume", out, "--n-hidden", "9"], ["--n-hidden cannot change"]),
        (["train", "--resume", out, "--steps", "5"], ["past --steps 5"]),
        (["train", "--resume", out, "--data-dir", other_data], ["train data differ"]),
        (["train", "--resume", out, "--hparams", "n_layer=1"], ["--hparams"]),
        (["train", "--resume", tmp_path / "nothing"], ["no run configuration"]),
    ]:
        res = run(*cmd)
        assert res.exit_code == 2, (cmd, res.output)
        line = res.output.strip().splitlines()
        assert len(line) == 1 and line[0].startswith("Error: ") and all(w in line[0] for w in words), res.output
    res = run("train", "--resume", out)
    assert res.exit_code == 0 and "already finished" in res.output


def test_eval_writes_the_bound_into_the_run_folder(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert run("train", *tiny(tiny_data_dir), "--steps", 8, "--eval-every", 0, "--output", out).exit_code == 0
    res = run("eval", out, "--split", "test", "--samples", 30, "--chunk-rows", 60, "--progress")
    assert res.exit_code == 0, res.output
    assert "test bound (30 samples, 24 examples, step 8)" in res.output
    r = json.loads((out / "eval-test-30.json").read_text())
    assert r["samples"] == 30 and r["examples"] == 24 and r["step"] == 8 and r["split"] == "test"
    assert np.isfinite(r["bound"]) and r["bound"] < 0 and r["stderr"] > 0
    for args, word in [(["--samples", "0"], "samples"), (["--chunk-rows", "0"], "chunk-rows"),
                       (["--split", "dev"], "split")]:
        res = run("eval", out, *args)
        assert res.exit_code == 2 and word in res.output


def wait_for(path, proc, what, limit=240):
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit} s"
        time.sleep(0.02)


def test_sigterm_stops_after_the_step_and_saves(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "cli.py", "train", *map(str, tiny(tiny_data_dir)), "--steps", "100000000",
                             "--report-every", "10", "--eval-every", "0", "--output", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(out / "metrics.h5", proc, "report")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    status = json.loads((out / "status.json").read_text())
    step = load_checkpoint(out / "checkpoint.h5")["step"]
    assert status["state"] == "interrupted" and status["checkpoint_step"] == step == status["step"] > 0
    assert f"Interrupted at step {step}; checkpoint saved" in output


def test_two_processes_never_train_the_same_run(tiny_data_dir, tmp_path):
    from rebar_np.training.rundir import lock_run
    out = tmp_path / "run"
    assert run("train", *tiny(tiny_data_dir), "--steps", 4, "--eval-every", 0, "--output", out).exit_code == 0
    held = lock_run(out)              # as if another process were training it
    try:
        res = run("train", "--resume", out, "--steps", 8)
        assert res.exit_code == 2 and "is being trained by pid" in res.output, res.output
    finally:
        held.close()
    assert run("train", "--resume", out, "--steps", 8).exit_code == 0
