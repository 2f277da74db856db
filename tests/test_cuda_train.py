"""The CUDA path end to end (on Numba's CUDA simulator in CI, see conftest.py): a few
training steps, the training loop and the evaluation give what the CPU gives for the
same noise, and --device cuda without a GPU is one line and exit code 2."""
import os
import subprocess
import sys

import numpy as np
import pytest

from rebar_np import estimators as E
from rebar_np.training.adam import AdamConfig, adam_init
from rebar_np.kernels.dispatch import DeviceArray, to_device, to_host
from rebar_np.evaluation.bound import iw_bound
from rebar_np.model.sbn import SBN, init_params
from rebar_np.training.train import CUDA_ESTIMATORS, GradVariance, TrainConfig, train, train_step

D, H, BATCH = 10, 4, 4          # the simulator runs one Python thread per CUDA thread: tiny shapes


def tiny_data(seed=0, n=40, d=D):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 0.6, d)
    x = (rng.random((n, d)) < p).astype(np.float32)
    return {"train": x[:24], "valid": x[24:32], "test": x[32:]}


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


AUX_TOL = 1e-4   # the estimator's own parameters learn at 10x the rate, so Adam's amplification is 10x too


def state_rel_err(got, want):
    """max |got - want| over every entry of a dict of arrays, relative to the largest |want|.

    Per tensor would be the wrong scale for the biases, which start at 0: after a few
    Adam steps they are about lr * steps, and Adam's m / sqrt(v) turns float32 rounding in
    a nearly cancelling gradient entry into ~1e-7 absolute differences there."""
    if not want:
        return 0.0
    diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    return diff / max(float(np.max(np.abs(want[k]))) for k in want)


def assert_states_agree(got, want, tol):
    err = state_rel_err(got, want)
    worst = max(want, key=lambda k: float(np.max(np.abs(got[k] - want[k]))), default=None)
    assert err < tol, f"relative error {err:.3g} (largest difference in {worst})"


def run_steps(name, device, steps, n_layer=2, task="sbn", dtype=np.float32):
    """`steps` train_steps of estimator `name` from the same initial state and noise; host results."""
    x_all = tiny_data()["train"].astype(dtype)
    model = SBN(task, n_layer, H, False, x_all.mean(axis=0, dtype=np.float64))
    est = E.get(name)
    params = init_params(model, seed=3, dtype=dtype)
    aux = est.init_aux(model, seed=4, dtype=dtype)
    opt, aux_opt = adam_init(params), adam_init(aux)
    monitor = GradVariance(params, 0.999)
    if device == "cuda":
        params, aux = to_device(params), to_device(aux)
        for st in (opt, aux_opt):
            st["m"], st["v"] = to_device(st["m"]), to_device(st["v"])
        monitor.to_device()
    rng = np.random.default_rng(7)
    elbos = []
    for step in range(steps):
        x = x_all[(step * BATCH) % 24:(step * BATCH) % 24 + BATCH]
        res = train_step(est, model, params, aux, to_device(x) if device == "cuda" else x, rng, opt, aux_opt,
                         monitor, AdamConfig(), 10.0, step + 1)   # the training default, lr 3e-4
        elbos.append(to_host(res.elbo))
    return to_host(params), to_host(aux), np.array(elbos), monitor.log_variance()


@pytest.mark.parametrize("name", ["nvil", "dynamic_rebar"])
def test_five_steps_on_cuda_give_the_cpu_parameters(name):
    """The acceptance check: after 5 steps (float32, same noise) every parameter and every
    estimator parameter agrees with the CPU's to 1e-5 relative."""
    p_cpu, a_cpu, f_cpu, v_cpu = run_steps(name, "cpu", 5)
    p_gpu, a_gpu, f_gpu, v_gpu = run_steps(name, "cuda", 5)
    assert_states_agree(p_gpu, p_cpu, 1e-5)
    assert_states_agree(a_gpu, a_cpu, AUX_TOL)
    assert rel_err(f_gpu, f_cpu) < 1e-5
    assert abs(v_gpu - v_cpu) < 1e-4
    # the training moved the parameters (a comparison of two untouched states proves nothing)
    p0 = init_params(SBN("sbn", 2, H, False, tiny_data()["train"].mean(axis=0, dtype=np.float64)), seed=3)
    assert max(rel_err(p_cpu[k], p0[k]) for k in p0) > 1e-4


@pytest.mark.parametrize("name", [n for n in CUDA_ESTIMATORS if n not in ("nvil", "dynamic_rebar")])
def test_the_other_cuda_estimators_match_the_cpu(name):
    p_cpu, a_cpu, f_cpu, _ = run_steps(name, "cpu", 1)
    p_gpu, a_gpu, f_gpu, _ = run_steps(name, "cuda", 1)
    assert_states_agree(p_gpu, p_cpu, 1e-5)
    assert_states_agree(a_gpu, a_cpu, AUX_TOL)


@pytest.mark.parametrize("task, n_layer", [("sbn", 1), ("sp", 2)])
def test_dynamic_rebar_on_cuda_other_shapes_float64(task, n_layer):
    p_cpu, a_cpu, _, _ = run_steps("dynamic_rebar", "cpu", 1, n_layer, task, np.float64)
    p_gpu, a_gpu, _, _ = run_steps("dynamic_rebar", "cuda", 1, n_layer, task, np.float64)
    assert_states_agree(p_gpu, p_cpu, 1e-10)
    assert_states_agree(a_gpu, a_cpu, 1e-10)


@pytest.mark.parametrize("task", ["sbn", "sp"])
def test_importance_weighted_bound_on_cuda(task):
    x = tiny_data()["test"]
    model = SBN(task, 2, H, False, tiny_data()["train"].mean(axis=0, dtype=np.float64))
    params = init_params(model, seed=5)
    cpu = iw_bound(model, params, x, 30, np.random.default_rng(1), chunk=12)
    gpu = iw_bound(model, to_device(params), to_device(x), 30, np.random.default_rng(1), chunk=12)
    assert isinstance(gpu, np.ndarray) and gpu.shape == (x.shape[0],)
    assert rel_err(gpu, cpu) < 1e-5


def test_evaluate_on_cuda_with_the_cpu_chunks_gives_the_cpu_bound():
    from rebar_np.training.train import evaluate
    data = tiny_data()
    model = SBN("sbn", 2, H, False, data["train"].mean(axis=0, dtype=np.float64))
    params = init_params(model, seed=5)
    out_c, out_g = np.empty(8), np.empty(8)
    cpu = evaluate(model, params, data["test"], 7, seed=2, examples_per_chunk=3, workers=1, out=out_c)
    gpu = evaluate(model, to_device(params), data["test"], 7, seed=2, examples_per_chunk=3, out=out_g)
    assert abs(gpu - cpu) < 1e-5 * abs(cpu)
    assert rel_err(out_g, out_c) < 1e-5


def test_training_loop_on_cuda_matches_cpu_and_checkpoints(tmp_path):
    """train(device="cuda"): same report rows and parameters as on the CPU, the checkpoint
    holds host arrays, and the evaluation at the end runs on the device."""
    data = tiny_data()
    kw = dict(model="nvil", n_layer=2, n_hidden=H, batch_size=BATCH, steps=4, eval_every=1,
              eval_samples=3, report_every=2, checkpoint_every=2)
    cpu = train(TrainConfig(**kw), data, log=lambda s: None)
    gpu = train(TrainConfig(**kw, device="cuda", output=str(tmp_path / "run")), data, log=lambda s: None)
    assert all(isinstance(v, np.ndarray) for v in gpu.params.values())
    assert_states_agree(gpu.params, cpu.params, 1e-5)
    for row_c, row_g in zip(cpu.history, gpu.history):
        assert abs(row_c["train_elbo"] - row_g["train_elbo"]) < 1e-4 * abs(row_c["train_elbo"])
    assert np.isfinite(gpu.evals[-1]["test"])        # same expectation, other chunking of the noise
    from rebar_np.training.checkpoint import load_checkpoint
    ck = load_checkpoint(gpu.checkpoint)
    assert ck["step"] == 4 and isinstance(ck["params"]["q0.W"], np.ndarray)
    np.testing.assert_array_equal(ck["params"]["q0.W"], gpu.params["q0.W"])


def test_estimators_without_a_cuda_path_are_refused():
    with pytest.raises(ValueError, match="no CUDA path"):
        TrainConfig(model="vimco", device="cuda").validate()
    with pytest.raises(ValueError, match="unknown device"):
        TrainConfig(device="tpu").validate()


def test_device_arrays_stay_on_the_device_in_a_step():
    """Parameters, optimizer state and the estimate's gradients are DeviceArrays after a step."""
    x = tiny_data()["train"][:BATCH]
    model = SBN("sbn", 2, H, False, x.mean(axis=0, dtype=np.float64))
    est = E.get("nvil")
    params, aux = to_device(init_params(model)), to_device(est.init_aux(model))
    opt, aux_opt = adam_init(params), adam_init(aux)
    mon = GradVariance(params, 0.999)
    res = train_step(est, model, params, aux, to_device(x), np.random.default_rng(0), opt, aux_opt, mon,
                     AdamConfig(), 10.0, 1)
    for tree in (params, aux, opt["m"], opt["v"], res.grads, res.aux_grads, mon.m1):
        assert all(isinstance(v, DeviceArray) for v in tree.values())


def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["CUDA_VISIBLE_DEVICES"] = ""             # no GPU, even on a machine that has one
    proc = subprocess.run([sys.executable, "-m", "cli", "train", "--device", "cuda", "--steps", "1",
                           "--output", str(tmp_path / "run")],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
