"""Run-folder integrity: nothing lost, nothing silent. One test per class of fault:
damaged checkpoints, a missing checkpoint that status.json records, config.json edited
between stop and resume, a broken metrics.h5, the user's own temporary files, an empty
--output, status.json after crashes and kills, and OSError messages (a full disk)."""
import errno
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import h5py
import pytest
from click.testing import CliRunner

import cli
from rebar_np.training import checkpoint as C, metrics as M, rundir
from rebar_np.training.checkpoint import load_checkpoint
from rebar_np.training.metrics import read_metrics
from test_runs import ROOT


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def tiny(data_dir, *more):
    return ["--task", "omni", "--data-dir", data_dir, "--n-hidden", 8, "--model", "nvil", "--no-progress",
            "--eval-every", 0, *more]


def error_line(res, before_training=True):
    """The one line a refusal prints on stderr (exit 2, no traceback); a refusal before training prints nothing else."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    assert res.stdout == "" or not before_training, res.output
    return lines[0]


@pytest.fixture
def stopped_run(tiny_data_dir, tmp_path):
    """A run folder trained to step 8 (2 epochs; checkpoints at 4 and 8), to be resumed with --steps 12."""
    out = tmp_path / "run"
    res = run("train", *tiny(tiny_data_dir), "--steps", 8, "--output", out)
    assert res.exit_code == 0, res.output
    return out


def first_dataset(f, group):
    names = []
    f[group].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return f"{group}/{sorted(names)[0]}"


def flip_weight(f):
    f[first_dataset(f, "params")][0, 0] = 2.5e37


def change_adam_state(f):
    d = f[first_dataset(f, "opt/model/v")]
    d[0, 0] = d[0, 0] * 2 + 1e-3


def change_resume_position(f):
    f["train_state"].attrs["position"] = 48


def change_step(f):
    f.attrs["step"] = 7


@pytest.mark.parametrize("spoil", [flip_weight, change_adam_state, change_resume_position, change_step, "no checksum"])
def test_a_changed_checkpoint_is_refused(stopped_run, spoil):
    path = stopped_run / "checkpoint.h5"
    with h5py.File(path, "r+") as f:
        if spoil == "no checksum":          # as written before checksums existed: loads, with a warning
            del f.attrs["sha256"]
        else:
            spoil(f)
    res = run("train", "--resume", stopped_run, "--steps", 12, "--no-progress")
    if spoil == "no checksum":
        assert res.exit_code == 0, res.output
        warning = [line for line in res.stderr.splitlines() if line.startswith("Warning: ")]
        assert len(warning) == 1 and str(path) in warning[0] and "no checksum" in warning[0]
        assert load_checkpoint(path)["step"] == 12         # and the new checkpoint has one again
        with h5py.File(path, "r") as f:
            assert "sha256" in f.attrs
        return
    line = error_line(res)
    assert str(path) in line and "damaged" in line
    res = run("eval", stopped_run, "--samples", 2)            # every reader checks it
    assert str(path) in error_line(res)
    assert json.loads((stopped_run / "status.json").read_text())["state"] == "finished"   # untouched


@pytest.mark.parametrize("status_says", ["checkpoint at step 8", "no checkpoint yet"])
def test_a_missing_checkpoint_that_was_written_is_refused(stopped_run, status_says):
    (stopped_run / "checkpoint.h5").unlink()
    if status_says == "no checkpoint yet":      # killed before its first checkpoint: starting over is right
        status = json.loads((stopped_run / "status.json").read_text())
        (stopped_run / "status.json").write_text(json.dumps({**status, "checkpoint_step": None}))
        res = run("train", "--resume", stopped_run, "--no-progress")
        assert res.exit_code == 0 and "Restarting" in res.output, res.output
        assert load_checkpoint(stopped_run / "checkpoint.h5")["step"] == 8
        return
    line = error_line(run("train", "--resume", stopped_run, "--steps", 12, "--no-progress"))
    assert str(stopped_run / "checkpoint.h5") in line and "missing" in line and "step 8" in line
    assert "restore" in line and "new run" in line
    assert not (stopped_run / "checkpoint.h5").exists()
    assert list(read_metrics(stopped_run / "metrics.h5")["step"]) == [4, 8]   # nothing was overwritten


@pytest.mark.parametrize("setting,value", [("learning_rate", 0.01), ("beta2", 0.9), ("seed", 7),
                                           ("temperature", 0.9), ("batch_size", 12), ("eval_every", 5)])
def test_config_edited_between_stop_and_resume_is_refused(stopped_run, setting, value):
    config = stopped_run / "config.json"
    record = json.loads(config.read_text())
    saved = record[setting]
    config.write_text(json.dumps({**record, setting: value}))
    res = run("train", "--resume", stopped_run, "--steps", 12, "--no-progress")
    if setting in rundir.RESUME_MAY_CHANGE:     # logs, saves, stops: never a parameter; may change
        assert res.exit_code == 0, res.output
        return
    line = error_line(res)
    assert setting in line and repr(value) in line and repr(saved) in line and str(config) in line
    ckpt = load_checkpoint(stopped_run / "checkpoint.h5")
    assert ckpt["step"] == 8 and ckpt["config"][setting] == saved      # the checkpoint's copy is intact


def unequal_columns(path):
    with h5py.File(path, "r+") as f:
        f["train_elbo"].resize((1,))


def not_hdf5(path):
    path.write_bytes(b"this is not an HDF5 file\n" * 10)


def listed_column_missing(path):
    with h5py.File(path, "r+") as f:
        del f["log_grad_var"]


def steps_go_back(path):
    with h5py.File(path, "r+") as f:
        f["step"][...] = f["step"][()][::-1]


@pytest.mark.parametrize("spoil", [unequal_columns, not_hdf5, listed_column_missing, steps_go_back])
def test_a_broken_metrics_file_is_refused_and_the_recovery_works(stopped_run, spoil):
    metrics = stopped_run / "metrics.h5"
    spoil(metrics)
    before = metrics.read_bytes()
    line = error_line(run("train", "--resume", stopped_run, "--steps", 12, "--no-progress"))
    assert str(metrics) in line and "move it aside" in line and "checkpoint at step 8" in line
    assert metrics.read_bytes() == before                                # not written back
    with pytest.raises(M.MetricsError) as err:
        read_metrics(metrics)
    assert str(metrics) in str(err.value) and "\n" not in str(err.value)
    metrics.rename(stopped_run / "metrics.h5.broken")                   # the recovery the message gives
    res = run("train", "--resume", stopped_run, "--steps", 12, "--no-progress")
    assert res.exit_code == 0 and "from step 8" in res.output, res.output
    assert list(read_metrics(metrics)["step"]) == [12]
    assert load_checkpoint(stopped_run / "checkpoint.h5")["step"] == 12


@pytest.mark.parametrize("name", [".tmp-notes.txt", ".tmp-data.h5", ".tmp-metrics-abcdefgh.h5", ".tmp-x.json",
                                  ".tmp-rebar-np-abcdefgh.txt", ".tmp-rebar-np-abc.h5",
                                  ".tmp-rebar-np-abcdefgh.h5.bak"])
def test_only_our_own_temporaries_are_removed(tiny_data_dir, tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("the user's own file\n")
    ours = [".tmp-rebar-np-k3x_9qz0.h5", ".tmp-rebar-np-abcdefgh.json"]   # what a killed writer leaves
    for n in ours:
        (out / n).write_bytes(b"half-written")
    res = run("train", *tiny(tiny_data_dir), "--steps", 4, "--output", out)
    assert res.exit_code == 0, res.output
    assert (out / name).read_text() == "the user's own file\n"
    assert not any((out / n).exists() for n in ours)
    with C.atomic_path(out / "x.h5") as tmp:          # and every temporary we write has such a name
        assert C.TMP_NAME.fullmatch(os.path.basename(tmp))
        open(tmp, "w").close()


@pytest.mark.parametrize("args", [
    ["train", "--steps", 300, "--output", ""],
    ["train", "--steps", 300, "--output", "   "],
    ["train", "--resume", ""],
    ["compare", "--output", ""],
    ["variance", "--output", ""],
    ["plot", "somerun", "--output", ""],
    ["samples", "somerun", "--output", ""],
])
def test_an_empty_output_is_refused(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    line = error_line(run(*args))
    option = "--resume" if "--resume" in args else "--output"
    assert option in line and "empty" in line
    assert os.listdir(tmp_path) == []                          # nothing trained, nothing written


@contextmanager
def held_lock(run_dir):
    fh = rundir.lock_run(run_dir)
    try:
        yield
    finally:
        fh.close()


def in_step(monkeypatch, at, act):
    """Call act() in nvil's estimate of step `at` (6: in the middle of the second epoch)."""
    import rebar_np.estimators.nvil as nvil
    real, calls = nvil.estimate, {"n": 0}

    def estimate(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            act()
        return real(*a, **k)
    monkeypatch.setattr(nvil, "estimate", estimate)


def crash():
    raise RuntimeError("boom")


def ctrl_c_then_again_while_saving(monkeypatch):
    """Ctrl-C in step 6, and a second one during the save it triggers."""
    import signal
    import rebar_np.training.train as T
    real_save = T.save_checkpoint

    def save(path, step, *a, **k):
        if step == 6:
            raise KeyboardInterrupt
        return real_save(path, step, *a, **k)
    monkeypatch.setattr(T, "save_checkpoint", save)
    in_step(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGINT))


@pytest.mark.parametrize("ending,state,words", [
    ("crash", "failed", ["RuntimeError", "boom"]),
    ("disk full", "failed", ["No space left on device", "checkpoint.h5"]),
    ("Ctrl-C while saving", "interrupted", ["without saving", "checkpoint, of step 4, is kept"]),
    ("SIGKILL", "stopped", ["without recording why"]),
])
def test_status_tells_how_the_run_ended(tiny_data_dir, tmp_path, monkeypatch, ending, state, words):
    out = tmp_path / "run"
    if ending == "crash":
        in_step(monkeypatch, 6, crash)
    elif ending == "disk full":
        fail_writes(monkeypatch, "checkpoint.h5", lambda tmp: OSError(errno.ENOSPC, "No space left on device"))
    elif ending == "Ctrl-C while saving":
        ctrl_c_then_again_while_saving(monkeypatch)
    res = run("train", *tiny(tiny_data_dir), "--steps", 12, "--output", out)
    monkeypatch.undo()
    if ending == "SIGKILL":           # what a killed process leaves: "running", and nobody holds the lock
        assert res.exit_code == 0
        status = json.loads((out / "status.json").read_text())
        (out / "status.json").write_text(json.dumps({**status, "state": "running"}))
        with held_lock(out):                      # while some process trains it, it is running
            assert rundir.read_status(out)["state"] == "running"
    else:
        assert res.exit_code != 0
    status = rundir.read_status(out)
    assert status["state"] == state and all(w in status["message"] for w in words), status
    kept = 12 if ending == "SIGKILL" else 4
    assert status["checkpoint_step"] == load_checkpoint(out / "checkpoint.h5")["step"] == kept
    res = run("train", "--resume", out, "--steps", 16, "--no-progress")     # and the run continues from there
    assert res.exit_code == 0 and f"from step {kept}" in res.output, res.output
    assert (f"Note: the last process training this run {state}" in res.stderr) == (state != "interrupted")


def fail_writes(monkeypatch, name, error, after=1):
    """Every atomic write of a file called `name` after the first `after` ones raises error(temporary path)
    at its end, as a full disk would (the write happens inside the real atomic_path)."""
    real, n = C.atomic_path, {"writes": 0}

    @contextmanager
    def failing(path, *a, **k):
        with real(path, *a, **k) as tmp:
            yield tmp
            if os.path.basename(path) == name:
                n["writes"] += 1
                if n["writes"] > after:
                    raise error(tmp)
    for module in (C, rundir):         # C.atomic_h5 (checkpoint.h5, metrics.h5) writes through C.atomic_path
        monkeypatch.setattr(module, "atomic_path", failing)


ENOSPC = "No space left on device"
H5PY_STYLE = ("Can't write data (file write failed: time = Thu Jan  1 00:00:00 2026, filename = '{}', file "
              "descriptor = 7, errno = 28, error message = 'No space left on device', buf = 0x5, total write "
              "size = 4096, bytes this sub-write = 4096, bytes actually written = 18446744073709551615, offset = 0)")


@pytest.mark.parametrize("name,error", [
    ("checkpoint.h5", lambda tmp: OSError(errno.ENOSPC, ENOSPC)),                 # os.fsync, write(): no name
    ("checkpoint.h5", lambda tmp: OSError(errno.ENOSPC, ENOSPC, tmp)),            # the temporary's name
    ("checkpoint.h5", lambda tmp: OSError(H5PY_STYLE.format(tmp))),                # h5py: no errno, long text
    ("metrics.h5", lambda tmp: OSError(errno.ENOSPC, ENOSPC)),
    ("status.json", lambda tmp: OSError(errno.ENOSPC, ENOSPC)),
])
def test_a_full_disk_is_one_complete_line_naming_the_file(tiny_data_dir, tmp_path, monkeypatch, name, error):
    out = tmp_path / "run"
    fail_writes(monkeypatch, name, error)
    line = error_line(run("train", *tiny(tiny_data_dir), "--steps", 12, "--output", out), before_training=False)
    assert line.startswith(f"Error: {ENOSPC}: {out / name}; the last checkpoint (step 4) is kept"), line
    assert f"--resume {out}" in line
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.h5")["step"] == 4
    assert not [p for p in os.listdir(out) if C.TMP_NAME.fullmatch(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs bash's ulimit -f")
def test_a_real_write_error_of_hdf5_is_one_line(tiny_data_dir, tmp_path):
    """A full disk as HDF5 itself meets it, not a patched error: the file-size limit (ulimit -f, with
    SIGXFSZ ignored) makes every write past 2 MiB fail, as a full disk does, so the checkpoint of a
    200-unit model (about 7 MB) cannot be written. HDF5 writing to the file used to report it from its
    close as a RuntimeError traceback followed by dozens of ignored exceptions (and, on a real full
    file system, a segmentation fault); the file is now built in memory and written in one write."""
    out = tmp_path / "run"
    args = " ".join(map(str, ["train", *tiny(tiny_data_dir), "--n-hidden", 200, "--steps", 8, "--output", out]))
    proc = subprocess.run(["bash", "-c", f"trap '' XFSZ; ulimit -f 2048; exec {sys.executable} cli.py {args}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: File too large: {out / 'checkpoint.h5'}"), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["checkpoint_step"] is None, status
    assert not [p for p in os.listdir(out) if C.TMP_NAME.fullmatch(p)]


def test_files_built_in_memory_at_once_do_not_collide(tmp_path):
    """atomic_h5 builds every file in memory under a name of its own (HDF5 refuses a second in-memory
    file of an open one's name), so two can be built at once, as two threads saving would."""
    with C.atomic_h5(tmp_path / "a.h5") as a, C.atomic_h5(tmp_path / "b.h5") as b:
        a["x"], b["y"] = [1, 2], [3]
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        assert list(a) == ["x"] and list(b) == ["y"] and list(b["y"][()]) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]
