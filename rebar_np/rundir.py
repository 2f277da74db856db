"""The run directory: what a training run leaves behind, and how a run is started or resumed.

    DIR/config.json     every setting (TrainConfig, without the folder itself, so a run can be
                        moved), the package and library versions, and the data it was trained on:
                        folder and, per split, rows and SHA-256
    DIR/metrics.h5      one row per report line (rebar_np.metrics), readable while training runs
    DIR/checkpoint.h5   the latest checkpoint (rebar_np.checkpoint), replaced atomically, with
                        everything an exact resume needs (rebar_np.resume)
    DIR/status.json     state (running, interrupted, diverged, finished), the last step reached,
                        the checkpoint's step, a message, the process id and host
    DIR/eval-<split>-<k>.json   final bounds from `rebar-np eval`
    DIR/train.log       the console output, for runs started by `rebar-np sweep`

Every file is written to a temporary file in DIR and renamed into place, so a
crash at any moment leaves each file either old or new, never half-written.
"""
import json
import os
import platform
import socket
import time
from dataclasses import asdict, fields

import numpy as np

from . import __version__
from .checkpoint import CheckpointError, atomic_path, load_checkpoint, remove_stale_temporaries
from .data import DataError, array_sha256
from .metrics import MetricsLog

CONFIG, METRICS, CHECKPOINT, STATUS = "config.json", "metrics.h5", "checkpoint.h5", "status.json"
METADATA_KEYS = ("version", "environment", "data")   # config.json entries that are not settings
# settings a resume may change: they decide when things are logged, saved or stopped, never a parameter
RESUME_MAY_CHANGE = ("steps", "eval_every", "eval_samples", "report_every", "checkpoint_every", "device")


class RunDirError(ValueError):
    """A run folder that is missing, unreadable or does not fit (one-line message)."""


# --------------------------------------------------------------------------
# Small JSON files, written atomically
# --------------------------------------------------------------------------
def write_json(path, obj):
    with atomic_path(path, prefix=".tmp-", suffix=".json") as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path, what):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise RunDirError(f"no {what} at {path}") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{what} {path} is unreadable ({str(e).splitlines()[0]})") from None


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
    import h5py
    import numba
    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "h5py": h5py.__version__}


def config_record(cfg, data, data_dir=None):
    """What config.json holds for cfg trained on data (loaded from data_dir, None = the default)."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "output"}
    return {**settings, "version": __version__, "environment": environment(),
            "data": {"dir": os.path.abspath(data_dir) if data_dir else None, "splits": data_fingerprint(data)}}


def config_from_record(record, where="config"):
    """The TrainConfig a config.json (or any dict of settings) describes; one-line error for
    names that are neither settings nor config.json's metadata."""
    from .train import TrainConfig
    names = {f.name for f in fields(TrainConfig)} - {"output"}
    unknown = sorted(set(record) - names - set(METADATA_KEYS))
    if unknown:
        raise RunDirError(f"{where} has unknown setting(s) {', '.join(unknown)}")
    return TrainConfig(**{k: v for k, v in record.items() if k in names})


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
        remove_stale_temporaries(self.dir)
        path = self._path(CONFIG)
        if not os.path.exists(path) or read_config(self.dir) != self.record:
            write_json(path, self.record)
        self.metrics = MetricsLog(self._path(METRICS))
        self.metrics.truncate_after(step - 1 if evaluating else step)   # rows after the checkpoint come again
        self.metrics.flush(force=True)
        self.status = {"state": "running", "step": step, "checkpoint_step": step if step else None,
                       "message": "", "pid": os.getpid(), "host": socket.gethostname()}
        self._write_status()

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
        self.status.update(state=state, message=message)
        if step is not None:
            self.status["step"] = step
        self._write_status()

    def finish(self, step):
        self._end("finished", step)

    def interrupted(self, step, message="", flush=True):
        self._end("interrupted", step, message, flush)

    def diverged(self, step, message):
        self._end("diverged", step, message)

    def close(self):
        if getattr(self, "_lock", None) is not None:
            self._lock.close()          # releases the lock
            self._lock = None


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
    from . import estimators as E
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
    cfg = config_from_record(record, f"{os.path.join(run_dir, CONFIG)}")
    for k, v in changes.items():
        if getattr(cfg, k) == v:
            continue
        if k not in RESUME_MAY_CHANGE:
            raise RunDirError(f"--{k.replace('_', '-')} cannot change when resuming (the run in {run_dir} has "
                              f"{getattr(cfg, k)!r}); resuming may change only "
                              + ", ".join("--" + n.replace("_", "-") for n in RESUME_MAY_CHANGE))
        setattr(cfg, k, v)
        record[k] = v
    cfg.output = os.fspath(run_dir)
    cfg.validate()
    return cfg, record


def load_resume_checkpoint(cfg):
    """The checkpoint to resume cfg's run from, or None when the run never wrote one (it then
    starts over with the same settings). One-line errors when it cannot be continued."""
    path = os.path.join(cfg.output, CHECKPOINT)
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    if ckpt["step"] > cfg.steps:
        raise RunDirError(f"the run in {cfg.output} is already at step {ckpt['step']}, past --steps {cfg.steps}")
    if ckpt["train_state"] is None and ckpt["step"] < cfg.steps:
        raise CheckpointError(f"checkpoint {path} has no resume state (written by an older version); it can be "
                              "evaluated but not resumed")
    return ckpt


def environment_changes(record):
    """Human-readable differences between the run's recorded library versions and these ones."""
    old, new = record.get("environment") or {}, environment()
    if record.get("version") not in (None, __version__):
        old, new = {**old, "rebar-np": record["version"]}, {**new, "rebar-np": __version__}
    return [f"{k} {old[k]} -> {new[k]}" for k in sorted(old) if k in new and old[k] != new[k]]
