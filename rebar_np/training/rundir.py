"""The run directory: what a training run leaves behind, and how a run is started or resumed.

    DIR/config.json     every setting (TrainConfig, without the folder itself, so a run can be
                        moved), the package and library versions, and the data it was trained on:
                        folder and, per split, rows and SHA-256
    DIR/metrics.h5      one row per report line (rebar_np.training.metrics), readable while training runs
    DIR/checkpoint.h5   the latest checkpoint (rebar_np.training.checkpoint), replaced atomically, with
                        everything an exact resume needs (rebar_np.training.resume)
    DIR/status.json     state (running, interrupted, diverged, failed, finished), the last step
                        reached, the checkpoint's step, a message, the process id and host;
                        read it with read_status, which tells a live run from a killed one
    DIR/.lock           held while a process trains the run (lock_run)
    DIR/eval-<split>-<k>.json   final bounds from `rebar-np eval`
    DIR/train.log       the console output, for runs started by `rebar-np sweep`

Every file is written to a temporary file in DIR and renamed into place, so a
crash at any moment leaves each file either old or new, never half-written.
"""
import json
import os
import platform
import re
import socket
import sys
import time
from dataclasses import asdict, fields

import numpy as np

from .. import __version__
from ..data import DataError, array_sha256
from .checkpoint import CheckpointError, atomic_path, load_checkpoint, os_error_text, remove_stale_temporaries
from .metrics import MetricsError, MetricsLog

CONFIG, METRICS, CHECKPOINT, STATUS = "config.json", "metrics.h5", "checkpoint.h5", "status.json"
FULL_EVAL = re.compile(r"eval-(valid|test)-(\d+)\.json")   # a bound of a whole split (not eval-...-firstN)


def whole_split_path(run_dir, split, samples):
    """RUN_DIR/eval-<split>-<k>.json: the file of the k-sample bound of a whole split (FULL_EVAL)."""
    return os.path.join(run_dir, f"eval-{split}-{samples}.json")
METADATA_KEYS = ("version", "environment", "data")   # config.json entries that are not settings
# settings a resume may change: they decide when things are logged, saved or stopped, never a parameter
RESUME_MAY_CHANGE = ("steps", "eval_every", "eval_samples", "report_every", "checkpoint_every", "device")


class RunDirError(ValueError):
    """A run folder that is missing, unreadable or does not fit (one-line message)."""


# --------------------------------------------------------------------------
# Small JSON files, written atomically
# --------------------------------------------------------------------------
def write_json(path, obj):
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path, what):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunDirError(f"no {what} at {path}") from None
    except (OSError, ValueError, RecursionError) as e:     # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{what} {path} is unreadable ({(str(e) or type(e).__name__).splitlines()[0]})") from None


# --------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------
def data_fingerprint(data):
    """Per split: rows and the SHA-256 of its pixel values as uint8, which for binary data
    equals the checksum stored in the data file (rebar_np.data), for grey levels k/255 that of
    the uint8 levels k; other arrays are hashed as float32 ("encoding" says which)."""
    out = {}
    for split, x in data.items():
        x = np.asarray(x)
        if np.all((x == 0) | (x == 1)):
            enc, sha = "binary", array_sha256(x.astype(np.uint8))
        elif np.array_equal((np.rint(x * 255) / 255).astype(x.dtype), x):
            enc, sha = "grey255", array_sha256(np.rint(x * 255).astype(np.uint8))
        else:
            import hashlib
            enc = "float32"
            sha = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()
        out[split] = {"rows": int(x.shape[0]), "columns": int(x.shape[1]), "encoding": enc, "sha256": sha}
    return out


def environment():
    """The library versions a run used and, when rebar-np runs from a git checkout, its commit."""
    import h5py
    import numba
    env = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "h5py": h5py.__version__}
    commit = source_commit()
    return {**env, "rebar_np_commit": commit} if commit else env


def source_commit():
    """The git commit of the code rebar-np runs from, with "+changes" when its tracked files differ from
    it, or None when that is not a git checkout (an installed package) or git cannot say."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        def git(*args):
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return None             # the package lies inside some other repository
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "rebar_np", "cli.py")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def config_record(cfg, data, data_dir=None):
    """What config.json holds for cfg trained on data (loaded from data_dir, None = the default)."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "output"}
    return {**settings, "version": __version__, "environment": environment(),
            "data": {"dir": os.path.abspath(data_dir) if data_dir else None, "splits": data_fingerprint(data)}}


def settings_from_record(record, where="config"):
    """The settings a config.json (or any JSON object of settings) holds, each typed and checked
    (rebar_np.training.train.check_settings); one-line errors naming `where` for a file that is not a JSON
    object, for names that are neither settings nor config.json's metadata, and for bad values."""
    from .train import TrainConfig, check_settings
    if not isinstance(record, dict):
        kind = {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(record), "a number")
        raise RunDirError(f"{where} must hold a JSON object of settings, not {kind}")
    names = {f.name for f in fields(TrainConfig)} - {"output"}
    unknown = sorted(set(record) - names - set(METADATA_KEYS))
    if unknown:
        raise RunDirError(f"{where} has unknown setting(s) {', '.join(unknown)}")
    values = {k: v for k, v in record.items() if k in names}
    return check_settings(values, file_labels(where, values))


def first_difference(record, settings):
    """The first of `settings` (a run's settings as some command wants them) whose value in the run's
    config.json record differs, or None. RESUME_MAY_CHANGE settings never count; a setting the record
    lacks has its default (the run was made before the setting existed, and ran with what it means)."""
    from .train import TrainConfig
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for k, v in settings.items():
        if k in RESUME_MAY_CHANGE or k in METADATA_KEYS or k == "output":
            continue
        if record.get(k, defaults.get(k)) != v:
            return k
    return None


def file_labels(where, names):
    """How errors name each setting of a file: "<file>: <key>"."""
    return {k: f"{where}: {k}" for k in names}


def config_from_record(record, where="config"):
    """The TrainConfig a config.json (or any dict of settings) describes (settings_from_record)."""
    from .train import TrainConfig
    return TrainConfig(**settings_from_record(record, where))


def read_config(run_dir):
    return read_json(os.path.join(run_dir, CONFIG), "run configuration")


def check_data(record, data, run_dir):
    """One-line DataError when data is not what the run in run_dir was trained on."""
    want = (record.get("data") or {}).get("splits") or {}
    have = data_fingerprint({s: data[s] for s in want if s in data})
    for split, w in sorted(want.items(), key=lambda kv: ("train", "valid", "test").index(kv[0])
                           if kv[0] in ("train", "valid", "test") else 3):
        h = have.get(split)
        if h is None or h["sha256"] != w["sha256"] or h["rows"] != w["rows"]:
            got = f"{h['rows']} rows, sha256 {h['sha256'][:12]}..." if h else "missing"
            raise DataError(f"the {split} data differ from those the run in {run_dir} was trained on "
                            f"({got}; the run used {w['rows']} rows, sha256 {w['sha256'][:12]}...)")


# --------------------------------------------------------------------------
# What the training loop reports into
# --------------------------------------------------------------------------
class NullRecorder:
    """For runs without an output folder."""

    def start(self, step, evaluating=False): pass
    def report(self, row, aux): pass
    def flush(self): pass
    def saved(self, step): pass
    def finish(self, step): pass
    def interrupted(self, step, message="", flush=True): pass
    def diverged(self, step, message): pass
    def close(self): pass


class RunRecorder(NullRecorder):
    """Writes config.json, metrics.h5 and status.json of one run folder."""

    def __init__(self, run_dir, record, fixed_temperature=None):
        self.dir, self.record = os.fspath(run_dir), record
        self.fixed_temperature = fixed_temperature   # lambda of estimators that do not report it
        self.metrics = None
        self.status = {}
        self._lock = None

    def _path(self, name):
        return os.path.join(self.dir, name)

    def start(self, step, evaluating=False):
        """evaluating: the checkpoint was saved before the evaluation of its step, whose row comes
        again (a killed run may have written it before its next checkpoint)."""
        os.makedirs(self.dir, exist_ok=True)
        self._lock = lock_run(self.dir)
        try:                                    # nothing is written before metrics.h5 is known good
            remove_stale_temporaries(self.dir)
            self.metrics = open_metrics(self.dir, step)
            path = self._path(CONFIG)
            if not os.path.exists(path) or read_config(self.dir) != self.record:
                write_json(path, self.record)
            self.metrics.truncate_after(step - 1 if evaluating else step)   # rows after the checkpoint come again
            self.metrics.flush(force=True)
            self.status = {"state": "running", "step": step, "checkpoint_step": step if step else None,
                           "message": "", "pid": os.getpid(), "host": socket.gethostname()}
            self._write_status()
        except BaseException:
            self.close()
            raise

    def _write_status(self):
        self.status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self._path(STATUS), self.status)

    def report(self, row, aux):
        row = dict(row)
        if "temperature" not in row and self.fixed_temperature is not None:
            row["temperature"] = self.fixed_temperature
        for k, v in aux.items():
            if k.startswith("psi."):             # control-variate scales eta = 2 sigma(psi)
                row["eta." + k[4:]] = 2.0 / (1.0 + np.exp(-float(v.reshape(-1)[0])))
        self.metrics.append(row)
        self.metrics.flush(force="valid_bound" in row or "test_bound" in row)
        self.status["step"] = row["step"]

    def flush(self):
        if self.metrics is not None:
            self.metrics.flush(force=True)

    def saved(self, step):
        self.status.update(step=step, checkpoint_step=step)
        self._write_status()

    def _end(self, state, step, message="", flush=True):
        if flush:
            self.flush()
        ended = {**self.status, "state": state, "message": message}
        if step is not None:
            ended["step"] = step
        ended["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self._path(STATUS), ended)
        self.status = ended       # only once written: a write cut short leaves "running" for close() to fix

    def finish(self, step):
        self._end("finished", step)

    def interrupted(self, step, message="", flush=True):
        self._end("interrupted", step, message, flush)

    def diverged(self, step, message):
        self._end("diverged", step, message)

    def close(self):
        """Release the run; train() calls it from its `finally`. A run still recorded as running
        did not end through finish, interrupted or diverged: the exception leaving training (a
        crash, a full disk, a second Ctrl-C while saving) says how it ended, and status.json
        records it. If even that write fails, read_status still reports the run as stopped
        once the lock is gone."""
        if self.status.get("state") == "running":
            err = sys.exc_info()[1]
            if isinstance(err, KeyboardInterrupt):
                state, message = "interrupted", "interrupted while saving; the last checkpoint is kept"
            else:
                state, message = "failed", error_line(err) if err is not None else "ended without recording why"
            try:
                self._end(state, None, message)
            except Exception:
                pass
        if getattr(self, "_lock", None) is not None:
            self._lock.close()          # releases the lock
            self._lock = None


def error_line(err):
    """The one-line message status.json records for an exception that ended a run."""
    if isinstance(err, OSError):
        return os_error_text(err)
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def open_metrics(run_dir, step):
    """run_dir's MetricsLog, checked; a damaged metrics.h5 is a RunDirError that says how to recover
    (the checkpoint at `step` holds all the run needs, and a new table logs from there)."""
    try:
        return MetricsLog(os.path.join(run_dir, METRICS))
    except MetricsError as e:
        where = f"resumes from its checkpoint at step {step}" if step else "starts from step 0"
        raise RunDirError(f"{e}; move it aside (e.g. to {METRICS}.broken): the run {where} and logs from "
                          "there") from None


STOPPED = "the process ended without recording why (killed, or the machine stopped)"


def read_status(run_dir):
    """run_dir's status.json (a dict), or None when there is none. A process that is killed
    (SIGKILL, a power cut) cannot record that it stopped, so "running" is reported only while
    the run's lock is held; otherwise the state is "stopped" with a message saying so."""
    path = os.path.join(run_dir, STATUS)
    if not os.path.exists(path):
        return None
    status = read_json(path, "run status")
    if not isinstance(status, dict):
        raise RunDirError(f"run status {path} is not a JSON object")
    if status.get("state") == "running" and not run_is_locked(run_dir):
        status = {**status, "state": "stopped", "message": STOPPED}
    return status


def run_is_locked(run_dir):
    """Whether some process (this one included) holds run_dir's lock (lock_run). Probed with a
    shared lock, released at once, so a trainer's exclusive lock is never held up for long."""
    try:
        import fcntl
    except ImportError:                 # no advisory locks: cannot tell, trust status.json
        return True
    try:
        fh = open(os.path.join(run_dir, ".lock"), "r")
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


def lock_run(run_dir):
    """Hold an exclusive lock on run_dir/.lock while training, so that two processes (two sweeps,
    a sweep and a hand-started resume) never train the same run at once. The operating system
    drops the lock when the process ends, however it ends. Returns the open lock file."""
    try:
        import fcntl
    except ImportError:                 # no advisory locks on this platform
        return None
    fh = open(os.path.join(run_dir, ".lock"), "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunDirError(f"{run_dir} is being trained by {holder}; wait for it or stop it first") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    return fh


def recorder_for(cfg, data, data_dir=None, record=None):
    """The recorder train() uses: a RunRecorder for cfg.output, or a NullRecorder without one."""
    if not cfg.output:
        return NullRecorder()
    from .. import estimators as E
    fixed = cfg.temperature if "temperature" in E.get(cfg.model).DEFAULT_OPTIONS else None
    return RunRecorder(cfg.output, record or config_record(cfg, data, data_dir), fixed)


# --------------------------------------------------------------------------
# Starting and resuming from the command line
# --------------------------------------------------------------------------
def checkpoint_step(run_dir):
    """The step of run_dir's checkpoint, or None when there is none (cheap: one attribute)."""
    import h5py
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["step"])
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({str(e).splitlines()[0]})") from None


def refuse_existing_run(run_dir):
    """A new run must not overwrite another one."""
    if os.path.exists(os.path.join(run_dir, CONFIG)) or os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        step = checkpoint_step(run_dir)
        where = f" (checkpoint at step {step})" if step is not None else ""
        raise RunDirError(f"{run_dir} already holds a run{where}; continue it with --resume {run_dir} "
                          "or choose another --output")


def resume_config(run_dir, changes):
    """(cfg, record) of the run in run_dir with `changes` (settings given on the command line)
    applied; only RESUME_MAY_CHANGE may differ from the run's own settings."""
    record = read_config(run_dir)
    where = os.path.join(run_dir, CONFIG)
    cfg = config_from_record(record, where)
    check_data_record(record.get("data"), where)
    labels = file_labels(where, record)
    for k, v in changes.items():
        if getattr(cfg, k) == v:
            continue
        if k not in RESUME_MAY_CHANGE:
            raise RunDirError(f"--{k.replace('_', '-')} cannot change when resuming (the run in {run_dir} has "
                              f"{getattr(cfg, k)!r}); resuming may change only "
                              + ", ".join("--" + n.replace("_", "-") for n in RESUME_MAY_CHANGE))
        setattr(cfg, k, v)
        record[k] = v
        labels[k] = f"--{k.replace('_', '-')}"
    cfg.output = os.fspath(run_dir)
    cfg.validate(labels)
    return cfg, record


def check_data_record(data, where):
    """One-line error unless config.json's "data" entry is what config_record writes: the data folder
    (or null) and, per split, rows and SHA-256 (what a resume checks the data against)."""
    splits = data.get("splits") if isinstance(data, dict) else None
    ok = isinstance(data, dict) and isinstance(data.get("dir"), (str, type(None))) and isinstance(splits, dict) \
        and all(isinstance(s, dict) and type(s.get("rows")) is int and isinstance(s.get("sha256"), str)
                for s in splits.values())
    if not ok:
        raise RunDirError(f"{where}: data must say the run's data folder and, per split, rows and sha256 "
                          "(the file is damaged; restore it from a copy)")


def load_resume_checkpoint(cfg):
    """The checkpoint to resume cfg's run from, or None when the run never wrote one (it then
    starts over with the same settings). One-line errors when it cannot be continued: the
    checkpoint is missing though status.json records one, damaged (checksum), its settings
    differ from config.json's, or metrics.h5 is damaged."""
    path = os.path.join(cfg.output, CHECKPOINT)
    if not os.path.exists(path):
        status = read_status(cfg.output) or {}
        if status.get("checkpoint_step") is not None:
            raise RunDirError(f"{path} is missing, but {os.path.join(cfg.output, STATUS)} records a checkpoint at "
                              f"step {status['checkpoint_step']}; restore the file to continue the run, or start a "
                              f"new run in another folder (--config {os.path.join(cfg.output, CONFIG)} --output NEW)")
        open_metrics(cfg.output, 0)
        return None
    ckpt = load_checkpoint(path)
    check_settings(cfg, ckpt, path)
    open_metrics(cfg.output, ckpt["step"])
    if ckpt["step"] > cfg.steps:
        raise RunDirError(f"the run in {cfg.output} is already at step {ckpt['step']}, past --steps {cfg.steps}")
    if ckpt["train_state"] is None and ckpt["step"] < cfg.steps:
        raise CheckpointError(f"checkpoint {path} has no resume state (written by an older version); it can be "
                              "evaluated but not resumed")
    return ckpt


def check_settings(cfg, ckpt, path):
    """RunDirError when a setting of cfg (config.json with the command line's changes) differs
    from the one the checkpoint was written with: the checkpoint's are the run's settings (an
    edited config.json must not silently change a run). RESUME_MAY_CHANGE settings may differ:
    they never change a parameter, and a resume records its new values in config.json before
    the next checkpoint does."""
    have = json.loads(json.dumps(asdict(cfg)))
    for k, saved in sorted(ckpt["config"].items()):
        if k == "output" or k in RESUME_MAY_CHANGE or k not in have or have[k] == saved:
            continue
        config = os.path.join(cfg.output, CONFIG)
        raise RunDirError(f"{k} is {have[k]!r} in {config} but the checkpoint {path} was written with "
                          f"{saved!r}; put it back to {saved!r}, or start a new run with the edited settings "
                          f"(--config {config} --output NEW)")


def environment_changes(record):
    """Human-readable differences between the run's recorded library versions and these ones."""
    old, new = record.get("environment") or {}, environment()
    if record.get("version") not in (None, __version__):
        old, new = {**old, "rebar-np": record["version"]}, {**new, "rebar-np": __version__}
    return [f"{k} {old[k]} -> {new[k]}" for k in sorted(old) if k in new and old[k] != new[k]]
