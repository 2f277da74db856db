"""The training loop (the paper's set-up, TrainConfig's defaults): shuffled minibatches, Adam for the model and
10x Adam for the estimator's own parameters, the EMA gradient-variance monitor,
per-epoch report lines, periodic importance-weighted evaluation, checkpoints.
"""
import contextlib
import itertools
import math
import numbers
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import numba
import numpy as np
from numba import prange
from tqdm import tqdm

from .. import estimators as E
from ..estimators.rebar import temperature
from ..evaluation.bound import iw_bound
from ..kernels.blocking import _half, _in_halves
from ..kernels.dispatch import DEVICES, check_device, is_device, to_device, to_host, twin, zeros_like
from ..kernels.jit import arith_kernel, kernel, split_kernel
from ..model.packed import Packed, flat_buffers, packed_copy, packed_zeros
from ..model.sbn import SBN, TASKS, init_params, check_params
from .adam import AdamConfig, adam_entry, adam_init, adam_update, first_non_finite, step_size
from .checkpoint import save_checkpoint
from .resume import LoopState, capture_state, restore_state
from .rundir import checkpoint_step, recorder_for

DTYPES = {"float32": np.float32, "float64": np.float64}
# estimators whose every pass runs on rebar_np.kernels.dispatch arrays (the others use host-only NumPy calls)
CUDA_ESTIMATORS = ("reinforce", "nvil", "concrete", "rebar", "dynamic_rebar")


@dataclass
class TrainConfig:
    model: str = "dynamic_rebar"
    task: str = "sbn"
    n_layer: int = 2
    n_hidden: int = 200
    nonlinear: bool = False
    batch_size: int = 24
    learning_rate: float = 3e-4
    steps: int = 2_000_000
    seed: int = 0
    eval_every: int = 25          # epochs between evaluations; 0 turns evaluation off
    eval_samples: int = 100       # k of the importance-weighted bound during training
    report_every: int = 0         # steps between report lines; 0 means once per epoch
    dtype: str = "float32"
    binarization: str = "fixed"   # or "dynamic" (resample binary pixels every epoch)
    beta1: float = 0.9
    beta2: float = 0.99999
    adam_eps: float = 1e-8
    aux_lr_scale: float = 10.0    # baselines and control-variate parameters learn this much faster
    ema_decay: float = 0.999
    temperature: float = 0.5      # REBAR family: fixed (rebar) or initial (dynamic_rebar) temperature
    relaxation: str = "muprop"    # REBAR family: "muprop" (the paper's improved) or "concrete" (plain)
    joint: bool = False           # REBAR family: one fully relaxed control variate instead of one per layer
    condition_above: bool = False  # rebar, dynamic_rebar per layer: the TF reference's conditioning (biased, L >= 2)
    samples: int = 5              # K-sample estimators (vimco, reinforce_loo): samples per example
    relax_hidden: int = 32        # relax: width of the control network r
    checkpoint_every: int = 0     # steps between checkpoints; 0 means at the end of every epoch
    device: str = "cpu"           # "cuda": parameters, optimizer state and each epoch's data live on the GPU
    output: str = ""

    def estimator_options(self):
        """The settings this config passes to its estimator (only the ones it knows)."""
        known = E.get(self.model).DEFAULT_OPTIONS
        mine = {"temperature": self.temperature, "relaxation": self.relaxation, "joint": self.joint,
                "condition_above": self.condition_above, "samples": self.samples, "hidden": self.relax_hidden}
        return {k: v for k, v in mine.items() if k in known}

    def validate(self, labels=None):
        """Check every setting (check_setting), then the ones that depend on each other, then that the
        run fits in this machine's memory; normalise the values in place (an integral 2e6 becomes the
        int 2000000). labels: {setting: how the user wrote it} for the messages (SettingError)."""
        try:
            for f in fields(self):
                setattr(self, f.name, check_setting(f.name, getattr(self, f.name)))
            self._check_together()
        except SettingError as err:
            raise err.labelled(labels) from None

    def _check_together(self):
        if self.condition_above and "condition_above" not in E.get(self.model).DEFAULT_OPTIONS:
            raise SettingError("condition_above", f"applies to rebar and dynamic_rebar only, not {self.model}")
        if self.condition_above and self.joint:
            raise SettingError("condition_above", "is an option of the per-layer estimator; the joint one "
                                                  "already conditions every layer")
        if self.device == "cuda" and self.model not in CUDA_ESTIMATORS:
            raise SettingError("device", f"model {self.model} has no CUDA path yet; with --device cuda choose one "
                                         f"of {', '.join(CUDA_ESTIMATORS)}")
        # in float32 a value can round to 0 or 1 (or overflow): Adam and the monitor compute in the dtype
        typed = DTYPES[self.dtype]
        with np.errstate(over="ignore", under="ignore"):
            for name, value in (("learning_rate", self.learning_rate), ("adam_eps", self.adam_eps),
                                ("aux_lr_scale", self.learning_rate * self.aux_lr_scale)):
                if not (np.isfinite(typed(value)) and typed(value) > 0):
                    raise SettingError(name, f"must be representable in {self.dtype} (neither 0 nor "
                                             f"overflowing), got {_shown(getattr(self, name))}")
            for name in ("beta1", "beta2", "ema_decay"):
                if not typed(getattr(self, name)) < 1:
                    raise SettingError(name, f"must stay below 1 in {self.dtype}, "
                                             f"got {_shown(getattr(self, name))}")
        if self.device == "cuda":
            check_device("cuda")      # DeviceError (one line) on a machine without a GPU
        check_memory(self)


# --------------------------------------------------------------------------
# Settings: the one typed check that every source of settings goes through (command-line
# flags, --config files, sweep grid files, --hparams strings, a resumed run's config.json)
# --------------------------------------------------------------------------
# Types come from TrainConfig's annotations. An int setting takes an integer (not a bool) or an
# integral float (TOML and JSON write 2e6 or 2000000.0 for a step count; 300.7 is refused); a float
# setting takes an int or a float (not a bool, not a string: "0.001" is refused); a bool setting only
# true or false ("false" is refused); a string setting only a string. Then each setting's own range:
MAX_LAYERS = 100                 # far beyond the paper's 1-2; the per-layer passes are Python loops
MAX_INT = 2 ** 63 - 1            # the kernels and HDF5 attributes hold int64
INT_RANGES = {"n_layer": (1, MAX_LAYERS), "n_hidden": (1, MAX_INT), "batch_size": (1, MAX_INT),
              "steps": (1, MAX_INT), "eval_samples": (1, MAX_INT), "samples": (2, MAX_INT),
              "relax_hidden": (1, MAX_INT), "seed": (0, 2 ** 32 - 1),  # NumPy's legacy seeding range
              "eval_every": (0, MAX_INT), "report_every": (0, MAX_INT), "checkpoint_every": (0, MAX_INT)}
# (low, high, low included, high included); every float must be finite. The temperature range keeps
# tau = log lambda within +-14 and the temperature tangents' 1/lambda^2 within 1e12, far inside float32
# (40 steps of 2-layer concrete, rebar, dynamic_rebar and relax ran without overflow at 1e-20 and 1e20;
# at 1e-38 lambda = exp(tau) underflows in float32).
FLOAT_RANGES = {"learning_rate": (0.0, math.inf, False, False), "beta1": (0.0, 1.0, True, False),
                "beta2": (0.0, 1.0, True, False), "adam_eps": (0.0, math.inf, False, False),
                "aux_lr_scale": (0.0, math.inf, False, False), "ema_decay": (0.0, 1.0, False, False),
                "temperature": (1e-6, 1e6, True, True)}
CHOICES = {"task": TASKS, "dtype": tuple(DTYPES), "binarization": ("fixed", "dynamic"),
           "relaxation": ("muprop", "concrete"), "device": DEVICES}


class SettingError(ValueError):
    """A setting of the wrong type or out of its range, in one line: `name` is the TrainConfig field,
    `problem` the rest of the sentence ("must be ...") or a sentence of its own that names the setting
    ("unknown task ..."); `label` is how the user wrote the setting, "--n-layer" or "<source>: <key>"
    ("run.json: n_layer", "--hparams: trial"). The message is "<label> must be ..., got ..." or
    "<source>: unknown task ...".
    """

    def __init__(self, name, problem, label=None):
        self.name, self.problem, self.label = name, problem, label or name.replace("_", "-")
        if problem.startswith("must"):
            text = f"{self.label} {problem}"
        else:
            text = f"{self.label.rsplit(': ', 1)[0]}: {problem}" if ": " in self.label else problem
        super().__init__(text)

    def labelled(self, labels):
        """This error with the label labels gives its setting (itself when labels has none)."""
        if not labels or self.name not in labels:
            return self
        return SettingError(self.name, self.problem, labels[self.name])


def _shown(value):
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def setting_types():
    """{setting: its type} from TrainConfig's annotations."""
    return {f.name: f.type for f in fields(TrainConfig)}


def typed_setting(name, value):
    """value as the type of setting `name` (SettingError when it is not one: see above)."""
    typ = setting_types().get(name)
    if typ is None:
        raise SettingError(name, "is not a training setting")
    is_bool = isinstance(value, (bool, np.bool_))
    if typ is bool:
        if is_bool:
            return bool(value)
        raise SettingError(name, f"must be true or false, got {_shown(value)}")
    if typ is int:
        if isinstance(value, numbers.Integral) and not is_bool:
            return int(value)
        if isinstance(value, numbers.Real) and not is_bool and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise SettingError(name, f"must be an integer, got {_shown(value)}")
    if typ is float:
        if isinstance(value, numbers.Real) and not is_bool:
            return float(value)
        raise SettingError(name, f"must be a number, got {_shown(value)}")
    if isinstance(value, typ):
        return value
    raise SettingError(name, f"must be a string, got {_shown(value)}")


def check_setting(name, value):
    """value as the type of setting `name`, checked against the setting's own range or choices
    (SettingError); the checks between settings are TrainConfig.validate's."""
    value = typed_setting(name, value)
    if name in INT_RANGES:
        low, high = INT_RANGES[name]
        if value < low:
            raise SettingError(name, f"must be {'0 or more' if low == 0 else f'at least {low}'}, got {value}")
        if value > high:
            raise SettingError(name, f"must be at most {high}, got {value}")
    elif name in FLOAT_RANGES:
        low, high, low_in, high_in = FLOAT_RANGES[name]
        inside = math.isfinite(value) and (low <= value if low_in else low < value) and \
            (value <= high if high_in else value < high)
        if not inside:
            if high == math.inf:
                rule = "a positive finite number"
            elif low_in and high_in:
                rule = f"between {low:g} and {high:g}"
            else:
                rule = f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise SettingError(name, f"must be {rule}, got {_shown(value)}")
    elif name in CHOICES:
        if value not in CHOICES[name]:
            choices = CHOICES[name]
            raise SettingError(name, f"unknown {name} {value!r}; choose "
                                     f"{', '.join(choices[:-1])} or {choices[-1]}")
    elif name == "model":
        try:
            E.get(value)
        except E.EstimatorError as err:
            raise SettingError(name, str(err)) from None
    return value


def check_settings(values, labels=None):
    """{setting: value} with every value typed and in its range (check_setting); labels as in
    TrainConfig.validate."""
    out = {}
    for name, value in values.items():
        try:
            out[name] = check_setting(name, value)
        except SettingError as err:
            raise err.labelled(labels) from None
    return out


# --------------------------------------------------------------------------
# Memory: refuse a run that cannot fit before allocating anything
# --------------------------------------------------------------------------
N_PIXELS = 784                   # every task's images (28 x 28)
SIZE_SETTINGS = ("n_hidden", "n_layer", "batch_size", "samples", "relax_hidden")


def memory_needed(cfg):
    """Bytes a training run of cfg needs, about: the model's parameters (counted from the SBN's
    shapes) with their gradient, Adam's two moments and the variance monitor's two averages; the
    estimator's own parameters (baseline, control networks) with gradient and moments; the step's
    activations; and, with evaluation on, the evaluation threads' chunks."""
    item = np.dtype(DTYPES[cfg.dtype]).itemsize
    model = SBN(cfg.task, cfg.n_layer, cfg.n_hidden, cfg.nonlinear, np.full(N_PIXELS, 0.5))
    n_params = sum(math.prod(s) for s in model.param_shapes().values())
    from ..model.baseline import N_BASELINE_HIDDEN
    n_aux = (N_PIXELS + 2) * N_BASELINE_HIDDEN
    if cfg.model == "relax":    # one control network per layer, seeing the data and the layers below
        n_aux += sum((cfg.n_hidden + N_PIXELS + l * cfg.n_hidden + 3) * cfg.relax_hidden for l in range(cfg.n_layer))
    # per example and pass: each layer's logits, samples, noise and caches (more when nonlinear) and
    # the pixels' logits; the REBAR family makes a relaxed pass, with its temperature tangents, per
    # switch layer. Calibrated on peak memory (RSS) of a few steps: 2 layers of 500 or 3,000 units,
    # batch 24 to 1,000, dynamic_rebar and vimco, within about 30%.
    per_row = N_PIXELS * 3 + cfg.n_layer * cfg.n_hidden * (10 if cfg.nonlinear else 6)
    passes = 1 + (2 * cfg.n_layer if cfg.model in ("rebar", "dynamic_rebar", "relax") else
                  2 if cfg.model in ("concrete", "muprop") else 2 if cfg.model in E.K_SAMPLE_ESTIMATORS else 0)
    rows = cfg.batch_size * (cfg.samples if cfg.model in E.K_SAMPLE_ESTIMATORS else 1)
    if cfg.model == "relax":
        per_row += cfg.n_layer * cfg.relax_hidden * 6
    # parameters: themselves, gradient, Adam's and the monitor's moments, and the step's temporaries
    need = (10 * n_params + 4 * n_aux + rows * per_row * passes) * item
    if cfg.eval_every:      # each evaluation thread's chunk: noise bits, samples, logits per unit
        per_eval_row = N_PIXELS * 2 + cfg.n_layer * cfg.n_hidden * (5 if cfg.nonlinear else 3)
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        need += threads * CPU_CHUNK_ROWS * per_eval_row * item
    return need


def machine_memory():
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def too_big(need, sizes):
    """None when `need` bytes fit in this machine's memory (or it does not say how much it has), else
    (culprit, have): the size furthest above its default (sizes: name -> (value, default)), to be
    named in the refusal, and the machine's bytes. Checked before anything is allocated, so that a
    huge size is one line instead of a MemoryError traceback or the out-of-memory killer."""
    have = machine_memory()
    if have is None or need <= have:
        return None
    return max(sizes, key=lambda n: sizes[n][0] / sizes[n][1]), have


def check_memory(cfg):
    """SettingError, naming the size setting furthest above its default, when cfg's run needs more
    memory than the machine has."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    need = memory_needed(cfg)
    found = too_big(need, {n: (getattr(cfg, n), defaults[n]) for n in SIZE_SETTINGS
                           if (n != "samples" or cfg.model in E.K_SAMPLE_ESTIMATORS)
                           and (n != "relax_hidden" or cfg.model == "relax")})
    if found is None:
        return
    culprit, have = found
    sizes = ", ".join(f"{n.replace('_', '-')} {getattr(cfg, n)}" for n in SIZE_SETTINGS[:3])
    raise SettingError(culprit, f"must be smaller: the run ({cfg.model}, {sizes}) needs about "
                                f"{need / 2 ** 30:,.0f} GiB of memory, this machine has {have / 2 ** 30:,.0f} GiB")


class TrainingDiverged(RuntimeError):
    """A NaN or inf appeared; the message says where. The last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: SBN
    params: dict
    aux: dict
    step: int
    history: list = field(default_factory=list)   # one dict per report line
    evals: list = field(default_factory=list)     # one dict per evaluation
    checkpoint: str = ""


# --------------------------------------------------------------------------
# Gradient-variance monitor (docs/math.md, section "The gradient-variance monitor")
# --------------------------------------------------------------------------
@kernel
def ema_entry(g, m1, m2, i, decay):
    """Entry i of the monitor's fold (in place): m1 <- d m1 + (1 - d) g;  m2 <- d m2 + (1 - d) g^2.
    Exact IEEE arithmetic, as adam.adam_entry, so that an entry's result does not depend on its
    tensor's layout."""
    one = decay / decay
    gi = g[i]
    m1[i] = decay * m1[i] + (one - decay) * gi
    m2[i] = decay * m2[i] + (one - decay) * gi * gi


@arith_kernel
def ema_moments(g, m1, m2, decay):
    """m1 <- d m1 + (1 - d) g;  m2 <- d m2 + (1 - d) g^2   (flat views, in place), in the
    arithmetic of decay's type: the monitor passes decay in its arrays' dtype, so a float32
    monitor updates in float32 and the loop vectorises (3x faster than through float64; the
    rounding of a 1e-3 increment in float32 is ~1e-7 relative per step, far below what the
    logged log variance resolves).

    Returns the number of non-finite entries of g, so that the same pass over
    the gradient serves as the NaN/inf check of the training loop (arith_kernel keeps
    NaN and inf semantics).
    """
    gf, f1, f2 = g.reshape(-1), m1.reshape(-1), m2.reshape(-1)
    bad = 0
    for i in range(gf.size):
        bad += 0 if np.isfinite(gf[i]) else 1
        ema_entry(gf, f1, f2, i, decay)
    return bad


@split_kernel
def ema_moments_halves(g, m1, m2, decay):
    """ema_moments on the two halves of the flat tensors, one per core when the step's thread may
    use two (the same result, as in adam.adam_kernel_halves)."""
    gf, f1, f2 = g.reshape(-1), m1.reshape(-1), m2.reshape(-1)
    n = gf.size
    bad = 0
    for part in prange(2):
        lo, hi = _half(n, part)
        bad += ema_moments(gf[lo:hi], f1[lo:hi], f2[lo:hi], decay)
    return bad


@arith_kernel
def adam_and_moments(p, g, m, v, m1, m2, lr_t, beta1, beta2, eps, decay):
    """adam.adam_kernel and ema_moments in one pass (flat views, in place): the monitor's fold of
    g, then Adam's update of p with it, entry by entry, so g is read once. Each entry's arithmetic
    is theirs (adam.adam_entry, ema_entry), so the results are the two calls' exactly.
    Returns the number of non-finite entries of g, as ema_moments does."""
    pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    f1, f2 = m1.reshape(-1), m2.reshape(-1)
    bad = 0
    for i in range(pf.size):
        bad += 0 if np.isfinite(gf[i]) else 1
        ema_entry(gf, f1, f2, i, decay)
        adam_entry(pf, gf, mf, vf, i, lr_t, beta1, beta2, eps)
    return bad


@split_kernel
def adam_and_moments_halves(p, g, m, v, m1, m2, lr_t, beta1, beta2, eps, decay):
    """adam_and_moments on the two halves of the flat tensors, one per core when the step's thread
    may use two (the same result, as in adam.adam_kernel_halves)."""
    pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    f1, f2 = m1.reshape(-1), m2.reshape(-1)
    n = pf.size
    bad = 0
    for part in prange(2):
        lo, hi = _half(n, part)
        bad += adam_and_moments(pf[lo:hi], gf[lo:hi], mf[lo:hi], vf[lo:hi], f1[lo:hi], f2[lo:hi],
                                lr_t, beta1, beta2, eps, decay)
    return bad


@kernel
def all_finite(a):
    af = a.reshape(-1)
    bad = 0
    for i in range(af.size):
        bad += 0 if np.isfinite(af[i]) else 1
    return bad == 0


class GradVariance:
    """EMAs of G and G^2 over all model-gradient entries; log mean_j (E[G_j^2] - E[G_j]^2).

    The averages start at zero and are bias-corrected by 1 - decay^t. They are kept
    and updated in the parameters' dtype: the per-step pass over them is on the hot
    path, and float32 resolves a 1e-3 EMA increment easily.
    """

    def __init__(self, params, decay):
        self.decay, self.t = decay, 0
        self.m1, self.m2 = ((packed_zeros(params), packed_zeros(params)) if isinstance(params, Packed) else
                            ({k: zeros_like(v) for k, v in params.items()} for _ in range(2)))

    def to_device(self):
        self.m1, self.m2 = to_device(self.m1), to_device(self.m2)

    def update(self, grads):
        """Fold one gradient into the averages; returns the name of the first
        tensor with a NaN or inf, or None."""
        self.t += 1
        first_bad = None
        moments = twin(ema_moments, next(iter(grads.values()), None))
        for k, g in grads.items():
            m1 = self.m1[k]
            fold = ema_moments_halves if moments is ema_moments and _in_halves(g) else moments
            if fold(g, m1, self.m2[k], m1.dtype.type(self.decay)) and first_bad is None:
                first_bad = k
        return first_bad

    def update_with_adam(self, params, grads, opt, cfg):
        """update(grads) and adam.adam_update(params, grads, opt, cfg) in one pass over each
        tensor (adam_and_moments): the step streams every gradient, parameter and their Adam
        and monitor state once instead of the gradient twice, and calls one kernel per tensor
        instead of two. The same results as the two calls. Returns what update returns; Adam
        has then already applied a non-finite gradient (the training loop stops on it, and
        its last good checkpoint is on disk)."""
        self.t += 1
        lr_t = step_size(opt, cfg)
        flat = flat_buffers(params, grads, opt["m"], opt["v"], self.m1, self.m2)
        if flat is not None:         # one call over the buffers: the same update of every entry
            typed = flat[0].dtype.type
            update = adam_and_moments_halves if _in_halves(flat[0]) else adam_and_moments
            if not update(*flat, typed(lr_t), typed(cfg.beta1), typed(cfg.beta2), typed(cfg.eps), typed(self.decay)):
                return None
            return first_non_finite(grads)
        fused = twin(adam_and_moments, next(iter(grads.values()), None))
        first_bad = None
        for k, g in grads.items():
            p, m1 = params[k], self.m1[k]
            typed = p.dtype.type
            update = adam_and_moments_halves if fused is adam_and_moments and _in_halves(g) else fused
            if update(p, g, opt["m"][k], opt["v"][k], m1, self.m2[k], typed(lr_t), typed(cfg.beta1),
                      typed(cfg.beta2), typed(cfg.eps), typed(self.decay)) and first_bad is None:
                first_bad = k
        return first_bad

    def log_variance(self):
        if self.t == 0:
            return float("nan")
        corr = 1.0 - self.decay ** self.t
        total, n = 0.0, 0
        for k in self.m1:
            m1, m2 = self.m1[k].astype(np.float64), self.m2[k].astype(np.float64)
            total += float(np.sum(m2 / corr - (m1 / corr) ** 2))
            n += self.m1[k].size
        return float(np.log(max(total / n, 1e-300)))

    def state(self):
        """The EMA arrays by checkpoint name (host copies)."""
        m1, m2 = to_host(self.m1), to_host(self.m2)
        return {**{"m1/" + k: v for k, v in m1.items()}, **{"m2/" + k: v for k, v in m2.items()}}


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
CPU_CHUNK_ROWS = 2_000        # (example, sample) rows per pass of an evaluation thread (see evaluate)


def eval_chunking(n_examples, n_samples, workers=None, examples_per_chunk=None, on_device=False):
    """(workers, examples per chunk) of evaluate (see there); benchmarks/__main__.py replays its chunks."""
    k_chunk = min(n_samples, 100)
    if on_device:
        return 1, examples_per_chunk or max(1, (1 << 17) // k_chunk)
    workers = workers or len(os.sched_getaffinity(0))
    per = examples_per_chunk or max(1, CPU_CHUNK_ROWS // k_chunk)
    return workers, min(per, -(-n_examples // workers))    # a few examples still keep every worker busy


def evaluate(model, params, x, n_samples, seed=0, examples_per_chunk=None, progress=False, desc="eval",
             workers=None, out=None, stop=None):
    """Mean over the examples of the n_samples-sample importance-weighted bound.

    Examples are processed in chunks of about CPU_CHUNK_ROWS (example, sample) rows
    per pass (samples per example drawn at most 100 at a time), so memory stays
    bounded whatever n_samples is and a pass's arrays stay in the caches (on 2
    cores, 5000-sample bound: 1,000 and 8,000 rows were 7% and 15-20% slower than
    2,000-4,000). The chunks run on ``workers`` threads (default: one per core)
    with one BLAS thread each: NumPy's ufuncs, BLAS and the kernels release the
    GIL, so every core works all the time. Chunk i draws its noise from
    SeedSequence(seed).spawn()[i]: the result depends on seed and chunking, not on
    the number of workers.
    With params on the GPU (rebar_np.kernels.dispatch) the chunks, about 2^17 rows by default,
    run one after another in this thread, each copied to the device; with the same
    chunks (examples_per_chunk, and workers=1 on the CPU) the result is the CPU's.
    out: optional (N,) array that receives every example's bound.
    stop: optional StopFlag; once it is requested, the chunks not yet started are skipped, the
    running ones end after their current pass of at most 100 samples per example, and
    StopBetweenSteps is raised, so Ctrl-C never waits for the whole evaluation. NumPy's
    floating-point warnings (a diverged model's overflows) are off: a non-finite bound says it.
    """
    from concurrent.futures import ThreadPoolExecutor
    from threadpoolctl import threadpool_limits

    on_device = is_device(next(iter(params.values())))
    keep_freed_memory()
    k_chunk = min(n_samples, 100)
    workers, per = eval_chunking(x.shape[0], n_samples, workers, examples_per_chunk, on_device)
    dtype = next(iter(params.values())).dtype
    starts = list(range(0, x.shape[0], per))
    seeds = np.random.SeedSequence(seed).spawn(len(starts))

    def bound_values(i):
        if stop is not None and stop.requested:
            return None                                    # cancelled: skip the chunk
        xb = np.ascontiguousarray(x[starts[i]:starts[i] + per], dtype=dtype)
        if on_device:
            xb = to_device(xb)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # per thread
            return iw_bound(model, params, xb, n_samples, np.random.default_rng(seeds[i]), chunk=k_chunk, stop=stop)

    total = 0.0
    bar = tqdm(total=x.shape[0], desc=desc, unit="ex", disable=not progress, leave=False, file=sys.stderr)
    try:
        with threadpool_limits(limits=1 if workers > 1 else None, user_api="blas"), \
                ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [] if on_device else [pool.submit(bound_values, i) for i in range(len(starts))]
            chunks = (map(bound_values, range(len(starts))) if on_device     # GPU work stays in the thread
                      else (_chunk_result(f, stop) for f in futures))          # that owns the context
            try:
                for i, bounds in enumerate(chunks):
                    if bounds is None or (stop is not None and stop.requested):
                        raise StopBetweenSteps("evaluation cancelled")
                    if out is not None:
                        out[starts[i]:starts[i] + bounds.shape[0]] = bounds
                    total += float(np.sum(bounds))
                    bar.update(bounds.shape[0])
            except BaseException:
                for f in futures:
                    f.cancel()                            # the queued chunks; the running ones end first
                raise
    finally:
        bar.close()
    return total / x.shape[0]


def _chunk_result(future, stop, poll=0.1):
    """The future's result, or None once stop is requested. The wait wakes every `poll` seconds:
    Python runs signal handlers in the main thread only, when it runs Python code, and the kernel
    may deliver the signal to a worker thread; without the wake-ups a Ctrl-C waited unanswered for
    the chunk to end (seconds at thousands of samples)."""
    from concurrent.futures import TimeoutError as Pending
    while True:
        try:
            return future.result(timeout=poll)
        except Pending:
            if stop is not None and stop.requested:
                return None


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------
def build(cfg, train_x):
    """Model, initial parameters and estimator state for cfg, centred on train_x's pixel means."""
    dtype = DTYPES[cfg.dtype]
    model = SBN(cfg.task, cfg.n_layer, cfg.n_hidden, cfg.nonlinear, train_x.mean(axis=0, dtype=np.float64))
    params = init_params(model, cfg.seed, dtype)
    aux = packed_copy(E.get(cfg.model).init_aux(model, cfg.seed + 1, dtype, cfg.estimator_options()))
    return model, params, aux


def train_step(est, model, params, aux, x, rng, opt, aux_opt, monitor, adam_cfg, aux_lr_scale, step,
               options=None):
    """One step: estimate the gradients on batch x; update the model with Adam, folding the
    gradient into the variance monitor in the same pass; then update the estimator's own
    parameters with aux_lr_scale times the learning rate. Both passes also check their
    gradient for NaN/inf. A NaN or inf raises TrainingDiverged after the updates: the
    parameters are then not usable (the last good checkpoint is on disk)."""
    res = est.estimate(model, params, aux, x, rng=rng, options=options)
    bad_model_grad = monitor.update_with_adam(params, res.grads, opt, adam_cfg)
    bad_aux_grad = adam_update(aux, res.aux_grads, aux_opt, adam_cfg, aux_lr_scale) if aux else None
    _check_finite(step, res, bad_model_grad, bad_aux_grad, aux)
    return res


def _binarize(grey, rng, dtype):
    return (rng.random(grey.shape) < grey).astype(dtype)


SMALL_BATCH = 256


def keep_freed_memory():
    """Let glibc keep freed memory in the process instead of returning it to the system.

    The evaluation allocates and frees the same few-megabyte arrays in every pass of every
    worker thread. With glibc's defaults they are mapped fresh and returned each time (the
    worker threads' arenas trim eagerly), so every page is faulted in again: a 5000-sample
    bound of 40 examples took 195,000 page faults and 5.6-6.2 minutes per 10,000 examples,
    against 30,000 (the imports) and 3.6-3.9 with arrays up to 32 MiB served from the heap
    and up to 256 MiB of free heap kept (both settings are needed). The training step, whose
    gradients and temporaries are fresh arrays every step, is served from the heap either way
    once the process has freed a big array (glibc then raises its thresholds itself, which
    loading the data does in `rebar-np train`); in a process that has not (the benchmark's),
    it faulted about 660 times a step: dynamic_rebar, 2-layer linear, batch 24, one core,
    5.0 ms a step against 3.6 with these settings. Returns False where there is no glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 256 << 20))


def step_blas_threads(batch_size):
    """Limit BLAS to one thread for small batches (unless the user set OMP/OPENBLAS_NUM_THREADS).

    At batch 24 a product takes tens of microseconds: a second BLAS thread costs more
    in hand-offs than it saves, and NumPy and SciPy (whose BLAS Numba calls) each run
    their own OpenBLAS pool, whose spinning threads steal each other's cores.
    Measured on 2 cores, dynamic_rebar 2-layer linear: 267 steps/s with one thread,
    189 with the libraries' defaults. The thread count can change a product's rounding,
    so it is the same in every process of a run (a resumed run repeats it bit for bit).
    Returns the threadpoolctl limiter (restore_original_limits() undoes it).
    """
    import scipy.linalg  # noqa: F401  loads the BLAS Numba's kernels call, so that the limit reaches it too
    from threadpoolctl import threadpool_limits
    user_set = any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    limit = 1 if batch_size < SMALL_BATCH and not user_set else None
    return threadpool_limits(limits=limit, user_api="blas")


class StepCores:
    """How many cores the training step's kernels use, one or two, chosen by timing both.

    The step's big products and optimizer passes are computed in two blocks whatever the
    number of cores (kernels/blocking.py, "Products on two cores"), so this choice changes the speed
    only, never the numbers. Which is faster depends on what else the machine is doing: on a
    quiet 2-core machine two cores make the 2-layer linear step 1.3-1.45x faster at batch 24,
    but when another process keeps the second core busy every step waits for it (two nvil
    trainings side by side: 7.2 ms a step each on two cores, 1.2 ms on one). So the loop
    measures: `probe` steps on one core, then on two, twice over, and keeps the faster for
    `every` steps, or until a window of `window` steps is `slack` times slower than measured;
    then it measures again. `available`: the most threads Numba may use (NUMBA_NUM_THREADS;
    1 keeps every step on one core). Only the time inside the step counts.
    """

    def __init__(self, available, probe=20, every=5000, window=200, slack=1.5):
        self.choices = [1, 2] if min(available, numba.config.NUMBA_NUM_THREADS) >= 2 else [1]
        self.probe, self.every, self.window, self.slack = probe, every, window, slack
        self.restore, self.current = numba.get_num_threads(), 0
        self._start_probe()

    def _start_probe(self):
        self.plan = [n for _ in range(2) for n in self.choices for _ in range(self.probe)] \
            if len(self.choices) > 1 else []
        self.times = {n: [] for n in self.choices}
        self._use(self.plan[0] if self.plan else self.choices[0])

    def _use(self, n):
        if n != self.current:
            numba.set_num_threads(n)
            self.current = n

    def record(self, seconds):
        """Account the step just run (its duration) and set the cores of the next one."""
        if self.plan:
            n = self.plan.pop(0)
            self.times[n].append(seconds)
            if self.plan:
                self._use(self.plan[0])
                return
            per_step = {n: float(np.median(t)) for n, t in self.times.items()}
            best = min(per_step, key=per_step.get)
            self.expected, self.since, self.window_time = per_step[best], 0, 0.0
            self._use(best)
            return
        if len(self.choices) == 1:
            return
        self.since += 1
        self.window_time += seconds
        if self.since % self.window == 0:
            slow = self.window_time / self.window > self.slack * self.expected
            self.window_time = 0.0
            if slow or self.since >= self.every:
                self._start_probe()

    def close(self):
        """Give the main thread back the threads it had."""
        numba.set_num_threads(self.restore)


@contextlib.contextmanager
def step_setting(batch_size, on_device=False):
    """The setting in which training steps run, for every loop of them (train, the variance
    comparison): freed arrays kept in the heap (keep_freed_memory), one BLAS thread at small
    batches (step_blas_threads) and the cores chosen by timing (StepCores: call its
    record(seconds) after every step). Without it a loop of steps on a loaded 2-core machine
    waited for the busy second core in every product: the variance comparison took about 1 s a
    step there instead of 0.1."""
    keep_freed_memory()           # the step's fresh arrays come from the heap, whatever was loaded
    blas = step_blas_threads(batch_size)
    cores = StepCores(1 if on_device else numba.get_num_threads())
    try:
        yield cores
    finally:
        blas.restore_original_limits()
        cores.close()


def train(cfg, data, log=print, progress=None, resume=None, recorder=None, stop=None):
    """Train cfg.model on data = {"train", "valid", "test"} arrays (N, D).

    log receives the report lines. Raises TrainingDiverged on a NaN or inf (the
    last good checkpoint, if an output folder is set, is left untouched).

    resume: a checkpoint of this configuration (checkpoint.load_checkpoint): training
    continues from it exactly as if it had never stopped (rebar_np.training.resume).
    recorder: receives report rows and the run's progress (rebar_np.training.rundir.RunRecorder);
    by default the one for cfg.output (config.json, metrics.h5, status.json), or none.
    stop: the StopFlag that turns Ctrl-C, SIGTERM and SIGHUP into a stop between two steps (or two
    evaluation chunks), after which the run saves a checkpoint and raises StopBetweenSteps (a
    KeyboardInterrupt). By default train() installs one for its duration; a caller that passes its
    own keeps it installed as long as it likes (the command line: until the process has exited).
    """
    cfg.validate()
    dtype = DTYPES[cfg.dtype]
    est = E.get(cfg.model)
    train_x = np.ascontiguousarray(data["train"], dtype=dtype)
    model, params, aux = build(cfg, train_x)
    check_params(model, params)
    eval_sets = {s: data[s] for s in ("valid", "test") if s in data}   # binary in both settings

    adam_cfg = AdamConfig(cfg.learning_rate, cfg.beta1, cfg.beta2, cfg.adam_eps)
    opt, aux_opt = adam_init(params), adam_init(aux)
    monitor = GradVariance(params, cfg.ema_decay)
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    rng_data, rng_noise = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    loop = LoopState()
    if resume is not None:
        loop = restore_state(resume, params, aux, opt, aux_opt, monitor, rng_noise)
        rng_data.bit_generator.state = loop.epoch_rng_state   # the epoch is replayed below

    on_device = cfg.device == "cuda"
    if on_device:      # from here on the parameters and the optimizer state stay in GPU memory
        params, aux = to_device(params), to_device(aux)
        for state in (opt, aux_opt):
            state["m"], state["v"] = to_device(state["m"]), to_device(state["v"])
        monitor.to_device()

    options = cfg.estimator_options()
    N, B = train_x.shape[0], cfg.batch_size
    if B > N:
        raise ValueError(f"batch-size {B} is larger than the training set ({N} examples)")
    steps_per_epoch = -(-N // B)
    report_every = cfg.report_every or steps_per_epoch
    result = TrainResult(model, params, aux, loop.step)
    ckpt_path = os.path.join(cfg.output, "checkpoint.h5") if cfg.output else ""
    recorder = recorder or recorder_for(cfg, data)
    recorder.start(loop.step, evaluating=loop.pending_row is not None)
    eval_on = bool(cfg.eval_every and eval_sets)
    # what the checkpoint file holds: (step, whether its row still waits for its evaluation)
    on_disk = (loop.step, loop.pending_row is not None) if resume is not None and ckpt_path else None

    writing = None                # the step of a checkpoint being written

    def save(step):
        nonlocal on_disk, writing
        loop.wall_time = time.perf_counter() - t_start
        recorder.flush()          # metrics always cover the checkpoint's step
        if ckpt_path:
            writing = step
            save_checkpoint(ckpt_path, step, asdict(cfg), to_host(params), to_host(aux),
                            {"model": to_host(opt), "aux": to_host(aux_opt)}, monitor.state(), model.mean_x,
                            train_state=capture_state(loop, monitor, rng_noise))
            result.checkpoint = ckpt_path
            on_disk, writing = (step, loop.pending_row is not None), None
            recorder.saved(step)

    def run_eval(step):
        row = {"step": step}
        for split, xs in eval_sets.items():
            row[split] = evaluate(model, params, xs, cfg.eval_samples, seed=cfg.seed + step,
                                  progress=bar.disable is False, desc=f"{split} bound", stop=stop)
        result.evals.append(row)
        log(f"Step {step}: " + ", ".join(f"{s} bound ({cfg.eval_samples} samples) {row[s]:.2f}"
                                         for s in eval_sets))
        return {f"{s}_bound": row[s] for s in eval_sets}

    def complete_row(step, with_eval):
        """Evaluate the model (with_eval) and write the row that waits for it in loop.pending_row.
        The evaluation's noise comes from seed + step alone, so evaluating after a resume gives
        the bounds the uninterrupted run had."""
        bounds = run_eval(step) if with_eval else {}
        recorder.report({**loop.pending_row, **bounds}, to_host(aux))
        loop.pending_row = None

    bar = tqdm(total=cfg.steps, initial=loop.step, unit="step", disable=(progress is False) or None,
               file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    step, t_report, last_report = loop.step, time.perf_counter(), loop.step
    t_start = t_report - loop.wall_time
    epoch_x = train_x
    setting = step_setting(B, on_device)
    cores = setting.__enter__()
    own_stop = stop is None
    stop = stop or StopFlag()

    def quit_now():
        """The third signal where the caller ends the process on it (StopFlag.exit_code): record
        and say what is on disk. Only status.json is written: the metrics rows after the
        checkpoint are logged again on --resume, those up to it were flushed when it was saved."""
        kept = on_disk[0] if on_disk else None
        if writing is not None:   # the rename may have happened: the file says which step it holds
            try:
                kept = checkpoint_step(cfg.output)
            except (OSError, ValueError):
                pass
        message = _interrupted_message(step, False, stop.signal_name, ckpt_path, kept, False)
        recorder.interrupted(step, message, flush=False)
        _say(message)
    stop.on_abandon = quit_now
    stop.plan = "finishing the current step or evaluation chunk, then " + (
        f"saving a checkpoint to {ckpt_path}" if ckpt_path else "stopping (no output folder: nothing saved)")
    # a diverging model overflows before the NaN check stops it: that check's one line says so, not NumPy
    numpy_errors = np.seterr(over="ignore", invalid="ignore", divide="ignore")
    try:
        if loop.pending_row is not None:   # stopped during the evaluation of its checkpoint's step
            result.history.append(loop.pending_row)
            complete_row(step, eval_on)
            save(step)
            if stop.requested:
                raise StopBetweenSteps
        while step < cfg.steps:
            loop.epoch_rng_state = rng_data.bit_generator.state
            if cfg.binarization == "dynamic":
                epoch_x = _binarize(train_x, rng_data, dtype)
            order = rng_data.permutation(N)
            if on_device:   # the epoch's batches, in order, copied to the GPU once
                epoch_dev = to_device(np.ascontiguousarray(epoch_x[order]))
            first = 0
            if resume is not None:       # the replayed epoch of a resumed run: continue mid-epoch
                if not np.array_equal(order, loop.order):
                    raise ValueError("the resumed epoch's data order differs from the checkpoint's "
                                     "(different data or NumPy version?)")
                first, resume = loop.position, None
            loop.order = order
            for start in range(first, N, B):
                if step >= cfg.steps:
                    break
                x = epoch_dev[start:start + B] if on_device else epoch_x[order[start:start + B]]
                t_step = time.perf_counter()
                res = train_step(est, model, params, aux, x, rng_noise, opt, aux_opt, monitor, adam_cfg,
                                 cfg.aux_lr_scale, step + 1, options)
                cores.record(time.perf_counter() - t_step)
                step += 1
                loop.step, loop.position = step, start + B
                loop.elbo_sum += float(np.sum(res.elbo, dtype=np.float64))
                loop.elbo_n += res.elbo.shape[0]
                if step % 50 == 0:
                    bar.update(50)
                epoch_done = step % steps_per_epoch == 0
                eval_due = eval_on and (
                    step == cfg.steps or (epoch_done and (step // steps_per_epoch) % cfg.eval_every == 0))
                if step % report_every == 0 or step == cfg.steps or eval_due:
                    now = time.perf_counter()
                    stats = res.stat_values()
                    row = {"step": step, "train_elbo": loop.elbo_sum / max(loop.elbo_n, 1),
                           "log_grad_var": monitor.log_variance(), "wall_time": now - t_start,
                           **stats}
                    rate = (step - last_report) / (now - t_report)
                    result.history.append(row)
                    log(f"Step {step}: train ELBO {row['train_elbo']:.2f}, "
                        f"log grad var {row['log_grad_var']:.3f}"
                        + "".join(f", {k} {v:.4g}" for k, v in stats.items())
                        + f", {rate:.0f} steps/s on {cores.current} core{'s' if cores.current > 1 else ''}")
                    loop.elbo_sum, loop.elbo_n = 0.0, 0
                    loop.pending_row = row
                    if eval_due:        # the steps are saved first: a stopped or killed evaluation loses none
                        save(step)
                    complete_row(step, eval_due)
                    t_report, last_report = time.perf_counter(), step
                if step == cfg.steps or (step % cfg.checkpoint_every == 0 if cfg.checkpoint_every else epoch_done):
                    save(step)
                if stop.requested and step < cfg.steps:      # (at the last step the run has finished)
                    raise StopBetweenSteps
        result.step = step
        recorder.finish(step)
    except (KeyboardInterrupt, SystemError) as err:
        if not _is_interrupt(err):
            raise
        bar.close()
        result.step = step
        saved = isinstance(err, StopBetweenSteps)       # params are a consistent state: save them
        if saved and ckpt_path and on_disk != (step, loop.pending_row is not None):
            try:
                save(step)
            except (KeyboardInterrupt, SystemError) as again:
                if not _is_interrupt(again):
                    raise
                saved = False     # a third signal abandoned the write; the file on disk is the previous one
        stop.settle()             # nothing is left to abandon: what remains is to say so, truthfully
        message = _interrupted_message(step, saved, stop.signal_name, ckpt_path, on_disk and on_disk[0],
                                       loop.pending_row is not None)
        recorder.interrupted(step, message)
        log(message)
        if saved:
            raise err
        raise KeyboardInterrupt(message) from None
    except TrainingDiverged as err:
        recorder.diverged(step, str(err))
        raise
    finally:
        if on_device:
            result.params, result.aux = to_host(params), to_host(aux)
        np.seterr(**numpy_errors)
        setting.__exit__(None, None, None)
        bar.close()
        recorder.close()
        stop.on_abandon = None
        if own_stop:
            stop.restore()
    return result


def _is_interrupt(err):
    """A KeyboardInterrupt, or the SystemError a C function raises when one lands inside it."""
    return isinstance(err, KeyboardInterrupt) or isinstance(err.__cause__ or err.__context__, KeyboardInterrupt)


def _interrupted_message(step, saved, signal_name, ckpt_path, kept_step, evaluating):
    """What an interrupted run says (log and status.json), true to what is on disk."""
    by = f" ({signal_name})" if signal_name else ""
    if saved:
        where = f"; checkpoint saved to {ckpt_path}" if ckpt_path else "; no output folder, nothing saved"
        redo = "; its evaluation was cut short and runs first on --resume" if evaluating and ckpt_path else ""
        return f"Interrupted at step {step}{where}{redo}{by}"
    if kept_step is not None:
        kept = f"the last checkpoint, of step {kept_step}, is kept in {ckpt_path}"
    else:
        kept = "no checkpoint was written" if ckpt_path else "no output folder"
    return f"Interrupted again after step {step}, quit without saving{by}; {kept}"


class StopBetweenSteps(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) honoured at a step boundary or between evaluation chunks (see StopFlag)."""


def _say(text):
    """One line on stderr from a signal handler: os.write, because the handler may run while the
    main thread is inside sys.stderr's own write (a reentrant call there raises)."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:       # stderr closed (the terminal went away with SIGHUP)
        pass


class StopFlag:
    """Turns Ctrl-C (SIGINT), SIGTERM (what schedulers and `kill` send before killing) and SIGHUP
    (the terminal was closed) into a request that the loop honours between two steps or two
    evaluation chunks, so that a signal never lands in the middle of a parameter update, a file
    write or a C call. Each signal is acknowledged at once on stderr.

    The handler never raises for the first two signals: a KeyboardInterrupt raised inside a C call
    or a finally block is what gave "SystemError: ... returned a result with an exception set" and
    a status.json left "running". Stopping is prompt without it (a step takes milliseconds, an
    evaluation chunk at most about a second). The `abandon_at`-th signal (3; None: never) raises
    KeyboardInterrupt, once, to quit at once without saving; later ones are only acknowledged.
    With `exit_code` (the command line, which exits anyway) that signal instead calls on_abandon
    (train() records the status and says which checkpoint is kept) and ends the process on the
    spot: a KeyboardInterrupt raised at an arbitrary point can land in a weakref callback or a
    C call and print a traceback. Every file is whole then: each is written to a temporary file
    and renamed, and a stale temporary is removed on the next start.
    `plan` and `again` say what the stop does, in the first acknowledgement and the next ones."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, plan="finishing the current step, then stopping", abandon_at=3,
                 again="at most a step or an evaluation chunk away", exit_code=None):
        self.signal_name, self._tickets, self._taken = None, itertools.count(1), []
        self.plan, self.abandon_at, self.again = plan, abandon_at, again
        self.exit_code, self.on_abandon = exit_code, None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @property
    def count(self):
        """The signals received so far."""
        return len(self._taken)

    @property
    def requested(self):
        return self.count > 0

    def _handle(self, signum, frame):
        # a handler can be interrupted by the next signal's, so each takes its number in one C call
        n = next(self._tickets)
        self._taken.append(n)
        name = signal.Signals(signum).name
        if n == 1:
            self.signal_name = name
        left = self.abandon_at - n if self.abandon_at else None
        more = (f" (Ctrl-C {'once' if left == 1 else 'twice'} more quits at once without saving)"
                if left and left > 0 else "")
        if n == 1:
            _say(f"Stopping ({name}): {self.plan}{more}")
        elif left is None or left > 0:
            _say(f"Already stopping ({name}): {self.again}{more}")
        elif left == 0:
            _say(f"Quitting at once ({name}), without saving")
            if self.exit_code is not None:
                self._exit()
            raise KeyboardInterrupt
        else:
            _say(f"Already quitting ({name})")

    def _exit(self):
        try:
            if self.on_abandon is not None:
                self.on_abandon()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:     # (a reentrant call: the handler interrupted a write to it)
                    pass
            os._exit(self.exit_code)

    def settle(self):
        """From now on signals are only acknowledged: the stop has saved what it could, and a
        KeyboardInterrupt while the run records its status would leave that status untrue."""
        self.abandon_at, self.again = None, "the run has stopped and is exiting"

    def restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


def _check_finite(step, res, bad_model_grad, bad_aux_grad, aux=None):
    """Raise TrainingDiverged naming the step and the first non-finite quantity: the ELBO, then
    the tensors that GradVariance.update_with_adam (or update) and adam_update found with a NaN
    or inf in their gradient, in the pass that used it (None: none), then a learned temperature
    (aux's tau, updated) that the next step could not use."""
    if not twin(all_finite, res.elbo)(res.elbo):
        raise TrainingDiverged(f"non-finite ELBO at step {step}")
    if bad_model_grad is not None:
        raise TrainingDiverged(f"non-finite model gradient of {bad_model_grad} at step {step}")
    if bad_aux_grad is not None:
        raise TrainingDiverged(f"non-finite estimator gradient of {bad_aux_grad} at step {step}")
    if aux is not None and "tau" in aux:
        # lambda = exp(tau) (dynamic_rebar, relax), computed by the function the next step calls (in
        # tau's own precision, so 0 in float32 from tau < -103.9): a finite but huge step of tau (a
        # learning rate far too large) makes it 0 or inf, and the relaxed sample divides by it
        with np.errstate(over="ignore", under="ignore"):
            lam = temperature(aux, None)
        if not 0 < lam < math.inf:
            raise TrainingDiverged(f"temperature exp(tau) is {lam:g} (tau {float(aux['tau'][0]):.3g}) "
                                   f"after step {step}")
