"""Sweeps: a grid of training runs described in a TOML file, run a few at a time, and the
paper-style table of their results.

A grid file (every key but [grid] is optional):

    output = "paper"                # sweep folder, relative to this file (default: the file's name)
    workers = 2                     # runs at a time (default: the number of CPU cores)
    data_dir = "/data/rebar"        # where the data files are (default: the usual place)

    [grid]                          # every combination of these lists is one run
    estimator = ["nvil", "muprop", "rebar(0.1)", "dynamic_rebar"]
    architecture = ["linear", "nonlinear", "two_layer"]
    task = ["sbn", "omni"]
    learning_rate = [1e-4, 3e-4, 1e-3]
    seed = [0]

    [settings]                      # the same for every run: any `rebar-np train` setting
    steps = 2000000

    [architectures]                 # more architectures (linear, nonlinear, two_layer are built in)
    deep = { n_layer = 3, nonlinear = false }

    [estimators]                    # more estimator variants (every estimator name, rebar(0.1) and
    "rebar(0.3)" = { model = "rebar", temperature = 0.3 }   # concrete(0.1) are built in)

Any other TrainConfig setting may be a [grid] list too. Each run lives in
OUTPUT/<estimator>_<task>_<architecture>_lr<lr>_seed<seed>[_<key>=<value>...]
and is an ordinary run folder (rebar_np.training.rundir); the grid file is copied to
OUTPUT/grid.toml. Running the sweep again skips finished runs, resumes unfinished
ones exactly (`rebar-np train --resume`) and starts the missing ones. A run folder
whose settings differ from what the grid now asks for is an error (except the
settings a resume may change, e.g. steps: raising them continues the runs).

Engines: "local" runs one process per run on this machine, `workers` at a time.
"dask" submits the same commands to a Dask cluster (pip install 'rebar-np[cluster]'):
an existing one (--scheduler tcp://host:8786; the workers need rebar-np installed and
the sweep folder on a shared file system) or a LocalCluster of `workers` processes.
"""
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .. import estimators as E
from ..training.metrics import last_value, read_metrics
from ..training.resume import evaluation_pending
from ..training.rundir import (CHECKPOINT, CONFIG, FULL_EVAL, METRICS, RESUME_MAY_CHANGE, checkpoint_step,
                               first_difference, read_json, write_json)

ARCHITECTURES = {"linear": {"n_layer": 1, "nonlinear": False},
                 "nonlinear": {"n_layer": 1, "nonlinear": True},
                 "two_layer": {"n_layer": 2, "nonlinear": False}}
ESTIMATOR_VARIANTS = {**{name: {"model": name} for name in E.ESTIMATORS},
                      "rebar(0.1)": {"model": "rebar", "temperature": 0.1},
                      "concrete(0.1)": {"model": "concrete", "temperature": 0.1}}
NAME_ORDER = ("estimator", "task", "architecture", "learning_rate", "seed")
NAME_PREFIX = {"estimator": "", "task": "", "architecture": "", "learning_rate": "lr", "seed": "seed"}
TOP_KEYS = ("output", "workers", "data_dir", "engine", "grid", "settings", "architectures", "estimators")
EXIT_DIVERGED, EXIT_INTERRUPTED = 3, 130


class SweepError(ValueError):
    """A grid that cannot be run (one-line message)."""


@dataclass
class Grid:
    path: str
    output: str
    workers: int
    engine: str
    data_dir: str
    axes: dict                   # grid key -> list of values, in NAME_ORDER then file order
    settings: dict               # settings shared by every run
    architectures: dict = field(default_factory=dict)
    estimators: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    name: str
    dir: str
    cell: dict                   # this run's value of every grid key
    settings: dict               # its full TrainConfig settings (without output)


# --------------------------------------------------------------------------
# Grid file -> runs
# --------------------------------------------------------------------------
def _setting_names():
    from ..training.train import TrainConfig
    return [f.name for f in fields(TrainConfig) if f.name != "output"]


def _table(doc, key, path):
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise SweepError(f"{path}: {key} must be a table ([{key}]), got {type(value).__name__}")
    return dict(value)


def _typed(path, where, name, value):
    """value as the type of setting `name` (rebar_np.training.train.typed_setting), or a one-line SweepError
    naming the file and where in it the value is. The ranges are checked per run (expand)."""
    from ..training.train import SettingError, typed_setting
    try:
        return typed_setting(name, value)
    except SettingError as err:
        raise SweepError(f"{path}: {where} {err.problem}") from None


def _top_value(doc, key, default, path, typ):
    """A top-level entry of the grid file: a string, or (workers) an integer of at least 1."""
    value = doc.get(key, default)
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not ok:
            raise SweepError(f"{path}: {key} must be an integer of at least 1, got {value!r}")
    elif value is not None and not isinstance(value, str):
        raise SweepError(f"{path}: {key} must be a string, got {value!r}")
    return value


def load_grid(path):
    """Read and check a grid file (one-line SweepError for anything wrong): its layout, and the
    type of every setting in it, named by its table and key; expand checks each run's values."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "grid.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise SweepError(f"no grid file at {path}") from None
    except UnicodeDecodeError as e:
        raise SweepError(f"grid file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"grid file {path} is unreadable ({str(e).splitlines()[0]})") from None
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}")
    here = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    output = os.path.join(here, _top_value(doc, "output", stem if stem != "grid" else ".", path, str))
    settings_names = _setting_names()
    grid = _table(doc, "grid", path)
    if not grid:
        raise SweepError(f"{path}: the [grid] table is missing or empty")
    if "model" in grid:
        if "estimator" in grid:
            raise SweepError(f"{path}: [grid] has both model and estimator; use one")
        grid["estimator"] = grid.pop("model")
    for k, v in grid.items():
        if k not in settings_names + ["estimator", "architecture"]:
            raise SweepError(f"{path}: unknown [grid] key {k!r}")
        if not isinstance(v, list) or not v:
            raise SweepError(f"{path}: [grid] {k} must be a non-empty list")
        if k in ("estimator", "architecture"):
            if not all(isinstance(e, str) for e in v):
                raise SweepError(f"{path}: [grid] {k} must list names (strings), got {v!r}")
        else:
            grid[k] = v = [_typed(path, f"[grid] {k}", k, e) for e in v]
        if len(set(map(repr, v))) != len(v):
            raise SweepError(f"{path}: [grid] {k} lists a value twice")
    settings = _table(doc, "settings", path)
    for k in settings:
        if k not in settings_names:
            raise SweepError(f"{path}: unknown [settings] key {k!r}")
        if k in grid or (k == "model" and "estimator" in grid):
            raise SweepError(f"{path}: {k} is both in [grid] and in [settings]")
        settings[k] = _typed(path, f"[settings] {k}", k, settings[k])
    architectures = {**ARCHITECTURES, **_table(doc, "architectures", path)}
    estimators = {**ESTIMATOR_VARIANTS, **_table(doc, "estimators", path)}
    for table, names in (("architectures", architectures), ("estimators", estimators)):
        for name, spec in names.items():
            if not isinstance(spec, dict) or set(spec) - set(settings_names):
                raise SweepError(f"{path}: [{table}] {name} must be a table of settings")
            names[name] = {k: _typed(path, f"[{table}] {name}: {k}", k, v) for k, v in spec.items()}
    for key, known in (("architecture", architectures), ("estimator", estimators)):
        for v in grid.get(key, []):
            if v not in known:
                raise SweepError(f"{path}: unknown {key} {v!r}; known: {', '.join(known)}")
    order = [k for k in NAME_ORDER if k in grid] + sorted(k for k in grid if k not in NAME_ORDER)
    workers = _top_value(doc, "workers", os.cpu_count() or 1, path, int)
    engine = _top_value(doc, "engine", "local", path, str)
    if engine not in ("local", "dask"):
        raise SweepError(f"{path}: engine must be local or dask, got {engine!r}")
    data_dir = _top_value(doc, "data_dir", None, path, str)
    return Grid(path, os.path.normpath(output), workers, engine,
                os.path.join(here, data_dir) if data_dir else None,
                {k: grid[k] for k in order}, settings, architectures, estimators)


def _name_part(key, value):
    text = format(value, "g") if isinstance(value, float) else str(value).lower() if isinstance(value, bool) \
        else str(value)
    text = re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")
    return f"{NAME_PREFIX[key]}{text}" if key in NAME_PREFIX else f"{key}={text}"


def expand(grid):
    """Every combination of the grid's lists as a RunSpec (settings checked by TrainConfig)."""
    from ..training.train import SettingError, TrainConfig
    specs = []
    keys = list(grid.axes)
    for values in itertools.product(*grid.axes.values()):
        cell = dict(zip(keys, values))
        settings = dict(grid.settings)
        for k, v in cell.items():
            if k == "architecture":
                settings.update(grid.architectures[v])
            elif k == "estimator":
                settings.update(grid.estimators[v])
            else:
                settings[k] = v
        name = "_".join(_name_part(k, v) for k, v in cell.items())
        # every value through TrainConfig's checks; errors name the file, the run and the setting as
        # an option of the `rebar-np train` the run is (its settings' keys are in the run's name or a table)
        where = f"{grid.path}: run {name}"
        try:
            cfg = TrainConfig(**settings)
            cfg.validate({k: f"{where}: {k.replace('_', '-')}" for k in _setting_names()})
        except SettingError as e:
            raise SweepError(str(e)) from None
        except (TypeError, ValueError) as e:
            raise SweepError(f"{where}: {str(e).splitlines()[0]}") from None
        specs.append(RunSpec(name, os.path.join(grid.output, name), cell,
                             {k: v for k, v in asdict(cfg).items() if k != "output"}))
    return specs


def select(grid, specs, only):
    """The runs whose cell matches every KEY=V1,V2,... of `only` (a list of such strings, from
    `rebar-np sweep --only`): a subset of a grid, run or reported in the grid's own order. Values
    are compared as the grid writes them, so `learning_rate=3e-4` matches 0.0003."""
    wanted = {}
    for item in only:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SweepError(f"--only {item!r}: write KEY=VALUE[,VALUE...], e.g. --only learning_rate=3e-4")
        if key not in grid.axes:
            raise SweepError(f"--only {item!r}: {key} is not a [grid] key of {grid.path} "
                             f"(its keys: {', '.join(grid.axes)})")
        allowed = {_name_part(key, v): v for v in grid.axes[key]}
        chosen = set()
        for text in values.split(","):
            text = text.strip()
            match = [part for part, v in allowed.items()
                     if text in (str(v), part) or part == _name_part(key, _number(text))]
            if not match:
                raise SweepError(f"--only {item!r}: {text!r} is not among the grid's {key} values "
                                 f"({', '.join(map(str, grid.axes[key]))})")
            chosen.update(match)
        wanted[key] = wanted.get(key, chosen) & chosen
    return [s for s in specs if all(_name_part(k, s.cell[k]) in parts for k, parts in wanted.items())]


def _number(text):
    """text as a float when it reads as one (so 3e-4 and 0.0003 name the same learning rate)."""
    try:
        return float(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------
# What each run needs
# --------------------------------------------------------------------------
def run_state(spec):
    """("new" | "unfinished" | "finished", checkpoint step or None). SweepError when the folder holds
    a run with other settings than the grid asks for."""
    if not os.path.exists(os.path.join(spec.dir, CONFIG)):
        if checkpoint_step(spec.dir) is not None:
            raise SweepError(f"{spec.dir} has a checkpoint but no {CONFIG}; move it away")
        return "new", None
    have = read_json(os.path.join(spec.dir, CONFIG), "run configuration")
    if not isinstance(have, dict):
        raise SweepError(f"{os.path.join(spec.dir, CONFIG)} must hold a JSON object of settings; restore it or "
                         "move the run away")
    k = first_difference(have, spec.settings)
    if k is not None:
        raise SweepError(f"{spec.dir} holds a run with other settings than the grid asks for ({k} "
                         f"{have.get(k)!r}, the grid says {spec.settings[k]!r}); move it away or restore the grid")
    step = checkpoint_step(spec.dir)
    done = step is not None and step >= spec.settings["steps"]
    if done and not evaluation_pending(os.path.join(spec.dir, CHECKPOINT)):   # stopped in its last evaluation
        return "finished", step
    return "unfinished", step


def train_args(spec, state, grid):
    """Arguments of `rebar-np train` that start (state "new") or resume this run."""
    data = ["--data-dir", grid.data_dir] if grid.data_dir else []
    if state == "new":
        os.makedirs(os.path.join(grid.output, ".sweep"), exist_ok=True)
        settings_file = os.path.join(grid.output, ".sweep", spec.name + ".json")
        write_json(settings_file, spec.settings)
        return ["train", "--config", settings_file, "--output", spec.dir, "--no-progress", *data]
    changes = []
    for k in RESUME_MAY_CHANGE:
        changes += [f"--{k.replace('_', '-')}", str(spec.settings[k])]
    return ["train", "--resume", spec.dir, "--no-progress", *changes, *data]


def code_root():
    """The folder holding the `cli` module and the rebar_np package this process runs."""
    import importlib.util
    found = importlib.util.find_spec("cli")
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    if found is not None and found.origin:
        roots.insert(0, os.path.dirname(os.path.abspath(found.origin)))
    return os.pathsep.join(dict.fromkeys(roots))


def child_env(workers, pythonpath=None):
    """Environment of a run's process: this code first on the path, unbuffered output, and at
    most cores / workers BLAS threads so that parallel runs do not oversubscribe the cores."""
    env = {"PYTHONUNBUFFERED": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH")
                                          else "")
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var not in os.environ:
            env[var] = threads
    return env


def run_job(args, env, log_path):
    """Run `python -m cli ARGS` (one training run) with its output appended to log_path; returns the
    exit code. Module-level so a Dask worker can run it too."""
    with open(log_path, "a") as log:
        log.write(f"$ rebar-np {' '.join(args)}\n")
        log.flush()
        return subprocess.run([sys.executable, "-m", "cli", *args], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **env}).returncode


@dataclass
class Job:
    spec: RunSpec
    action: str                  # "start" or "resume"
    args: list
    log_path: str


def plan(grid, specs):
    """(jobs to run, names of finished runs)."""
    jobs, finished = [], []
    for spec in specs:
        state, step = run_state(spec)
        if state == "finished":
            finished.append(spec.name)
            continue
        os.makedirs(spec.dir, exist_ok=True)
        action = "start" if state == "new" else (f"resume from step {step}" if step else "restart")
        jobs.append(Job(spec, action, train_args(spec, state, grid), os.path.join(spec.dir, "train.log")))
    return jobs, finished


def run_local(jobs, workers, log=print, poll=0.2):
    """Run the jobs, `workers` processes at a time. Returns {"codes": {name: exit code}, "peak": the
    most runs seen alive at once}.

    Ctrl-C, SIGTERM or SIGHUP (the terminal was closed) stop the sweep: no new run starts, and each
    running one is sent SIGINT, stops after its current step and saves a checkpoint (they run in
    their own sessions, so a terminal's signals reach them only through here); the sweep waits for
    them, then raises KeyboardInterrupt. Each further signal is passed on too (a run's third quits it
    at once, without saving). The signals never raise in here, so no run is left unwatched."""
    from ..training.train import StopFlag
    env = child_env(workers, code_root())
    pending, running, codes, peak = list(jobs), {}, {}, 0

    def say(text):            # a closed terminal (SIGHUP) must not stop the sweep from minding its runs
        try:
            log(text)
        except OSError:
            pass

    stop = StopFlag(plan="no new run starts; the running ones stop after their current step and save a checkpoint",
                    abandon_at=None, again="passed on to the running runs (a run's third quits it without saving)")
    passed_on = 0
    try:
        while (pending and not stop.requested) or running:
            while pending and len(running) < workers and not stop.requested:
                job = pending.pop(0)
                fh = open(job.log_path, "a")
                fh.write(f"$ rebar-np {' '.join(job.args)}\n")
                fh.flush()
                proc = subprocess.Popen([sys.executable, "-m", "cli", *job.args], stdout=fh,
                                        stderr=subprocess.STDOUT, env={**os.environ, **env},
                                        start_new_session=True)
                running[proc] = (job, fh)
                peak = max(peak, sum(1 for p in running if p.poll() is None))
                say(f"[{len(codes) + len(running)}/{len(jobs)}] {job.action}: {job.spec.name}")
            received = stop.count
            if passed_on < received:
                if passed_on == 0:
                    say(f"Interrupted ({stop.signal_name}): stopping {len(running)} run(s) after their current "
                        f"step; {len(pending)} not started")
                for _ in range(received - passed_on):
                    for proc in running:
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGINT)
                passed_on = received
            for proc in [p for p in running if p.poll() is not None]:
                job, fh = running.pop(proc)
                fh.close()
                codes[job.spec.name] = proc.returncode
                say(f"{ended(proc.returncode)}: {job.spec.name}")
            if running:
                time.sleep(poll)
    finally:
        stop.restore()
    if stop.requested:
        raise KeyboardInterrupt
    return {"codes": codes, "peak": peak}


def ended(code):
    """How a run's exit code reads in the sweep's log: a run stopped by a signal saved a checkpoint
    and continues where it stopped when the sweep is started again; it did not fail."""
    if code == 0:
        return "done"
    if code == EXIT_INTERRUPTED:
        return f"stopped (exit {code}), continues when the sweep is run again"
    return f"FAILED (exit {code})"


def run_dask(jobs, workers, scheduler=None, log=print):
    """Run the jobs as tasks of a Dask cluster: the one at `scheduler`, or a LocalCluster of
    `workers` single-threaded processes. Returns {"codes": {name: exit code}}."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("the dask engine needs dask.distributed: pip install 'rebar-np[cluster]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
        env = child_env(1)     # remote workers run their own installed rebar-np
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        env = child_env(workers, code_root())
    codes = {}
    # SIGTERM and SIGHUP (the terminal was closed) end the sweep as Ctrl-C does, through the finally below
    # that closes the client and the cluster, instead of killing this process on the spot
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        futures = {client.submit(run_job, job.args, env, job.log_path, key=f"rebar-np-{job.spec.name}",
                                 pure=False): job for job in jobs}
        for job in jobs:
            log(f"submitted ({job.action}): {job.spec.name}")
        for fut in as_completed(futures):
            job = futures[fut]
            codes[job.spec.name] = fut.result()
            rc = codes[job.spec.name]
            log(f"{ended(rc)}: {job.spec.name}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return {"codes": codes}


def copy_grid(grid):
    os.makedirs(grid.output, exist_ok=True)
    target = os.path.join(grid.output, "grid.toml")
    if os.path.abspath(grid.path) != os.path.abspath(target):
        shutil.copyfile(grid.path, target)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------
def run_result(spec):
    """What the report needs from one run folder (None when it has not finished)."""
    try:
        state, step = run_state(spec)
    except SweepError:
        return None
    if state != "finished" or not os.path.exists(os.path.join(spec.dir, METRICS)):
        return None
    table = read_metrics(os.path.join(spec.dir, METRICS))
    evals = {}
    for name in os.listdir(spec.dir):
        m = FULL_EVAL.fullmatch(name)
        if m:
            r = read_json(os.path.join(spec.dir, name), "evaluation")
            evals[(m.group(1), int(m.group(2)))] = r["bound"]
    return {"name": spec.name, "cell": spec.cell, "step": step, "learning_rate": spec.settings["learning_rate"],
            "train_elbo": last_value(table, "train_elbo"),
            "valid_bound": last_value(table, "valid_bound"), "test_bound": last_value(table, "test_bound"),
            "evals": evals}


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def report_rows(grid, specs):
    """One row per cell (every grid key except learning_rate and seed) with a finished run: the
    learning rate whose validation bound, averaged over seeds, is best (the train ELBO where no
    run was evaluated), and that learning rate's train ELBO at the end, bounds and seeds."""
    results = [r for r in (run_result(s) for s in specs) if r is not None]
    cell_keys = [k for k in grid.axes if k not in ("learning_rate", "seed")]
    rows = []
    for cell_values, group in itertools.groupby(
            sorted(results, key=lambda r: [repr(r["cell"][k]) for k in cell_keys]),
            key=lambda r: tuple(r["cell"][k] for k in cell_keys)):
        group = list(group)
        by_lr = {}
        for r in group:
            by_lr.setdefault(r["learning_rate"], []).append(r)
        use_valid = all(r["valid_bound"] is not None for r in group)
        key = "valid_bound" if use_valid else "train_elbo"
        score = lambda kv: _mean([r[key] for r in kv[1]])
        best_lr, best = max(by_lr.items(), key=lambda kv: -math.inf if score(kv) is None else score(kv))
        elbos = [r["train_elbo"] for r in best]
        final = {}
        for r in best:
            for k, v in r["evals"].items():
                final.setdefault(k, []).append(v)
        final = {f"{split} ({k})": _mean(v) for (split, k), v in sorted(final.items()) if len(v) == len(best)}
        rows.append({**dict(zip(cell_keys, cell_values)), "learning_rate": best_lr, "seeds": len(best),
                     "train_elbo": _mean(elbos),
                     "train_elbo_std": float(np.std(elbos, ddof=1)) if len(elbos) > 1 else None,
                     "valid_bound": _mean([r["valid_bound"] for r in best]),
                     "test_bound": _mean([r["test_bound"] for r in best]),
                     "selected_by": "valid" if use_valid else "train", "final_evals": final})
    return rows, len(results)


def format_report(rows, cell_keys):
    extra = sorted({k for r in rows for k in r["final_evals"]})
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
    heads = [*cell_keys, "lr", "seeds", "train ELBO", "valid", "test", *extra]
    table = []
    for r in rows:
        elbo = fmt(r["train_elbo"]) + (f" +- {r['train_elbo_std']:.2f}" if r["train_elbo_std"] is not None else "")
        lr = format(r["learning_rate"], "g") if r["learning_rate"] is not None else "-"
        if r["selected_by"] == "train":
            lr += "*"
        table.append([*(str(r[k]) for k in cell_keys), lr, str(r["seeds"]), elbo, fmt(r["valid_bound"]),
                      fmt(r["test_bound"]), *(fmt(r["final_evals"].get(k)) for k in extra)])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) if i < len(cell_keys) else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for t in table:
        lines.append("  ".join(c.ljust(w) if i < len(cell_keys) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(t, widths))))
    if any(r["selected_by"] == "train" for r in rows):
        lines.append("* no validation bound in these runs: learning rate chosen by train ELBO")
    return "\n".join(lines)


def format_paper_table(rows, cell_keys):
    """The paper's layout: a row per (task, architecture, ...), a column per estimator, the train
    ELBO at the end of the best learning rate in each cell."""
    if "estimator" not in cell_keys:
        return ""
    row_keys = [k for k in cell_keys if k != "estimator"]
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    grouped = {}
    for r in rows:
        grouped.setdefault(tuple(r[k] for k in row_keys), {})[r["estimator"]] = r
    label = lambda key: " ".join(map(str, key)) or "all"
    w0 = max([len(" ".join(row_keys)) or 3] + [len(label(k)) for k in grouped])
    width = max([10] + [len(e) for e in estimators])
    lines = [(" ".join(row_keys) or "").ljust(w0) + "".join(e.rjust(width + 2) for e in estimators)]
    for key, cells in grouped.items():
        vals = [f"{cells[e]['train_elbo']:.2f}" if e in cells and cells[e]["train_elbo"] is not None else "-"
                for e in estimators]
        lines.append(label(key).ljust(w0) + "".join(v.rjust(width + 2) for v in vals))
    return "\n".join(lines)


def write_report(grid, rows):
    import csv
    write_json(os.path.join(grid.output, "report.json"), {"rows": [
        {**r, "final_evals": r["final_evals"]} for r in rows]})
    keys = [k for k in (rows[0] if rows else {}) if k != "final_evals"]
    with open(os.path.join(grid.output, "report.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
