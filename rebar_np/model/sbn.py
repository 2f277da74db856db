"""The sigmoid belief network (docs/math.md, section "The SBN and its ELBO"): parameters, passes, ELBO.

Layers are numbered from 0 here (the REBAR paper numbers them from 1): b_0 is the layer
next to the data, b_{L-1} the top one.

Parameters are a dict of named arrays; weights are stored (fan_in, fan_out).
A *transform* T named ``name`` owns

- linear:     ``name.W`` (n_in, n_out), ``name.c`` (n_out,)          a = h W + c
- nonlinear:  ``name.W1`` (n_in, H), ``name.c1``, ``name.W2`` (H, H), ``name.c2``,
              ``name.W3`` (H, n_out), ``name.c3``
              a = tanh(tanh(h W1 + c1) W2 + c2) W3 + c3

The transforms of a model with L layers and H units per layer:

| transform | input                           | output  | role                       |
|-----------|---------------------------------|---------|----------------------------|
| ``q{l}``  | x - mean_x (l = 0), 2 b_{l-1} - 1 | H       | logits of q(b_l | .)       |
| ``p{l}``  | 2 b_l - 1                       | D (l=0), H | logits of p(x | b_0), p(b_{l-1} | b_l) |
| ``prior`` | (task sp only) x_top - mean_top | H       | logits of p(b_{L-1} | x_top) |

and task sbn/omni has the free vector ``prior.logits`` (H,) instead of the
``prior`` transform. Recognition parameters are the ``q*`` entries, generative
ones the ``p*`` and ``prior*`` entries.

Task ``sp`` (structured prediction) models the bottom half of the image given
the top half: q(b | x_top) and p(x_bottom, b | x_top) = p(b_{L-1} | x_top)
prod_l p(b_{l-1} | b_l) p(x_bottom | b_0), all L stochastic layers on both
sides (the TF reference collapses the generative side to one layer; we do not).
The top half conditions p through the prior of the top latent layer.

The data-bias term logit(clip(mean_x, 0.001, 0.999)) is added to the logits of
p(x | b_0); it is a constant, not a parameter.
"""
from dataclasses import dataclass, field

import numpy as np

from ..kernels.dispatch import K, contiguous, full, zeros
from ..kernels.dispatch import empty_like as _empty_like, zeros_like as _zeros_like
from .packed import Packed, packed_copy, packed_zeros

TASKS = ("sbn", "omni", "sp")
SUBLAYERS = ("1", "2", "3")  # the three dense layers of a nonlinear transform


class ModelError(ValueError):
    """An impossible model configuration (one-line message)."""


@dataclass(frozen=True)
class SBN:
    """Architecture and data statistics of one SBN; holds no trainable state.

    mean_x: (n_input,) per-pixel mean of the training set (float64).
    """
    task: str
    n_layer: int
    n_hidden: int
    nonlinear: bool
    mean_x: np.ndarray = field(repr=False)
    # per-dtype constants derived from mean_x (q_input's centring row, the data bias), made once
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ModelError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.n_layer < 1:
            raise ModelError(f"n_layer must be at least 1, got {self.n_layer}")
        if self.n_hidden < 1:
            raise ModelError(f"n_hidden must be at least 1, got {self.n_hidden}")
        mean_x = np.asarray(self.mean_x, dtype=np.float64)
        if mean_x.ndim != 1 or mean_x.size < (2 if self.task == "sp" else 1):
            raise ModelError(f"mean_x must be a vector of pixel means, got shape {mean_x.shape}")
        object.__setattr__(self, "mean_x", mean_x)

    # ---- how the data enter ---------------------------------------------
    @property
    def n_input(self):
        return self.mean_x.size

    @property
    def n_cond(self):
        """Width of q's input: all pixels, or the top half for task sp."""
        return self.n_input // 2 if self.task == "sp" else self.n_input

    @property
    def n_target(self):
        """Number of pixels p models: all, or the bottom half for task sp."""
        return self.n_input - self.n_input // 2 if self.task == "sp" else self.n_input

    def _constant(self, name, dtype, make):
        """make() in dtype, computed once per (name, dtype) and read-only."""
        key = (name, np.dtype(dtype))
        value = self._constants.get(key)
        if value is None:
            value = np.ascontiguousarray(make(), dtype=dtype)
            value.flags.writeable = False
            self._constants[key] = value
        return value

    def q_input(self, x):
        """x - mean_x (or x_top - mean_top for sp), in x's dtype: input of q0 (and of prior for sp)."""
        n = self.n_cond
        return contiguous(x[:, :n] - self._constant("mean_cond", x.dtype, lambda: self.mean_x[:n]))

    def target(self, x):
        """The pixels p(x | b_0) scores: x, or x_bottom for sp."""
        return contiguous(x[:, self.n_input - self.n_target:])

    def data_bias(self, dtype):
        """logit(clip(mean, 0.001, 0.999)) of the target pixels, added to p(x | b_0)'s logits."""
        def bias():
            m = np.clip(self.mean_x[self.n_input - self.n_target:], 0.001, 0.999)
            return np.log(m) - np.log1p(-m)
        return self._constant("data_bias", dtype, bias)

    def check_batch(self, x):
        if x.ndim != 2 or x.shape[1] != self.n_input:
            raise ModelError(f"batch must have shape (B, {self.n_input}), got {x.shape}")

    # ---- parameter layout -------------------------------------------------
    def transforms(self):
        """[(name, n_in, n_out)] for every transform, recognition first."""
        H = self.n_hidden
        out = [(f"q{l}", self.n_cond if l == 0 else H, H) for l in range(self.n_layer)]
        out += [(f"p{l}", H, self.n_target if l == 0 else H) for l in range(self.n_layer)]
        if self.task == "sp":
            out.append(("prior", self.n_cond, H))
        return out

    def param_shapes(self):
        """{name: shape} of every model parameter (see the module docstring)."""
        shapes = {}
        for name, n_in, n_out in self.transforms():
            shapes.update(transform_shapes(name, n_in, n_out, self.n_hidden, self.nonlinear))
        if self.task != "sp":
            shapes["prior.logits"] = (self.n_hidden,)
        return shapes


def is_recognition(name):
    """True for parameters of q (the ones that need a gradient estimator)."""
    return name.startswith("q")


def transform_shapes(name, n_in, n_out, n_hidden, nonlinear):
    if not nonlinear:
        return {f"{name}.W": (n_in, n_out), f"{name}.c": (n_out,)}
    dims = [n_in, n_hidden, n_hidden, n_out]
    shapes = {}
    for k, sub in enumerate(SUBLAYERS):
        shapes[f"{name}.W{sub}"] = (dims[k], dims[k + 1])
        shapes[f"{name}.c{sub}"] = (dims[k + 1],)
    return shapes


def init_params(model, seed=0, dtype=np.float32):
    """Fan-in scaled Gaussian weights, W ~ N(0, 2 / fan_in); biases and prior logits 0.

    The variance 2 / fan_in matches the TF reference's variance-scaling initializer.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in model.param_shapes().items():
        if len(shape) == 2:
            params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / shape[0])).astype(dtype)
        else:
            params[name] = np.zeros(shape, dtype=dtype)
    return packed_copy(params)


def zeros_like(params):
    """Zero arrays mirroring params (in the memory params live in; in one buffer, as params, when
    params is a Packed dict, so that Adam updates the whole gradient in one call: model/packed.py)."""
    if isinstance(params, Packed):
        return packed_zeros(params)
    return {k: _zeros_like(v) for k, v in params.items()}


def empty_like(params):
    """Uninitialised arrays mirroring params, for gradients whose every entry is then written."""
    if isinstance(params, Packed):
        return packed_zeros(params, fill=False)
    return {k: _empty_like(v) for k, v in params.items()}


def check_params(model, params):
    """Raise ModelError unless params has exactly the model's names and shapes."""
    shapes = model.param_shapes()
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ModelError(f"parameters do not fit the model: missing {missing}, unexpected {extra}")
    for k, shape in shapes.items():
        if params[k].shape != shape:
            raise ModelError(f"parameter {k} has shape {params[k].shape}, the model needs {shape}")


# --------------------------------------------------------------------------
# Transforms: a = T(h)
# --------------------------------------------------------------------------
def transform_forward(params, name, h, nonlinear):
    """a = T_name(h). Returns (a, cache) where cache holds what the backward needs:
    linear: (h,);  nonlinear: (h, h1, h2) with h1 = tanh(h W1 + c1), h2 = tanh(h1 W2 + c2).
    """
    W, c = first_layer(name, nonlinear)
    return transform_forward_after_first(params, name, K.dense_forward(h, params[W], params[c]), h, nonlinear)


def first_layer(name, nonlinear):
    """Names of (W, c) of T_name's first dense layer, the one that sees T's input."""
    return (f"{name}.W1", f"{name}.c1") if nonlinear else (f"{name}.W", f"{name}.c")


def transform_forward_after_first(params, name, a1, h, nonlinear):
    """transform_forward given a1 = h W + c of its first dense layer: (a, cache)."""
    if not nonlinear:
        return a1, (h,)
    h1 = K.tanh_forward(a1)
    h2 = K.tanh_forward(K.dense_forward(h1, params[name + ".W2"], params[name + ".c2"]))
    a = K.dense_forward(h2, params[name + ".W3"], params[name + ".c3"])
    return a, (h, h1, h2)


def transform_backward(params, grads, name, cache, da, nonlinear, need_dh, accumulate=True):
    """Backward of a = T_name(h): accumulates dL/d(params of T) into grads, returns dL/dh
    (an empty array when need_dh is False). With grads=None only dL/dh is computed.
    accumulate=False writes T's gradients instead (they may arrive uninitialised: empty_like).

    nonlinear, by the chain rule through the three dense layers:
      dL/dh2 = dL/da W3^T;  dL/d(pre2) = dL/dh2 (1 - h2^2);  dL/dh1 = dL/d(pre2) W2^T;
      dL/d(pre1) = dL/dh1 (1 - h1^2);  dL/dh = dL/d(pre1) W1^T.
    """
    if grads is None:
        return transform_backward_input(params, name, cache, da, nonlinear)
    if not nonlinear:
        (h,) = cache
        return K.dense_backward(h, params[name + ".W"], da, grads[name + ".W"], grads[name + ".c"], need_dh,
                                accumulate)
    h, h1, h2 = cache
    dh2 = K.dense_backward(h2, params[name + ".W3"], da, grads[name + ".W3"], grads[name + ".c3"], True, accumulate)
    dh1 = K.dense_backward(h1, params[name + ".W2"], K.tanh_backward(h2, dh2),
                           grads[name + ".W2"], grads[name + ".c2"], True, accumulate)
    return K.dense_backward(h, params[name + ".W1"], K.tanh_backward(h1, dh1),
                            grads[name + ".W1"], grads[name + ".c1"], need_dh, accumulate)


def transform_backward_input(params, name, cache, da, nonlinear):
    """Only dL/dh of a = T_name(h) (the relaxed passes need no parameter gradients)."""
    if not nonlinear:
        return K.dense_backward_input(params[name + ".W"], da)
    h, h1, h2 = cache
    dh2 = K.dense_backward_input(params[name + ".W3"], da)
    dh1 = K.dense_backward_input(params[name + ".W2"], K.tanh_backward(h2, dh2))
    return K.dense_backward_input(params[name + ".W1"], K.tanh_backward(h1, dh1))


_EMPTY = {np.dtype(np.float32): (np.empty((0, 0), np.float32), np.empty(0, np.float32)),
          np.dtype(np.float64): (np.empty((0, 0), np.float64), np.empty(0, np.float64))}


def transform_tangent(params, name, cache, h_dot, nonlinear, direction=None):
    """Forward mode of a = T_name(h): the tangent a_dot along an input tangent h_dot
    and/or a parameter direction (a dict with the same keys as params, e.g. a
    gradient), either of which may be None.

    linear:     a_dot = h_dot W + h W_dot + c_dot
    nonlinear:  pre1_dot = h_dot W1 + h W1_dot + c1_dot,  h1_dot = (1 - h1^2) pre1_dot,
                pre2_dot = h1_dot W2 + h1 W2_dot + c2_dot,  h2_dot = (1 - h2^2) pre2_dot,
                a_dot = h2_dot W3 + h2 W3_dot + c3_dot.
    Returns (a_dot, tcache) where tcache = (h1_dot, h2_dot) (nonlinear) is what
    transform_backward_input_tangent needs.
    """
    e2, e1 = _EMPTY[np.dtype(cache[0].dtype)]
    d = (lambda k: direction[name + k]) if direction is not None else (lambda k: None)
    if not nonlinear:
        (h,) = cache
        W_dot, c_dot = d(".W"), d(".c")
        a_dot = K.dense_tangent(e2 if h_dot is None else h_dot, params[name + ".W"], h,
                                e2 if W_dot is None else W_dot, e1 if c_dot is None else c_dot)
        return a_dot, ()
    h, h1, h2 = cache
    hd = e2 if h_dot is None else h_dot
    for k, (hin, hout) in enumerate(((h, h1), (h1, h2))):
        sub = SUBLAYERS[k]
        W_dot, c_dot = d(".W" + sub), d(".c" + sub)
        pre_dot = K.dense_tangent(hd, params[name + ".W" + sub], hin,
                                  e2 if W_dot is None else W_dot, e1 if c_dot is None else c_dot)
        hd = K.tanh_tangent(hout, pre_dot)
        if k == 0:
            h1_dot = hd
    W_dot, c_dot = d(".W3"), d(".c3")
    a_dot = K.dense_tangent(hd, params[name + ".W3"], h2, e2 if W_dot is None else W_dot,
                            e1 if c_dot is None else c_dot)
    return a_dot, (h1_dot, hd)


def transform_backward_input_tangent(params, name, cache, tcache, da, da_dot, nonlinear):
    """The input gradient dL/dh of a = T_name(h) together with its forward-mode tangent
    (parameters fixed, the cache's activations moving with tangents tcache):

    linear:     dh = da W^T,  dh_dot = da_dot W^T
    nonlinear:  dh2 = da W3^T;  dpre2 = dh2 (1 - h2^2);  dh1 = dpre2 W2^T;  dpre1 = dh1 (1 - h1^2);  dh = dpre1 W1^T
                and each line's tangent, where (1 - h^2)_dot = -2 h h_dot (tanh_backward_tangent).
    Returns (dh, dh_dot).
    """
    if not nonlinear:
        W = params[name + ".W"]
        return K.dense_backward_input(W, da), K.dense_backward_input(W, da_dot)
    h, h1, h2 = cache
    h1_dot, h2_dot = tcache
    W1, W2, W3 = params[name + ".W1"], params[name + ".W2"], params[name + ".W3"]
    dh2, dh2_dot = K.dense_backward_input(W3, da), K.dense_backward_input(W3, da_dot)
    dpre2, dpre2_dot = K.tanh_backward(h2, dh2), K.tanh_backward_tangent(h2, h2_dot, dh2, dh2_dot)
    dh1, dh1_dot = K.dense_backward_input(W2, dpre2), K.dense_backward_input(W2, dpre2_dot)
    dpre1, dpre1_dot = K.tanh_backward(h1, dh1), K.tanh_backward_tangent(h1, h1_dot, dh1, dh1_dot)
    return K.dense_backward_input(W1, dpre1), K.dense_backward_input(W1, dpre1_dot)


# --------------------------------------------------------------------------
# Recognition network q(b | x)
# --------------------------------------------------------------------------
@dataclass
class QLayer:
    """One stochastic layer of a recognition pass: logits a, the value s the layer
    passed upward (hard b, relaxed s or mean mu), the transform's cache, and (once
    log_q_layers has run) sig = sigma(a), the log-likelihood's cache."""
    a: np.ndarray
    s: np.ndarray
    cache: tuple
    sig: np.ndarray = None


def recognition_forward(model, params, h0, sample):
    """Run q layer by layer: a_l = T_ql(h_l), s_l = sample(l, a_l), h_{l+1} = 2 s_l - 1.

    h0 = model.q_input(x). ``sample(l, a)`` chooses the kind of pass: hard
    samples, relaxed samples or the mean field (see hard_sampler, mean_sampler).
    """
    layers = []
    h = h0
    for l in range(model.n_layer):
        a, cache = transform_forward(params, f"q{l}", h, model.nonlinear)
        s = sample(l, a)
        layers.append(QLayer(a, s, cache))
        h = 2.0 * s - 1.0
    return layers


def hard_sampler(z0):
    """Sampler for recognition_forward: b_l = 1[a_l + z0_l > 0]."""
    return lambda l, a: K.hard_sample_forward(a, z0[l])


def mean_sampler(l, a):
    """Sampler for recognition_forward: the mean field mu_l = sigma(a_l)."""
    return K.mean_sample_forward(a)


def log_q_layers(layers):
    """[log q(s_l | .) per layer], each (B,): log B(s_l; a_l). Stores sigma(a_l) in each layer."""
    logq = []
    for q in layers:
        ll, q.sig = K.bernoulli_loglik_forward(q.s, q.a)
        logq.append(ll)
    return logq


def score_backward(model, params, grads, layers, dlogq, accumulate=True):
    """Accumulate sum_l dL/dlogq_l * d log q(b_l | b_{l-1}) / d theta_q into grads
    (accumulate=False: write it, see transform_backward).

    The inputs of every layer are held fixed (hard samples are not differentiated),
    so each layer contributes  dL/da_l = dL/dlogq[:, None] (b_l - sigma(a_l))
    backpropagated through T_ql alone. dlogq: (B,) or a list of L such arrays
    (one weight per layer, as MuProp and per-layer REBAR need).
    """
    for l, q in enumerate(layers):
        w = dlogq[l] if isinstance(dlogq, list) else dlogq
        da = K.bernoulli_loglik_backward(q.s, q.sig, w)
        transform_backward(params, grads, f"q{l}", q.cache, da, model.nonlinear, False, accumulate)


# --------------------------------------------------------------------------
# Generative network p(x, b)
# --------------------------------------------------------------------------
@dataclass
class PPass:
    """What the generative backward needs: logits, sigma(logits) and caches per term,
    and each term's value. Entries below ``from_layer`` were not computed (None)."""
    prior_logits: np.ndarray     # (B, H) logits of the top layer
    prior_sig: np.ndarray        # sigma(prior_logits)
    prior_cache: tuple | None    # transform cache of the sp prior
    prior_term: np.ndarray       # (B,) log B(s_{L-1}; prior logits)
    logits: list                 # logits[l]: of p(b_{l-1} | b_l) for l >= 1, of p(x | b_0) for l = 0
    sigs: list                   # sigma(logits[l])
    caches: list
    terms: list                  # terms[l]: (B,) log B(y_{l-1}; logits[l]), y_{-1} = target(x)
    from_layer: int = 0


def prior_logits_forward(model, params, x, dtype):
    """Logits of p(b_{L-1}): the free vector (sbn, omni) or T_prior(x_top - mean_top) (sp)."""
    if model.task == "sp":
        return transform_forward(params, "prior", model.q_input(x), model.nonlinear)
    prior_logits = full((x.shape[0], model.n_hidden), 0.0, dtype, like=x)
    prior_logits[:] = params["prior.logits"]
    return prior_logits, None


def generative_forward(model, params, x, samples, from_layer=0, prior=None):
    """log p(x, s) = log B(s_{L-1}; prior) + sum_{l>=1} log B(s_{l-1}; T_pl(2 s_l - 1))
                     + log B(target(x); T_p0(2 s_0 - 1) + data_bias).

    samples: [s_0 .. s_{L-1}] (hard or relaxed values), each (B, H).
    from_layer: compute only the prior term and the terms l >= from_layer (the
    ones that see samples[from_layer:]); the returned logp is their sum.
    prior: (logits, cache) to reuse, since the prior does not depend on the samples.
    Returns (logp (B,), PPass).
    """
    dtype = samples[-1].dtype
    prior_logits, prior_cache = prior if prior is not None else prior_logits_forward(model, params, x, dtype)
    prior_term, prior_sig = K.bernoulli_loglik_forward(samples[-1], prior_logits)
    L = model.n_layer
    logits, sigs, caches, terms = [None] * L, [None] * L, [None] * L, [None] * L
    logp = prior_term
    for l in range(L - 1, from_layer - 1, -1):
        a, cache = transform_forward(params, f"p{l}", 2.0 * samples[l] - 1.0, model.nonlinear)
        if l == 0:
            a += model.data_bias(dtype)
        ll, sig = K.bernoulli_loglik_forward(model.target(x) if l == 0 else samples[l - 1], a)
        logp = logp + ll
        logits[l], sigs[l], caches[l], terms[l] = a, sig, cache, ll
    return logp, PPass(prior_logits, prior_sig, prior_cache, prior_term, logits, sigs, caches, terms,
                       from_layer)


def generative_backward(model, params, grads, x, samples, pp, dlogp, need_ds, accumulate=True):
    """Accumulate dL/d theta_p = dL/dlogp * d log p(x, s) / d theta_p into grads
    (grads=None: skip the parameter gradients; accumulate=False: write them, see
    transform_backward; only with from_layer = 0, where every term is computed).

    Each term log B(y; a) contributes dL/da = dL/dlogp (y - sigma(a)) to its
    transform. When need_ds (relaxed samples), also returns dL/ds_l for every
    layer l >= pp.from_layer, where s_l enters twice: as the scored value y of
    the term above it (d log B / dy = a) and, through h = 2 s_l - 1, as the input
    of T_pl (dL/ds_l = 2 dL/dh). Returns None when need_ds is False.
    """
    L = model.n_layer
    ds = [None] * L
    if not accumulate and pp.from_layer:
        raise ValueError("generative_backward writes (accumulate=False) only a full pass (from_layer = 0)")
    # prior term: log B(s_{L-1}; prior logits)
    if grads is not None:
        da = K.bernoulli_loglik_backward(samples[-1], pp.prior_sig, dlogp)
        if model.task == "sp":
            transform_backward(params, grads, "prior", pp.prior_cache, da, model.nonlinear, False, accumulate)
        elif accumulate:
            grads["prior.logits"] += da.sum(axis=0)
        else:
            grads["prior.logits"][:] = da.sum(axis=0)
    if need_ds:
        ds[L - 1] = K.bernoulli_loglik_backward_sample(pp.prior_logits, dlogp)
    for l in range(L - 1, pp.from_layer - 1, -1):
        y = model.target(x) if l == 0 else samples[l - 1]
        da = K.bernoulli_loglik_backward(y, pp.sigs[l], dlogp)
        dh = transform_backward(params, grads, f"p{l}", pp.caches[l], da, model.nonlinear, need_ds, accumulate)
        if need_ds:
            ds[l] += 2.0 * dh                       # through h = 2 s_l - 1
            if l > pp.from_layer:                   # s_{l-1} is the value scored by this term
                ds[l - 1] = K.bernoulli_loglik_backward_sample(pp.logits[l], dlogp)
    return ds if need_ds else None


# --------------------------------------------------------------------------
# The hard ELBO and the importance-weighted bound
# --------------------------------------------------------------------------
@dataclass
class HardPass:
    """A hard-sample evaluation of f(b) = log p(x, b) - log q(b | x)."""
    layers: list        # QLayer per stochastic layer (s = hard b)
    logq: list          # log q(b_l | .) per layer, (B,)
    logp: np.ndarray    # (B,)
    pp: PPass
    f: np.ndarray       # (B,) the ELBO sample

    @property
    def b(self):
        return [q.s for q in self.layers]


def hard_pass(model, params, x, z0):
    """Sample b from q with logistic noise z0 and evaluate f(b) = log p(x, b) - sum_l log q(b_l | .)."""
    layers = recognition_forward(model, params, model.q_input(x), hard_sampler(z0))
    logq = log_q_layers(layers)
    b = [q.s for q in layers]
    logp, pp = generative_forward(model, params, x, b)
    return HardPass(layers, logq, logp, pp, logp - sum(logq))


def draw_noise(model, batch_size, rng, dtype=np.float32):
    """Uniform noise u_l ~ U(0, 1)^{B x H}, one array per stochastic layer."""
    return [rng.random((batch_size, model.n_hidden)).astype(dtype) for _ in range(model.n_layer)]


def check_noise(model, u, batch_size):
    if len(u) != model.n_layer:
        raise ModelError(f"need {model.n_layer} noise arrays (one per layer), got {len(u)}")
    for l, ul in enumerate(u):
        if ul.shape != (batch_size, model.n_hidden):
            raise ModelError(f"noise of layer {l} has shape {ul.shape}, "
                             f"need {(batch_size, model.n_hidden)}")


def hard_pass_at(model, params, x, b):
    """f and its terms at *given* hard samples b (held fixed while params move: for checks)."""
    layers = recognition_forward(model, params, model.q_input(x), lambda l, a: b[l])
    logq = log_q_layers(layers)
    logp, pp = generative_forward(model, params, x, b)
    return HardPass(layers, logq, logp, pp, logp - sum(logq))


def score_function_gradient(model, params, x, hp, signal, recognition=True):
    """The loss gradient of the score-function family, averaged over the batch:

        dL/d theta_q = -(1/B) sum_n signal_n  sum_l d log q(b_{n,l} | .) / d theta_q
        dL/d theta_p = -(1/B) sum_n d log p(x_n, b_n) / d theta_p

    signal: (B,) learning signal (held constant), or a list of L per-layer signals.
    The direct term -d log q / d theta_q of f is left out: its expectation is 0,
    as in the TF reference.
    recognition=False computes dL/d theta_p only: the recognition tensors are returned
    uninitialised, for a caller that writes them itself (REBAR, with its control variates).
    """
    B = x.shape[0]
    grads = empty_like(params)          # every tensor receives exactly one product below, written
    if recognition:
        dlogq = [-s / B for s in signal] if isinstance(signal, list) else -signal / B
        score_backward(model, params, grads, hp.layers, dlogq, accumulate=False)
    dlogp = full(B, -1.0 / B, hp.f.dtype, like=hp.f)
    generative_backward(model, params, grads, x, hp.b, hp.pp, dlogp, False, accumulate=False)
    return grads


def score_function_surrogate(model, params, x, b, signal):
    """The scalar whose gradient score_function_gradient computes, with b and signal fixed:
    -(1/B) sum_n [ signal_n sum_l log q(b_{n,l} | .) + log p(x_n, b_n) ]."""
    hp = hard_pass_at(model, params, x, b)
    if isinstance(signal, list):
        weighted = sum(s * lq for s, lq in zip(signal, hp.logq))
    else:
        weighted = signal * sum(hp.logq)
    return -float(np.mean(weighted + hp.logp))
