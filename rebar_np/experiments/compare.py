"""The paper's comparison in one go: train the same model with several estimators and
tabulate final train ELBO, validation and test bounds and log gradient variance, with
plots of the ELBO against steps and against wall-clock time (matplotlib optional).

Each estimator's run is an ordinary run folder OUT_DIR/<estimator> (rebar_np.training.rundir), treated
as the sweep treats its runs: a finished run is kept and reported, an unfinished one (Ctrl-C,
a crash) is resumed exactly from its checkpoint, a missing one is started, and a folder that
holds a run with other settings is refused before anything is trained. The table is read from
the run folders' metrics.h5, so a re-run reports every estimator, trained now or before.
"""
import math
import os
from dataclasses import asdict, dataclass, replace

from ..training import rundir
from ..training.metrics import last_value, read_metrics
from ..training.train import TrainConfig, TrainingDiverged, train

LATER = 10 ** 9   # eval_every of runs compared with cfg.eval_every = 0: evaluated once, at the end


class ComparisonError(ValueError):
    """A comparison that cannot go on (one-line message)."""


@dataclass
class PlannedRun:
    name: str
    cfg: TrainConfig
    state: str               # "new", "unfinished" or "finished"
    record: dict = None      # config.json of a run already in the folder
    ckpt: dict = None        # the checkpoint an unfinished run resumes from


def run_config(cfg, name, out_dir):
    return replace(cfg, model=name, output=os.path.join(out_dir, name), eval_every=cfg.eval_every or LATER)


def plan_run(name, run_cfg, data):
    """What to do with one estimator's run folder; one-line errors for a folder that holds a run this
    comparison must not continue (other settings or data, past --steps, no config.json)."""
    d = run_cfg.output
    if not os.path.exists(os.path.join(d, rundir.CONFIG)):
        if rundir.checkpoint_step(d) is not None:
            raise ComparisonError(f"{d} has a checkpoint but no {rundir.CONFIG}; move it away or choose another "
                                  "--output")
        return PlannedRun(name, run_cfg, "new")
    record = rundir.read_config(d)
    want = {k: v for k, v in asdict(run_cfg).items() if k != "output"}
    k = rundir.first_difference(record, want)
    if k is not None:
        raise ComparisonError(f"{d} holds a run with other settings than this comparison ({k} {record.get(k)!r}, "
                              f"the command asks for {want[k]!r}); choose another --output or move it away")
    cfg, record = rundir.resume_config(d, {k: want[k] for k in rundir.RESUME_MAY_CHANGE})
    rundir.check_data(record, data, d)
    ckpt = rundir.load_resume_checkpoint(cfg)        # one line when it is past --steps or cannot resume
    if ckpt is not None and ckpt["step"] == cfg.steps:
        return PlannedRun(name, cfg, "finished", record)
    return PlannedRun(name, cfg, "unfinished", record, ckpt)


def plan_comparison(cfg, data, estimators, out_dir):
    """Every estimator's PlannedRun, all checked before any of them is trained."""
    if cfg.batch_size > data["train"].shape[0]:
        raise ComparisonError(f"batch-size {cfg.batch_size} is larger than the training set "
                              f"({data['train'].shape[0]} examples)")
    return [plan_run(name, run_config(cfg, name, out_dir), data) for name in estimators]


def run_comparison(cfg, data, estimators, out_dir, log=print, progress=None, data_dir=None):
    """Train cfg once per estimator (run folders out_dir/<name>, see the module docstring); returns the
    table rows and the per-run histories, also written to out_dir/comparison.json. cfg.eval_every=0
    still evaluates once at the end. A run that diverges keeps its last good checkpoint and its row
    says so ("diverged": the message); the other estimators are still trained. KeyboardInterrupt
    (Ctrl-C) leaves each run resumable by running the comparison again."""
    plans = plan_comparison(cfg, data, estimators, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    diverged = {}
    for p in plans:
        if p.state == "finished":
            log(f"== {p.name}: finished (step {p.cfg.steps}) in {p.cfg.output}; kept ==")
            continue
        if p.record is not None:
            for change in rundir.environment_changes(p.record):
                log(f"Warning: {change} since the {p.name} run started; its continuation may differ in the last "
                    "bits from an uninterrupted run")
        log(f"== {p.name}" + (f": resuming from step {p.ckpt['step']}" if p.ckpt is not None else "") + " ==")
        recorder = rundir.recorder_for(p.cfg, data, data_dir, p.record)
        try:
            train(p.cfg, data, log=log, progress=progress, resume=p.ckpt, recorder=recorder)
        except TrainingDiverged as err:
            diverged[p.name] = str(err)
            log(f"{p.name} diverged: {err}")
    rows, histories = [], {}
    for p in plans:
        row, histories[p.name] = run_row(p.name, p.cfg.output)
        rows.append({**row, "diverged": diverged.get(p.name)})
    rundir.write_json(os.path.join(out_dir, "comparison.json"), {"rows": rows, "histories": histories})
    return rows, histories


def run_row(name, run_dir):
    """(table row, history) of one run folder, from its metrics.h5 and checkpoint."""
    path = os.path.join(run_dir, rundir.METRICS)
    table = read_metrics(path) if os.path.exists(path) else {}
    columns = list(table)
    history = []
    for i in range(len(table.get("step", []))):   # the report rows, without their empty (NaN) cells
        row = {c: (int(table[c][i]) if c == "step" else float(table[c][i])) for c in columns}
        history.append({c: v for c, v in row.items() if not (isinstance(v, float) and math.isnan(v))})
    row = {"estimator": name, "steps": rundir.checkpoint_step(run_dir) or 0,
           "train_elbo": last_value(table, "train_elbo"), "valid_bound": last_value(table, "valid_bound"),
           "test_bound": last_value(table, "test_bound"), "log_grad_var": last_value(table, "log_grad_var"),
           "wall_time_s": last_value(table, "wall_time")}
    return row, history


def format_table(rows, samples):
    head = (f"{'estimator':<16}{'steps':>8}{'train ELBO':>12}{f'valid ({samples})':>14}{f'test ({samples})':>13}"
            f"{'log var':>10}{'time (s)':>10}")
    def fmt(v, digits=2):        # a diverged run's huge values in a width that keeps the columns apart
        return "-" if v is None else f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['estimator']:<16}{r['steps']:>8}{fmt(r['train_elbo']):>12}{fmt(r['valid_bound']):>14}"
                     f"{fmt(r['test_bound']):>13}{fmt(r['log_grad_var'], 3):>10}{fmt(r['wall_time_s'], 1):>10}"
                     + ("  diverged" if r.get("diverged") else ""))
    return "\n".join(lines)


def plot_comparison(histories, path):
    """Train ELBO against steps and against wall-clock seconds, one line per estimator.
    Returns the path, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        hist = [h for h in hist if "train_elbo" in h]
        steps = [h["step"] for h in hist]
        elbo = [h["train_elbo"] for h in hist]
        axes[0].plot(steps, elbo, label=name)
        axes[1].plot([h["wall_time"] for h in hist], elbo, label=name)
    for ax, xlabel in zip(axes, ("training step", "wall-clock time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train ELBO")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    from .plots import save_figure
    return save_figure(fig, path, dpi=110)
