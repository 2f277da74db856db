"""Parameter dicts whose arrays live in one buffer.

A training step ends with Adam and the variance monitor streaming every parameter, its gradient
and four state arrays once (training/train.py:adam_and_moments). When each of those dicts is a
Packed dict, its arrays are consecutive views of one 1-D buffer in the same order, so the pass runs
as one kernel call over the buffers instead of one call per tensor. The arithmetic of each entry is
the same either way (Adam and the monitor are elementwise), so packing changes no number.

A Packed dict is an ordinary dict of arrays to everything else (checkpoints, estimators, tests);
replacing one of its arrays by another object detaches it from the buffer (`flat` becomes None) and
the per-tensor route is taken, so a stale buffer is never updated in its place.
"""
import functools

import numpy as np


ALIGN_BYTES = 64      # each array starts on a cache line: products over arrays that did not (a 32-byte
                      # aligned q1.W) made whole steps 2-8% slower


@functools.lru_cache(maxsize=64)
def offsets(layout, itemsize):
    """(name, start, stop, shape) of each array of layout in its buffer (in entries), and the
    buffer's size: one after the other, each on an ALIGN_BYTES boundary (the gaps are zero)."""
    step = max(1, ALIGN_BYTES // itemsize)
    out, offset = [], 0
    for name, shape in layout:
        n = int(np.prod(shape, dtype=np.int64))
        out.append((name, offset, offset + n, shape))
        offset += -(-n // step) * step
    return tuple(out), offset


def aligned_buffer(n, dtype, fill):
    """A 1-D array of n entries starting on an ALIGN_BYTES boundary; zeros, or with fill=False only
    uninitialised where the caller writes every entry it uses (gaps are zeroed by packed_zeros)."""
    dtype = np.dtype(dtype)
    raw = (np.zeros if fill else np.empty)(n * dtype.itemsize + ALIGN_BYTES, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN_BYTES
    return raw[start:start + n * dtype.itemsize].view(dtype)


class Packed(dict):
    """{name: array} whose arrays are views of the 1-D buffer `flat`, in the dict's order, each on a
    cache line (offsets)
    (`flat` is None once that no longer holds). `layout` = ((name, shape), ...) says which entries
    of two Packed buffers correspond: equal layouts and dtypes mean entry i is the same parameter's."""

    def __init__(self, flat, layout):
        super().__init__((name, flat[start:stop].reshape(shape))
                         for name, start, stop, shape in offsets(layout, flat.dtype.itemsize)[0])
        self.flat, self.layout = flat, layout

    def __setitem__(self, key, value):
        if dict.get(self, key) is not value:        # (`d[k] += x` stores the same array back)
            self.flat = None
        dict.__setitem__(self, key, value)

    def _detached(method):
        def detach(self, *args, **kwargs):
            self.flat = None
            return getattr(dict, method)(self, *args, **kwargs)
        return detach

    __delitem__, pop, popitem, clear, update, setdefault = map(
        _detached, ("__delitem__", "pop", "popitem", "clear", "update", "setdefault"))
    del _detached


def layout_of(tensors):
    return tuple((k, tuple(v.shape)) for k, v in tensors.items())


def packed_zeros(tensors, dtype=None, fill=True):
    """Zero arrays (uninitialised with fill=False) mirroring tensors, in one buffer."""
    dtype = np.dtype(dtype or next(iter(tensors.values())).dtype)
    layout = tensors.layout if isinstance(tensors, Packed) and tensors.flat is not None else layout_of(tensors)
    arrays, size = offsets(layout, dtype.itemsize)
    out = Packed(aligned_buffer(size, dtype, fill), layout)
    if not fill:                      # the gaps take part in the one-call update: they must be finite
        for (_, _, stop, _), nxt in zip(arrays, [a[1] for a in arrays[1:]] + [size]):
            if nxt > stop:
                out.flat[stop:nxt] = 0
    return out


def packed_copy(tensors):
    """A Packed copy of a dict of host arrays of one dtype (the same values), or the dict itself
    when it cannot be packed (empty, several dtypes, or arrays in GPU memory)."""
    values = list(tensors.values())
    if not values or not all(isinstance(v, np.ndarray) for v in values) or len({v.dtype for v in values}) != 1:
        return tensors
    out = packed_zeros(tensors, fill=False)
    for k, v in tensors.items():
        out[k][...] = v
    return out


def flat_buffers(*dicts):
    """The 1-D buffers of dicts when every one is a Packed dict of the same layout and dtype, each
    still whole; else None (then the caller goes tensor by tensor)."""
    first = dicts[0]
    if not isinstance(first, Packed) or first.flat is None:
        return None
    for d in dicts[1:]:
        if (not isinstance(d, Packed) or d.flat is None or d.layout != first.layout
                or d.flat.dtype != first.flat.dtype):
            return None
    return [d.flat for d in dicts]
