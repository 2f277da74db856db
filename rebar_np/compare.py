"""The paper's comparison in one go: train the same model with several estimators and
tabulate final train ELBO, validation and test bounds and log gradient variance, with
plots of the ELBO against steps and against wall-clock time (matplotlib optional).
"""
import json
import os
from dataclasses import replace

from .train import train


def run_comparison(cfg, data, estimators, out_dir, log=print, progress=None):
    """Train cfg once per estimator (run folders out_dir/<name>); returns the table rows and
    the per-run histories. cfg.eval_every=0 still evaluates once at the end."""
    rows, histories = [], {}
    for name in estimators:
        run_cfg = replace(cfg, model=name, output=os.path.join(out_dir, name),
                          eval_every=cfg.eval_every if cfg.eval_every else 10 ** 9)
        log(f"== {name} ==")
        res = train(run_cfg, data, log=log, progress=progress)
        last = res.history[-1]
        final = res.evals[-1] if res.evals else {}
        rows.append({"estimator": name, "steps": res.step, "train_elbo": last["train_elbo"],
                     "valid_bound": final.get("valid"), "test_bound": final.get("test"),
                     "log_grad_var": last["log_grad_var"], "wall_time_s": last["wall_time"]})
        histories[name] = res.history
    with open(os.path.join(out_dir, "comparison.json"), "w") as fh:
        json.dump({"rows": rows, "histories": histories}, fh, indent=2)
    return rows, histories


def format_table(rows, samples):
    head = (f"{'estimator':<16}{'steps':>8}{'train ELBO':>12}{f'valid ({samples})':>14}{f'test ({samples})':>13}"
            f"{'log var':>10}{'time (s)':>10}")
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"
    lines = [head]
    for r in rows:
        lines.append(f"{r['estimator']:<16}{r['steps']:>8}{r['train_elbo']:>12.2f}{fmt(r['valid_bound']):>14}"
                     f"{fmt(r['test_bound']):>13}{r['log_grad_var']:>10.3f}{r['wall_time_s']:>10.1f}")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
