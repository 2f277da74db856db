"""The TF reference implementation's vocabulary: its ``--hparams`` string, mapped to our settings.

The reference (tensorflow/models, research/rebar) is run as
``rebar_train.py --hparams="model=SBNDynamicRebar,learning_rate=0.0003,n_layer=2,task=sbn"``:
comma-separated name=value pairs over these keys (its defaults in brackets):

    model              SBN (REINFORCE) -> reinforce, SBNNVIL -> nvil, SBNMuProp -> muprop,
                       SBNSimpleMuProp -> simple_muprop, SBNRebar -> rebar,
                       SBNDynamicRebar -> dynamic_rebar, SBNGumbel -> concrete [SBNGumbel];
                       SBNTrackGradVariances is not a training run: `rebar-np variance`
    n_hidden           units per stochastic layer [200]
    n_input            pixels; must be what the task's data have (784) [784]
    n_layer            stochastic layers [1]
    nonlinear          True: dense-tanh x2 then dense between layers [False]
    learning_rate      [0.001]
    temperature        fixed or initial lambda [0.5]
    n_samples          samples per example in training; only 1 is supported [1]
    batch_size         [24]
    muprop_relaxation  True: relaxation "muprop", False: "concrete" [True]
    dynamic_b          True: binarization "dynamic", False: "fixed" [False]
    quadratic          True: one control variate per layer, with the reference's conditioning
                       (condition_above: every layer from the switch layer up carries its
                       conditional derivative, which is biased from two layers up; rebar-np's own
                       per-layer estimator conditions the switch layer only), False: the joint one [True]
    beta2              Adam beta2 [0.99999]
    task               sbn, omni or sp [sbn]
    trial              the reference's label for repeated runs; here the seed [1]

Keys absent from the string keep *our* defaults, which equal the reference's
except model (dynamic_rebar), n_layer (2), learning_rate (3e-4) and quadratic: an
absent quadratic runs rebar-np's unbiased per-layer estimator, quadratic=True the
reference's own (`rebar-np unbiased --model rebar --n-layer 2 --condition-above`
shows its bias). So a string runs exactly what the same settings given as flags run.
"""

MODELS = {
    "SBN": "reinforce",
    "SBNNVIL": "nvil",
    "SBNMuProp": "muprop",
    "SBNSimpleMuProp": "simple_muprop",
    "SBNRebar": "rebar",
    "SBNDynamicRebar": "dynamic_rebar",
    "SBNGumbel": "concrete",
}
TRACK_VARIANCES = "SBNTrackGradVariances"

# key -> (type of its value, our setting, value -> our value)
KEYS = {
    "model": (str, "model", None),
    "n_hidden": (int, "n_hidden", None),
    "n_input": (int, None, None),
    "n_layer": (int, "n_layer", None),
    "nonlinear": (bool, "nonlinear", None),
    "learning_rate": (float, "learning_rate", None),
    "temperature": (float, "temperature", None),
    "n_samples": (int, None, None),
    "batch_size": (int, "batch_size", None),
    "muprop_relaxation": (bool, "relaxation", lambda v: "muprop" if v else "concrete"),
    "dynamic_b": (bool, "binarization", lambda v: "dynamic" if v else "fixed"),
    "quadratic": (bool, "joint", lambda v: not v),
    "beta2": (float, "beta2", None),
    "task": (str, "task", None),
    "trial": (int, "seed", None),
}
REFERENCE_KEY = {ours: key for key, (_, ours, _) in KEYS.items() if ours}   # our setting -> its hparams key
REFERENCE_KEY["condition_above"] = "quadratic"   # quadratic=True is the per-layer estimator *with* it
N_INPUT = 784   # pixels of every task's images (sp: q sees the top half, p models the bottom)


class HparamsError(ValueError):
    """An hparams string we cannot run (one-line message)."""


def _parse_value(key, typ, text):
    if typ is bool:
        low = text.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise HparamsError(f"hparams {key}={text}: expected True or False")
    try:
        return typ(text)
    except ValueError:
        raise HparamsError(f"hparams {key}={text}: expected {'an integer' if typ is int else 'a number'}") from None


def parse_hparams(text):
    """{reference key: typed value} of "key=value,key=value" (TF HParams.parse syntax)."""
    out = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip().strip("'\"")
        if not eq or not key:
            raise HparamsError(f"hparams entry {item!r} is not of the form name=value")
        if key not in KEYS:
            raise HparamsError(f"unknown hparams key {key!r}; known: {', '.join(KEYS)}")
        if key in out:
            raise HparamsError(f"hparams key {key!r} is given twice")
        out[key] = _parse_value(key, KEYS[key][0], value)
    return out


def variance_command(settings):
    """The `rebar-np variance` command line that does what SBNTrackGradVariances did: follow
    SimpleMuProp and track the gradient variance of NVIL, MuProp and (dynamic) REBAR."""
    flags = {"n_layer": "--n-layer", "n_hidden": "--n-hidden", "batch_size": "--batch-size", "task": "--task",
             "learning_rate": "--learning-rate", "temperature": "--temperature", "relaxation": "--relaxation",
             "seed": "--seed"}
    parts = ["rebar-np variance --follow simple_muprop"]
    for k, flag in flags.items():
        if k in settings:
            parts.append(f"{flag} {settings[k]}")
    if "nonlinear" in settings:
        parts.append("--nonlinear" if settings["nonlinear"] else "--linear")
    return " ".join(parts)


def hparams_labels(settings):
    """How errors name each of our settings that came from an hparams string: "--hparams: <its key>"."""
    return {k: f"--hparams: {REFERENCE_KEY[k]}" for k in settings if k in REFERENCE_KEY}


def hparams_settings(text):
    """Our training settings (TrainConfig field -> value) for a reference hparams string, each checked
    as every setting is (rebar_np.training.train.check_settings)."""
    from .train import SettingError, check_settings
    settings = {}
    parsed = parse_hparams(text)
    for key, value in parsed.items():
        _, ours, convert = KEYS[key]
        if ours is not None:
            settings[ours] = convert(value) if convert else value
    if parsed.get("quadratic"):
        settings["condition_above"] = True
    model = parsed.get("model")
    if model is not None:
        if model == TRACK_VARIANCES:
            del settings["model"]
            raise HparamsError(f"model={TRACK_VARIANCES} tracks gradient variances instead of training; run: "
                               + variance_command(settings))
        if model not in MODELS:
            raise HparamsError(f"unknown hparams model {model!r}; known: {', '.join([*MODELS, TRACK_VARIANCES])}")
        settings["model"] = MODELS[model]
    if parsed.get("n_input", N_INPUT) != N_INPUT:
        raise HparamsError(f"hparams n_input={parsed['n_input']}: the images of every task have {N_INPUT} pixels")
    if parsed.get("n_samples", 1) != 1:
        raise HparamsError(f"hparams n_samples={parsed['n_samples']}: training draws one sample per example; "
                           "only n_samples=1 is supported (use batch_size for more samples per step)")
    try:
        return check_settings(settings, hparams_labels(settings))
    except SettingError as err:
        raise HparamsError(str(err)) from None
