"""Where arrays live, and the one dispatch point between the CPU and the CUDA kernels.

Training and evaluation code never names a device. It calls ``K.<kernel>(...)``
(``from ..kernels.dispatch import K``), which runs ``rebar_np.kernels.<kernel>`` on NumPy
arrays and ``rebar_np.kernels.cuda.<kernel>`` (same name, same arguments) when
any argument is a ``DeviceArray``: an array in GPU memory. So the device is
chosen once, by where the parameters and the data are put (``to_device``), and
every pass, estimator and optimizer step follows them.

``DeviceArray`` is a thin wrapper of a ``numba.cuda`` device array that supports
exactly the NumPy arithmetic the passes use between kernels (``2 s - 1``,
``f - c``, ``g * w[:, None]``, sums and means over an axis), each as one small
CUDA kernel. Mixing a DeviceArray with a NumPy array in an operator is allowed
for small constant vectors (a row such as the data bias is copied over); a
NumPy array on the left of ``+=`` with a DeviceArray on the right raises, so
no result silently lands in host memory.

Under ``NUMBA_ENABLE_CUDASIM=1`` the same code runs on Numba's CUDA simulator
(slowly, one Python thread per CUDA thread): that is how CI tests the CUDA path.
"""
import math
import types

import numpy as np

from .. import kernels as _cpu      # the package: the namespace of the CPU kernels

DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used (one-line message)."""


def _cuda():
    from numba import cuda
    return cuda


def simulator():
    """True when numba.cuda is Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def cuda_available():
    try:
        return bool(_cuda().is_available())
    except Exception:      # a broken driver or toolkit counts as "no GPU"
        return False


def check_device(device):
    """Raise DeviceError unless ``device`` names a usable device."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not cuda_available():
        raise DeviceError("--device cuda: no CUDA GPU is available here (numba.cuda.is_available() is False); "
                          "use --device cpu")


def device_name():
    """The GPU's name (or "CUDA simulator")."""
    if simulator():
        return "CUDA simulator"
    name = _cuda().get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


# --------------------------------------------------------------------------
# Launch configuration: every kernel is a grid-stride loop over its elements
# --------------------------------------------------------------------------
THREADS = 256          # threads per block on a GPU
MAX_BLOCKS = 4096


def launch(n):
    """(blocks, threads) for a grid-stride loop over n items.

    The simulator runs one Python thread per CUDA thread, so there a single
    small block does the loop (the result is the same: every kernel is written
    so that any grid covers all items)."""
    if simulator():
        return 1, max(1, min(n, 8))
    return max(1, min(MAX_BLOCKS, math.ceil(n / THREADS))), THREADS


# --------------------------------------------------------------------------
# DeviceArray
# --------------------------------------------------------------------------
_device_arrays_made = False      # until the first DeviceArray, K hands out the CPU kernels themselves


class DeviceArray:
    """An array in GPU memory (``.d``, a numba.cuda device array, C-contiguous)."""

    __slots__ = ("d",)
    __array_ufunc__ = None        # NumPy defers to our reflected operators; ``host += device`` raises

    def __init__(self, d):
        if not _device_arrays_made:
            _first_device_array()
        self.d = d

    # ---- what it is ------------------------------------------------------
    @property
    def shape(self):
        return tuple(self.d.shape)

    @property
    def dtype(self):
        return np.dtype(self.d.dtype)

    @property
    def size(self):
        return int(self.d.size)

    @property
    def ndim(self):
        return len(self.d.shape)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def host(self):
        """A NumPy copy (device to host)."""
        return self.d.copy_to_host()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a DeviceArray is in GPU memory; copy it with to_host() first")

    def __float__(self):
        if self.size != 1:
            raise TypeError("only a one-element DeviceArray converts to float")
        return float(self.host().reshape(-1)[0])

    # ---- views and copies ---------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        return DeviceArray(self.d.reshape(*shape))

    def flat(self):
        return self.d.reshape(self.size)

    def copy(self):
        out = empty(self.shape, self.dtype)
        out.d.copy_to_device(self.d)
        return out

    def astype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self.copy()
        out = empty(self.shape, dtype)
        _ew_scalar_call(self, 0.0, _OP["add"], out)     # out = x + 0, cast on store
        return out

    def __getitem__(self, key):
        """Views used by the passes: rows ``a[i:j]``, a leading column block ``a[:, :n]``,
        a column ``a[:, None]`` (for broadcasting), one element ``a[i]`` of a vector (a host scalar)."""
        if isinstance(key, (int, np.integer)) and self.ndim == 1:
            return self.d[int(key) % self.shape[0]]            # device to host
        if isinstance(key, slice):
            return DeviceArray(self.d[key])
        if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None):
            if key[1] is None and self.ndim == 1:
                return self.reshape(self.shape[0], 1)
            if isinstance(key[1], slice) and self.ndim == 2:
                cols = range(self.shape[1])[key[1]]
                if cols.step != 1:
                    raise TypeError("DeviceArray column slices take no step")
                if cols.start == 0 and len(cols) == self.shape[1]:
                    return self
                return _take_columns(self, cols.start, len(cols))
        raise TypeError(f"unsupported DeviceArray index {key!r}")

    def __setitem__(self, key, value):
        if isinstance(key, (int, np.integer)) and self.ndim == 1:
            key = int(key) % self.shape[0]
            self.d[key:key + 1].copy_to_device(np.asarray([value], dtype=self.dtype))
            return
        if key == slice(None):
            if isinstance(value, (int, float, np.floating, np.integer)):
                _ew_scalar_call(self, float(value), _OP["set"], self)
            else:
                _ew_array_call(self, _as_device(value), _OP["set"], self)
            return
        raise TypeError(f"unsupported DeviceArray assignment index {key!r}")

    # ---- reductions -----------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, **_):
        """NumPy's sum (np.sum(a, ...) lands here). axis None gives a host scalar."""
        if out is not None:
            raise TypeError("DeviceArray.sum does not take out=")
        return _reduce_sum(self, axis, np.dtype(dtype) if dtype is not None else self.dtype)

    def mean(self, axis=None, dtype=None, out=None, **_):
        n = self.size if axis is None else self.shape[axis]
        total = self.sum(axis=axis, dtype=dtype)
        return total / n

    # ---- arithmetic (elementwise, NumPy broadcasting of rows and columns) ------
    def _binary(self, other, op, rop, out=None):
        if isinstance(other, (int, float, np.floating, np.integer)):
            dtype = self.dtype if self.dtype.kind == "f" or op not in ("div", "rdiv") else np.dtype(np.float64)
            out = out if out is not None else empty(self.shape, dtype)
            _ew_scalar_call(self, float(other), _OP[op], out)
            return out
        other = _as_device(other)
        shape = np.broadcast_shapes(self.shape, other.shape)
        if out is None:
            out = empty(shape, np.result_type(self.dtype, other.dtype))
        elif out.shape != shape:
            raise ValueError(f"in-place operation would change shape {out.shape} to {shape}")
        _ew_array_call(self, other, _OP[op], out)
        return out

    def __add__(self, o):
        return self._binary(o, "add", "add")

    def __radd__(self, o):
        if isinstance(o, (int, float)) and o == 0:      # Python's sum() starts from 0
            return self.copy()
        return self._binary(o, "add", "add")

    def __sub__(self, o):
        return self._binary(o, "sub", "rsub")

    def __rsub__(self, o):
        return self._binary(o, "rsub", "sub")

    def __mul__(self, o):
        return self._binary(o, "mul", "mul")

    __rmul__ = __mul__

    def __truediv__(self, o):
        return self._binary(o, "div", "rdiv")

    def __rtruediv__(self, o):
        return self._binary(o, "rdiv", "div")

    def __neg__(self):
        return self._binary(-1.0, "mul", "mul")

    def __pow__(self, p):
        if p != 2:
            raise TypeError("DeviceArray supports only ** 2")
        return self._binary(self, "mul", "mul")

    def __iadd__(self, o):
        return self._binary(o, "add", "add", out=self)

    def __isub__(self, o):
        return self._binary(o, "sub", "rsub", out=self)

    def __imul__(self, o):
        return self._binary(o, "mul", "mul", out=self)

    def __itruediv__(self, o):
        return self._binary(o, "div", "rdiv", out=self)


def _as_device(a):
    if isinstance(a, DeviceArray):
        return a
    return to_device(np.ascontiguousarray(a))


# --------------------------------------------------------------------------
# Creating and moving arrays
# --------------------------------------------------------------------------
def empty(shape, dtype):
    return DeviceArray(_cuda().device_array(shape, dtype=np.dtype(dtype)))


def _tree_map(fn, a):
    """fn applied to every leaf of nested dicts / lists / tuples."""
    if isinstance(a, dict):
        return {k: _tree_map(fn, v) for k, v in a.items()}
    if isinstance(a, (list, tuple)):
        return type(a)(_tree_map(fn, v) for v in a)
    return fn(a)


def to_device(a):
    """A NumPy array (or a dict / list / tuple of them) copied into GPU memory."""
    return _tree_map(lambda v: v if isinstance(v, DeviceArray)
                     else DeviceArray(_cuda().to_device(np.ascontiguousarray(v))), a)


def to_host(a):
    """NumPy copies of DeviceArrays (in dicts / lists / tuples too); anything else passes through."""
    return _tree_map(lambda v: v.host() if isinstance(v, DeviceArray) else v, a)


def is_device(a):
    return isinstance(a, DeviceArray)


def contiguous(a):
    """np.ascontiguousarray for host arrays; a DeviceArray is always contiguous."""
    return a if isinstance(a, DeviceArray) else np.ascontiguousarray(a)


def zeros(shape, dtype, like=None):
    """np.zeros, in the memory ``like`` lives in."""
    if not isinstance(like, DeviceArray):
        return np.zeros(shape, dtype)
    return full(shape, 0.0, dtype, like)


def full(shape, value, dtype, like=None):
    """np.full, in the memory ``like`` lives in."""
    if not isinstance(like, DeviceArray):
        return np.full(shape, value, dtype)
    out = empty(shape, dtype)
    _ew_scalar_call(out, float(value), _OP["set"], out)
    return out


def zeros_like(a, dtype=None):
    return zeros(a.shape, dtype or a.dtype, like=a)


def empty_like(a):
    """An uninitialised array of a's shape and dtype, in the memory a lives in."""
    return empty(a.shape, a.dtype) if isinstance(a, DeviceArray) else np.empty_like(a)


# --------------------------------------------------------------------------
# The kernel dispatch
# --------------------------------------------------------------------------
def twin(cpu_kernel, *arrays):
    """cpu_kernel, or its CUDA twin (the function of the same name in rebar_np.kernels.cuda)
    when any of arrays is a DeviceArray. The dispatch of K below, and of the kernels that live
    beside their callers (adam_kernel, the training loop's ema_moments and all_finite)."""
    for a in arrays:
        if type(a) is DeviceArray:
            from . import cuda
            return getattr(cuda, cpu_kernel.__name__)
    return cpu_kernel


class _KernelDispatch:
    """``K.name(*args)``: rebar_np.kernels.name, or rebar_np.kernels.cuda.name when an
    argument is a DeviceArray. Constants (K.U_MIN, ...) are the CPU module's.

    Until the process makes its first DeviceArray, ``K.name`` is the CPU kernel itself: a
    training step calls about a hundred kernels, and the dispatch's argument scan cost ~2 us
    each (~5% of a step). It is looked up once and kept as a plain attribute of K, since a
    lookup through __getattr__ cost another ~0.8 us per kernel call inside the step (in one
    process: dynamic_rebar 2.367 -> 2.282 ms, nvil 1.130 -> 1.105 ms on two cores). A kept
    name is dropped when rebar_np.kernels.name is assigned (a test's or a tracer's patch:
    _WatchedKernels) and all of them when the first DeviceArray is made."""

    def __getattr__(self, name):
        cpu = getattr(_cpu, name)
        if not callable(cpu) or not _device_arrays_made:
            self.__dict__[name] = cpu
            return cpu

        def dispatch(*args, **kwargs):
            # the CPU kernel is looked up per call, so that a patched kernel is seen
            return twin(getattr(_cpu, name), *args)(*args, **kwargs)

        dispatch.__name__ = dispatch.__qualname__ = name
        dispatch.__doc__ = cpu.__doc__
        setattr(self, name, dispatch)       # found once, then a plain attribute
        return dispatch


class _WatchedKernels(types.ModuleType):
    """The type of the module rebar_np.kernels: assigning or deleting one of its names drops
    what K keeps under that name, so K hands out the new value."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        K.__dict__.pop(name, None)

    def __delattr__(self, name):
        super().__delattr__(name)
        K.__dict__.pop(name, None)


def _first_device_array():
    """From now on K's kernels dispatch on their arguments: drop the CPU kernels K kept."""
    global _device_arrays_made
    _device_arrays_made = True
    K.__dict__.clear()


K = _KernelDispatch()
_cpu.__class__ = _WatchedKernels


# --------------------------------------------------------------------------
# The elementwise and reduction kernels behind DeviceArray's operators
# (compiled on first use, so importing this module never needs a GPU)
# --------------------------------------------------------------------------
_OP = {"add": 0, "sub": 1, "mul": 2, "div": 3, "rsub": 4, "rdiv": 5, "set": 6}
_SAME, _ROW, _COL, _ONE = 0, 1, 2, 3          # how an operand's index follows the output's


def _ck():
    from . import cuda
    return cuda


def _mode(shape, out_shape):
    if shape == out_shape:
        return _SAME
    if int(np.prod(shape)) == 1:
        return _ONE
    if len(shape) == 1 or shape[0] == 1:
        return _ROW
    if len(out_shape) == 2 and shape == (out_shape[0], 1):
        return _COL
    raise ValueError(f"DeviceArray cannot broadcast shape {shape} to {out_shape}")


def _ew_array_call(x, y, op, out):
    ncol = out.shape[-1] if out.ndim else 1
    mx, my = _mode(x.shape, out.shape), _mode(y.shape, out.shape)
    ck = _ck()
    ck.ew_array[launch(out.size)](x.flat(), mx, y.flat(), my, out.flat(), op, max(ncol, 1))


def _ew_scalar_call(x, s, op, out):
    s = x.dtype.type(s) if x.dtype.kind == "f" else s    # float32 arrays compute in float32, as NumPy does
    _ck().ew_scalar[launch(out.size)](x.flat(), s, out.flat(), op)


def _take_columns(a, start, n):
    out = empty((a.shape[0], n), a.dtype)
    _ck().take_columns[launch(out.size)](a.d, start, out.d)
    return out


def _reduce_sum(a, axis, dtype):
    k = _ck()
    if axis is None:
        return dtype.type(k.sum_total(a).copy_to_host()[0])
    if a.ndim != 2 or axis not in (0, 1, -1):
        raise TypeError(f"DeviceArray.sum supports axis None, 0 or 1 of a 2-D array, not {axis} of {a.shape}")
    if axis == 0:
        out = empty((a.shape[1],), dtype)
        k.sum_cols[launch(a.shape[1])](a.d, out.d, 0)
    else:
        out = empty((a.shape[0],), dtype)
        k.sum_rows[launch(a.shape[0])](a.d, out.d)
    return out
