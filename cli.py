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
        from rebar_np.device import DeviceError
        from rebar_np.estimators import EstimatorError
        from rebar_np.model import ModelError
        try:
            return fn(*args, **kwargs)
        except (ModelError, EstimatorError, DataError, CheckpointError, DeviceError, ValueError, OSError) as err:
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
def model_options(fn=None, *, n_hidden=200):
    """The architecture options; ``@model_options(n_hidden=8)`` changes the width's default."""
    if fn is None:
        return lambda f: model_options(f, n_hidden=n_hidden)
    opts = [
        click.option("--task", default="sbn", show_default=True,
                     help="sbn (binarized MNIST), omni (Omniglot) or sp (MNIST top half -> bottom half)."),
        click.option("--n-layer", default=2, show_default=True, type=int, help="Stochastic layers."),
        click.option("--n-hidden", default=n_hidden, show_default=True, type=int, help="Units per stochastic layer."),
        click.option("--nonlinear/--linear", default=False, show_default=True,
                     help="Transforms between layers: one dense layer, or dense-tanh x2 then dense."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def k_sample_options(fn):
    """--samples (K-sample estimators) and --relax-hidden (relax): settings of the issue-8 estimators."""
    opts = [
        click.option("--samples", default=5, show_default=True, type=int,
                     help="vimco, reinforce_loo: samples K per example; they optimise the K-sample "
                          "bound, and K multiplies the compute per step, not the batch."),
        click.option("--relax-hidden", default=32, show_default=True, type=int,
                     help="relax: width of its control network r."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def estimator_options(fn):
    """The training set-up every command that trains shares: batch, the REBAR family's
    temperature and relaxation, the K-sample and relax settings, the learning rate."""
    opts = [
        click.option("--batch-size", default=24, show_default=True, type=int),
        click.option("--temperature", default=0.5, show_default=True, type=float,
                     help="REBAR family: the fixed (rebar) or initial (dynamic_rebar) temperature lambda."),
        click.option("--relaxation", default="muprop", show_default=True,
                     help="REBAR family: muprop (sigma(z/lam + a lam/(lam+1)), the paper's default) or concrete "
                          "(sigma(z/lam))."),
        k_sample_options,
        click.option("--learning-rate", default=3e-4, show_default=True, type=float,
                     help="Adam learning rate of the model; baselines and control variates use 10x."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@click.option("--model", default="dynamic_rebar", show_default=True,
              help="Gradient estimator: reinforce, nvil, simple_muprop, muprop, concrete, rebar, dynamic_rebar, "
                   "relax, arm, disarm, vimco or reinforce_loo.")
@model_options
@estimator_options
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
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda: the parameters, optimizer state and each epoch's data stay in GPU memory "
                   "(numba.cuda; estimators reinforce, nvil, concrete, rebar, dynamic_rebar). Noise is drawn on "
                   "the host, so a run's samples do not depend on the device.")
@click.option("--joint/--per-layer", default=False, show_default=True,
              help="REBAR family: one control variate with every layer relaxed (the reference's quadratic=False) "
                   "instead of one per layer.")
@click.option("--beta2", default=0.99999, show_default=True, type=float, help="Adam beta2 (both optimizers).")
@click.option("--checkpoint-every", default=0, show_default=True, type=int,
              help="Steps between checkpoints; 0: at the end of every epoch. Also written at the end and on Ctrl-C.")
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="Run folder: config.json, metrics.h5, checkpoint.h5, status.json "
                   "(default: runs/<model>-<task>-<time>). Must not hold another run.")
@click.option("--resume", default=None, type=click.Path(file_okay=False),
              help="Continue the run in this folder from its checkpoint, exactly as if it had not stopped. Only "
                   "--steps, --eval-every, --eval-samples, --report-every, --checkpoint-every and --device may change.")
@click.option("--hparams", default=None,
              help="The TF reference's hparams string, e.g. \"model=SBNDynamicRebar,learning_rate=0.0003,n_layer=2\" "
                   "(keys it does not name keep this command's defaults; see rebar_np/hparams.py).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="Start from the settings in this JSON file (e.g. another run's config.json); flags override it.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the prepared data files (default: the package's data/ or $REBAR_NP_DATA_DIR; "
                   "on --resume, the run's own).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@user_errors
def train(model, task, n_layer, n_hidden, nonlinear, batch_size, temperature, relaxation, samples, relax_hidden,
          learning_rate, steps, seed, eval_every, eval_samples, report_every, binarization, dtype, device, joint,
          beta2, checkpoint_every, output, resume, hparams, config_file, data_dir, progress):
    """Train an SBN with one gradient estimator.

    Prints one line per epoch ("Step N: train ELBO ..., log grad var ...") and the
    importance-weighted bounds on validation and test every --eval-every epochs and at the end.
    Ctrl-C stops after the current step and saves a checkpoint; --resume continues it.

    On the CPU the step's big products run in two blocks that two cores can share; the run
    times one core against two now and then and keeps the faster (the numbers are the same
    either way; report lines say which). NUMBA_NUM_THREADS=1 keeps it on one core.
    """
    from rebar_np.data import load_task
    from rebar_np.train import StopFlag, TrainingDiverged, train as run_training
    from rebar_np import rundir

    ctx = click.get_current_context()
    given = {n: ctx.params[n] for n in TRAIN_SETTINGS
             if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE}
    if resume:
        if hparams or config_file:
            raise ValueError("--resume continues a run with its own settings; it takes no --hparams or --config")
        if output and os.path.abspath(output) != os.path.abspath(resume):
            raise ValueError("--output and --resume name different folders; a resumed run stays in its folder")
        cfg, record = rundir.resume_config(resume, given)
        data_dir = data_dir or record["data"]["dir"]
    else:
        cfg, record = new_train_config({n: ctx.params[n] for n in TRAIN_SETTINGS}, given, hparams, config_file,
                                       output), None
    from rebar_np.estimators import K_SAMPLE_ESTIMATORS
    if "samples" in given and cfg.model not in K_SAMPLE_ESTIMATORS:
        raise ValueError(f"--samples applies to {' and '.join(K_SAMPLE_ESTIMATORS)} only, not {cfg.model}")
    if "relax_hidden" in given and cfg.model != "relax":
        raise ValueError(f"--relax-hidden applies to relax only, not {cfg.model}")
    from rebar_np.model import SBN
    SBN(cfg.task, cfg.n_layer, cfg.n_hidden, cfg.nonlinear, [0.5, 0.5])  # one-line errors before loading data
    data = load_task(cfg.task, data_dir, cfg.binarization)
    ckpt = None
    if resume:
        rundir.check_data(record, data, resume)
        ckpt = rundir.load_resume_checkpoint(cfg)
        for change in rundir.environment_changes(record):
            click.echo(f"Warning: {change} since the run started; the continuation may differ in the last bits "
                       "from an uninterrupted run", err=True)
        if ckpt is not None and ckpt["step"] == cfg.steps and "pending_row" not in (ckpt["train_state"] or {}):
            click.echo(f"The run in {resume} is already finished (step {cfg.steps}); nothing to do")
            return
    recorder = rundir.recorder_for(cfg, data, data_dir, record)
    what = (f"{cfg.model} on {cfg.task}: {cfg.n_layer} {'nonlinear' if cfg.nonlinear else 'linear'} layer(s) of "
            f"{cfg.n_hidden}, batch {cfg.batch_size}, lr {cfg.learning_rate:g}, {cfg.steps} steps; run folder "
            f"{cfg.output}")
    if ckpt is not None:
        click.echo(f"Resuming {what}, from step {ckpt['step']}")
    else:
        click.echo(f"{'Restarting' if resume else 'Training'} {what}")
    # Ctrl-C, SIGTERM and SIGHUP stop the run between two steps (rebar_np.train.StopFlag); a third ends the
    # process at once. Once the run has stopped, the handler stays until the process has exited (which
    # takes the better part of a second): a Ctrl-C then is acknowledged instead of raising mid-exit.
    stop = StopFlag(exit_code=EXIT_INTERRUPTED)
    try:
        result = run_training(cfg, data, log=click.echo, progress=progress, resume=ckpt, recorder=recorder,
                              stop=stop)
    except KeyboardInterrupt:
        if rundir.checkpoint_step(cfg.output) is not None:
            click.echo(f"Continue it with: rebar-np train --resume {cfg.output}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except TrainingDiverged as err:
        stop.restore()
        step = rundir.checkpoint_step(cfg.output)
        kept = (f"; last good checkpoint kept at {os.path.join(cfg.output, rundir.CHECKPOINT)} (step {step})"
                if step is not None else "; no checkpoint was written yet")
        fail(f"training diverged: {err}{kept}", EXIT_DIVERGED)
    except BaseException:
        stop.restore()
        raise
    stop.restore()
    if result.checkpoint:
        click.echo(f"Saved {result.checkpoint}")


# TrainConfig settings that are options of `train` (the rest keep their defaults, or come from --config)
TRAIN_SETTINGS = ("model", "task", "n_layer", "n_hidden", "nonlinear", "batch_size", "temperature", "relaxation",
                  "samples", "relax_hidden", "learning_rate", "steps", "seed", "eval_every", "eval_samples", "report_every", "binarization",
                  "dtype", "device", "joint", "beta2", "checkpoint_every")


def new_train_config(options, given, hparams, config_file, output):
    """The TrainConfig of a new run: defaults, then --config's settings, then --hparams, then the flags
    given on the command line (a flag and an hparams key for the same setting is an error)."""
    from dataclasses import asdict
    from rebar_np import rundir
    from rebar_np.hparams import hparams_settings
    settings = dict(options)
    if config_file:
        settings.update({k: v for k, v in asdict(rundir.config_from_record(
            rundir.read_json(config_file, "settings file"), config_file)).items() if k != "output"})
    if hparams:
        from_hparams = hparams_settings(hparams)
        clash = sorted(set(from_hparams) & set(given))
        if clash:
            raise ValueError(f"--{clash[0].replace('_', '-')} and --hparams both set {clash[0]}; give it once")
        settings.update(from_hparams)
    settings.update(given)
    if output is None:
        stem = os.path.join("runs", f"{settings['model']}-{settings['task']}-{time.strftime('%Y%m%d-%H%M%S')}")
        output, n = stem, 1
        while os.path.exists(output):
            n += 1
            output = f"{stem}-{n}"
    rundir.refuse_existing_run(output)
    from rebar_np.train import TrainConfig
    cfg = TrainConfig(**settings, output=output)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------
@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, help="valid, test or train.")
@click.option("--samples", default=100, show_default=True, type=int,
              help="k of the importance-weighted bound (the paper's final numbers use 5000).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=0, type=int, help="Evaluate only the first N examples (0: all).")
@click.option("--chunk-rows", default=None, type=int,
              help="(example, sample) rows evaluated at once per thread [default: 2000 on the CPU, "
                   "small enough to stay in the caches; 131072 on a GPU].")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the data files (default: the run's own).")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda to evaluate on the GPU.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@user_errors
def eval_cmd(run_dir, split, samples, seed, limit, chunk_rows, data_dir, device, progress):
    """Importance-weighted bound log (1/k sum_i exp f(b_i)) of a saved model on a split.

    Writes the result (mean bound, its standard error over examples, step) to
    RUN_DIR/eval-<split>-<samples>.json.
    """
    from rebar_np.evaluation import final_bound

    show = sys.stderr.isatty() if progress is None else progress
    r = final_bound(run_dir, split, samples, seed, limit, data_dir, chunk_rows, show, device)
    err = f" +- {r['stderr']:.3f}" if r["stderr"] is not None else ""
    click.echo(f"{split} bound ({samples} samples, {r['examples']} examples, step {r['step']}): {r['bound']:.3f}"
               f"{err} [{r['seconds']:.1f} s]")
    click.echo(f"wrote {os.path.join(run_dir, f'eval-{split}-{samples}.json')}")


# --------------------------------------------------------------------------
# plot, samples
# --------------------------------------------------------------------------
@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="PNG to write (default: RUN_DIR/metrics.png for one run, plot.png here for several).")
@user_errors
def plot(run_dirs, output):
    """Train ELBO, validation bound, log gradient variance and temperature of one or several runs,
    against training steps and wall-clock time, to a PNG (needs matplotlib: pip install 'rebar-np[plot]').
    Works while the runs are still training."""
    from rebar_np.plots import plot_runs
    output = output or (os.path.join(run_dirs[0], "metrics.png") if len(run_dirs) == 1 else "plot.png")
    click.echo(f"wrote {plot_runs(list(run_dirs), output)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_images", default=64, show_default=True, type=int, help="Images in each grid.")
@click.option("--split", default="test", show_default=True, help="Split whose images are reconstructed.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="PNG to write (default: RUN_DIR/samples.png).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the data files (default: the run's own).")
@user_errors
def samples(run_dir, n_images, split, seed, output, data_dir):
    """A grid of images generated by the run's model (pixel probabilities of ancestral samples)
    and a grid of reconstructions of SPLIT images (needs matplotlib)."""
    from rebar_np.evaluation import SPLITS, load_run
    from rebar_np.plots import draw_samples, pyplot
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    pyplot()   # the missing-matplotlib message before any work
    model, ckpt, data = load_run(run_dir, data_dir)
    output = output or os.path.join(run_dir, "samples.png")
    title = f"{ckpt['config']['model']} on {ckpt['config']['task']}, step {ckpt['step']}"
    click.echo(f"wrote {draw_samples(model, ckpt['params'], data[split], output, n_images, seed, title)}")


# --------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------
@main.command()
@click.argument("grid", type=click.Path())
@click.option("--workers", default=None, type=int,
              help="Runs at a time (default: the grid's `workers`, else the number of CPU cores).")
@click.option("--engine", default=None, type=click.Choice(["local", "dask"]),
              help="local: one process per run on this machine; dask: tasks of a Dask cluster "
                   "(pip install 'rebar-np[cluster]'). Default: the grid's `engine`, else local.")
@click.option("--scheduler", default=None,
              help="Dask: address of an existing cluster's scheduler (default: a local cluster of --workers).")
@click.option("--report", "report_only", is_flag=True, help="Only gather the finished runs into the table.")
@click.option("--paper", is_flag=True, help="Also print the paper's layout (estimators as columns).")
@click.option("--dry-run", is_flag=True, help="List the runs and what running the sweep would do to each.")
@user_errors
def sweep(grid, workers, engine, scheduler, report_only, paper, dry_run):
    """Run a grid of training runs (estimators x architectures x tasks x learning rates x seeds)
    described in GRID (a TOML file; see rebar_np/sweep.py), or, with --report, tabulate them.

    Finished runs are skipped, unfinished ones resumed exactly, missing ones started; then the
    report: for each cell, the learning rate with the best validation bound and its train ELBO at
    the end, bounds and seeds (also OUTPUT/report.json and report.csv). GRID may also be the sweep's
    folder (it holds a copy of the grid file).
    """
    from rebar_np import sweep as S
    g = S.load_grid(grid)
    specs = S.expand(g)
    workers = workers or g.workers
    jobs, failed = [], {}
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not report_only:
        if dry_run:
            for spec in specs:
                state, step = S.run_state(spec)
                click.echo(f"{state + (f' (step {step})' if step else ''):<22}{spec.dir}")
            return
        S.copy_grid(g)
        jobs, finished = S.plan(g, specs)
        click.echo(f"Sweep {g.output}: {len(specs)} runs, {len(finished)} finished, {len(jobs)} to run, "
                   f"{workers} at a time ({engine or g.engine})")
        if jobs:
            t0 = time.perf_counter()
            if (engine or g.engine) == "dask":
                out = S.run_dask(jobs, workers, scheduler, log=click.echo)
            else:
                out = S.run_local(jobs, workers, log=click.echo)
            failed = {n: c for n, c in out["codes"].items() if c != 0}
            click.echo(f"{len(jobs)} run(s) done in {time.perf_counter() - t0:.0f} s"
                       + (f", up to {out['peak']} at once" if "peak" in out else ""))
    rows, n_done = S.report_rows(g, specs)
    cell_keys = [k for k in g.axes if k not in ("learning_rate", "seed")]
    click.echo(f"{n_done} of {len(specs)} runs finished; best learning rate per cell by validation bound:")
    click.echo(S.format_report(rows, cell_keys))
    if paper:
        click.echo(S.format_paper_table(rows, cell_keys))
    S.write_report(g, rows)
    if failed:
        for n, c in failed.items():
            click.echo(f"run {n} {'diverged' if c == 3 else 'failed'} (exit {c}); see "
                       f"{os.path.join(g.output, n, 'train.log')}", err=True)
        sys.exit(1)


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
@estimator_options
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
    settings = TrainConfig(samples=samples, relax_hidden=relax_hidden)
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
                          temperature=temperature, relaxation=relaxation, samples=samples, relax_hidden=relax_hidden)
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
@estimator_options
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
                      samples=samples, relax_hidden=relax_hidden)
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
@model_options(n_hidden=8)
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
