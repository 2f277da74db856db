"""metrics.h5: one row per report line of a training run, readable with h5py alone.

Layout: one 1-D dataset per column at the root, all of the same length (one entry
per row), resizable (maxshape None) and chunked, so other tools can append too:

    step          int64   training step of the row
    wall_time     float64 training seconds since the start of the run (resumes continue the clock)
    train_elbo    float64 mean per-example single-sample hard ELBO since the previous row
    log_grad_var  float64 log mean_j (E[G_j^2] - E[G_j]^2) from the EMA monitor
                  (docs/math.md, section "The gradient-variance monitor")
    temperature   float64 lambda (REBAR family and concrete; NaN otherwise)
    valid_bound, test_bound
                  float64 k-sample importance-weighted bounds when the row is an evaluation, else NaN
    eta.<name>    float64 2 sigmoid(psi.<name>) of every control-variate scale the estimator trains
    <stat>        float64 every other scalar the estimator reports (eta_mean, variance_objective, ...)

Root attributes: ``columns`` (JSON list, in order), ``format_version``.

Reading while a run is going: the writer never modifies the file in place. It
writes the whole table to a temporary file in the same folder and renames it
over metrics.h5, so a reader (``h5py.File(path, "r")``) always sees a complete
table, never blocks the writer (HDF5 file locks are per file, and the renamed
file is a new one), and a crash mid-write leaves the previous table. The table
is small (one row per epoch by default: ~1,000 rows for 2,000,000 steps).
"""
import json
import math
import os
import time

import h5py
import numpy as np

from .checkpoint import atomic_h5

FORMAT_VERSION = 1
FIRST_COLUMNS = ("step", "wall_time", "train_elbo", "log_grad_var", "temperature", "valid_bound", "test_bound")


class MetricsError(ValueError):
    """A metrics.h5 that is unreadable or not a table (one-line message naming the file)."""


class MetricsLog:
    """The rows of one run, kept in memory and flushed atomically to ``path``."""

    def __init__(self, path, min_interval=5.0):
        self.path = os.fspath(path)
        self.min_interval = min_interval   # seconds between unforced flushes
        self.columns = list(FIRST_COLUMNS)
        self.data = {c: [] for c in self.columns}
        self._dirty, self._last_flush = False, -math.inf
        if os.path.exists(self.path):
            table = read_metrics(self.path)
            self.columns = list(table) if table else self.columns
            self.data = {c: list(table.get(c, [])) for c in self.columns}

    def __len__(self):
        return len(self.data["step"])

    def append(self, row):
        """Add one row (a dict column -> scalar); unknown columns are added (NaN in earlier rows),
        absent ones are NaN."""
        n = len(self)
        for c in row:
            if c not in self.data:
                self.columns.append(c)
                self.data[c] = [math.nan] * n
        for c in self.columns:
            v = row.get(c, math.nan)
            self.data[c].append(int(v) if c == "step" else float(v))
        self._dirty = True

    def truncate_after(self, step):
        """Drop the rows after ``step`` (a resumed run logs them again, identically)."""
        keep = sum(1 for s in self.data["step"] if s <= step)
        if keep < len(self):
            for c in self.columns:
                del self.data[c][keep:]
            self._dirty = True

    def flush(self, force=False):
        """Write the table if it changed, at most every min_interval seconds unless forced."""
        if not self._dirty or (not force and time.monotonic() - self._last_flush < self.min_interval):
            return
        with atomic_h5(self.path) as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["columns"] = json.dumps(self.columns)
            for c in self.columns:
                a = np.asarray(self.data[c], dtype=np.int64 if c == "step" else np.float64)
                f.create_dataset(c, data=a, maxshape=(None,), chunks=(max(1, min(len(a), 1024)),))
        self._dirty, self._last_flush = False, time.monotonic()


def read_metrics(path):
    """{column: 1-D array} of a metrics.h5, in the file's column order; {} for an empty table.
    MetricsError when the file is unreadable or its columns do not form a table."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            columns = json.loads(f.attrs["columns"]) if "columns" in f.attrs else sorted(f.keys())
            if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
                raise MetricsError(f"metrics file {path} is damaged (its columns attribute is not a list of names)")
            missing = [c for c in columns if not isinstance(f.get(c), h5py.Dataset)]
            if missing:
                raise MetricsError(f"metrics file {path} is damaged (column {missing[0]} is listed but missing)")
            table = {c: f[c][()] for c in columns}
    except MetricsError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise MetricsError(f"metrics file {path} is unreadable ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    check_table(table, path)
    return table


def check_table(table, path):
    """MetricsError unless every column is 1-D and numeric, all have one length, and steps do not go back."""
    lengths = {}
    for c, a in table.items():
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            raise MetricsError(f"metrics file {path} is damaged (column {c} is {a.dtype} of shape {a.shape}, "
                               "not a 1-D numeric column)")
        lengths[c] = len(a)
    if len(set(lengths.values())) > 1:
        common = max(set(lengths.values()), key=list(lengths.values()).count)
        odd = ", ".join(f"{c} has {n}" for c, n in lengths.items() if n != common)
        raise MetricsError(f"metrics file {path} is damaged (columns of unequal length: {odd} rows, "
                           f"the others {common})")
    if lengths and "step" not in table:
        raise MetricsError(f"metrics file {path} is damaged (no step column)")
    if lengths and np.any(np.diff(table["step"]) < 0):
        raise MetricsError(f"metrics file {path} is damaged (its steps go back)")


def last_value(table, column):
    """The last non-NaN value of a column (None when there is none)."""
    a = table.get(column)
    if a is None or len(a) == 0:
        return None
    ok = ~np.isnan(a.astype(np.float64))
    return float(a[ok][-1]) if ok.any() else None
