"""Checkpoints in HDF5 (no pickle), written atomically.

Layout of a checkpoint file:
    /params/<name>          model parameters
    /aux/<name>             the estimator's own parameters (baseline, eta, temperature)
    /opt/<group>/m/<name>, /opt/<group>/v/<name>, attribute t   Adam states
    /ema/<name>             gradient-variance moving averages
    /model/mean_x           the training-set pixel means the model is centred on
    /train_state            what an exact resume needs besides the above (rebar_np.resume):
                            arrays as datasets, scalars and JSON strings as attributes
    attributes: step, config (JSON), format version

A write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the old one (and the folder entry synced), so a crash or SIGKILL
mid-write leaves the previous checkpoint whole; at worst a stale ``.tmp-*.h5``
remains, which ``remove_stale_temporaries`` deletes.
"""
import json
import os
import tempfile
from contextlib import contextmanager

import h5py
import numpy as np

FORMAT_VERSION = 2   # 2 added /train_state; version 1 files still load (not resumable)
TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit (one-line message)."""


def _write_dict(group, d):
    for k, v in d.items():
        group.create_dataset(k, data=v)


def _read_dict(group):
    """Every dataset below group, keyed by its path relative to it ("m1/q0.W" for nested groups)."""
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _attr(v):
    """HDF5 attributes come back as NumPy scalars; hand out plain Python values."""
    return v.item() if isinstance(v, np.generic) else v


@contextmanager
def atomic_path(path, prefix=TMP_PREFIX, suffix=".h5"):
    """Write-then-rename. Yields a temporary path (mode 0644) in path's folder for the
    caller to write; when the block ends normally the file is flushed to disk, renamed
    over path and the folder entry synced; when it raises, the temporary is removed.
    Readers of path only ever see the old file or the complete new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path, step, config, params, aux, opt_states=None, ema=None, mean_x=None, train_state=None):
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["step"] = int(step)
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        _write_dict(f.create_group("params"), params)
        _write_dict(f.create_group("aux"), aux)
        for name, st in (opt_states or {}).items():
            g = f.create_group(f"opt/{name}")
            g.attrs["t"] = int(st["t"])
            _write_dict(g.create_group("m"), st["m"])
            _write_dict(g.create_group("v"), st["v"])
        if ema is not None:
            _write_dict(f.create_group("ema"), ema)
        if mean_x is not None:
            f.create_dataset("model/mean_x", data=mean_x)
        if train_state is not None:
            g = f.create_group("train_state")
            for k, v in train_state.items():
                if isinstance(v, np.ndarray):
                    g.create_dataset(k, data=v)
                else:
                    g.attrs[k] = v


def fsync_folder(folder):
    """Make a rename in folder durable (a machine that loses power keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder):
    """Delete the half-written temporaries a killed writer may have left in folder; returns their names."""
    gone = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(TMP_PREFIX):
            os.remove(os.path.join(folder, name))
            gone.append(name)
    return gone


def load_checkpoint(path):
    """Returns dict(step, config, params, aux, opt, ema, mean_x, train_state); train_state is None
    for checkpoints written before exact resume existed. Raises CheckpointError on any problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with h5py.File(path, "r") as f:
            out = {"step": int(f.attrs["step"]), "config": json.loads(f.attrs["config"]),
                   "params": _read_dict(f["params"]), "aux": _read_dict(f["aux"]), "opt": {}, "ema": None,
                   "mean_x": f["model/mean_x"][()] if "model/mean_x" in f else None, "train_state": None}
            if "opt" in f:
                for name, g in f["opt"].items():
                    out["opt"][name] = {"t": int(g.attrs["t"]), "m": _read_dict(g["m"]), "v": _read_dict(g["v"])}
            if "ema" in f:
                out["ema"] = _read_dict(f["ema"])
            if "train_state" in f:
                g = f["train_state"]
                out["train_state"] = {**{k: _attr(v) for k, v in g.attrs.items()}, **_read_dict(g)}
            return out
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or incomplete ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
