"""The matrix products of one training step, counted analytically per estimator.

    products = step_products("dynamic_rebar", n_layer=2, nonlinear=False, B=24)
    step_macs("dynamic_rebar", 2, False, 24)          # = sum(p.macs for p in products)
    step_products("vimco", 2, False, 24, options={"samples": 5})   # options: see step_products

A dense layer a = h W + c with h (B, i) and W (i, o) costs B i o multiply-adds in
each of the five products a step can run on it (model/sbn.py / kernels/ names), and
B^2 (i + o) in the sixth, REBAR's Gram route (two products through the (B, B) Gram matrix):

| kind    | product         | shapes                | where                                     |
|---------|-----------------|-----------------------|-------------------------------------------|
| fwd     | a = h W         | (B, i) @ (i, o)       | dense_forward                             |
| dW      | dW += h^T da    | (i, B) @ (B, o)       | dense_backward (parameter gradient)       |
| dh      | dh = da W^T     | (B, o) @ (o, i)       | dense_backward(need_dh) / _backward_input |
| tan_in  | a_dot = h_dot W | (B, i) @ (i, o)       | dense_tangent, input direction            |
| tan_par | a_dot = h W_dot | (B, i) @ (i, o)       | dense_tangent, parameter direction        |
| gram    | h (h^T d)       | (B, i) @ (i, B), then (B, B) @ (B, o) | gram_tangent              |

A transform T (SPEC section 1) is one dense layer (linear) or three, (n_in, H),
(H, H), (H, n_out) with tanh between them (nonlinear). Its passes cost, per dense
layer of T (model/sbn.py):

- forward:                          fwd
- backward with parameter gradients: dW, and dh except on the first layer unless
  the input gradient is needed (hard inputs need none)
- backward_input (no parameters):    dh
- tangent along the input:           tan_in
- tangent along a parameter direction: tan_par, plus tan_in on every layer but the first
  (the hidden activations move too)
- backward_input_tangent:            dh twice (dh and dh_dot)

and a step of each estimator runs these passes (L stochastic layers, sbn task:
q_l, p_l for l < L, the prior is a free vector and costs no product; the baseline
c(x) is the (D, 100), (100, 1) network of rebar_np/model/baseline.py, whose backward
computes dW on both layers and dh on the second):

| estimator     | passes                                                                                   |
|---------------|------------------------------------------------------------------------------------------|
| reinforce     | hard pass (q, p forward); score backward (q, p: dW)                                      |
| nvil          | reinforce + baseline forward and backward                                                |
| simple_muprop | nvil + mean-field forward (q, p)                                                         |
| muprop        | reinforce + mean-field forward and input-gradient reverse (p all, q_l for l > 0); L      |
|               | baselines forward and backward; the analytic term: dW of every q_l                       |
| concrete      | hard pass + one relaxed pass from layer 0: forward q_l (l > 0), p; reverse with          |
|               | parameter gradients of p and q_l (l > 0) and input gradients; dW of q_0                  |
| rebar         | nvil + per switch layer l: relaxed forward (q_k, k > l; p_k, k >= l), input-gradient     |
|               | reverse (same transforms), control-variate dW of q_l; the variance objective's           |
|               | parameter-direction tangent of q_l along G. A linear q_l below the batch of              |
|               | rebar.gram_pays (batch 24: both layers) instead has one gram and no score-part dW, E dW  |
|               | or tangent: its G_W is one dW (score part and control variate together)                  |
| dynamic_rebar | rebar, with every relaxed pass also carrying its temperature tangent (tan_in on the      |
|               | forward, backward_input_tangent on the reverse) and, for nonlinear q_l, a second tangent |
|               | of q_l along eta G (a linear q_l shares the product h G_W between G and eta G)           |
| relax         | dynamic_rebar (relaxed passes with tangents, E's dW of q_l, tangents along G and eta G,  |
|               | baseline) + per layer l: the control network r_l's forward and its input gradient rho,   |
|               | a second dW of q_l (R, backprop of rho m - r score, kept apart from E), and r_l's        |
|               | tangent backward on the variance objective (see "the control network r_l" below)         |
| arm           | reinforce + per layer l one antithetic branch: forward q_k (k > l) and p_k (k >= l)      |
|               | (layer l's logits are the hard pass's; f^- needs no derivative)                          |
| disarm        | arm (the same passes; only the elementwise logit gradient differs)                       |
| vimco         | reinforce on B K rows (K = option "samples", default 5): hard pass on the K-times        |
|               | repeated batch, score backward (q: dW weighted by signal - w, p: dW weighted by w)       |
| reinforce_loo | vimco (the same passes; only the elementwise leave-one-out signals differ)               |

The control network r_l of relax (rebar_np/model/control_net.py; M = option "hidden", default
32) reads z_l = a_l + z0_l (B, H) through W1 (H, M) and its context, [x - mean_x,
2 b_0 - 1, .., 2 b_{l-1} - 1] of width C_l = D + l H (option "context", default on),
through V1 (C_l, M), then tanh and the output weights w2 stored as a vector: the dense
layers (H, M), (C_l, M) and (M, 1). Only its W1 products run on the dense kernels;
the others are plain NumPy `@` (marked `@` below):

| r_l pass         | products                                                                         |
|------------------|----------------------------------------------------------------------------------|
| forward          | fwd (H, M); `@` fwd (C_l, M) = ctx V1; `@` fwd (M, 1) = h w2 (a matrix-vector)   |
| input gradient   | dh (H, M) (rho = ((1 - h^2) w2) W1^T; the output layer's dh is w2 broadcast)     |
| tangent backward | `@` tan_in (H, M) = v W1; `@` dW (M, 1) computed as c^T h, (1, B) @ (B, M);      |
|                  | `@` dW (H, M) twice (z^T dpre and v^T dpre_dot); `@` dW (C_l, M) = ctx^T dpre    |
|                  | (the output layer's dh, -c w2^T, is a broadcast outer product: no product)       |

The hard pass's logits of the switch layer are reused (the relaxed pass and the
antithetic branch start from them), and the relaxed passes' values below the switch
layer are the hard pass's. Adam, the variance monitor and every elementwise kernel
cost no product. The counts are of the default options, or of the given ones where
they change the products: "samples" (vimco, reinforce_loo: the rows are B K, so every
Product of theirs has B = B K), "hidden" and "context" (relax); REBAR's joint variant
is not counted (step_products refuses it).

The importance-weighted bound (rebar_np/evaluation/bound.py:iw_bound, task sbn) is counted
beside the step (bound_products): as if each of its products were a matmul, per example the
forward of q_0 (x -> logits of b_0, computed once per example), and per sample the forward of
every transform fed by a sample, q_l (l > 0) and p_l; with samples drawn at most `chunk` (100)
per example at a time, a pass over E examples at k samples runs them on E k rows. (Where iw_bound
sums table rows instead, kernels.binary_product, the count is of the product it stands for.)

tests/test_benchmarks.py checks these counts against what rebar_np runs
(traced_products): every call of the four dense kernels, recorded as (kind, n_in,
n_out), and every plain `@` of rebar_np/model/control_net.py, recorded as ("@", m, k, n),
the shapes of the (m, k) @ (k, n) product it computed (a vector operand counts as one
row or column). The tracer sees the latter through NumPy's __array_ufunc__ protocol
(np.matmul is a ufunc): for the duration of one estimate, the control network's
functions get their arrays (the network's parameters, z, the context, the cache,
v, c) as views of an ndarray subclass that records every matmul it takes part in,
and every array derived from them elementwise stays one. A plain `@` on arrays that
never passed through those functions would not be seen: there is none in a step of
the counted estimators (rebar_np/estimators/*, model/sbn.py, model/relaxed.py, estimators/multisample.py
and model/baseline.py run their matrix products only on the dense kernels; the inner
products over the parameters of the variance objective, K.dot and K.sum_squares,
are reductions, uncounted like the variance monitor).
"""
from dataclasses import dataclass
from functools import cache

D_MNIST = 784
N_BASELINE_HIDDEN = 100      # rebar_np.model.baseline.N_BASELINE_HIDDEN
KINDS = ("fwd", "dW", "dh", "tan_in", "tan_par", "gram")


@dataclass(frozen=True)
class Product:
    stage: str      # the part of the step it belongs to ("hard pass", "relaxed l=0", ...)
    kind: str       # one of KINDS
    n_in: int       # the dense layer's input width i
    n_out: int      # its output width o
    B: int          # rows: the batch, or batch x samples for vimco and reinforce_loo
    plain: bool = False        # a plain NumPy `@` (rebar_np/model/control_net.py), not a dense kernel
    transposed: bool = False   # dW computed as da^T h, (o, B) @ (B, i) (relax's dw2 = c^T h)

    @property
    def macs(self):
        if self.kind == "gram":
            return self.B * self.B * (self.n_in + self.n_out)
        return self.B * self.n_in * self.n_out

    @property
    def mkn(self):
        """(m, k, n) of the product (m, k) @ (k, n) as the kernel (or the plain `@`) computes it
        (for a gram, of its first product, h h^T; the second is (B, B, o))."""
        B, i, o = self.B, self.n_in, self.n_out
        if self.kind == "gram":
            return (B, i, B)
        if self.kind == "dW" and self.transposed:
            return (o, B, i)
        return {"fwd": (B, i, o), "tan_in": (B, i, o), "tan_par": (B, i, o),
                "dW": (i, B, o), "dh": (B, o, i)}[self.kind]


def transform_layers(n_in, n_out, H, nonlinear):
    """(n_in, n_out) of the dense layers of one transform."""
    return [(n_in, H), (H, H), (H, n_out)] if nonlinear else [(n_in, n_out)]


class _Step:
    """Collects the products of one step; one method per pass of model/sbn.py."""

    def __init__(self, n_layer, nonlinear, B, D, H, M=None, context=True):
        self.L, self.nl, self.B, self.D, self.H = n_layer, nonlinear, B, D, H
        self.M, self.context = M, context          # relax's control network: width, context on/off
        self.products, self.stage = [], ""

    def T(self, name):
        """Dense layers of transform q{l} / p{l} / baseline."""
        if name == "baseline":
            return [(self.D, N_BASELINE_HIDDEN), (N_BASELINE_HIDDEN, 1)]
        l = int(name[1:])
        if name[0] == "q":
            return transform_layers(self.D if l == 0 else self.H, self.H, self.H, self.nl)
        return transform_layers(self.H, self.D if l == 0 else self.H, self.H, self.nl)

    def add(self, kind, layer, plain=False, transposed=False):
        self.products.append(Product(self.stage, kind, layer[0], layer[1], self.B, plain, transposed))

    # ---- the passes of one transform ------------------------------------
    def forward(self, name):
        for layer in self.T(name):
            self.add("fwd", layer)

    def backward(self, name, need_dh):
        layers = self.T(name)
        for j, layer in enumerate(layers):
            self.add("dW", layer)
            if j > 0 or need_dh:
                self.add("dh", layer)

    def backward_input(self, name):
        for layer in self.T(name):
            self.add("dh", layer)

    def tangent_input(self, name):
        for layer in self.T(name):
            self.add("tan_in", layer)

    def tangent_direction(self, name):
        for j, layer in enumerate(self.T(name)):
            self.add("tan_par", layer)
            if j > 0:
                self.add("tan_in", layer)

    def backward_input_tangent(self, name):
        for layer in self.T(name):
            self.add("dh", layer)
            self.add("dh", layer)

    # ---- the passes of an estimator -------------------------------------
    def hard_pass(self):
        self.stage = "hard pass"
        for l in range(self.L):
            self.forward(f"q{l}")
        for l in range(self.L):
            self.forward(f"p{l}")

    def score_gradient(self, recognition=None):
        """recognition: per layer, whether q_l's score part is computed here (default: every layer)."""
        self.stage = "score backward"
        for l in range(self.L):
            if recognition is None or recognition[l]:
                self.backward(f"q{l}", False)
        for l in range(self.L):
            self.backward(f"p{l}", False)

    def baseline_forward(self):
        self.stage = "baseline"
        self.forward("baseline")

    def baseline_backward(self):
        self.stage = "baseline"
        lay1, lay2 = self.T("baseline")
        self.add("dW", lay2)
        self.add("dh", lay2)
        self.add("dW", lay1)

    def mean_field(self, derivatives):
        self.stage = "mean field"
        for l in range(self.L):
            self.forward(f"q{l}")
        for l in range(self.L):
            self.forward(f"p{l}")
        if derivatives:
            for l in range(self.L):
                self.backward_input(f"p{l}")
            for l in range(1, self.L):
                self.backward_input(f"q{l}")

    def relaxed(self, l, tangent, param_grads):
        """rebar_np.model.relaxed.relaxed_pass for switch layer l (param_grads: concrete's form)."""
        self.stage = f"relaxed l={l}"
        above = range(l + 1, self.L)
        for k in above:
            self.forward(f"q{k}")
        for k in range(l, self.L):
            self.forward(f"p{k}")
        if tangent:
            for k in above:
                self.tangent_input(f"q{k}")
            for k in range(l, self.L):
                self.tangent_input(f"p{k}")
        for k in range(l, self.L):
            if tangent:
                self.backward_input_tangent(f"p{k}")
            elif param_grads:
                self.backward(f"p{k}", True)
            else:
                self.backward_input(f"p{k}")
        for k in above:
            if tangent:
                self.backward_input_tangent(f"q{k}")
            elif param_grads:
                self.backward(f"q{k}", True)
            else:
                self.backward_input(f"q{k}")
        if param_grads:                     # the switch layer's own logits, input hard
            self.backward(f"q{l}", False)

    def antithetic(self, l):
        """rebar_np.estimators.arm.antithetic_pass for layer l: f on the branch b~_l, forward only."""
        self.stage = f"antithetic l={l}"
        for k in range(l + 1, self.L):
            self.forward(f"q{k}")
        for k in range(l, self.L):
            self.forward(f"p{k}")

    # ---- relax's control network r_l (rebar_np/model/control_net.py) ----------
    def r_layers(self, l):
        """(W1, V1 or None, w2) of r_l as dense layers: (H, M), (C_l, M), (M, 1)."""
        ctx = (self.D + l * self.H, self.M) if self.context else None
        return (self.H, self.M), ctx, (self.M, 1)

    def control_net(self, l):
        """control_net_forward (r_l) and control_net_input_grad (rho_l)."""
        self.stage = f"control net l={l}"
        W1, V1, w2 = self.r_layers(l)
        self.add("fwd", W1)                     # dense_forward(z, W1, c1)
        if V1 is not None:
            self.add("fwd", V1, plain=True)     # pre += ctx @ V1
        self.add("fwd", w2, plain=True)         # r = h @ w2 + c2
        self.add("dh", W1)                      # rho = dense_backward_input(W1, (1 - h^2) w2)

    def control_net_tangent_backward(self, l):
        """control_net_tangent_backward: the variance objective's gradient of r_l's parameters."""
        self.stage = "variance objective"
        W1, V1, w2 = self.r_layers(l)
        self.add("tan_in", W1, plain=True)              # pre_dot = v @ W1
        self.add("dW", w2, plain=True, transposed=True)  # c @ h (dw2, with h_dot.sum(axis=0))
        self.add("dW", W1, plain=True)                  # z.T @ dpre
        self.add("dW", W1, plain=True)                  # v.T @ dpre_dot
        if V1 is not None:
            self.add("dW", V1, plain=True)              # ctx.T @ dpre


# The estimators whose step is counted below: all of rebar_np.estimators.ESTIMATORS.
COUNTED_ESTIMATORS = ("reinforce", "nvil", "simple_muprop", "muprop", "concrete", "rebar", "dynamic_rebar",
                      "relax", "arm", "disarm", "vimco", "reinforce_loo")
K_SAMPLE = ("vimco", "reinforce_loo")     # rebar_np.estimators.K_SAMPLE_ESTIMATORS


def count_options(estimator, options=None):
    """The estimator's options merged with its defaults (rebar_np.estimators.merge_options), refusing
    those whose products step_products does not count (REBAR's joint variant)."""
    from rebar_np import estimators as E
    options = E.merge_options(getattr(E.get(estimator), "DEFAULT_OPTIONS", {}), options)
    if options.get("joint"):
        raise ValueError(f"no product count for {estimator}'s joint variant (options['joint'])")
    return options


def step_products(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200, options=None):
    """[Product] of one training step of `estimator` (task sbn) for a batch of B examples:
    default options, or the given ones (only "samples", "hidden" and "context" change the count)."""
    if estimator not in COUNTED_ESTIMATORS:
        raise ValueError(f"no product count for estimator {estimator!r}")
    options = count_options(estimator, options)
    rows = B * int(options["samples"]) if estimator in K_SAMPLE else B
    s = _Step(n_layer, nonlinear, rows, D, H, options.get("hidden"), options.get("context", True))
    L = n_layer
    if estimator in ("reinforce",) + K_SAMPLE:     # the K-sample ones: on B K rows
        s.hard_pass()
        s.score_gradient()
    elif estimator in ("nvil", "simple_muprop"):
        s.hard_pass()
        if estimator == "simple_muprop":
            s.mean_field(False)
        s.baseline_forward()
        s.score_gradient()
        s.baseline_backward()
    elif estimator == "muprop":
        s.hard_pass()
        s.mean_field(True)
        for _ in range(L):
            s.baseline_forward()
        s.score_gradient()
        s.stage = "analytic term"
        for l in range(L):
            s.backward(f"q{l}", False)
        for _ in range(L):
            s.baseline_backward()
    elif estimator == "concrete":
        s.hard_pass()
        s.relaxed(0, False, True)
    elif estimator in ("rebar", "dynamic_rebar", "relax"):
        from rebar_np.estimators.rebar import gram_pays
        dynamic = estimator != "rebar"       # relax trains the temperature too
        gram = [estimator != "relax" and not nonlinear and gram_pays(rows, s.T(f"q{l}")[0]) for l in range(L)]
        s.hard_pass()
        s.baseline_forward()
        s.score_gradient(recognition=[not g for g in gram])
        for l in range(L):
            s.relaxed(l, dynamic, False)
            if estimator == "relax":
                s.control_net(l)
            s.stage = "control variate dW"
            if gram[l]:
                s.backward(f"q{l}", False)          # G_W: the score part and E's together
                continue
            s.backward(f"q{l}", False)              # E: REBAR's control variate
            if estimator == "relax":
                s.backward(f"q{l}", False)          # R: r_l's, a second backward of q_l
        for l in range(L):
            s.stage = "variance objective"
            if gram[l]:
                s.add("gram", s.T(f"q{l}")[0])      # h G_W and the sums, through h h^T
                continue
            s.tangent_direction(f"q{l}")
            if dynamic and nonlinear:   # along eta G: shares the product with G for a linear q_l
                s.tangent_direction(f"q{l}")
            if estimator == "relax":
                s.control_net_tangent_backward(l)
        s.baseline_backward()
    elif estimator in ("arm", "disarm"):
        s.hard_pass()
        s.score_gradient()                  # generative dW, then each q_l's dW after its branch
        for l in range(L):
            s.antithetic(l)
    return s.products


def step_macs(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200, options=None):
    """Multiply-adds of the matrix products of one training step (see the module docstring)."""
    return sum(p.macs for p in step_products(estimator, n_layer, nonlinear, B, D, H, options))


def macs_by_stage(products):
    """{stage: multiply-adds}, in the order the stages first appear."""
    out = {}
    for p in products:
        out[p.stage] = out.get(p.stage, 0) + p.macs
    return out


@cache
def _recorded_type():
    """_Recorded, an ndarray view that records, into the Counter `_Recorded.seen`, the shapes of
    every np.matmul (`@`) it is an operand of, as ("@", m, k, n), a vector operand taken as one
    row (left) or one column (right). Results of ufuncs with a _Recorded input are _Recorded
    again (what is derived from one elementwise stays visible), except into an out= array.
    (Built on first use: this module imports NumPy only when it traces.)"""
    import numpy as np

    class _Recorded(np.ndarray):
        seen = None

        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            plain = [np.asarray(a) if isinstance(a, _Recorded) else a for a in inputs]
            if "out" in kwargs:
                kwargs["out"] = tuple(np.asarray(a) if isinstance(a, _Recorded) else a for a in kwargs["out"])
            if ufunc is np.matmul and method == "__call__" and _Recorded.seen is not None:
                x, y = plain[0], plain[1]
                m, k = (1, x.shape[0]) if x.ndim == 1 else x.shape[-2:]
                n = 1 if y.ndim == 1 else y.shape[-1]
                _Recorded.seen["@", int(m), int(k), int(n)] += 1
            out = getattr(ufunc, method)(*plain, **kwargs)
            if "out" in kwargs or not isinstance(out, np.ndarray) or out.ndim == 0:
                return out
            return out.view(_Recorded)

    return _Recorded


def _recorded(v):
    """v with every ndarray in it (dict values, tuple items) viewed as _Recorded."""
    import numpy as np
    if isinstance(v, np.ndarray):
        return v.view(_recorded_type())
    if isinstance(v, tuple):
        return tuple(_recorded(a) for a in v)
    if isinstance(v, dict):
        return {k: _recorded(a) for k, a in v.items()}
    return v


def _plain(v):
    """v with every _Recorded in it (tuple items) a plain ndarray again."""
    import numpy as np
    if isinstance(v, _recorded_type()):
        return np.asarray(v)
    if isinstance(v, tuple):
        return tuple(_plain(a) for a in v)
    return v


def _recording(f):
    """f (a function of rebar_np.model.control_net) seeing its arrays as _Recorded: its first argument
    (aux, read only) and every array or tuple argument; a dict in a later place (aux_grads,
    written in place) is passed as it is. The results are plain arrays again."""
    def wrapped(*args, **kwargs):
        args = tuple(a if (j > 0 and isinstance(a, dict)) else _recorded(a) for j, a in enumerate(args))
        return _plain(f(*args, **{k: (a if isinstance(a, dict) else _recorded(a)) for k, a in kwargs.items()}))
    return wrapped


def traced_products(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200, seed=0, options=None):
    """The products rebar_np really runs in one estimate (B examples; B K noise rows for a
    K-sample estimator): its dense kernels and gram_tangent are wrapped for the duration of one call and
    every call is recorded as (kind, n_in, n_out), and so are rebar_np.model.control_net's functions
    (relax's r_l), whose plain `@` products are recorded as ("@", m, k, n) (see _Recorded and
    the module docstring). Returns a sorted list of (key, count). This is the check on
    step_products (which is what the benchmark reports)."""
    import sys
    from collections import Counter

    import numpy as np

    from rebar_np.model import control_net as C
    from rebar_np import estimators as E
    from rebar_np import kernels     # the namespace K dispatches to: a patch here is seen by every caller
    from rebar_np.model.sbn import SBN, draw_noise, init_params

    seen = Counter()
    orig = {k: getattr(kernels, k) for k in ("dense_forward", "dense_backward", "dense_backward_input",
                                             "dense_tangent", "gram_tangent", "dense_forward_single",
                                             "dense_backward_single")}

    plain = np.asarray           # the dense kernels' own products are counted here, not as a plain `@`

    def dense_forward(h, W, c):
        seen["fwd", W.shape[0], W.shape[1]] += 1
        return orig["dense_forward"](plain(h), plain(W), plain(c))

    def dense_backward(h, W, da, dW, dc, need_dh, accumulate=True):
        seen["dW", W.shape[0], W.shape[1]] += 1
        if need_dh:
            seen["dh", W.shape[0], W.shape[1]] += 1
        return orig["dense_backward"](h, W, da, dW, dc, need_dh, accumulate)

    def dense_backward_input(W, da):
        seen["dh", W.shape[0], W.shape[1]] += 1
        return orig["dense_backward_input"](W, da)

    def dense_tangent(h_dot, W, h, W_dot, c_dot):
        if h_dot.size:
            seen["tan_in", W.shape[0], W.shape[1]] += 1
        if W_dot.size:
            seen["tan_par", W.shape[0], W.shape[1]] += 1
        return orig["dense_tangent"](plain(h_dot), plain(W), plain(h), plain(W_dot), plain(c_dot))

    def gram_tangent(h, d):
        seen["gram", h.shape[1], d.shape[1]] += 1
        return orig["gram_tangent"](plain(h), plain(d))

    def dense_forward_single(h, W, c):          # the baseline's output layer: a dense layer of one unit
        seen["fwd", W.shape[0], W.shape[1]] += 1
        return orig["dense_forward_single"](plain(h), plain(W), plain(c))

    def dense_backward_single(h, W, da, dW, dc):
        seen["dW", W.shape[0], W.shape[1]] += 1
        seen["dh", W.shape[0], W.shape[1]] += 1
        return orig["dense_backward_single"](plain(h), plain(W), plain(da), dW, dc)

    rng = np.random.default_rng(seed)
    x = (rng.random((B, D)) < 0.3).astype(np.float32)
    model = SBN("sbn", n_layer, H, nonlinear, np.full(D, 0.3))
    params = init_params(model, seed, np.float32)
    est = E.get(estimator)
    aux = est.init_aux(model, seed, np.float32, options)
    u = draw_noise(model, E.noise_rows(est, B, options), rng, np.float32)
    wrappers = {"dense_forward": dense_forward, "dense_backward": dense_backward,
                "dense_backward_input": dense_backward_input, "dense_tangent": dense_tangent,
                "gram_tangent": gram_tangent, "dense_forward_single": dense_forward_single,
                "dense_backward_single": dense_backward_single}
    # rebar_np.model.control_net's functions, wherever they were imported by name (relax, bernoulli)
    net_fns = ("control_net_forward", "control_net_backward", "control_net_input_grad",
               "control_net_tangent_backward")
    patched = [(mod, k, getattr(C, k)) for mod in list(sys.modules.values())
               if getattr(mod, "__name__", "").startswith("rebar_np") for k in net_fns
               if getattr(mod, k, None) is getattr(C, k)]
    try:
        for k, f in wrappers.items():
            setattr(kernels, k, f)
        for mod, k, f in patched:
            setattr(mod, k, _recording(f))
        _recorded_type().seen = seen
        est.estimate(model, params, aux, x, u, rng=rng, options=options)
    finally:
        _recorded_type().seen = None
        for mod, k, f in patched:
            setattr(mod, k, f)
        for k, f in orig.items():
            setattr(kernels, k, f)
    return sorted(seen.items())


def counted(products):
    """step_products in traced_products' form: sorted (key, count), key (kind, n_in, n_out) for a
    dense kernel's product and ("@", m, k, n) for a plain `@` (Product.mkn)."""
    from collections import Counter
    return sorted(Counter(("@",) + p.mkn if p.plain else (p.kind, p.n_in, p.n_out) for p in products).items())


# --------------------------------------------------------------------------
# The importance-weighted bound (rebar_np/evaluation/bound.py:iw_bound)
# --------------------------------------------------------------------------
def bound_products(n_layer, nonlinear, examples, samples, D=D_MNIST, H=200, chunk=100):
    """[Product] the k-sample bound of `examples` examples stands for (task sbn; see the module
    docstring): q_0 once on the examples' rows ("per example"), then per pass of k = min(chunk,
    samples left) samples the transforms fed by samples on examples k rows ("per sample")."""
    s = _Step(n_layer, nonlinear, examples, D, H)
    s.stage = "per example"
    s.forward("q0")
    s.stage = "per sample"
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        s.B = examples * k
        for l in range(1, n_layer):
            s.forward(f"q{l}")
        for l in range(n_layer):
            s.forward(f"p{l}")
        done += k
    return s.products


def bound_macs(n_layer, nonlinear, examples, samples, D=D_MNIST, H=200, chunk=100):
    """Multiply-adds of bound_products."""
    return sum(p.macs for p in bound_products(n_layer, nonlinear, examples, samples, D, H, chunk))


def counted_rows(products):
    """bound_products in traced_bound_products' form: sorted ((kind, n_in, n_out, rows), count)."""
    from collections import Counter
    return sorted(Counter((p.kind, p.n_in, p.n_out, p.B) for p in products).items())


def traced_bound_products(n_layer, nonlinear, examples, samples, D=D_MNIST, H=200, chunk=100, seed=0):
    """The products iw_bound really runs (task sbn, float32) on `examples` random examples, as
    sorted ((kind, n_in, n_out, rows), count): every dense_forward, and every binary_product (or
    binary_product_loglik), the table sum standing for the product (2 b - 1) W + c of the W its table
    was built from. The check
    on bound_products."""
    from collections import Counter

    import numpy as np

    from rebar_np import kernels
    from rebar_np.evaluation.bound import iw_bound
    from rebar_np.model.sbn import SBN, init_params

    seen, table_of = Counter(), {}
    orig = {k: getattr(kernels, k) for k in ("dense_forward", "binary_product_table", "binary_product",
                                             "binary_product_loglik")}

    def dense_forward(h, W, c):
        seen["fwd", W.shape[0], W.shape[1], h.shape[0]] += 1
        return orig["dense_forward"](h, W, c)

    def binary_product_table(W):
        T = orig["binary_product_table"](W)
        table_of[id(T)] = (W.shape, T)          # T kept alive: its id stays its own
        return T

    def binary_product(codes, T, c):
        (n_in, n_out), _ = table_of[id(T)]
        seen["fwd", n_in, n_out, codes.shape[0]] += 1
        return orig["binary_product"](codes, T, c)

    def binary_product_loglik(codes, T, c, y, k):         # the product, scored in the same pass
        (n_in, n_out), _ = table_of[id(T)]
        seen["fwd", n_in, n_out, codes.shape[0]] += 1
        return orig["binary_product_loglik"](codes, T, c, y, k)

    rng = np.random.default_rng(seed)
    x = (rng.random((examples, D)) < 0.3).astype(np.float32)
    model = SBN("sbn", n_layer, H, nonlinear, np.full(D, 0.3))
    params = init_params(model, seed, np.float32)
    wrappers = {"dense_forward": dense_forward, "binary_product_table": binary_product_table,
                "binary_product": binary_product, "binary_product_loglik": binary_product_loglik}
    try:
        for k, f in wrappers.items():
            setattr(kernels, k, f)
        iw_bound(model, params, x, samples, rng, chunk=chunk)
    finally:
        for k, f in orig.items():
            setattr(kernels, k, f)
    return sorted(seen.items())
