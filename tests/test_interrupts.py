"""Interrupts lose nothing and say the truth: Ctrl-C in an evaluation, two Ctrl-Cs at once, SIGHUP,
and a diverging run's console (issue "Nothing lost, nothing silent")."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rebar_np.experiments import sweep as S
from rebar_np.training.checkpoint import load_checkpoint
from rebar_np.training.metrics import read_metrics
from rebar_np.training.resume import evaluation_pending

from test_runs import ROOT, assert_same_metrics, assert_same_training_state, interrupt_at, run, tiny, wait_for
from test_sweep import write_grid

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """An interrupted `train` keeps its handler until its process exits; in here the process is pytest's."""
    found = {s: signal.getsignal(s) for s in HANDLED}
    yield
    for s, handler in found.items():
        signal.signal(s, handler)


def start(args, **kw):
    """`python cli.py ARGS` in its own process group, with SIGINT handled as a terminal's Ctrl-C would
    (a suite run as a background job has it ignored, which the child would inherit)."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)
    finally:
        signal.signal(signal.SIGINT, found)


def finish(proc, timeout=120):
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def status_of(run_dir):
    return json.loads((Path(run_dir) / "status.json").read_text())


def assert_truthful_stop(run_dir, output, signal_name):
    """Exit 130 after an acknowledged stop, no traceback, and status.json saying what the checkpoint holds."""
    assert "Traceback" not in output and "SystemError" not in output, output
    assert f"Stopping ({signal_name})" in output, output
    status = status_of(run_dir)
    step = load_checkpoint(Path(run_dir) / "checkpoint.h5")["step"]
    assert status["state"] == "interrupted" and status["checkpoint_step"] == step == status["step"] > 0, status
    assert f"Interrupted at step {step}; checkpoint saved" in output and signal_name in status["message"]
    return step


# --------------------------------------------------------------------------
# 1. Ctrl-C (or SIGKILL) around an evaluation loses no step, and the resume writes its row
# --------------------------------------------------------------------------
EVAL_ARGS = ["--steps", 12, "--report-every", 3, "--eval-every", 1, "--eval-samples", 4, "--checkpoint-every", 5]

KILL_AFTER_THE_EVALUATION = """
import os, signal, sys
sys.path.insert(0, {root!r})
import rebar_np.estimators.nvil as nvil
real, calls = nvil.estimate, [0]
def estimate(*a, **k):
    calls[0] += 1
    if calls[0] == 9:       # step 8 was evaluated and its row written; the next checkpoint is at step 10
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
nvil.estimate = estimate
import cli
cli.main(sys.argv[1:])
"""


def ctrl_c_in_the_evaluation_of(monkeypatch, step):
    """Send this process a SIGINT from the first chunk of the evaluation at `step` (whose seed is
    seed 0 + step); returns the splits each evaluation began, by step."""
    import rebar_np.training.train as T
    real_evaluate, real_bound, begun, current = T.evaluate, T.iw_bound, {}, {}

    def evaluate(*a, seed=0, desc="", **k):
        begun.setdefault(seed, []).append(desc.split()[0])
        current["seed"] = seed
        return real_evaluate(*a, seed=seed, desc=desc, **k)

    def iw_bound(*a, **k):
        if current.get("seed") == step and not current.get("sent"):
            current["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)
        return real_bound(*a, **k)
    monkeypatch.setattr(T, "evaluate", evaluate)
    monkeypatch.setattr(T, "iw_bound", iw_bound)
    return begun


@pytest.mark.parametrize("how,step", [("ctrl-c", 8), ("ctrl-c", 12), ("sigkill", 8)],
                         ids=["ctrl-c in an epoch's evaluation", "ctrl-c in the last evaluation",
                              "killed after an evaluation, before the next checkpoint"])
def test_an_interrupted_evaluation_loses_no_step_and_the_resume_completes_it(how, step, tiny_data_dir, tmp_path,
                                                                              monkeypatch, capfd):
    args = [*tiny(tiny_data_dir), *EVAL_ARGS]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run("train", *args, "--output", full).exit_code == 0
    if how == "ctrl-c":
        begun = ctrl_c_in_the_evaluation_of(monkeypatch, step)
        res = run("train", *args, "--output", parts)
        monkeypatch.undo()
        assert res.exit_code == 130, res.output
        assert "Stopping (SIGINT)" in capfd.readouterr().err          # acknowledged at once
        assert begun[step] == ["valid"]        # stopped within the valid split: the test split never began
        assert f"Interrupted at step {step}; checkpoint saved" in res.output, res.output
        assert "evaluation was cut short" in res.output
        status = status_of(parts)
        assert status["state"] == "interrupted" and status["step"] == status["checkpoint_step"] == step
    else:
        proc = subprocess.run([sys.executable, "-c", KILL_AFTER_THE_EVALUATION.format(root=str(ROOT)), "train",
                               *map(str, args), "--output", str(parts)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert step in read_metrics(parts / "metrics.h5")["step"]        # written, but after the checkpoint
    ckpt = load_checkpoint(parts / "checkpoint.h5")
    assert ckpt["step"] == step and evaluation_pending(parts / "checkpoint.h5")   # the steps were saved first
    assert json.loads(ckpt["train_state"]["pending_row"])["step"] == step
    if how == "ctrl-c":
        assert list(read_metrics(parts / "metrics.h5")["step"]) == [s for s in (3, 4, 6, 8, 9, 12) if s < step]
    res = run("train", "--resume", parts, "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"from step {step}" in res.output and "already finished" not in res.output
    assert f"Step {step}: valid bound (4 samples)" in res.output
    assert not evaluation_pending(parts / "checkpoint.h5")
    assert_same_training_state(full / "checkpoint.h5", parts / "checkpoint.h5")
    assert_same_metrics(full, parts)
    assert np.isfinite(read_metrics(parts / "metrics.h5")["valid_bound"][-1])


# --------------------------------------------------------------------------
# 2. Two Ctrl-Cs 10 ms apart: one clean stop, no traceback, an exact resume
# --------------------------------------------------------------------------
def test_two_quick_ctrl_cs_stop_cleanly_and_resume_exactly(tiny_data_dir, tmp_path, capfd, monkeypatch):
    from rebar_np.training.train import StopFlag
    stop = StopFlag()                   # the handler: two signals are acknowledged, only the third raises
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.count == 2 and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGHUP)         # after that, only acknowledged
    finally:
        stop.restore()
    err = capfd.readouterr().err
    assert "Stopping (SIGINT)" in err and "Already stopping (SIGTERM)" in err and "Quitting at once" in err, err
    assert "Already quitting (SIGHUP)" in err
    # a third signal while the stop saves: the write is abandoned, and the run says which checkpoint it keeps
    import rebar_np.training.train as T
    from rebar_np.data import load_task
    real_save, out = T.save_checkpoint, tmp_path / "abandoned"

    def save_checkpoint(path, step, *a, **k):
        if step == 11:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(path, step, *a, **k)
    monkeypatch.setattr(T, "save_checkpoint", save_checkpoint)
    interrupt_at(monkeypatch, "nvil", 11)
    with pytest.raises(KeyboardInterrupt) as stopped:
        T.train(T.TrainConfig(model="nvil", task="omni", n_hidden=8, steps=30, eval_every=0, output=str(out)),
                load_task("omni", tiny_data_dir), log=lambda s: None, progress=False)
    monkeypatch.undo()
    said = "Interrupted again after step 11, quit without saving (SIGINT); the last checkpoint, of step 8, is kept"
    assert str(stopped.value).startswith(said) and not isinstance(stopped.value, T.StopBetweenSteps)
    assert load_checkpoint(out / "checkpoint.h5")["step"] == 8
    status = status_of(out)
    assert status["state"] == "interrupted" and status["step"] == 11 and status["checkpoint_step"] == 8
    assert status["message"].startswith(said)
    args = [*tiny(tiny_data_dir), "--report-every", 10, "--eval-every", 1, "--eval-samples", 30]
    stopped = {}
    # two signals 10 ms apart at a few moments of a step or an evaluation; then three 2 ms apart, which
    # may also end the process at once, before or during the stop's save (a command line's third signal)
    for trial, (delay, n, gap) in enumerate([(0.0, 2, 0.01), (0.013, 2, 0.01), (0.031, 2, 0.01), (0.047, 2, 0.01),
                                             (0.0, 3, 0.002), (0.02, 3, 0.002)]):
        out = tmp_path / f"trial{trial}"
        proc = start(["train", *args, "--steps", 100_000_000, "--output", out])
        try:
            wait_for(out / "metrics.h5", proc, "report")
            time.sleep(delay)
            for _ in range(n):
                proc.send_signal(signal.SIGINT)
                time.sleep(gap)
        finally:
            output = finish(proc)
        assert proc.returncode == 130, output
        if n == 2 or "Interrupted again" not in output:
            stopped[out] = assert_truthful_stop(out, output, "SIGINT")   # (a second signal that comes while
            assert "Continue it with: rebar-np train --resume" in output   # the process exits is not seen)
            continue
        assert "Traceback" not in output and "Quitting at once (SIGINT)" in output, output
        status, step = status_of(out), load_checkpoint(out / "checkpoint.h5")["step"]
        assert status["state"] == "interrupted" and status["checkpoint_step"] == step <= status["step"], status
        assert f"the last checkpoint, of step {step}, is kept" in status["message"] and status["message"] in output
        stopped[out] = step
    target = max(stopped.values()) + 13
    full = tmp_path / "full"
    assert run("train", *args, "--steps", target, "--output", full).exit_code == 0
    for out, step in stopped.items():
        res = run("train", "--resume", out, "--steps", target, "--no-progress")
        assert res.exit_code == 0 and f"from step {step}" in res.output, res.output
        assert_same_training_state(full / "checkpoint.h5", out / "checkpoint.h5")
        assert_same_metrics(full, out)


def test_signals_that_keep_coming_while_a_stopped_run_exits_do_not_change_its_exit_status(tiny_data_dir, tmp_path):
    # once the run has recorded its stop, the process still takes a while to exit; interpreter shutdown
    # puts Python's handlers back to the default, so without care a Ctrl-C then ends it by SIGINT (-2)
    out = tmp_path / "run"
    proc = start(["train", *tiny(tiny_data_dir), "--steps", 100_000_000, "--report-every", 10, "--eval-every", 0,
                  "--output", out])
    try:
        wait_for(out / "metrics.h5", proc, "report")
        proc.send_signal(signal.SIGINT)
        deadline = time.time() + 60
        while status_of(out)["state"] != "interrupted" and time.time() < deadline:
            time.sleep(0.002)
        while proc.poll() is None and time.time() < deadline:     # the exit, under a stream of signals
            proc.send_signal(signal.SIGINT)
            time.sleep(0.005)
    finally:
        output = finish(proc)
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert status_of(out)["state"] == "interrupted"
    assert load_checkpoint(out / "checkpoint.h5")["step"] == status_of(out)["checkpoint_step"]


# --------------------------------------------------------------------------
# 3. SIGHUP (the terminal was closed) stops like SIGTERM: saved, recorded, no orphan
# --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_sighup_stops_after_the_step_and_saves(command, tiny_data_dir, tmp_path):
    if command == "train":
        out = tmp_path / "run"
        runs = [out]
        proc = start(["train", *tiny(tiny_data_dir), "--steps", 100_000_000, "--report-every", 10, "--eval-every", 0,
                      "--output", out])
    else:
        path = write_grid(tmp_path / "h.toml", tiny_data_dir, 'estimator = ["nvil"]\nseed = [0, 1]',
                          settings="steps = 100000000\nreport_every = 10\ncheckpoint_every = 50", top="workers = 1")
        runs = [Path(s.dir) for s in S.expand(S.load_grid(path))]
        proc = start(["sweep", path])
    try:
        wait_for(runs[0] / "metrics.h5", proc, "report")
        proc.send_signal(signal.SIGHUP)
    finally:
        output = finish(proc)
    assert proc.returncode == 130, output
    if command == "train":
        assert_truthful_stop(out, output, "SIGHUP")
        return
    assert "Stopping (SIGHUP)" in output and "Interrupted (SIGHUP): stopping 1 run(s)" in output, output
    assert "FAILED" not in output and "stopped (exit 130), continues when the sweep is run again" in output, output
    first = status_of(runs[0])
    assert first["state"] == "interrupted" and load_checkpoint(runs[0] / "checkpoint.h5")["step"] == first["step"]
    with pytest.raises(ProcessLookupError):
        os.kill(first["pid"], 0)                        # the run stopped with the sweep: no orphan
    assert not (runs[1] / "config.json").exists()      # and no new run started
    res = run("sweep", path, "--dry-run")
    assert res.output.count("unfinished (step") == 1 and res.output.count("new ") == 1, res.output


# --------------------------------------------------------------------------
# 4. A diverging run says so in one line, without NumPy's warnings
# --------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["dynamic_rebar", "relax"])
def test_a_diverging_run_prints_one_line_and_no_numpy_warnings(model, tiny_data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "cli.py", "train", *map(str, tiny(tiny_data_dir, model)),
                           "--learning-rate", "10", "--steps", "300", "--eval-every", "0", "--output",
                           str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: training diverged: non-finite"), proc.stderr
    assert status_of(tmp_path / "run")["state"] == "diverged"


# --------------------------------------------------------------------------
# 5. An evaluation stopped by a signal says so in one line and writes nothing
# --------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_evaluation_says_so_in_one_line_and_writes_nothing(sig, tiny_data_dir, tmp_path):
    """`rebar-np eval` under a scheduler's SIGTERM (or Ctrl-C) ended by the signal with no word (exit 143); it
    now stops after its current pass, exits 130 and says that nothing was written."""
    out = tmp_path / "run"
    res = run("train", *tiny(tiny_data_dir), "--steps", 6, "--eval-every", 0, "--output", out)
    assert res.exit_code == 0, res.output
    log = tmp_path / "eval.log"
    found = signal.signal(signal.SIGINT, signal.default_int_handler)     # as start() does
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "cli.py", "eval", str(out), "--samples", "10000000",
                                     "--progress"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, found)
    try:
        deadline = time.monotonic() + 120          # the progress bar shows once the evaluation runs
        while "test bound" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        finish(proc)
    output = log.read_text()
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert f"Error: interrupted ({signal.Signals(sig).name}) after" in output and "nothing was written" in output
    assert not list(out.glob("eval-*.json"))
