"""Results in the repository: a sweep's runs published as their small files, and the table of them.

`rebar-np results publish GRID` copies, for every run of the grid that has reported anything,

    results/<sweep>/<run>/config.json      the run's settings and the data it was trained on
    results/<sweep>/<run>/metrics.h5       one row per epoch (rebar_np.training.metrics)
    results/<sweep>/<run>/eval-*.json      its final bounds (the 5000-sample test bound is computed
                                           here for finished runs that lack it)
    results/<sweep>/<run>/metrics.png      its curves (rebar-np plot)
    results/<sweep>/<architecture>_lr<lr>.png   every estimator of one architecture and learning rate

and never a checkpoint. `rebar-np results table` rebuilds the table of results/README.md (and of
the README's results section) from those files alone, so that the committed table is what the
committed files say; `--check` only compares. A run not yet finished appears with the step it
reached, never with a number it has not produced.
"""
import contextlib
import math
import os
import shutil
from dataclasses import fields

import numpy as np

from ..training.checkpoint import atomic_path
from ..training.metrics import last_value, read_metrics
from ..training.rundir import CONFIG, FULL_EVAL, METRICS, first_difference, read_json, settings_from_record, \
    whole_split_path

FINAL_SAMPLES = 5000
BEGIN, END = "<!-- results table: begin (rebar-np results table) -->", "<!-- results table: end -->"
HEADLINE_BEGIN = "<!-- results headline: begin (rebar-np results table) -->"
HEADLINE_END = "<!-- results headline: end -->"
ARCH_ORDER = ("two_layer", "linear", "nonlinear")
ESTIMATOR_ORDER = ("dynamic_rebar", "rebar(0.1)", "rebar", "relax", "muprop", "simple_muprop", "nvil",
                   "concrete(0.1)", "concrete", "disarm", "arm", "vimco", "reinforce_loo", "reinforce")

# The papers' MNIST numbers, to be read beside ours (they are the papers' results, not ours).
# REBAR paper, Table 1: mean training ELBO after 2,000,000 steps, best of three learning rates;
# its "REBAR" column is dynamic_rebar (the temperature learned).
REBAR_PAPER = {
    ("two_layer", "nvil"): -99.6, ("two_layer", "muprop"): -99.07, ("two_layer", "dynamic_rebar"): -98.8,
    ("two_layer", "concrete(0.1)"): -99.62,
    ("linear", "nvil"): -112.5, ("linear", "muprop"): -111.7, ("linear", "dynamic_rebar"): -111.6,
    ("linear", "concrete(0.1)"): -111.3,
    ("nonlinear", "nvil"): -102.2, ("nonlinear", "muprop"): -101.5, ("nonlinear", "dynamic_rebar"): -101.1,
}
# RELAX paper: the highest training ELBO of its own runs (compare with our best epoch).
RELAX_PAPER = {
    ("two_layer", "dynamic_rebar"): -98.22, ("two_layer", "relax"): -98.00,
    ("linear", "dynamic_rebar"): -111.6, ("linear", "relax"): -111.20,
}


class ResultsError(ValueError):
    """A results folder or grid that cannot be published or tabulated (one-line message)."""


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------
def architecture_name(cfg):
    """The sweep's architecture names for its built-in shapes, else '<L>-layer (non)linear'."""
    from .sweep import ARCHITECTURES
    for name, shape in ARCHITECTURES.items():
        if shape == {"n_layer": cfg["n_layer"], "nonlinear": bool(cfg["nonlinear"])}:
            return name
    return f"{cfg['n_layer']}-layer {'nonlinear' if cfg['nonlinear'] else 'linear'}"


def estimator_name(cfg):
    """The sweep's estimator names: rebar and concrete carry their fixed temperature, rebar(0.1)."""
    if cfg["model"] in ("rebar", "concrete"):
        return f"{cfg['model']}({cfg['temperature']:g})"
    return cfg["model"]


# --------------------------------------------------------------------------
# Publishing a sweep
# --------------------------------------------------------------------------
def published_files(run_dir):
    """The small files of a run folder that go into results/: config, metrics, full-split evaluations."""
    return [CONFIG, METRICS] + sorted(n for n in os.listdir(run_dir) if FULL_EVAL.fullmatch(n))


def publish(grid, specs, results_root, log=print, final_samples=FINAL_SAMPLES, progress=False):
    """Copy the runs of `specs` (rebar_np.experiments.sweep) that have metrics into results_root/<sweep name>/,
    computing the final test bound of finished runs that lack it, with a plot per run and per
    (architecture, learning rate). Returns the folder written.

    Nothing is written until every run's files have been read and found whole, the table's files
    have their markers, and no published run would go back to an earlier step: a damaged run folder
    never replaces what results/ holds. Each run's files are then written beside the published
    ones and renamed over them, so an interrupted copy (a full disk, Ctrl-C) leaves the run as it was."""
    from ..evaluation.final import final_bound
    from .plots import plot_runs
    from .sweep import run_state
    dest = os.path.join(results_root, os.path.basename(os.path.normpath(grid.output)))
    read_tables(results_root)
    runs = []
    for spec in specs:
        if not os.path.exists(os.path.join(spec.dir, METRICS)):
            continue
        state, step = run_state(spec)
        out = os.path.join(dest, spec.name)
        try:
            if not len(read_metrics(os.path.join(spec.dir, METRICS)).get("step", [])):
                log(f"{spec.name}: no rows yet, not published")
                continue
            now = check_run(spec.dir)
        except ValueError as err:
            raise ResultsError(f"{err}; nothing was published (--only can leave the run out)") from None
        refuse_going_back(spec.dir, now, out)
        runs.append((spec, state, step, out))
    for spec, state, step, out in runs:
        final = whole_split_path(spec.dir, "test", final_samples)
        if state == "finished" and final_samples and not os.path.exists(final):
            log(f"{spec.name}: the {final_samples}-sample test bound (a few minutes)")
            r, _ = final_bound(spec.dir, "test", final_samples, progress=progress)
            log(f"{spec.name}: test bound ({final_samples} samples) {r['bound']:.3f} +- {r['stderr']:.3f}")
    published = []
    for spec, state, step, out in runs:
        with contextlib.ExitStack() as stack:    # every file beside its published twin, then all renamed
            for name in published_files(spec.dir):
                tmp = stack.enter_context(atomic_path(os.path.join(out, name), suffix=os.path.splitext(name)[1]))
                shutil.copyfile(os.path.join(spec.dir, name), tmp)
            png = stack.enter_context(atomic_path(os.path.join(out, "metrics.png"), suffix=".png"))
            plot_runs([spec.dir], png, labels=[spec.name])
        published.append((spec, out))
        log(f"published {spec.name} ({state}{f', step {step}' if step else ''})")
    # one figure per (architecture, learning rate) that this call published into, drawn with every run
    # published there (also those of earlier calls: publishing one run must not drop the others)
    groups = {}
    for name in sorted(os.listdir(dest)):
        out = os.path.join(dest, name)
        if os.path.exists(os.path.join(out, CONFIG)) and os.path.exists(os.path.join(out, METRICS)):
            cfg = published_config(os.path.join(out, CONFIG))
            groups.setdefault((architecture_name(cfg), cfg["learning_rate"]), []).append((estimator_name(cfg), out))
    published_dirs = {out for _, out in published}
    for (arch, lr), group in sorted(groups.items(), key=lambda kv: _order(ARCH_ORDER, kv[0][0]) + (kv[0][1],)):
        if not any(out in published_dirs for _, out in group):
            continue
        group.sort(key=lambda r: _order(ESTIMATOR_ORDER, r[0]))
        path = os.path.join(dest, f"{arch.replace(' ', '-')}_lr{lr:g}.png")
        plot_runs([out for _, out in group], path, labels=[name for name, _ in group])
        log(f"wrote {path}")
    return dest


def check_run(run_dir):
    """Read every file of run_dir that publish copies (ResultsError, or the reader's one-line error,
    naming the file that is damaged); returns the run's table row."""
    row = run_row(run_dir, "")
    for name in published_files(run_dir)[2:]:
        read_evaluation(os.path.join(run_dir, name))
    return row


def refuse_going_back(run_dir, now, out):
    """ResultsError when the published copy `out` of the run in run_dir (whose table row is `now`) is of a
    run with other settings, or further along than the run now is: publishing would replace results with
    older or other ones.
    A published copy that is unreadable is replaced (the run's files are whole: check_run)."""
    try:
        had = check_run(out) if os.path.exists(os.path.join(out, METRICS)) else None
    except ValueError:
        return
    if had is None:
        return
    record = read_json(os.path.join(run_dir, CONFIG), "run configuration")
    k = first_difference(read_json(os.path.join(out, CONFIG), "run configuration"),
                         settings_from_record(record, os.path.join(run_dir, CONFIG)))
    if k is not None:
        raise ResultsError(f"{out} holds a run with other settings than {run_dir} ({k}); nothing was published "
                           f"(move {out} away to publish this run there)")
    if had["step"] > now["step"]:
        raise ResultsError(f"{out} holds step {had['step']:,} of this run, {run_dir} only step {now['step']:,}; "
                           f"nothing was published (move {out} away to publish the run as it is now)")


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------
def _order(order, name):
    return (order.index(name), name) if name in order else (len(order), name)


TABLE_SETTINGS = ("model", "n_layer", "nonlinear", "learning_rate", "seed", "steps")   # what a row shows


def published_config(path):
    """The settings of a published config.json, each checked, with the table's own ones present
    (ResultsError naming the file otherwise); the others that it lacks take their defaults."""
    from ..training.train import TrainConfig
    settings = settings_from_record(read_json(path, "run configuration"), path)
    missing = [k for k in TABLE_SETTINGS if k not in settings]
    if missing:
        raise ResultsError(f"{path} lacks the setting(s) {', '.join(missing)}; restore it from the run's folder")
    return {**{f.name: f.default for f in fields(TrainConfig)}, **settings}


def read_evaluation(path):
    """A bound file (eval-<split>-<k>.json) as a dict with its integer step and numeric bound
    (NaN allowed: the table shows a dash); ResultsError naming the file otherwise."""
    r = read_json(path, "evaluation")
    if not (isinstance(r, dict) and type(r.get("step")) is int
            and isinstance(r.get("bound"), (int, float)) and not isinstance(r.get("bound"), bool)):
        raise ResultsError(f"evaluation {path} is damaged (it needs an integer step and a numeric bound); "
                           "restore it, or delete it and run rebar-np eval again")
    return r


def run_row(run_dir, sweep):
    """What the table says of one published run, read from its files alone."""
    cfg = published_config(os.path.join(run_dir, CONFIG))
    table = read_metrics(os.path.join(run_dir, METRICS))
    steps, wall = table["step"], table["wall_time"]
    if len(steps) == 0:
        raise ResultsError(f"{os.path.join(run_dir, METRICS)} has no rows")
    elbo = table["train_elbo"].astype(np.float64)
    final = whole_split_path(run_dir, "test", FINAL_SAMPLES)
    test_final = read_evaluation(final) if os.path.exists(final) else None
    if test_final is not None and test_final.get("step") != int(steps[-1]):
        test_final = None          # a bound of an earlier checkpoint does not describe this row
    arch, est = architecture_name(cfg), estimator_name(cfg)
    return {"sweep": sweep, "run": os.path.basename(run_dir), "architecture": arch, "estimator": est,
            "learning_rate": cfg["learning_rate"], "seed": cfg["seed"], "step": int(steps[-1]),
            "steps": int(cfg["steps"]), "train_elbo": float(elbo[-1]),
            "best_train_elbo": float(np.nanmax(elbo)),
            "valid_bound": last_value(table, "valid_bound"), "test_bound": last_value(table, "test_bound"),
            "test_final": test_final["bound"] if test_final else None,
            "steps_per_s": float(steps[-1] / wall[-1]) if wall[-1] > 0 else None, "wall_time": float(wall[-1]),
            "rebar_paper": REBAR_PAPER.get((arch, est)), "relax_paper": RELAX_PAPER.get((arch, est))}


def collect(results_root):
    """Rows of every published run under results_root/<sweep>/<run>/, in table order."""
    if not os.path.isdir(results_root):
        raise ResultsError(f"no results folder at {results_root}")
    rows = []
    for sweep in sorted(os.listdir(results_root)):
        folder = os.path.join(results_root, sweep)
        if not os.path.isdir(folder):
            continue
        for run in sorted(os.listdir(folder)):
            run_dir = os.path.join(folder, run)
            if os.path.exists(os.path.join(run_dir, CONFIG)) and os.path.exists(os.path.join(run_dir, METRICS)):
                rows.append(run_row(run_dir, sweep))
    rows.sort(key=lambda r: (r["sweep"], _order(ARCH_ORDER, r["architecture"]), r["learning_rate"],
                             _order(ESTIMATOR_ORDER, r["estimator"]), r["seed"]))
    return rows


def _num(v, digits=2):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _hours(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.0f} min"


def format_table(rows):
    """The Markdown table of results/README.md (and the README's results section)."""
    head = ["architecture", "estimator", "lr", "step", "train ELBO, last epoch", "best epoch",
            "valid (100)", "test (100)", f"test ({FINAL_SAMPLES})", "steps/s", "wall time",
            "REBAR paper", "RELAX paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        step = f"{r['step']:,}" if r["step"] >= r["steps"] else f"{r['step']:,} of {r['steps']:,} (unfinished)"
        lines.append("| " + " | ".join([
            r["architecture"].replace("_", " "), f"`{r['estimator']}`", f"{r['learning_rate']:g}", step,
            _num(r["train_elbo"]), _num(r["best_train_elbo"]), _num(r["valid_bound"]), _num(r["test_bound"]),
            _num(r["test_final"]), _num(r["steps_per_s"], 0), _hours(r["wall_time"]),
            _num(r["rebar_paper"]), _num(r["relax_paper"])]) + " |")
    return "\n".join(lines)


def headline(rows):
    """One row per (sweep, architecture, estimator): the paper's choice among learning rates, the best
    train ELBO of the finished runs (of the runs so far while none has finished)."""
    best = {}
    for r in rows:
        key = (r["sweep"], r["architecture"], r["estimator"])
        rank = (r["step"] >= r["steps"], r["train_elbo"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, r)
    return [r for r in rows if best[(r["sweep"], r["architecture"], r["estimator"])][1] is r]


def format_headline(rows):
    """The README's short table: the headline rows, with the final bound and the papers' numbers."""
    head = ["architecture", "estimator", "lr", "step", "train ELBO, last epoch", "best epoch",
            f"test ({FINAL_SAMPLES})", "REBAR paper", "RELAX paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in headline(rows):
        step = f"{r['step']:,}" if r["step"] >= r["steps"] else f"{r['step']:,} of {r['steps']:,}"
        lines.append("| " + " | ".join([
            r["architecture"].replace("_", " "), f"`{r['estimator']}`", f"{r['learning_rate']:g}", step,
            _num(r["train_elbo"]), _num(r["best_train_elbo"]), _num(r["test_final"]),
            _num(r["rebar_paper"]), _num(r["relax_paper"])]) + " |")
    return "\n".join(lines)


def replace_block(text, table, where, begin=BEGIN, end=END):
    """text with the part between the begin and end markers replaced by table."""
    if begin not in text or end not in text:
        raise ResultsError(f"{where} has no results table markers ({begin} ... {end})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def table_targets(results_root):
    """(file, begin, end, formatter) of every marked block that holds a table: the full table in
    results/README.md, and the headline in the repository's README.md when it has the markers."""
    targets = [(os.path.join(results_root, "README.md"), BEGIN, END, format_table)]
    readme = os.path.join(os.path.dirname(os.path.abspath(results_root)), "README.md")
    if os.path.exists(readme):
        with open(readme, encoding="utf-8") as fh:
            if HEADLINE_BEGIN in fh.read():
                targets.append((readme, HEADLINE_BEGIN, HEADLINE_END, format_headline))
    return targets


def read_tables(results_root):
    """[(path, text, begin, end, formatter)] of every table target, each read and found to have its
    markers (ResultsError otherwise): checked before anything is published or written."""
    targets = []
    for path, begin, end, formatter in table_targets(results_root):
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            raise ResultsError(f"no {path}; it holds the table between {begin} and {end}") from None
        replace_block(text, "", path, begin, end)
        targets.append((path, text, begin, end, formatter))
    return targets


def update_tables(results_root, check=False):
    """Rebuild the tables from results_root's files into every target; with check, write nothing and
    return the targets whose table differs (an empty list: all up to date). Each file is replaced
    atomically, after every row has been read."""
    targets = read_tables(results_root)
    rows = collect(results_root)
    stale = []
    for path, text, begin, end, formatter in targets:
        new = replace_block(text, formatter(rows), path, begin, end)
        if new != text:
            stale.append(path)
            if not check:
                with atomic_text(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(new)
    return stale


@contextlib.contextmanager
def atomic_text(path):
    """atomic_path for a text file (README.md): the temporary keeps the file's permission bits."""
    with atomic_path(path, suffix=".md") as tmp:
        yield tmp
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
