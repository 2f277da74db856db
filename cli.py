"""The rebar-np command line: train, eval, gradcheck, data.

Every user error (unknown names, impossible shapes, missing or corrupted
files) is reported as one line on stderr with exit code 2; a run that
diverges (NaN/inf) stops with exit code 3 and keeps its last good checkpoint.
"""
import functools
import json
import os
import signal
import sys
import threading
import time
import warnings

import click

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def fail(message, code=EXIT_USAGE):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line(err):
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def user_errors(fn):
    """Turn the package's own error types into one line and exit code 2 (an OSError as
    "strerror: file", e.g. "No space left on device: runs/x/checkpoint.h5"), and the package's
    warnings (a checkpoint without checksum) into one "Warning: ..." line each."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rebar_np.training.checkpoint import CheckpointError, CheckpointWarning, os_error_text
        from rebar_np.data import DataError
        from rebar_np.kernels.dispatch import DeviceError
        from rebar_np.estimators import EstimatorError
        from rebar_np.model.sbn import ModelError

        def show(message, category, *rest, **kw):
            if issubclass(category, CheckpointWarning):
                click.echo(f"Warning: {one_line(message)}", err=True)
            else:
                shown(message, category, *rest, **kw)
        try:
            with warnings.catch_warnings():          # puts showwarning back afterwards
                shown = warnings.showwarning
                warnings.showwarning = show
                return fn(*args, **kwargs)
        except BrokenPipeError:
            reader_went_away()
        except OSError as err:
            fail(os_error_text(err))
        except (ModelError, EstimatorError, DataError, CheckpointError, DeviceError, ValueError) as err:
            fail(one_line(err))
        except KeyboardInterrupt:
            ignore_stop_signals()
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
    return wrapper


def ignore_stop_signals():
    """The command is exiting because it was stopped: from now on SIGINT, SIGTERM and SIGHUP are
    ignored. Interpreter shutdown puts every Python-level handler back to the default one (an
    ignored signal it leaves ignored), so a second Ctrl-C during the exit, which takes the better
    part of a second, would otherwise end the process by SIGINT instead of exit status 130."""
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def reader_went_away():
    """stdout's reader closed the pipe (`rebar-np sweep FILE --dry-run | head`): as Unix tools do, stop
    quietly with success; further writes (Python's flush at exit included) go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


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
            ignore_stop_signals()
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
    Check math:     rebar-np gradcheck --all;  rebar-np unbiased --model rebar --n-layer 2
    Data:           rebar-np data info
    """


# --------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------
def not_empty(ctx, param, value):
    """Refuse "" for a path option: `--output "$DIR"` with DIR unset must not mean "nowhere"."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty (an unset shell variable?); give a path")
    return value


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
@click.option("--condition-above", is_flag=True,
              help="rebar, dynamic_rebar per layer: reproduce the TF reference's quadratic=True, whose conditional "
                   "path lets every layer above the switch layer carry its conditional derivative too. BIASED "
                   "from two stochastic layers up (rebar-np unbiased shows it); for comparisons only.")
@click.option("--beta2", default=0.99999, show_default=True, type=float, help="Adam beta2 (both optimizers).")
@click.option("--checkpoint-every", default=0, show_default=True, type=int,
              help="Steps between checkpoints; 0: at the end of every epoch. Also written at the end and on Ctrl-C.")
@click.option("--output", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Run folder: config.json, metrics.h5, checkpoint.h5, status.json "
                   "(default: runs/<model>-<task>-<time>). Must not hold another run.")
@click.option("--resume", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Continue the run in this folder from its checkpoint, exactly as if it had not stopped. Only "
                   "--steps, --eval-every, --eval-samples, --report-every, --checkpoint-every and --device may change.")
@click.option("--hparams", default=None,
              help="The TF reference's hparams string, e.g. \"model=SBNDynamicRebar,learning_rate=0.0003,n_layer=2\" "
                   "(keys it does not name keep this command's defaults; see rebar_np/training/hparams.py).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="Start from the settings in this JSON file (e.g. another run's config.json); flags override it.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder with the prepared data files (default: the package's data/ or $REBAR_NP_DATA_DIR; "
                   "on --resume, the run's own).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@user_errors
def train(model, task, n_layer, n_hidden, nonlinear, batch_size, temperature, relaxation, samples, relax_hidden,
          learning_rate, steps, seed, eval_every, eval_samples, report_every, binarization, dtype, device, joint,
          condition_above, beta2, checkpoint_every, output, resume, hparams, config_file, data_dir, progress):
    """Train an SBN with one gradient estimator.

    Prints one line per epoch ("Step N: train ELBO ..., log grad var ...") and the
    importance-weighted bounds on validation and test every --eval-every epochs and at the end.
    Ctrl-C stops after the current step and saves a checkpoint; --resume continues it.

    On the CPU the step's big products run in two blocks that two cores can share; the run
    times one core against two now and then and keeps the faster (the numbers are the same
    either way; report lines say which). NUMBA_NUM_THREADS=1 keeps it on one core.
    """
    from rebar_np.data import load_task
    from rebar_np.training.train import StopFlag, TrainingDiverged, train as run_training
    from rebar_np.training import rundir

    # Every check comes before the first line is printed and before the run folder is made.
    ctx = click.get_current_context()
    given = {n: ctx.params[n] for n in TRAIN_SETTINGS
             if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE}
    if resume:
        if hparams or config_file:
            raise ValueError("--resume continues a run with its own settings; it takes no --hparams or --config")
        if output and os.path.abspath(output) != os.path.abspath(resume):
            raise ValueError("--output and --resume name different folders; a resumed run stays in its folder")
        cfg, record = rundir.resume_config(resume, given)
        labels = {**rundir.file_labels(os.path.join(resume, rundir.CONFIG), record), **flag_labels(given)}
        data_dir = data_dir or record["data"]["dir"]
    else:
        (cfg, labels), record = new_train_config({n: ctx.params[n] for n in TRAIN_SETTINGS}, given, hparams,
                                                 config_file, output), None
    from rebar_np.estimators import K_SAMPLE_ESTIMATORS
    if "samples" in given and cfg.model not in K_SAMPLE_ESTIMATORS:
        raise ValueError(f"--samples applies to {' and '.join(K_SAMPLE_ESTIMATORS)} only, not {cfg.model}")
    if "relax_hidden" in given and cfg.model != "relax":
        raise ValueError(f"--relax-hidden applies to relax only, not {cfg.model}")
    from rebar_np.model.sbn import SBN
    SBN(cfg.task, cfg.n_layer, cfg.n_hidden, cfg.nonlinear, [0.5, 0.5])  # one-line errors before loading data
    data = load_task(cfg.task, data_dir, cfg.binarization)
    n_train = data["train"].shape[0]
    if cfg.batch_size > n_train:
        raise ValueError(f"{labels.get('batch_size', '--batch-size')} {cfg.batch_size} is larger than the training "
                         f"set ({n_train} examples)")
    ckpt = None
    if resume:
        rundir.check_data(record, data, resume)
        ckpt = rundir.load_resume_checkpoint(cfg)
        before = rundir.read_status(resume) or {}
        if before.get("state") in ("stopped", "failed"):
            click.echo(f"Note: the last process training this run {before['state']}: "
                       f"{before.get('message') or 'no message'}", err=True)
        for change in rundir.environment_changes(record):
            click.echo(f"Warning: {change} since the run started; the continuation may differ in the last bits "
                       "from an uninterrupted run", err=True)
        if ckpt is not None and ckpt["step"] == cfg.steps and "pending_row" not in (ckpt["train_state"] or {}):
            click.echo(f"The run in {resume} is already finished (step {cfg.steps}); nothing to do")
            return
    recorder = rundir.recorder_for(cfg, data, data_dir, record)
    if cfg.condition_above and cfg.n_layer > 1:
        click.echo("Warning: --condition-above (the TF reference's quadratic=True) is a biased estimator from two "
                   "layers up; see docs/math.md and rebar-np unbiased --condition-above", err=True)
    what = (f"{cfg.model} on {cfg.task}: {cfg.n_layer} {'nonlinear' if cfg.nonlinear else 'linear'} layer(s) of "
            f"{cfg.n_hidden}, batch {cfg.batch_size}, lr {cfg.learning_rate:g}, {cfg.steps} steps; run folder "
            f"{cfg.output}")
    if ckpt is not None:
        click.echo(f"Resuming {what}, from step {ckpt['step']}")
    else:
        click.echo(f"{'Restarting' if resume else 'Training'} {what}")
    # Ctrl-C, SIGTERM and SIGHUP stop the run between two steps (rebar_np.training.train.StopFlag); a third ends the
    # process at once. Once the run has stopped, the handler stays until the process has exited (which
    # takes the better part of a second): a Ctrl-C then is acknowledged instead of raising mid-exit.
    stop = StopFlag(exit_code=EXIT_INTERRUPTED)
    try:
        result = run_training(cfg, data, log=click.echo, progress=progress, resume=ckpt, recorder=recorder,
                              stop=stop)
    except KeyboardInterrupt:
        ignore_stop_signals()
        if rundir.checkpoint_step(cfg.output) is not None:
            click.echo(f"Continue it with: rebar-np train --resume {cfg.output}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except TrainingDiverged as err:
        stop.restore()
        step = rundir.checkpoint_step(cfg.output)
        kept = (f"; last good checkpoint kept at {os.path.join(cfg.output, rundir.CHECKPOINT)} (step {step})"
                if step is not None else "; no checkpoint was written yet")
        fail(f"training diverged: {err}{kept}", EXIT_DIVERGED)
    except OSError as err:           # a full disk, say: what failed, and what the run still has
        stop.restore()
        from rebar_np.training.checkpoint import CheckpointError, os_error_text
        try:
            step = rundir.checkpoint_step(cfg.output) if cfg.output else None
        except CheckpointError:
            step = None
        kept = (f"; the last checkpoint (step {step}) is kept, continue with --resume {cfg.output}"
                if step is not None else "; no checkpoint was written yet")
        fail(f"{os_error_text(err)}{kept}")
    except BaseException:
        stop.restore()
        raise
    stop.restore()
    if result.checkpoint:
        click.echo(f"Saved {result.checkpoint}")


# TrainConfig settings that are options of `train` (the rest keep their defaults, or come from --config)
TRAIN_SETTINGS = ("model", "task", "n_layer", "n_hidden", "nonlinear", "batch_size", "temperature", "relaxation",
                  "samples", "relax_hidden", "learning_rate", "steps", "seed", "eval_every", "eval_samples",
                  "report_every", "binarization", "dtype", "device", "joint", "condition_above", "beta2",
                  "checkpoint_every")


def flag_labels(names):
    """How errors name settings given as flags: "--n-layer"."""
    return {n: "--" + n.replace("_", "-") for n in names}


def new_train_config(options, given, hparams, config_file, output):
    """(cfg, labels): the TrainConfig of a new run: defaults, then --config's settings, then --hparams, then
    the flags given on the command line (a flag and an hparams key for the same setting is an error); and how
    errors name each setting: as the flag, "--hparams: <key>" or "<config file>: <key>", after where it came
    from. Every value goes through TrainConfig.validate; the run folder must be one that can be made."""
    from rebar_np.training import rundir
    from rebar_np.training.hparams import hparams_labels, hparams_settings
    settings, labels = dict(options), flag_labels(options)
    if config_file:
        from_file = rundir.settings_from_record(rundir.read_json(config_file, "settings file"), config_file)
        settings.update(from_file)
        labels.update(rundir.file_labels(config_file, from_file))
    if hparams:
        from_hparams = hparams_settings(hparams)
        clash = sorted(set(from_hparams) & set(given))
        if clash:
            raise ValueError(f"--{clash[0].replace('_', '-')} and --hparams both set {clash[0]}; give it once")
        settings.update(from_hparams)
        labels.update(hparams_labels(from_hparams))
    settings.update(given)
    labels.update(flag_labels(given))
    from rebar_np.training.train import TrainConfig
    cfg = TrainConfig(**settings)
    cfg.validate(labels)
    if output is None:
        stem = os.path.join("runs", f"{cfg.model}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}")
        output, n = stem, 1
        while os.path.exists(output):
            n += 1
            output = f"{stem}-{n}"
        check_output_folder(output, "the run folder")
    else:
        check_output_folder(output, "--output")
    rundir.refuse_existing_run(output)
    cfg.output = output
    return cfg, labels


# --------------------------------------------------------------------------
# Where the commands other than train write: checked before any work, so that a result is
# never computed only to be lost to a bad path
# --------------------------------------------------------------------------
def check_positive(**options):
    """One line naming the first of the integer options (name=value) that is below 1."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def instance_floats(n_layer, n_hidden, nonlinear, n_input, rows):
    """Floats of a small random instance (gradcheck, unbiased): its parameters (q and p: an input
    matrix each, a square one per further layer, three per transform when nonlinear) and one pass's
    values per example row (every layer's units and the pixels)."""
    params = (2 * n_input * n_hidden + 2 * (n_layer - 1) * n_hidden ** 2) * (3 if nonlinear else 1)
    return params, rows * (n_input + n_layer * n_hidden)


def check_fits_in_memory(need, sizes):
    """One line naming the size option (sizes: name -> (value, default)) furthest above its default
    when `need` bytes are more than this machine's memory (train.too_big, as train's check_memory)."""
    from rebar_np.training.train import too_big
    found = too_big(need, sizes)
    if found is None:
        return
    culprit, have = found
    listed = ", ".join(f"{n} {v}" for n, (v, _) in sizes.items())
    raise ValueError(f"--{culprit} must be smaller: {listed} need about {need / 2 ** 30:,.0f} GiB of memory, "
                     f"this machine has {have / 2 ** 30:,.0f} GiB")


def check_writable_folder(folder, what):
    """Create and remove a file in folder: the one test that answers for permissions (root's included)
    and read-only file systems alike. A disk that fills later is caught when writing (the result is
    printed first)."""
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
    except OSError as e:
        raise ValueError(f"{what}: cannot write in {folder} ({e.strerror or one_line(e)})") from None
    os.close(fd)
    os.remove(probe)


def check_output_file(path, option="--output"):
    """A file that this command can write: not empty, not a folder, in an existing, writable folder."""
    if path is None:
        return
    if not path.strip():
        raise ValueError(f"{option} is empty; give a file name")
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    check_writable_folder(folder, f"{option} {path}")


def check_figure_file(path, option="--output"):
    """check_output_file for a figure, whose extension must also name a format it can be drawn in."""
    from rebar_np.experiments.plots import figure_format
    if path is not None:
        figure_format(path, option)
    check_output_file(path, option)


def check_output_folder(path, option="--output"):
    """A folder that this command can create or write in: not empty, not a file, and its nearest
    existing ancestor writable (the folder itself is created only when the work starts)."""
    if not path.strip():
        raise ValueError(f"{option} is empty; give a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    check_writable_folder(existing, f"{option} {path}")


# --------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------
@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, help="valid, test or train.")
@click.option("--samples", default=100, show_default=True, type=int,
              help="k of the importance-weighted bound (the paper's final numbers use 5000).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=0, type=int,
              help="Evaluate only the first N examples (0: all); written to eval-<split>-<samples>-first<N>.json.")
@click.option("--chunk-rows", default=None, type=int,
              help="(example, sample) rows evaluated at once per thread [default: 2000 on the CPU, "
                   "small enough to stay in the caches; 131072 on a GPU].")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder with the data files (default: the run's own).")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda to evaluate on the GPU.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@user_errors
def eval_cmd(run_dir, split, samples, seed, limit, chunk_rows, data_dir, device, progress):
    """Importance-weighted bound log (1/k sum_i exp f(b_i)) of a saved model on a split.

    Writes the result (mean bound, its standard error over examples, step) to
    RUN_DIR/eval-<split>-<samples>.json, or, with --limit N, to eval-<split>-<samples>-firstN.json
    (a partial evaluation never replaces a full one). The result is printed before it is written.
    """
    from rebar_np.evaluation.final import final_bound
    from rebar_np.training.rundir import write_json
    from rebar_np.training.train import StopBetweenSteps, StopFlag

    if os.path.isdir(run_dir):   # a missing folder is reported by final_bound ("no checkpoint")
        check_writable_folder(run_dir, f"run folder {run_dir} (eval writes its result there)")
    show = sys.stderr.isatty() if progress is None else progress
    # Ctrl-C, SIGTERM (a scheduler's stop) and SIGHUP end the evaluation after its current pass, with one line
    stop = StopFlag(plan="stopping the evaluation after its current pass (nothing is written)",
                    again="at most a pass away", exit_code=EXIT_INTERRUPTED)
    t0 = time.perf_counter()
    try:
        r, path = final_bound(run_dir, split, samples, seed, limit, data_dir, chunk_rows, show, device,
                              write=False, stop=stop)
    except StopBetweenSteps:
        ignore_stop_signals()
        fail(f"interrupted ({stop.signal_name}) after {time.perf_counter() - t0:.0f} s of the {split} bound; "
             f"nothing was written (an evaluation starts over: run the same command again)", EXIT_INTERRUPTED)
    err = f" +- {r['stderr']:.3f}" if r["stderr"] is not None else ""
    click.echo(f"{split} bound ({samples} samples, {r['examples']} examples, step {r['step']}): {r['bound']:.3f}"
               f"{err} [{r['seconds']:.1f} s]")
    try:
        write_json(path, r)
    except OSError as e:
        fail(f"could not write {path} ({e.strerror or one_line(e)}); the result is printed above")
    click.echo(f"wrote {path}")


# --------------------------------------------------------------------------
# plot, samples
# --------------------------------------------------------------------------
@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--output", default=None, type=click.Path(dir_okay=False), callback=not_empty,
              help="PNG to write (default: RUN_DIR/metrics.png for one run, plot.png here for several).")
@user_errors
def plot(run_dirs, output):
    """Train ELBO, validation bound, log gradient variance and temperature of one or several runs,
    against training steps and wall-clock time, to a PNG (needs matplotlib: pip install 'rebar-np[plot]').
    Works while the runs are still training."""
    from rebar_np.experiments.plots import plot_runs
    check_figure_file(output)
    output = output or (os.path.join(run_dirs[0], "metrics.png") if len(run_dirs) == 1 else "plot.png")
    if os.path.isdir(os.path.dirname(os.path.abspath(output))):   # else plot_runs says what is missing
        check_output_file(output, "the plot")
    click.echo(f"wrote {plot_runs(list(run_dirs), output)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_images", default=64, show_default=True, type=int,
              help="Images in each grid (2 to 400: a grid of at most 20 x 20 stays readable).")
@click.option("--split", default="test", show_default=True, help="Split whose images are reconstructed.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--output", default=None, type=click.Path(dir_okay=False), callback=not_empty,
              help="PNG to write (default: RUN_DIR/samples.png).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder with the data files (default: the run's own).")
@user_errors
def samples(run_dir, n_images, split, seed, output, data_dir):
    """A grid of images generated by the run's model (pixel probabilities of ancestral samples)
    and a grid of reconstructions of SPLIT images (needs matplotlib)."""
    from rebar_np.evaluation.final import SPLITS, load_run
    from rebar_np.experiments.plots import MAX_IMAGES, MIN_IMAGES, draw_samples, pyplot
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    if not MIN_IMAGES <= n_images <= MAX_IMAGES:
        raise ValueError(f"--n must be between {MIN_IMAGES} and {MAX_IMAGES} (a readable grid), got {n_images}")
    check_figure_file(output)
    pyplot()   # the missing-matplotlib message before any work
    model, ckpt, data = load_run(run_dir, data_dir)
    if output is None:
        output = os.path.join(run_dir, "samples.png")
        check_output_file(output, "the image")
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
@click.option("--only", multiple=True, metavar="KEY=V[,V...]",
              help="Only the runs whose grid value of KEY is one of these, e.g. --only learning_rate=3e-4 "
                   "--only architecture=two_layer (repeatable; the runs keep the grid's names and folders).")
@user_errors
def sweep(grid, workers, engine, scheduler, report_only, paper, dry_run, only):
    """Run a grid of training runs (estimators x architectures x tasks x learning rates x seeds)
    described in GRID (a TOML file; see rebar_np/experiments/sweep.py), or, with --report, tabulate them.

    Finished runs are skipped, unfinished ones resumed exactly, missing ones started; then the
    report: for each cell, the learning rate with the best validation bound and its train ELBO at
    the end, bounds and seeds (also OUTPUT/report.json and report.csv). GRID may also be the sweep's
    folder (it holds a copy of the grid file).
    """
    from rebar_np.experiments import sweep as S
    g = S.load_grid(grid)
    specs = S.expand(g)
    if only:
        specs = S.select(g, specs, only)
    workers = workers or g.workers
    jobs, failed = [], {}
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not report_only:
        if dry_run:
            for spec in specs:
                state, step = S.run_state(spec)
                click.echo(f"{state + (f' (step {step})' if step else ''):<28}{spec.dir}")
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
# results
# --------------------------------------------------------------------------
@main.group()
def results():
    """Publish runs into the repository's results/ folder and rebuild its table."""


@results.command("publish")
@click.argument("grid", type=click.Path())
@click.option("--only", multiple=True, metavar="KEY=V[,V...]", help="Only these runs of the grid (as for sweep).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Where the published runs go (RESULTS_DIR/<sweep>/<run>/).")
@click.option("--progress/--no-progress", default=None, help="Progress bar of the final bounds.")
@user_errors
def results_publish(grid, only, results_dir, progress):
    """Copy the small files of GRID's runs (config.json, metrics.h5, eval-*.json) into RESULTS_DIR,
    with a plot per run and per architecture and learning rate, and rebuild the results table.

    Finished runs that lack the 5000-sample test bound get it first (a few minutes each on two
    cores). Runs still training are published as far as they got. Checkpoints stay behind."""
    from rebar_np.experiments import sweep as S
    from rebar_np.experiments.publish import publish, update_tables
    g = S.load_grid(grid)
    specs = S.select(g, S.expand(g), only) if only else S.expand(g)
    check_output_folder(results_dir, "--results-dir")
    show = sys.stderr.isatty() if progress is None else progress
    click.echo(f"wrote {publish(g, specs, results_dir, log=click.echo, progress=show)}")
    for path in update_tables(results_dir):
        click.echo(f"updated the table in {path}")


@results.command("table")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when a committed table differs from the files.")
@user_errors
def results_table(results_dir, check):
    """Rebuild the results table (RESULTS_DIR/README.md, and README.md's results section) from the
    published files alone."""
    from rebar_np.experiments.publish import update_tables
    stale = update_tables(results_dir, check=check)
    if check:
        if stale:
            click.echo(f"the table in {', '.join(stale)} differs from the published files; "
                       f"run rebar-np results table", err=True)
            sys.exit(1)
        click.echo("the results tables match the published files")
        return
    click.echo("\n".join(f"updated the table in {p}" for p in stale) or "the results tables were up to date")


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
@click.option("--output", default=None, type=click.Path(dir_okay=False), callback=not_empty,
              help="Write the table as JSON here too (while tracking: rewritten after every row, so a long "
                   "comparison keeps what it has measured).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), callback=not_empty,
              help="While tracking: draw log variance against steps for every estimator to this PNG, redrawn "
                   "after every row (needs matplotlib).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
@user_errors
def variance(follow, estimators, task, n_layer, n_hidden, nonlinear, steps, batch_size, learning_rate, temperature,
             relaxation, samples, relax_hidden, seed, report_every, run_dir, draws, output, plot_path, data_dir):
    """Compare estimators' gradient variance on one optimisation trajectory.

    Prints, per epoch, each estimator's log gradient variance around the common mean
    (EMA moments, docs/math.md). With --checkpoint: a frozen model and K independent draws.
    """
    import numpy as np
    from rebar_np import estimators as E
    from rebar_np.data import load_task
    from rebar_np.training.rundir import write_json
    from rebar_np.training.train import TrainConfig, TrainingDiverged
    from rebar_np.experiments.variance import measure_variance, track_variance

    names = parse_estimators(estimators)
    E.get(follow)
    check_output_file(output)
    if plot_path:
        if run_dir:
            raise ValueError("--plot draws the tracked comparison; --checkpoint measures one frozen model")
        from rebar_np.experiments.plots import pyplot
        check_figure_file(plot_path, "--plot")
        if output and os.path.abspath(output) == os.path.abspath(plot_path):
            raise ValueError(f"--output and --plot both name {output}; the table and the figure need a file each")
        pyplot()                     # the missing-matplotlib message before any work
    # every setting checked before any work, in both modes (the frozen model's ones come from its checkpoint)
    cfg = TrainConfig(model=follow, task=task, n_layer=n_layer, n_hidden=n_hidden, nonlinear=nonlinear,
                      batch_size=batch_size, learning_rate=learning_rate, steps=steps, seed=seed,
                      report_every=report_every, temperature=temperature, relaxation=relaxation, samples=samples,
                      relax_hidden=relax_hidden)
    cfg.validate(flag_labels(TRAIN_SETTINGS))
    if run_dir:
        from rebar_np.training.checkpoint import load_checkpoint
        from rebar_np.model.sbn import SBN
        if draws < 2:
            raise ValueError(f"--draws must be at least 2, got {draws}")
        ck = load_checkpoint(os.path.join(run_dir, "checkpoint.h5"))
        c = ck["config"]
        data = load_task(c["task"], data_dir)
        if batch_size > data["train"].shape[0]:
            raise ValueError(f"--batch-size {batch_size} is larger than the training set "
                             f"({data['train'].shape[0]} examples)")
        # every draw's gradient is kept (float64) until the estimator's variance is taken: the draws,
        # their stack and the deviations from their mean
        entries = sum(v.size for v in ck["params"].values())
        check_fits_in_memory(8 * 3 * draws * entries, {"draws": (draws, 1000)})
        mean_x = ck["mean_x"] if ck["mean_x"] is not None else data["train"].mean(axis=0, dtype=np.float64)
        model = SBN(c["task"], c["n_layer"], c["n_hidden"], c["nonlinear"], mean_x)
        x = data["train"][np.random.default_rng(seed).choice(data["train"].shape[0], batch_size, replace=False)]
        opts = {n: {k: v for k, v in {"temperature": temperature, "relaxation": relaxation,
                                      "samples": cfg.samples, "hidden": cfg.relax_hidden}.items()
                    if k in E.get(n).DEFAULT_OPTIONS} for n in names}
        auxes = {n: (ck["aux"] if n == c["model"] else E.get(n).init_aux(model, seed, x.dtype, opts[n]))
                 for n in names}
        stop = variance_stop("finishing the current draw, then stopping (nothing is written)")
        table = measure_variance(model, ck["params"], auxes, x, draws, names, opts, seed, stop=stop)
        if table is None:
            ignore_stop_signals()
            fail(f"interrupted ({stop.signal_name}) before the {draws} draws were done; nothing was written",
                 EXIT_INTERRUPTED)
        stop.restore()
        click.echo(f"{'estimator':<16}{'log variance':>14}{'95% interval':>24}   ({draws} draws, step {ck['step']})")
        for n, r in table.items():
            click.echo(f"{n:<16}{r['log_variance']:>14.3f}   [{r['ci'][0]:8.3f}, {r['ci'][1]:8.3f}]")
        result = {"mode": "draws", "draws": draws, "step": ck["step"], "table": table}
    else:
        data = load_task(task, data_dir)
        shown = list(dict.fromkeys([follow] + names))
        title = (f"following {follow}; {task}, {n_layer} {'nonlinear' if nonlinear else 'linear'} layer(s) of "
                 f"{n_hidden}, lr {learning_rate:g}, seed {seed}")

        failed = {}

        def keep(rows):              # what is measured so far, on disk after every row; a file that cannot be
            from rebar_np.experiments.plots import plot_variance     # written never stops the measuring: it is
            for path, write in ((output, lambda: write_json(output, {                 # reported at the end
                    "mode": "track", "follow": follow, "rows": rows, "steps": steps,
                    "finished": rows[-1]["step"] == steps})),
                    (plot_path, lambda: plot_variance(rows, shown, plot_path, title))):
                if path and path not in failed:
                    try:
                        write()
                    except OSError as e:
                        failed[path] = e
        kept = " and ".join(p for p in (output, plot_path) if p)
        stop = variance_stop("finishing the current step, then stopping" + (
            f"; the rows measured so far are kept in {kept}" if kept else ""))
        try:
            rows = track_variance(cfg, data, names, follow, log=click.echo, report_every=report_every,
                                  on_row=keep if (output or plot_path) else None, stop=stop)
        except TrainingDiverged as err:
            stop.restore()
            fail(f"training diverged: {err}; try a smaller --learning-rate", EXIT_DIVERGED)
        if not stop.requested:
            stop.restore()
        click.echo(f"{'step':>8}" + "".join(f"{n:>15}" for n in dict.fromkeys([follow] + names)))
        for r in rows:
            click.echo(f"{r['step']:>8}" + "".join(f"{r[n]:>15.3f}" for n in dict.fromkeys([follow] + names)))
        finished = bool(rows) and rows[-1]["step"] == steps
        result = {"mode": "track", "follow": follow, "rows": rows, "steps": steps, "finished": finished}
        if plot_path and plot_path not in failed and rows:
            click.echo(f"wrote {plot_path}")
    if output and (run_dir or rows):
        try:
            write_json(output, result)
        except OSError as e:
            fail(f"could not write {output} ({e.strerror or one_line(e)}); the table is printed above")
        click.echo(f"wrote {output}")
    if not run_dir and plot_path in failed:
        e = failed[plot_path]
        fail(f"could not write {plot_path} ({e.strerror or one_line(e)}); the table is printed above")
    if not run_dir and not finished:       # stopped by a signal: what was measured is kept, and said where
        ignore_stop_signals()
        where = f"kept in {kept}" if kept else "printed above (give --output to keep them in a file)"
        fail(f"interrupted ({stop.signal_name}): the {len(rows)} row(s) measured so far "
             f"(to step {rows[-1]['step'] if rows else 0} of {steps}) are {where}" if rows else
             f"interrupted ({stop.signal_name}) before the first row was measured; nothing was written",
             EXIT_INTERRUPTED)


def variance_stop(plan):
    """rebar-np variance's StopFlag: Ctrl-C, SIGTERM and SIGHUP stop it between two steps (or draws)
    instead of raising inside a compiled kernel, which printed "SystemError: ... returned a result
    with an exception set"; the third quits at once (every file it writes is whole: write and rename)."""
    from rebar_np.training.train import StopFlag
    return StopFlag(plan=plan, again="at most a step away", exit_code=EXIT_INTERRUPTED)


def parse_estimators(text, option="--estimators"):
    """The names of a comma-separated list: known estimators, each once, at least one."""
    from rebar_np import estimators as E
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{option} names no estimator; give a comma-separated list such as nvil,rebar")
    for n in names:
        E.get(n)
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice:
        raise ValueError(f"{option} lists {twice} twice")
    return names


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
@click.option("--output", default=None, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder for the runs, comparison.json and comparison.png (default: runs/compare-<time>).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
@click.option("--progress/--no-progress", default=None)
@user_errors
def compare(estimators, task, n_layer, n_hidden, nonlinear, steps, batch_size, learning_rate, temperature,
            relaxation, samples, relax_hidden, seed, eval_samples, output, data_dir, progress):
    """Train the same model with several estimators and compare them.

    Writes a table (final train ELBO, validation and test bounds, log gradient variance,
    time) to the console and OUTPUT/comparison.json, and OUTPUT/comparison.png (ELBO
    against steps and wall-clock time) when matplotlib is installed (pip install rebar-np[plot]).

    Each estimator's run is a run folder OUTPUT/<estimator>. Running the same command again keeps
    the finished runs (--steps may grow: they continue), resumes the unfinished ones exactly (after
    Ctrl-C, say) and refuses a folder holding a run with other settings.
    """
    from dataclasses import replace
    from rebar_np.experiments.compare import format_table, plot_comparison, run_comparison
    from rebar_np.data import load_task
    from rebar_np.training.train import TrainConfig

    names = parse_estimators(estimators)
    cfg = TrainConfig(task=task, n_layer=n_layer, n_hidden=n_hidden, nonlinear=nonlinear, batch_size=batch_size,
                      learning_rate=learning_rate, steps=steps, seed=seed, eval_every=0,
                      eval_samples=eval_samples, temperature=temperature, relaxation=relaxation,
                      samples=samples, relax_hidden=relax_hidden)
    for n in names:
        replace(cfg, model=n).validate(flag_labels(TRAIN_SETTINGS))
    if output is None:
        output = os.path.join("runs", f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_folder(output)
    data = load_task(task, data_dir)          # every check, and the runs' plan, before the folder is made
    try:
        rows, histories = run_comparison(cfg, data, names, output, log=click.echo, progress=progress,
                                         data_dir=data_dir)
    except KeyboardInterrupt:
        fail(f"interrupted; the runs in {output} keep their checkpoints: run the same command again to resume",
             EXIT_INTERRUPTED)
    click.echo(format_table(rows, eval_samples))
    png = plot_comparison(histories, os.path.join(output, "comparison.png"))
    click.echo(f"wrote {os.path.join(output, 'comparison.json')}"
               + (f" and {png}" if png else " (no plot: matplotlib is not installed; pip install rebar-np[plot])"))
    bad = [r for r in rows if r["diverged"]]
    if bad:
        others = f" (and {len(bad) - 1} other run(s))" if len(bad) > 1 else ""
        fail(f"training diverged: {bad[0]['estimator']}: {bad[0]['diverged']}{others}; the last good checkpoints "
             f"and the finished runs are kept in {output}", EXIT_DIVERGED)


# --------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------
MAX_GRADCHECK_EPS = 1e-2


@main.command()
@click.option("--model", default="nvil", show_default=True, help="Estimator to check (or 'all').")
@model_options(n_hidden=8)
@click.option("--n-input", default=16, show_default=True, type=int, help="Pixels of the small random instance.")
@click.option("--batch-size", default=5, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eps", default=1e-6, show_default=True, type=float,
              help=f"Central-difference step, in (0, {MAX_GRADCHECK_EPS:g}].")
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
    import math
    from rebar_np import estimators as E
    from rebar_np.evaluation.gradcheck import run_checks

    # a central difference needs a step that is small (its error is O(eps^2)) but not zero (0/0),
    # and a tolerance that some error can pass: 0, a negative or a NaN tolerance fails everything
    if not (math.isfinite(eps) and 0 < eps <= MAX_GRADCHECK_EPS):
        raise ValueError(f"--eps must be a number in (0, {MAX_GRADCHECK_EPS:g}], got {eps}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"--tol must be a positive number, got {tol}")
    check_positive(n_layer=n_layer, n_hidden=n_hidden, n_input=n_input, batch_size=batch_size)
    # the estimators' passes (K-sample ones: a few rows per example) and the finite differences'
    # copies, in float64; --all also runs 3 nonlinear layers
    params, values = instance_floats(3 if check_all else n_layer, n_hidden, nonlinear or check_all, n_input,
                                     batch_size * 5)
    check_fits_in_memory(8 * (20 * params + 50 * values),
                         {"n-hidden": (n_hidden, 8), "n-layer": (n_layer, 2), "n-input": (n_input, 16),
                          "batch-size": (batch_size, 5)})
    if check_all:
        ctx = click.get_current_context()
        given = [n for n in ("model", "task", "n_layer", "nonlinear")
                 if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
        if given:
            flag = {"nonlinear": "--nonlinear/--linear"}.get(given[0], "--" + given[0].replace("_", "-"))
            raise ValueError(f"--all checks every estimator, task, depth and nonlinearity; it takes no {flag} "
                             "(drop --all to check one configuration)")
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
# unbiased
# --------------------------------------------------------------------------
@main.command()
@click.option("--model", default="dynamic_rebar", show_default=True, help="Estimator to test.")
@model_options(n_hidden=3)
@click.option("--n-input", default=6, show_default=True, type=int, help="Pixels of the tiny random instance.")
@click.option("--batch-size", default=2, show_default=True, type=int)
@click.option("--draws", default=4000, show_default=True, type=int,
              help="Independent estimates averaged (the test's power grows as their square root).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the instance and of the noise.")
@click.option("--alpha", default=1e-3, show_default=True, type=float,
              help="Family-wise false-alarm rate of the test: a correct estimator fails with probability <= alpha.")
@click.option("--temperature", default=0.5, show_default=True, type=float, help="REBAR family, concrete, relax.")
@click.option("--relaxation", default="muprop", show_default=True, help="REBAR family, concrete, relax.")
@click.option("--joint/--per-layer", default=False, show_default=True, help="REBAR family: one control variate.")
@click.option("--condition-above", is_flag=True,
              help="REBAR family, per layer: the TF reference's conditioning (every layer at and above the "
                   "switch layer carries its conditional derivative); biased from two layers up.")
@click.option("--samples", default=2, show_default=True, type=int,
              help="vimco, reinforce_loo: K (the exact K-sample bound enumerates C^K configurations).")
@click.option("--relax-hidden", default=4, show_default=True, type=int, help="relax: width of r.")
@user_errors
def unbiased(model, task, n_layer, n_hidden, nonlinear, n_input, batch_size, draws, seed, alpha, temperature,
             relaxation, joint, condition_above, samples, relax_hidden):
    """Test an estimator for bias: its mean over --draws estimates against the exact gradient.

    On a random tiny model (2^(L H) latent configurations per example), the exact gradient of
    E_q[f] (of the K-sample bound for vimco and reinforce_loo) is computed by enumerating every
    configuration and differentiating by finite differences, using only the model's forward
    pass. Each parameter entry's z-score (mean - exact) / standard error is compared with a
    Bonferroni threshold: an unbiased estimator passes with probability >= 1 - alpha. Prints a
    row per parameter tensor and the verdict; exits 1 when the estimator is found biased.
    Expected to fail: concrete (biased by design) and rebar/dynamic_rebar with --condition-above
    from --n-layer 2 up.
    """
    import math
    from rebar_np import estimators as E
    from rebar_np.evaluation.unbiased import MAX_BITS, MAX_JOINT, check_unbiased, tiny_instance
    est = E.get(model)
    for name, value, low in (("n-layer", n_layer, 1), ("n-hidden", n_hidden, 1), ("n-input", n_input, 2),
                             ("batch-size", batch_size, 1), ("draws", draws, 10), ("samples", samples, 2),
                             ("relax-hidden", relax_hidden, 1)):
        if value < low:
            raise ValueError(f"--{name} must be at least {low}, got {value}")
    if n_layer * n_hidden > MAX_BITS:
        raise ValueError(f"--n-layer {n_layer} x --n-hidden {n_hidden} latent bits is more than {MAX_BITS}: "
                         "the exact gradient enumerates 2^(bits) configurations")
    # float64: the instance; the exact objective's passes over every configuration C of every example
    # (and the C^K joint ones of a K-sample bound, at most MAX_JOINT); the (draws, entries) estimates
    # and their deviations
    rows = batch_size * 2 ** (n_layer * n_hidden)
    params, values = instance_floats(n_layer, n_hidden, nonlinear, n_input, rows * max(samples, 1))
    entries = params + 4 * relax_hidden * (n_input + n_layer * n_hidden + 3) * n_layer
    enumerated = 3 * batch_size * samples * MAX_JOINT
    check_fits_in_memory(8 * (20 * entries + 10 * values + enumerated + 3 * draws * entries),
                         {"draws": (draws, 4000), "n-input": (n_input, 6), "batch-size": (batch_size, 2),
                          "samples": (samples, 2), "relax-hidden": (relax_hidden, 4)})
    if not (0 < alpha < 1):
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"--temperature must be a positive number, got {temperature}")
    wanted = {"temperature": temperature, "relaxation": relaxation, "joint": joint,
              "condition_above": condition_above, "samples": samples, "hidden": relax_hidden}
    options = {k: v for k, v in wanted.items() if k in est.DEFAULT_OPTIONS}
    for name, key in (("--condition-above", "condition_above"), ("--joint", "joint")):
        if wanted[key] and key not in options:
            raise ValueError(f"{name} is an option of rebar and dynamic_rebar, not {model}")
    instance = tiny_instance(model, task, n_layer, n_hidden, nonlinear, n_input, batch_size, seed, options)
    variant = [k for k in ("joint", "condition_above") if options.get(k)]
    click.echo(f"{model}{' (' + ', '.join(variant) + ')' if variant else ''}: task {task}, {n_layer} "
               f"{'nonlinear' if nonlinear else 'linear'} layer(s) of {n_hidden} units, {n_input} pixels, batch "
               f"{batch_size}; mean of {draws} estimates (seed {seed}) against the exact gradient")
    show = sys.stderr.isatty()
    res = check_unbiased(model, *instance, draws, seed=seed + 1, alpha=alpha, options=options,
                         progress=(lambda i: click.echo(f"  {i} draws", err=True)) if show and draws >= 1000 else None)
    click.echo(f"{'tensor':<16}{'entries':>8}{'max |mean-exact|':>18}{'max |exact|':>13}{'max |z|':>9}  verdict")
    for name, n, diff, scale, z, ok in res.tensor_rows():
        click.echo(f"{name:<16}{n:>8}{diff:>18.3e}{scale:>13.3e}{z:>9.2f}  {'ok' if ok else 'BIASED'}")
    if res.passed:
        click.echo(f"UNBIASED: every entry is within {res.threshold:.2f} standard errors of the exact gradient "
                   f"(max |z| {res.max_abs_z:.2f}; Bonferroni threshold for {res.n_entries} entries, alpha {alpha:g})")
        return
    bad = [r for r in res.tensor_rows() if not r[5]]
    click.echo(f"BIASED: {len(bad)} tensor(s) differ from the exact gradient by more than {res.threshold:.2f} "
               f"standard errors (max |z| {res.max_abs_z:.2f}; an unbiased estimator gets this far with "
               f"probability below {alpha:g})")
    sys.exit(1)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
@main.group()
def data():
    """Inspect, prepare and import data sets."""


@data.command("info")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
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
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
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
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
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
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), callback=not_empty)
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
