"""Final numbers of a saved run: the k-sample importance-weighted bound on a split,

    L_k(x) = log (1/k) sum_{i=1..k} exp f(x, b_i),   b_i ~ q(b | x),

averaged over the split's examples (docs/math.md, section "The importance-weighted bound used for
evaluation": k = 100 during training, up to 5,000 for the paper's final numbers), with its standard error over examples.
Memory is bounded by evaluating at most ``chunk_rows`` (example, sample) rows at
once: samples are drawn 100 per example at a time and merged by a running
log-sum-exp (evaluation.bound.iw_bound), examples are taken chunk_rows // 100 at a time.
"""
import os
import time

import numpy as np

from ..data import load_task
from ..kernels.dispatch import check_device, device_name, to_device
from ..model.sbn import SBN, check_params
from ..training.checkpoint import load_checkpoint
from ..training.rundir import CHECKPOINT, CONFIG, check_data, read_config, whole_split_path, write_json
from ..training.train import MAX_INT, evaluate

SPLITS = ("train", "valid", "test")


def load_run(run_dir, data_dir=None):
    """(model, checkpoint, data) of the run in run_dir; its data come from data_dir, else from the
    folder recorded in its config.json, and must be the ones it was trained on."""
    ckpt = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    cfg = ckpt["config"]
    record = read_config(run_dir) if os.path.exists(os.path.join(run_dir, CONFIG)) else None
    if data_dir is None and record is not None:
        data_dir = record["data"]["dir"]
    data = load_task(cfg["task"], data_dir, "fixed")
    if record is not None:
        check_data({"data": {"splits": {s: v for s, v in record["data"]["splits"].items()
                                        if s != "train" or cfg.get("binarization") == "fixed"}}}, data, run_dir)
    mean_x = ckpt["mean_x"] if ckpt["mean_x"] is not None else data["train"].mean(axis=0, dtype=np.float64)
    model = SBN(cfg["task"], cfg["n_layer"], cfg["n_hidden"], cfg["nonlinear"], mean_x)
    check_params(model, ckpt["params"])
    return model, ckpt, data


def eval_path(run_dir, split, samples, examples, split_examples):
    """RUN_DIR/eval-<split>-<k>.json for the whole split; eval-<split>-<k>-first<n>.json for its first n
    examples, so that a partial evaluation never replaces a full one (the sweep's report reads only
    the full ones)."""
    if examples >= split_examples:
        return whole_split_path(run_dir, split, samples)
    return os.path.join(run_dir, f"eval-{split}-{samples}-first{examples}.json")


def final_bound(run_dir, split="test", samples=5000, seed=0, limit=0, data_dir=None, chunk_rows=None,
                progress=False, device="cpu", write=True, stop=None):
    """Evaluate the run's checkpoint on a split (its first `limit` examples when limit > 0).
    Returns (result, path): the result dict and the file it belongs in (eval_path), written there
    atomically when write is true; with write=False the caller shows it first and writes it with
    write_json (a result that cannot be written is then still shown). device "cuda" evaluates on
    the GPU (rebar_np.kernels.dispatch). stop: a StopFlag; once requested, the evaluation ends after
    its current pass and raises StopBetweenSteps (nothing is written)."""
    check_device(device)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose train, valid or test")
    if not 1 <= samples <= MAX_INT:      # (memory is bounded by the chunks; the count is an int64 in the kernels)
        raise ValueError(f"samples must be between 1 and {MAX_INT} (2^63 - 1), got {samples}")
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if limit < 0:
        raise ValueError(f"limit must be 0 (all examples) or more, got {limit}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk-rows must be at least 1, got {chunk_rows}")
    model, ckpt, data = load_run(run_dir, data_dir)
    x = data[split][:limit] if limit else data[split]
    path = eval_path(run_dir, split, samples, x.shape[0], data[split].shape[0])
    per_example = np.empty(x.shape[0])
    t0 = time.perf_counter()
    params = to_device(ckpt["params"]) if device == "cuda" else ckpt["params"]
    bound = evaluate(model, params, x, samples, seed=seed, progress=progress, desc=f"{split} bound",
                     examples_per_chunk=max(1, chunk_rows // min(samples, 100)) if chunk_rows else None,
                     out=per_example, stop=stop)
    seconds = time.perf_counter() - t0
    stderr = float(np.std(per_example, ddof=1) / np.sqrt(len(per_example))) if len(per_example) > 1 else None
    result = {"split": split, "samples": samples, "examples": int(x.shape[0]),
              "split_examples": int(data[split].shape[0]), "step": ckpt["step"],
              "bound": bound, "stderr": stderr, "seconds": seconds, "seed": seed,
              "device": device_name() if device == "cuda" else "cpu",
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if write:
        write_json(path, result)
    return result, path
