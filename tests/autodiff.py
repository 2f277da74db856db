"""A small tape-based reverse-mode automatic differentiation over NumPy float64 arrays.

Written for the tests only, so that rebar_np's hand-derived gradients can be compared
with gradients that nobody derived by hand. Nothing here imports rebar_np.

    x = Var(np.array([1.0, 2.0]))
    y = sum(tanh(x) * x)
    (dx,) = grad(y, [x])          # dx is a Var; dx.value is the array dy/dx

Every operation returns a new Var that remembers its parents, each with a *vjp*:
a function from the upstream gradient g = dL/d(output) to that parent's share
dL/d(parent). grad() visits the graph from the output back to the inputs in
reverse topological order and adds up the shares.

The vjps are themselves written with Var operations, so a gradient returned by
grad() is again a differentiable function of the inputs: grad(sum(G * G), ...)
of a gradient G gives second derivatives (used for REBAR's variance objective,
whose gradient with respect to eta, the baseline and the temperature goes
through the model gradient). Constants (NumPy arrays, Python floats) may appear
in any operation; they get no gradient.

Broadcasting follows NumPy; a parent that was broadcast gets its gradient summed
back to its own shape (sum_to).
"""
import numpy as np


class Var:
    """A node: value (float64 array) and parents, a tuple of (parent Var, vjp)."""
    __array_ufunc__ = None          # make `ndarray op Var` call Var's reflected operator

    def __init__(self, value, parents=()):
        self.value = np.asarray(value, dtype=np.float64)
        self.parents = parents

    shape = property(lambda self: self.value.shape)
    ndim = property(lambda self: self.value.ndim)
    T = property(lambda self: transpose(self))

    def __repr__(self):
        return f"Var({self.value!r})"

    __add__ = lambda a, b: add(a, b)
    __radd__ = lambda a, b: add(b, a)
    __sub__ = lambda a, b: sub(a, b)
    __rsub__ = lambda a, b: sub(b, a)
    __mul__ = lambda a, b: mul(a, b)
    __rmul__ = lambda a, b: mul(b, a)
    __truediv__ = lambda a, b: div(a, b)
    __rtruediv__ = lambda a, b: div(b, a)
    __neg__ = lambda a: neg(a)
    __matmul__ = lambda a, b: matmul(a, b)
    __rmatmul__ = lambda a, b: matmul(b, a)
    __getitem__ = lambda a, idx: getitem(a, idx)


def as_var(x):
    """x itself if it is a Var, else a constant Var (no parents: no gradient flows into it)."""
    return x if isinstance(x, Var) else Var(x)


def stop_gradient(x):
    """The value of x as a constant: gradients do not flow through it."""
    return Var(as_var(x).value)


# --------------------------------------------------------------------------
# Shape bookkeeping: broadcasting and its adjoint
# --------------------------------------------------------------------------
def _sum_to_shape(v, shape):
    """Sum the array v down to `shape` (undo NumPy broadcasting)."""
    while v.ndim > len(shape):
        v = v.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and v.shape[i] != 1:
            v = v.sum(axis=i, keepdims=True)
    return v


def sum_to(a, shape):
    """a summed down to `shape`; adjoint of broadcast_to."""
    a = as_var(a)
    if a.shape == tuple(shape):
        return a
    return Var(_sum_to_shape(a.value, shape), ((a, lambda g: broadcast_to(g, a.shape)),))


def broadcast_to(a, shape):
    """a broadcast to `shape`; adjoint of sum_to."""
    a = as_var(a)
    if a.shape == tuple(shape):
        return a
    return Var(np.broadcast_to(a.value, shape).copy(), ((a, lambda g: sum_to(g, a.shape)),))


def reshape(a, shape):
    a = as_var(a)
    return Var(a.value.reshape(shape), ((a, lambda g: reshape(g, a.shape)),))


def transpose(a):
    a = as_var(a)
    return Var(a.value.T, ((a, lambda g: transpose(g)),))


# --------------------------------------------------------------------------
# Arithmetic (with broadcasting)
# --------------------------------------------------------------------------
def add(a, b):
    a, b = as_var(a), as_var(b)
    return Var(a.value + b.value, ((a, lambda g: sum_to(g, a.shape)), (b, lambda g: sum_to(g, b.shape))))


def sub(a, b):
    a, b = as_var(a), as_var(b)
    return Var(a.value - b.value, ((a, lambda g: sum_to(g, a.shape)), (b, lambda g: sum_to(-g, b.shape))))


def mul(a, b):
    """d(ab) = b da + a db."""
    a, b = as_var(a), as_var(b)
    return Var(a.value * b.value, ((a, lambda g: sum_to(g * b, a.shape)), (b, lambda g: sum_to(g * a, b.shape))))


def div(a, b):
    """d(a/b) = da / b - a db / b^2."""
    a, b = as_var(a), as_var(b)
    return Var(a.value / b.value, ((a, lambda g: sum_to(g / b, a.shape)),
                                   (b, lambda g: sum_to(-g * a / (b * b), b.shape))))


def neg(a):
    a = as_var(a)
    return Var(-a.value, ((a, lambda g: -g),))


def matmul(a, b):
    """2-D product c = a b:  dL/da = dL/dc b^T,  dL/db = a^T dL/dc."""
    a, b = as_var(a), as_var(b)
    return Var(a.value @ b.value, ((a, lambda g: g @ b.T), (b, lambda g: a.T @ g)))


# --------------------------------------------------------------------------
# Elementwise functions
# --------------------------------------------------------------------------
def _sigmoid(v):
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(a):
    """y = 1 / (1 + exp(-a)) (stable);  dy/da = y (1 - y)."""
    a = as_var(a)
    y = Var(_sigmoid(a.value))
    y.parents = ((a, lambda g: g * y * (1.0 - y)),)
    return y


def tanh(a):
    """y = tanh(a);  dy/da = 1 - y^2."""
    a = as_var(a)
    y = Var(np.tanh(a.value))
    y.parents = ((a, lambda g: g * (1.0 - y * y)),)
    return y


def softplus(a):
    """log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|)) (stable);  d/da = sigmoid(a)."""
    a = as_var(a)
    v = np.maximum(a.value, 0.0) + np.log1p(np.exp(-np.abs(a.value)))
    return Var(v, ((a, lambda g: g * sigmoid(a)),))


def log(a):
    """d log a = da / a."""
    a = as_var(a)
    return Var(np.log(a.value), ((a, lambda g: g / a),))


def exp(a):
    """d exp a = exp(a) da."""
    a = as_var(a)
    y = Var(np.exp(a.value))
    y.parents = ((a, lambda g: g * y),)
    return y


def where(cond, a, b):
    """a where the constant boolean mask cond holds, else b (each gets the gradient of its entries)."""
    a, b = as_var(a), as_var(b)
    cond = np.asarray(cond, dtype=bool)
    return Var(np.where(cond, a.value, b.value),
               ((a, lambda g: sum_to(where(cond, g, 0.0), a.shape)),
                (b, lambda g: sum_to(where(cond, 0.0, g), b.shape))))


# --------------------------------------------------------------------------
# Reductions and indexing
# --------------------------------------------------------------------------
def sum(a, axis=None):   # noqa: A001 (shadows the builtin on purpose: autodiff.sum)
    """Sum over one axis (or all); the gradient is broadcast back over the summed axis."""
    a = as_var(a)
    kept = [1 if axis is None or i == axis % a.ndim else n for i, n in enumerate(a.shape)]
    return Var(np.sum(a.value, axis=axis), ((a, lambda g: broadcast_to(reshape(g, kept), a.shape)),))


def mean(a, axis=None):
    a = as_var(a)
    n = a.value.size if axis is None else a.shape[axis]
    return sum(a, axis) / float(n)


def getitem(a, idx):
    """a[idx]; the gradient is scattered back into zeros of a's shape."""
    a = as_var(a)
    return Var(a.value[idx], ((a, lambda g: scatter(g, idx, a.shape)),))


def scatter(g, idx, shape):
    """zeros(shape) with g added at idx; adjoint of getitem."""
    g = as_var(g)
    out = np.zeros(shape)
    np.add.at(out, idx, g.value)
    return Var(out, ((g, lambda h: getitem(h, idx)),))


def concatenate(vs, axis=0):
    vs = [as_var(v) for v in vs]
    bounds = np.cumsum([0] + [v.shape[axis] for v in vs])
    parents = []
    for v, lo, hi in zip(vs, bounds[:-1], bounds[1:]):
        sl = tuple(slice(None) if i != axis % v.ndim else slice(lo, hi) for i in range(v.ndim))
        parents.append((v, lambda g, sl=sl: getitem(g, sl)))
    return Var(np.concatenate([v.value for v in vs], axis=axis), tuple(parents))


# --------------------------------------------------------------------------
# The backward pass
# --------------------------------------------------------------------------
def _topological_order(y):
    """Every node that y depends on, each after all of its parents (iterative depth-first search)."""
    order, seen, stack = [], set(), [(y, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p, _ in node.parents if id(p) not in seen)
    return order


def grad(y, xs):
    """[dy/dx for x in xs] for a scalar Var y, as Vars (differentiable again).

    Reverse accumulation: starting from dy/dy = 1, each node (children before
    parents) hands each parent vjp(its gradient); shares arriving at one node add up.
    An x that y does not depend on gets zeros.
    """
    y = as_var(y)
    if y.value.size != 1:
        raise ValueError(f"grad needs a scalar output, got shape {y.shape}")
    grads = {id(y): Var(np.ones_like(y.value))}
    for node in reversed(_topological_order(y)):
        g = grads[id(node)]    # complete: every child of node (a path to y) was visited before it
        for parent, vjp in node.parents:
            share = vjp(g)
            grads[id(parent)] = share if id(parent) not in grads else grads[id(parent)] + share
    return [grads.get(id(x), Var(np.zeros_like(x.value))) for x in xs]


def grad_values(y, xs):
    """Like grad, as plain arrays."""
    return [g.value for g in grad(y, xs)]
