"""The matrix products of one training step, counted analytically per estimator.

    products = step_products("dynamic_rebar", n_layer=2, nonlinear=False, B=24)
    step_macs("dynamic_rebar", 2, False, 24)          # = sum(p.macs for p in products)

A dense layer a = h W + c with h (B, i) and W (i, o) costs B i o multiply-adds in
each of the five products a step can run on it (model.py / kernels.py names):

| kind    | product         | shapes                | where                                     |
|---------|-----------------|-----------------------|-------------------------------------------|
| fwd     | a = h W         | (B, i) @ (i, o)       | dense_forward                             |
| dW      | dW += h^T da    | (i, B) @ (B, o)       | dense_backward (parameter gradient)       |
| dh      | dh = da W^T     | (B, o) @ (o, i)       | dense_backward(need_dh) / _backward_input |
| tan_in  | a_dot = h_dot W | (B, i) @ (i, o)       | dense_tangent, input direction            |
| tan_par | a_dot = h W_dot | (B, i) @ (i, o)       | dense_tangent, parameter direction        |

A transform T (SPEC section 1) is one dense layer (linear) or three, (n_in, H),
(H, H), (H, n_out) with tanh between them (nonlinear). Its passes cost, per dense
layer of T (model.py):

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
c(x) is the (D, 100), (100, 1) network of rebar_np/baseline.py, whose backward
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
|               | parameter-direction tangent of q_l along G                                               |
| dynamic_rebar | rebar, with every relaxed pass also carrying its temperature tangent (tan_in on the       |
|               | forward, backward_input_tangent on the reverse) and, for nonlinear q_l, a second tangent |
|               | of q_l along eta G (a linear q_l shares the product h G_W between G and eta G)           |

The hard pass's logits of the switch layer are reused (the relaxed pass starts
from them), and the relaxed passes' values below the switch layer are the hard
pass's. Adam, the variance monitor and every elementwise kernel cost no product.
Only the default options are counted (per-layer control variates, not REBAR's
joint variant). tests/test_benchmarks.py checks these counts against the products
rebar_np's kernels are actually called with.
"""
from dataclasses import dataclass

D_MNIST = 784
N_BASELINE_HIDDEN = 100      # rebar_np.baseline.N_BASELINE_HIDDEN
KINDS = ("fwd", "dW", "dh", "tan_in", "tan_par")


@dataclass(frozen=True)
class Product:
    stage: str      # the part of the step it belongs to ("hard pass", "relaxed l=0", ...)
    kind: str       # one of KINDS
    n_in: int       # the dense layer's input width i
    n_out: int      # its output width o
    B: int

    @property
    def macs(self):
        return self.B * self.n_in * self.n_out

    @property
    def mkn(self):
        """(m, k, n) of the product (m, k) @ (k, n) as the kernel computes it."""
        B, i, o = self.B, self.n_in, self.n_out
        return {"fwd": (B, i, o), "tan_in": (B, i, o), "tan_par": (B, i, o),
                "dW": (i, B, o), "dh": (B, o, i)}[self.kind]


def transform_layers(n_in, n_out, H, nonlinear):
    """(n_in, n_out) of the dense layers of one transform."""
    return [(n_in, H), (H, H), (H, n_out)] if nonlinear else [(n_in, n_out)]


class _Step:
    """Collects the products of one step; one method per pass of model.py."""

    def __init__(self, n_layer, nonlinear, B, D, H):
        self.L, self.nl, self.B, self.D, self.H = n_layer, nonlinear, B, D, H
        self.products, self.stage = [], ""

    def T(self, name):
        """Dense layers of transform q{l} / p{l} / baseline."""
        if name == "baseline":
            return [(self.D, N_BASELINE_HIDDEN), (N_BASELINE_HIDDEN, 1)]
        l = int(name[1:])
        if name[0] == "q":
            return transform_layers(self.D if l == 0 else self.H, self.H, self.H, self.nl)
        return transform_layers(self.H, self.D if l == 0 else self.H, self.H, self.nl)

    def add(self, kind, layer):
        self.products.append(Product(self.stage, kind, layer[0], layer[1], self.B))

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

    def score_gradient(self):
        self.stage = "score backward"
        for l in range(self.L):
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
        """rebar_np.relaxed.relaxed_pass for switch layer l (param_grads: concrete's form)."""
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


# The estimators whose step is counted below (the issue-8 estimators are not yet: relax, arm,
# disarm, vimco and reinforce_loo are timed by nothing in benchmarks/ so far).
COUNTED_ESTIMATORS = ("reinforce", "nvil", "simple_muprop", "muprop", "concrete", "rebar", "dynamic_rebar")


def step_products(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200):
    """[Product] of one training step of `estimator` (default options, task sbn)."""
    s = _Step(n_layer, nonlinear, B, D, H)
    L = n_layer
    if estimator == "reinforce":
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
    elif estimator in ("rebar", "dynamic_rebar"):
        dynamic = estimator == "dynamic_rebar"
        s.hard_pass()
        s.baseline_forward()
        s.score_gradient()
        for l in range(L):
            s.relaxed(l, dynamic, False)
            s.stage = "control variate dW"
            s.backward(f"q{l}", False)
        s.stage = "variance objective"
        for l in range(L):
            s.tangent_direction(f"q{l}")
            if dynamic and nonlinear:   # along eta G: shares the product with G for a linear q_l
                s.tangent_direction(f"q{l}")
        s.baseline_backward()
    else:
        raise ValueError(f"no product count for estimator {estimator!r}")
    return s.products


def step_macs(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200):
    """Multiply-adds of the matrix products of one training step (see the module docstring)."""
    return sum(p.macs for p in step_products(estimator, n_layer, nonlinear, B, D, H))


def macs_by_stage(products):
    """{stage: multiply-adds}, in the order the stages first appear."""
    out = {}
    for p in products:
        out[p.stage] = out.get(p.stage, 0) + p.macs
    return out


def traced_products(estimator, n_layer, nonlinear, B, D=D_MNIST, H=200, seed=0):
    """The products rebar_np really runs in one estimate: its four dense kernels are
    wrapped for the duration of one call and every call is recorded as
    (kind, n_in, n_out). Returns a sorted list of ((kind, n_in, n_out), count).
    This is the check on step_products (which is what the benchmark reports)."""
    from collections import Counter

    import numpy as np

    from rebar_np import estimators as E
    from rebar_np import kernels as K
    from rebar_np.model import SBN, init_params

    seen = Counter()
    orig = {k: getattr(K, k) for k in ("dense_forward", "dense_backward", "dense_backward_input",
                                       "dense_tangent")}

    def dense_forward(h, W, c):
        seen["fwd", W.shape[0], W.shape[1]] += 1
        return orig["dense_forward"](h, W, c)

    def dense_backward(h, W, da, dW, dc, need_dh):
        seen["dW", W.shape[0], W.shape[1]] += 1
        if need_dh:
            seen["dh", W.shape[0], W.shape[1]] += 1
        return orig["dense_backward"](h, W, da, dW, dc, need_dh)

    def dense_backward_input(W, da):
        seen["dh", W.shape[0], W.shape[1]] += 1
        return orig["dense_backward_input"](W, da)

    def dense_tangent(h_dot, W, h, W_dot, c_dot):
        if h_dot.size:
            seen["tan_in", W.shape[0], W.shape[1]] += 1
        if W_dot.size:
            seen["tan_par", W.shape[0], W.shape[1]] += 1
        return orig["dense_tangent"](h_dot, W, h, W_dot, c_dot)

    rng = np.random.default_rng(seed)
    x = (rng.random((B, D)) < 0.3).astype(np.float32)
    model = SBN("sbn", n_layer, H, nonlinear, np.full(D, 0.3))
    params = init_params(model, seed, np.float32)
    est = E.get(estimator)
    aux = est.init_aux(model, seed, np.float32)
    wrappers = {"dense_forward": dense_forward, "dense_backward": dense_backward,
                "dense_backward_input": dense_backward_input, "dense_tangent": dense_tangent}
    try:
        for k, f in wrappers.items():
            setattr(K, k, f)
        est.estimate(model, params, aux, x, rng=rng)
    finally:
        for k, f in orig.items():
            setattr(K, k, f)
    return sorted(seen.items())


def counted(products):
    """step_products in traced_products' form: sorted ((kind, n_in, n_out), count)."""
    from collections import Counter
    return sorted(Counter((p.kind, p.n_in, p.n_out) for p in products).items())
