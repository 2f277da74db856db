"""Exact resume: what the future of a training run depends on, captured between two steps.

A run is a deterministic function of (config, data). Between step t and step t+1
its future depends only on

    params, aux                 model parameters and the estimator's own (baseline, eta, tau)
    Adam (m, v, t) x 2          the model optimizer and the 10x estimator optimizer
    GradVariance (m1, m2, t)    the EMA moments of the gradient (reported, and the NaN check)
    rng_noise                   the stream the estimators draw their uniforms u from
    rng_data at epoch start     replaying it regenerates the epoch's binarization (dynamic)
                                and permutation, and leaves rng_data where it was
    order, position             the epoch's permutation (kept to check the replay) and the
                                offset of the next minibatch in it
    elbo_sum, elbo_n            the partial sums of the current report window's train ELBO
    wall_time                   training seconds so far (the clock continues from there)
    pending_row                 a checkpoint is saved before each evaluation (a stopped or killed
                                evaluation then loses no step): the report row of its step, whose
                                bounds are still to come; a resume evaluates (the evaluation's seed
                                is seed + step) and writes it before the next step

so saving all of it and restoring it reproduces every later parameter bit for bit
(same machine, same dtype). Generator states are stored as JSON strings of
``bit_generator.state``, arrays as HDF5 datasets (rebar_np.training.checkpoint).
"""
import json
from dataclasses import dataclass

import numpy as np

from .checkpoint import CheckpointError


@dataclass
class LoopState:
    """Where the training loop stands between two steps."""
    step: int = 0
    epoch_rng_state: dict = None    # rng_data's state just before this epoch's binarization/permutation
    order: np.ndarray = None        # this epoch's permutation of the training examples
    position: int = 0               # offset in order of the next minibatch (>= N: the epoch is done)
    elbo_sum: float = 0.0           # sum of per-example train ELBOs since the last report
    elbo_n: int = 0
    wall_time: float = 0.0
    pending_row: dict = None        # the report row of this step while its evaluation runs (no bounds yet)


def capture_state(loop, monitor, rng_noise):
    """The /train_state group of a checkpoint: everything LoopState, the monitor's step count
    and the noise stream hold (params, aux, Adam and the EMA arrays are stored beside it)."""
    return {
        "rng_noise": json.dumps(rng_noise.bit_generator.state),
        "rng_data_epoch": json.dumps(loop.epoch_rng_state),
        "order": np.asarray(loop.order, dtype=np.int64),
        "position": int(loop.position),
        "elbo_sum": float(loop.elbo_sum),
        "elbo_n": int(loop.elbo_n),
        "wall_time": float(loop.wall_time),
        "ema_t": int(monitor.t),
        **({"pending_row": json.dumps({k: int(v) if k == "step" else float(v) for k, v in loop.pending_row.items()})}
           if loop.pending_row is not None else {}),
    }


def evaluation_pending(path):
    """Whether the checkpoint at path was saved before the evaluation of its step, which has not
    been written yet (cheap: one attribute). Such a run is not finished even at its last step."""
    import h5py
    with h5py.File(path, "r") as f:
        return "train_state" in f and "pending_row" in f["train_state"].attrs


def _copy_into(dst, src, what):
    """Overwrite every array of dst (in place, keeping its dtype) with the same-named one of src."""
    if set(dst) != set(src):
        missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
        raise CheckpointError(f"checkpoint {what} do not match this configuration "
                              f"(missing {', '.join(missing) or 'none'}; unexpected {', '.join(extra) or 'none'})")
    for k, v in dst.items():
        if src[k].shape != v.shape or src[k].dtype != v.dtype:
            raise CheckpointError(f"checkpoint {what} {k} has shape {src[k].shape} {src[k].dtype}, "
                                  f"this configuration needs {v.shape} {v.dtype}")
        np.copyto(v, src[k])


def restore_state(ckpt, params, aux, opt, aux_opt, monitor, rng_noise):
    """Put a loaded checkpoint (checkpoint.load_checkpoint) back into freshly built training
    state, in place, and return the LoopState to continue from. rng_data is *not* touched:
    the loop replays the epoch from LoopState.epoch_rng_state."""
    st = ckpt.get("train_state")
    if st is None:
        raise CheckpointError("checkpoint has no resume state (written by an older version); it can be "
                              "evaluated but not resumed")
    _copy_into(params, ckpt["params"], "parameters")
    _copy_into(aux, ckpt["aux"], "estimator parameters")
    for name, state in (("model", opt), ("aux", aux_opt)):
        saved = ckpt["opt"].get(name)
        if saved is None:
            raise CheckpointError(f"checkpoint lacks the {name} optimizer state")
        _copy_into(state["m"], saved["m"], f"{name} Adam first moments")
        _copy_into(state["v"], saved["v"], f"{name} Adam second moments")
        state["t"] = int(saved["t"])
    ema = ckpt.get("ema") or {}
    _copy_into(monitor.m1, {k[3:]: v for k, v in ema.items() if k.startswith("m1/")}, "variance EMA m1")
    _copy_into(monitor.m2, {k[3:]: v for k, v in ema.items() if k.startswith("m2/")}, "variance EMA m2")
    monitor.t = int(st["ema_t"])
    try:
        rng_noise.bit_generator.state = json.loads(st["rng_noise"])
        epoch_rng_state = json.loads(st["rng_data_epoch"])
        pending_row = json.loads(st["pending_row"]) if "pending_row" in st else None
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint has an unusable generator state or report row ({e})") from None
    return LoopState(step=int(ckpt["step"]), epoch_rng_state=epoch_rng_state, order=np.asarray(st["order"]),
                     position=int(st["position"]), elbo_sum=float(st["elbo_sum"]), elbo_n=int(st["elbo_n"]),
                     wall_time=float(st["wall_time"]), pending_row=pending_row)
