"""The rebar-np command line: train, eval, gradcheck, data.

Every user error (unknown names, impossible shapes, missing or corrupted
files) is reported as one line on stderr with exit code 2; a run that
diverges (NaN/inf) stops with exit code 3 and keeps its last good checkpoint.
"""
import functools
import json
import os
import sys
import time

import click

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message, code=EXIT_USAGE):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line(err):
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def user_errors(fn):
    """Turn the package's own error types into one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rebar_np.checkpoint import CheckpointError
        from rebar_np.data import DataError
        from rebar_np.estimators import EstimatorError
        from rebar_np.model import ModelError
        try:
            return fn(*args, **kwargs)
        except (ModelError, EstimatorError, DataError, CheckpointError, ValueError) as err:
            fail(one_line(err))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
    return wrapper


class OneLineGroup(click.Group):
    """Click prints usage errors over three lines; we want the error on one."""

    def main(self, *args, **kwargs):
        kwargs.setdefault("standalone_mode", False)
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":   # click >= 8.2: a bare group prints its help
                click.echo(e.ctx.get_help())
                sys.exit(0)
            fail(one_line(e.format_message()))
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            fail(one_line(e.format_message()))
        if isinstance(rv, int):
            sys.exit(rv)
        return rv


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": 100})
@click.version_option(package_name="rebar-np")
def main():
    """rebar-np: REBAR and related gradient estimators for sigmoid belief networks,
    every derivative written by hand (NumPy + Numba).

    \b
    The main job:   rebar-np train --model dynamic_rebar --task sbn
    Check math:     rebar-np gradcheck --all
    Data:           rebar-np data info
    """


# --------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------
def model_options(fn):
    opts = [
        click.option("--task", default="sbn", show_default=True,
                     help="sbn (binarized MNIST), omni (Omniglot) or sp (MNIST top half -> bottom half)."),
        click.option("--n-layer", default=2, show_default=True, type=int, help="Stochastic layers."),
        click.option("--n-hidden", default=200, show_default=True, type=int, help="Units per stochastic layer."),
        click.option("--nonlinear/--linear", default=False, show_default=True,
                     help="Transforms between layers: one dense layer, or dense-tanh x2 then dense."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def k_sample_options(fn):
    """--samples (K-sample estimators) and --relax-hidden (relax): settings of the issue-8 estimators."""
    opts = [
        click.option("--samples", default=None, type=int,
                     help="vimco, reinforce_loo: samples K per example (default 5); they optimise the K-sample "
                          "bound, and K multiplies the compute per step, not the batch."),
        click.option("--relax-hidden", default=None, type=int,
                     help="relax: width of its control network r (default 32)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def k_sample_settings(samples, relax_hidden):
    """TrainConfig fields for --samples / --relax-hidden (their defaults where not given)."""
    out = {}
    if samples is not None:
        out["samples"] = samples
    if relax_hidden is not None:
        out["relax_hidden"] = relax_hidden
    return out


@main.command()
@click.option("--model", default="dynamic_rebar", show_default=True,
              help="Gradient estimator, e.g. nvil, rebar, relax, disarm, vimco.")
@model_options
@click.option("--batch-size", default=24, show_default=True, type=int)
@click.option("--temperature", default=0.5, show_default=True, type=float,
              help="REBAR family: the fixed (rebar) or initial (dynamic_rebar) temperature lambda.")
@click.option("--relaxation", default="muprop", show_default=True,
              help="REBAR family: muprop (sigma(z/lam + a lam/(lam+1)), the paper's default) or concrete "
                   "(sigma(z/lam)).")
@k_sample_options
@click.option("--learning-rate", default=3e-4, show_default=True, type=float,
              help="Adam learning rate of the model; baselines and control variates use 10x.")
@click.option("--steps", default=2_000_000, show_default=True, type=int, help="Training steps (minibatches).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same results.")
@click.option("--eval-every", default=25, show_default=True, type=int,
              help="Epochs between importance-weighted evaluations on valid and test; 0 turns evaluation off "
                   "(including the final one).")
@click.option("--eval-samples", default=100, show_default=True, type=int,
              help="Samples k of the importance-weighted bound during training.")
@click.option("--report-every", default=0, show_default=True, type=int,
              help="Steps between report lines; 0 reports once per epoch.")
@click.option("--binarization", default="fixed", show_default=True,
              help="fixed (the standard binarized MNIST) or dynamic (resample from grey levels every epoch; "
                   "needs `rebar-np data import mnist-grey`).")
@click.option("--dtype", default="float32", show_default=True, help="float32 or float64.")
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="Run folder for config.json and checkpoint.h5 (default: runs/<model>-<task>-<time>).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the prepared data files (default: the package's data/ or $REBAR_NP_DATA_DIR).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@user_errors
def train(model, task, n_layer, n_hidden, nonlinear, batch_size, temperature, relaxation, samples, relax_hidden,
          learning_rate, steps, seed, eval_every, eval_samples, report_every, binarization, dtype, output, data_dir,
          progress):
    """Train an SBN with one gradient estimator.

    Prints one line per epoch ("Step N: train ELBO ..., log grad var ...") and the
    importance-weighted bounds on validation and test every --eval-every epochs and at the end.
    """
    from rebar_np.data import load_task
    from rebar_np.train import TrainConfig, TrainingDiverged, train as run_training

    if output is None:
        output = os.path.join("runs", f"{model}-{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = TrainConfig(model=model, task=task, n_layer=n_layer, n_hidden=n_hidden, nonlinear=nonlinear,
                      batch_size=batch_size, learning_rate=learning_rate, steps=steps, seed=seed,
                      eval_every=eval_every, eval_samples=eval_samples, report_every=report_every,
                      dtype=dtype, binarization=binarization, temperature=temperature, relaxation=relaxation,
                      output=output, **k_sample_settings(samples, relax_hidden))
    cfg.validate()
    from rebar_np.estimators import K_SAMPLE_ESTIMATORS
    if samples is not None and model not in K_SAMPLE_ESTIMATORS:
        raise ValueError(f"--samples applies to {' and '.join(K_SAMPLE_ESTIMATORS)} only, not {model}")
    if relax_hidden is not None and model != "relax":
        raise ValueError(f"--relax-hidden applies to relax only, not {model}")
    from rebar_np.model import SBN
    SBN(task, n_layer, n_hidden, nonlinear, [0.5, 0.5])  # one-line errors for impossible shapes, before loading data
    data = load_task(task, data_dir, binarization)
    click.echo(f"Training {model} on {task}: {n_layer} {'nonlinear' if nonlinear else 'linear'} layer(s) of "
               f"{n_hidden}, batch {batch_size}, lr {learning_rate:g}, {steps} steps; run folder {output}")
    try:
        result = run_training(cfg, data, log=click.echo, progress=progress)
    except TrainingDiverged as err:
        ckpt = os.path.join(output, "checkpoint.h5")
        kept = f"; last good checkpoint kept at {ckpt}" if os.path.exists(ckpt) else "; no checkpoint was written yet"
        fail(f"training diverged: {err}{kept}", EXIT_DIVERGED)
    if result.checkpoint:
        click.echo(f"Saved {result.checkpoint}")


# --------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------
@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, help="valid, test or train.")
@click.option("--samples", default=100, show_default=True, type=int, help="k of the importance-weighted bound.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=0, type=int, help="Evaluate only the first N examples (0: all).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--progress/--no-progress", default=None)
@user_errors
def eval_cmd(run_dir, split, samples, seed, limit, data_dir, progress):
    """Importance-weighted bound log (1/k sum_i exp f(b_i)) of a saved model on a split.

    Writes the result to RUN_DIR/eval-<split>-<samples>.json.
    """
    import numpy as np
    from rebar_np.checkpoint import load_checkpoint
    from rebar_np.data import load_task
    from rebar_np.model import SBN, check_params
    from rebar_np.train import evaluate

    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoint.h5"))
    cfg = ckpt["config"]
    data = load_task(cfg["task"], data_dir, "fixed")
    mean_x = ckpt["mean_x"] if ckpt["mean_x"] is not None else data["train"].mean(axis=0, dtype=np.float64)
    model = SBN(cfg["task"], cfg["n_layer"], cfg["n_hidden"], cfg["nonlinear"], mean_x)
    check_params(model, ckpt["params"])
    x = data[split][:limit] if limit else data[split]
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    bound = evaluate(model, ckpt["params"], x, samples, seed=seed, progress=show, desc=f"{split} bound")
    seconds = time.perf_counter() - t0
    click.echo(f"{split} bound ({samples} samples, {x.shape[0]} examples, step {ckpt['step']}): {bound:.3f} "
               f"[{seconds:.1f} s]")
    out = os.path.join(run_dir, f"eval-{split}-{samples}.json")
    with open(out, "w") as fh:
        json.dump({"split": split, "samples": samples, "examples": int(x.shape[0]), "step": ckpt["step"],
                   "bound": bound, "seconds": seconds, "seed": seed}, fh, indent=2)


# --------------------------------------------------------------------------
# variance
# --------------------------------------------------------------------------
@main.command()
@click.option("--follow", default="simple_muprop", show_default=True,
              help="Estimator whose gradients train the model (the trajectory every estimator is measured on).")
@click.option("--estimators", default="nvil,simple_muprop,muprop,rebar,dynamic_rebar", show_default=True,
              help="Comma-separated estimators to measure.")
@model_options
@click.option("--steps", default=4200, show_default=True, type=int)
@click.option("--batch-size", default=24, show_default=True, type=int)
@click.option("--learning-rate", default=3e-4, show_default=True, type=float)
@click.option("--temperature", default=0.5, show_default=True, type=float)
@click.option("--relaxation", default="muprop", show_default=True)
@k_sample_options
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--report-every", default=0, show_default=True, type=int, help="Steps between rows; 0: once per epoch.")
@click.option("--checkpoint", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Instead of tracking: freeze the model saved in this run folder and measure each estimator's "
                   "variance from --draws independent draws on one fixed batch, with a 95% interval.")
@click.option("--draws", default=1000, show_default=True, type=int)
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Write the table as JSON here too.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@user_errors
def variance(follow, estimators, task, n_layer, n_hidden, nonlinear, steps, batch_size, learning_rate, temperature,
             relaxation, samples, relax_hidden, seed, report_every, run_dir, draws, output, data_dir):
    """Compare estimators' gradient variance on one optimisation trajectory.

    Prints, per epoch, each estimator's log gradient variance around the common mean
    (EMA moments, SPEC section 4). With --checkpoint: a frozen model and K independent draws.
    """
    import numpy as np
    from rebar_np import estimators as E
    from rebar_np.data import load_task
    from rebar_np.train import TrainConfig
    from rebar_np.variance import measure_variance, track_variance

    names = [n.strip() for n in estimators.split(",") if n.strip()]
    for n in names + [follow]:
        E.get(n)
    settings = TrainConfig(**k_sample_settings(samples, relax_hidden))
    settings.validate()
    if run_dir:
        from rebar_np.checkpoint import load_checkpoint
        from rebar_np.model import SBN
        if draws < 2:
            raise ValueError("draws must be at least 2")
        ck = load_checkpoint(os.path.join(run_dir, "checkpoint.h5"))
        c = ck["config"]
        data = load_task(c["task"], data_dir)
        mean_x = ck["mean_x"] if ck["mean_x"] is not None else data["train"].mean(axis=0, dtype=np.float64)
        model = SBN(c["task"], c["n_layer"], c["n_hidden"], c["nonlinear"], mean_x)
        x = data["train"][np.random.default_rng(seed).choice(data["train"].shape[0], batch_size, replace=False)]
        opts = {n: {k: v for k, v in {"temperature": temperature, "relaxation": relaxation,
                                      "samples": settings.samples, "hidden": settings.relax_hidden}.items()
                    if k in E.get(n).DEFAULT_OPTIONS} for n in names}
        auxes = {n: (ck["aux"] if n == c["model"] else E.get(n).init_aux(model, seed, x.dtype, opts[n]))
                 for n in names}
        table = measure_variance(model, ck["params"], auxes, x, draws, names, opts, seed)
        click.echo(f"{'estimator':<16}{'log variance':>14}{'95% interval':>24}   ({draws} draws, step {ck['step']})")
        for n, r in table.items():
            click.echo(f"{n:<16}{r['log_variance']:>14.3f}   [{r['ci'][0]:8.3f}, {r['ci'][1]:8.3f}]")
        result = {"mode": "draws", "draws": draws, "step": ck["step"], "table": table}
    else:
        cfg = TrainConfig(model=follow, task=task, n_layer=n_layer, n_hidden=n_hidden, nonlinear=nonlinear,
                          batch_size=batch_size, learning_rate=learning_rate, steps=steps, seed=seed,
                          temperature=temperature, relaxation=relaxation, **k_sample_settings(samples, relax_hidden))
        data = load_task(task, data_dir)
        rows = track_variance(cfg, data, names, follow, log=click.echo, report_every=report_every)
        click.echo(f"{'step':>8}" + "".join(f"{n:>15}" for n in dict.fromkeys([follow] + names)))
        for r in rows:
            click.echo(f"{r['step']:>8}" + "".join(f"{r[n]:>15.3f}" for n in dict.fromkeys([follow] + names)))
        result = {"mode": "track", "follow": follow, "rows": rows}
    if output:
        with open(output, "w") as fh:
            json.dump(result, fh, indent=2)
        click.echo(f"wrote {output}")


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------
@main.command()
@click.option("--estimators", default="nvil,simple_muprop,muprop,concrete,rebar,dynamic_rebar", show_default=True)
@model_options
@click.option("--steps", default=20000, show_default=True, type=int, help="Training steps per estimator.")
@click.option("--batch-size", default=24, show_default=True, type=int)
@click.option("--learning-rate", default=3e-4, show_default=True, type=float)
@click.option("--temperature", default=0.5, show_default=True, type=float)
@click.option("--relaxation", default="muprop", show_default=True)
@k_sample_options
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eval-samples", default=100, show_default=True, type=int)
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="Folder for the runs, comparison.json and comparison.png (default: runs/compare-<time>).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--progress/--no-progress", default=None)
@user_errors
def compare(estimators, task, n_layer, n_hidden, nonlinear, steps, batch_size, learning_rate, temperature,
            relaxation, samples, relax_hidden, seed, eval_samples, output, data_dir, progress):
    """Train the same model with several estimators and compare them.

    Writes a table (final train ELBO, validation and test bounds, log gradient variance,
    time) to the console and OUTPUT/comparison.json, and OUTPUT/comparison.png (ELBO
    against steps and wall-clock time) when matplotlib is installed (pip install rebar-np[plot]).
    """
    from rebar_np import estimators as E
    from rebar_np.compare import format_table, plot_comparison, run_comparison
    from rebar_np.data import load_task
    from rebar_np.train import TrainConfig

    names = [n.strip() for n in estimators.split(",") if n.strip()]
    for n in names:
        E.get(n)
    output = output or os.path.join("runs", f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(output, exist_ok=True)
    cfg = TrainConfig(task=task, n_layer=n_layer, n_hidden=n_hidden, nonlinear=nonlinear, batch_size=batch_size,
                      learning_rate=learning_rate, steps=steps, seed=seed, eval_every=0,
                      eval_samples=eval_samples, temperature=temperature, relaxation=relaxation,
                      **k_sample_settings(samples, relax_hidden))
    cfg.validate()
    data = load_task(task, data_dir)
    rows, histories = run_comparison(cfg, data, names, output, log=click.echo, progress=progress)
    click.echo(format_table(rows, eval_samples))
    png = plot_comparison(histories, os.path.join(output, "comparison.png"))
    click.echo(f"wrote {os.path.join(output, 'comparison.json')}"
               + (f" and {png}" if png else " (no plot: matplotlib is not installed; pip install rebar-np[plot])"))


# --------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------
@main.command()
@click.option("--model", default="nvil", show_default=True, help="Estimator to check (or 'all').")
@model_options
@click.option("--n-input", default=16, show_default=True, type=int, help="Pixels of the small random instance.")
@click.option("--batch-size", default=5, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eps", default=1e-6, show_default=True, type=float, help="Central-difference step.")
@click.option("--tol", default=1e-5, show_default=True, type=float, help="Largest relative error that passes.")
@click.option("--all", "check_all", is_flag=True,
              help="Every estimator x task x {linear, nonlinear} x {1, 2, 3} layers (summary lines only).")
@user_errors
def gradcheck(model, task, n_layer, n_hidden, nonlinear, n_input, batch_size, seed, eps, tol, check_all):
    """Check every hand-derived derivative against central finite differences (float64).

    On a small random instance, compares each estimator gradient (model and
    estimator parameters) with finite differences of the estimator's surrogate
    loss, and the relaxed-sample backward of log p. Prints a table
    (tensor, max abs error, max rel error, pass/fail); exits 1 on any failure.
    """
    from rebar_np import estimators as E
    from rebar_np.gradcheck import run_checks

    models = list(E.ESTIMATORS) if model == "all" or check_all else [model]
    for m in models:
        E.get(m)
    if check_all:
        configs = [(m, t, L, nl) for m in models for t in ("sbn", "omni", "sp")
                   for nl in (False, True) for L in (1, 2, 3)]
    else:
        configs = [(m, task, n_layer, nonlinear) for m in models]
    n_fail = 0
    for m, t, L, nl in configs:
        rows = run_checks(m, t, L, n_hidden, nl, n_input=n_input, batch_size=batch_size, seed=seed,
                          eps=eps, tol=tol)
        failed = [r for r in rows if not r.passed]
        n_fail += len(failed)
        title = f"{m}, task {t}, {L} {'nonlinear' if nl else 'linear'} layer(s)"
        worst = max(r.max_rel_err for r in rows)
        if check_all:
            click.echo(f"{'PASS' if not failed else 'FAIL'}  {title}: {len(rows)} tensors, worst rel err {worst:.2e}")
            for r in failed:
                click.echo(f"      {r.tensor}: abs {r.max_abs_err:.3e} rel {r.max_rel_err:.3e}")
            continue
        click.echo(f"{title} (eps {eps:g}, tol {tol:g})")
        click.echo(f"{'tensor':<28}{'max abs err':>14}{'max rel err':>14}  result")
        for r in rows:
            click.echo(f"{r.tensor:<28}{r.max_abs_err:>14.3e}{r.max_rel_err:>14.3e}  {'pass' if r.passed else 'FAIL'}")
    if n_fail:
        click.echo(f"{n_fail} tensor(s) FAILED", err=True)
        sys.exit(1)
    click.echo("all gradients match finite differences")


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
@main.group()
def data():
    """Inspect, prepare and import data sets."""


@data.command("info")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@user_errors
def data_info(data_dir):
    """List the known data sets, where they live and whether they load."""
    from rebar_np.data import dataset_info
    for row in dataset_info(data_dir):
        status = "ok" if row.get("ok") else ("missing" if not row.get("present") else "BROKEN")
        shapes = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in (row.get("shapes") or {}).items())
        click.echo(f"{row['name']:<18}{status:<9}{row['path']}" + (f"  [{shapes}]" if shapes else "")
                   + (f"  {row['error']}" if row.get("error") else ""))


@data.command("prepare")
@click.option("--raw-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with binarized_mnist_{train,valid,test}.amat (default: ../shared/data next to the repo).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@user_errors
def data_prepare(raw_dir, data_dir):
    """Rebuild the shipped binarized MNIST file from the canonical .amat text files."""
    from pathlib import Path
    from rebar_np.data import data_dir as default_dir, prepare_binarized_mnist
    root = Path(data_dir) if data_dir else default_dir()
    raw = Path(raw_dir) if raw_dir else Path(__file__).resolve().parent.parent / "shared" / "data"
    out = root / "binarized_mnist.h5"
    prepare_binarized_mnist(raw, out)
    click.echo(f"wrote {out}")


@data.command("import")
@click.argument("dataset")
@click.argument("path", type=click.Path())
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--seed", default=5, show_default=True, type=int,
              help="Omniglot: binarization seed (5 and --shuffle-seed 123 reproduce the TF reference's split).")
@click.option("--shuffle-seed", default=123, show_default=True, type=int,
              help="Omniglot: seed of the permutation whose last 1,345 training images become validation.")
@user_errors
def data_import(dataset, path, data_dir, seed, shuffle_seed):
    """Import a local raw data set: `mnist-grey DIR` (the IDX .gz files) or `omniglot chardata.mat`."""
    from rebar_np.data import import_mnist_grey, import_omniglot
    if dataset == "mnist-grey":
        out = import_mnist_grey(path, data_dir)
    elif dataset == "omniglot":
        out = import_omniglot(path, data_dir, seed=seed, shuffle_seed=shuffle_seed)
    else:
        raise ValueError(f"unknown data set {dataset!r}; choose mnist-grey or omniglot")
    click.echo(f"imported {dataset} into {out}")


@data.command("download")
@click.argument("dataset")
@click.option("--url", default=None, help="Base URL to download from (default: the usual public MNIST mirror).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@user_errors
def data_download(dataset, url, data_dir):
    """Download grey-level MNIST (`mnist-grey`), verify its checksums and import it."""
    import tempfile
    from rebar_np.data import DEFAULT_MNIST_URL, download_mnist_grey
    if dataset != "mnist-grey":
        raise ValueError(f"only mnist-grey can be downloaded; got {dataset!r}")
    with tempfile.TemporaryDirectory() as tmp:
        out = download_mnist_grey(url or DEFAULT_MNIST_URL, tmp, data_dir=data_dir)
    click.echo(f"downloaded and imported mnist-grey into {out}")


if __name__ == "__main__":
    main()
