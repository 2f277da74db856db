"""Checkpoints in HDF5 (no pickle), written atomically.

Layout of a checkpoint file:
    /params/<name>          model parameters
    /aux/<name>             the estimator's own parameters (baseline, eta, temperature)
    /opt/<group>/m/<name>, /opt/<group>/v/<name>, attribute t   Adam states
    /ema/<name>             gradient-variance moving averages
    /model/mean_x           the training-set pixel means the model is centred on
    attributes: step, config (JSON), format version

A write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the old one, so a crash mid-write leaves the previous checkpoint whole.
"""
import json
import os
import tempfile

import h5py
import numpy as np

FORMAT_VERSION = 1


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


def save_checkpoint(path, step, config, params, aux, opt_states=None, ema=None, mean_x=None):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        with h5py.File(tmp, "w") as f:
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
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Returns dict(step, config, params, aux, opt, ema); raises CheckpointError on any problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with h5py.File(path, "r") as f:
            out = {"step": int(f.attrs["step"]), "config": json.loads(f.attrs["config"]),
                   "params": _read_dict(f["params"]), "aux": _read_dict(f["aux"]), "opt": {}, "ema": None,
                   "mean_x": f["model/mean_x"][()] if "model/mean_x" in f else None}
            if "opt" in f:
                for name, g in f["opt"].items():
                    out["opt"][name] = {"t": int(g.attrs["t"]), "m": _read_dict(g["m"]), "v": _read_dict(g["v"])}
            if "ema" in f:
                out["ema"] = _read_dict(f["ema"])
            return out
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or incomplete ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
