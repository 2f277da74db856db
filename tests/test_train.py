"""The training loop, Adam, the variance monitor and checkpoints, on small synthetic data."""
import os
import signal
import threading

import numpy as np
import pytest

from rebar_np.training.adam import AdamConfig, adam_init, adam_update
from rebar_np.kernels.blocking import SPLIT_MIN_SIZE
from rebar_np.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rebar_np.estimators import ESTIMATORS
from rebar_np.estimators import get as get_estimator
from rebar_np.training.train import GradVariance, TrainConfig, TrainingDiverged, train


def small_data(seed=0, n=300, d=20):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.6, d)
    x = (rng.random((n, d)) < p).astype(np.float32)
    return {"train": x[:200], "valid": x[200:250], "test": x[250:]}


def small_cfg(**kw):
    base = dict(n_layer=2, n_hidden=5, batch_size=8, steps=60, eval_every=0, report_every=20)
    base.update(kw)
    return TrainConfig(**base)


def test_adam_matches_the_tf_formula():
    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(3, 4))}
    g = [{"w": rng.normal(size=(3, 4))} for _ in range(5)]
    cfg = AdamConfig(learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    state = adam_init(p)
    ref, m, v = p["w"].copy(), np.zeros((3, 4)), np.zeros((3, 4))
    for t, gt in enumerate(g, 1):
        adam_update(p, gt, state, cfg)
        m = 0.9 * m + 0.1 * gt["w"]
        v = 0.999 * v + 0.001 * gt["w"] ** 2
        ref -= 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(p["w"], ref, rtol=1e-12, atol=1e-14)


def test_grad_variance_matches_direct_moments():
    rng = np.random.default_rng(1)
    params = {"a": np.zeros((4, 3)), "b": np.zeros(5)}
    mon = GradVariance(params, decay=0.9)
    gs = [{"a": rng.normal(size=(4, 3)) * 2, "b": rng.normal(size=5)} for _ in range(40)]
    for g in gs:
        assert mon.update(g) is None
    w = 0.1 * 0.9 ** np.arange(39, -1, -1)
    w = w / w.sum()   # bias-corrected EMA weights
    flat = np.array([np.concatenate([g["a"].ravel(), g["b"]]) for g in gs])
    var = (w[:, None] * flat ** 2).sum(0) - ((w[:, None] * flat).sum(0)) ** 2
    assert abs(mon.log_variance() - np.log(var.mean())) < 1e-10
    bad = {"a": np.zeros((4, 3)), "b": np.array([0, 0, np.nan, 0, 0.0])}
    assert mon.update(bad) == "b"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_and_the_monitor_in_halves_are_the_one_pass_updates(dtype):
    """Big tensors are updated in two halves in the step's thread (on two cores when it may use
    two): elementwise, so exactly what one pass gives; a NaN is still found and named."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(2)
    shapes = {"W": (300, 301), "c": (7,)}
    assert 300 * 301 >= SPLIT_MIN_SIZE > 7
    p = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    g = [{k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()} for _ in range(3)]
    cfg = AdamConfig(learning_rate=0.01)
    runs = []
    with ThreadPoolExecutor(1) as pool:       # off the main thread: the one-pass kernels
        for where in ("main", "pool"):
            q, state, mon = {k: v.copy() for k, v in p.items()}, adam_init(p), GradVariance(p, 0.9)

            def steps(q=q, state=state, mon=mon):
                for gt in g:
                    assert mon.update(gt) is None
                    adam_update(q, gt, state, cfg)
                bad = {k: v.copy() for k, v in g[0].items()}
                bad["W"][299, 300] = np.nan
                return mon.update(bad)
            assert (steps() if where == "main" else pool.submit(steps).result()) == "W"
            runs.append((q, state, mon))
    (q1, s1, m1), (q2, s2, m2) = runs
    for k in shapes:
        for a, b in ((q1[k], q2[k]), (s1["m"][k], s2["m"][k]), (s1["v"][k], s2["v"][k]),
                     (m1.m1[k], m2.m1[k]), (m1.m2[k], m2.m2[k])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_with_adam_is_the_monitor_then_adam(dtype):
    """The training step's one pass (GradVariance.update_with_adam: adam_and_moments, in halves for
    big tensors in the step's thread, whole in another thread) gives exactly what the monitor's
    fold followed by Adam's update gives, and names the first tensor with a NaN or inf."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(3)
    shapes = {"W": (300, 301), "c": (7,), "V": (5, 4)}
    assert 300 * 301 >= SPLIT_MIN_SIZE > 7
    p = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    g = [{k: (rng.normal(size=s) * 10.0 ** -i).astype(dtype) for k, s in shapes.items()} for i in range(4)]
    cfg = AdamConfig(learning_rate=0.01)

    def run(fused):
        q, state, mon = {k: v.copy() for k, v in p.items()}, adam_init(p), GradVariance(p, 0.9)
        for gt in g:
            if fused:
                assert mon.update_with_adam(q, gt, state, cfg) is None
            else:
                assert mon.update(gt) is None
                adam_update(q, gt, state, cfg)
        bad = {k: v.copy() for k, v in g[0].items()}
        bad["c"][3], bad["V"][1, 1] = np.inf, np.nan
        named = mon.update_with_adam(q, bad, state, cfg) if fused else mon.update(bad)
        return q, state, mon, named

    want_q, want_s, want_mon, want_named = run(False)
    with ThreadPoolExecutor(1) as pool:
        runs = [run(True), pool.submit(run, True).result()]
    for q, state, mon, named in runs:
        assert named == want_named == "c"
        assert mon.t == want_mon.t == 5 and state["t"] == 5 and want_s["t"] == 4
        for k in shapes:
            for got, want in ((mon.m1[k], want_mon.m1[k]), (mon.m2[k], want_mon.m2[k])):
                np.testing.assert_array_equal(got, want)
        want_s2 = {"m": {k: v.copy() for k, v in want_s["m"].items()},
                   "v": {k: v.copy() for k, v in want_s["v"].items()}, "t": want_s["t"]}
        want_q2 = {k: v.copy() for k, v in want_q.items()}
        bad = {k: v.copy() for k, v in g[0].items()}
        bad["c"][3], bad["V"][1, 1] = np.inf, np.nan
        adam_update(want_q2, bad, want_s2, cfg)     # the fused pass has applied the bad step too
        for k in shapes:
            for got, want in ((q[k], want_q2[k]), (state["m"][k], want_s2["m"][k]),
                              (state["v"][k], want_s2["v"][k])):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_parameters_update_in_one_call_exactly_as_tensor_by_tensor(dtype):
    """Parameters, gradients, Adam's moments and the monitor's averages in one buffer each
    (model/packed.py) are updated by one call over the buffers: exactly the per-tensor updates, also
    for tensors whose entries then fall elsewhere in a vector loop (Adam's and the monitor's
    arithmetic is exact, so an entry's update depends on its values alone), and the first tensor with
    a NaN or inf is still named. Replacing an array of a Packed dict detaches it from its buffer."""
    from rebar_np.model.packed import Packed, flat_buffers, packed_copy, packed_zeros
    rng = np.random.default_rng(4)
    shapes = {"W": (300, 301), "c": (103,), "V": (5, 7), "prior": (13,)}
    p = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    g = [{k: (rng.normal(size=s) * 10.0 ** -i).astype(dtype) for k, s in shapes.items()} for i in range(4)]
    cfg = AdamConfig(learning_rate=0.01)

    def run(pack):
        q = packed_copy(p) if pack else {k: v.copy() for k, v in p.items()}
        a = packed_copy(p) if pack else {k: v.copy() for k, v in p.items()}
        state, aux_state, mon = adam_init(q), adam_init(a), GradVariance(q, 0.9)
        named = []
        for i, gt in enumerate([*g, g[0]]):
            gt = packed_copy(gt) if pack else {k: v.copy() for k, v in gt.items()}
            if i == len(g):
                gt["V"][1, 1], gt["prior"][0] = np.nan, np.inf
            if pack:
                assert flat_buffers(q, gt, state["m"], state["v"], mon.m1, mon.m2) is not None
            named += [mon.update_with_adam(q, gt, state, cfg), adam_update(a, gt, aux_state, cfg, 10.0)]
        return q, a, state, aux_state, mon, named

    flat, per_tensor = run(True), run(False)
    assert flat[-1] == per_tensor[-1] == [None] * 8 + ["V", "V"]
    for k in shapes:
        for got, want in zip((flat[0], flat[1], flat[2]["m"], flat[2]["v"], flat[3]["m"], flat[3]["v"],
                              flat[4].m1, flat[4].m2),
                             (per_tensor[0], per_tensor[1], per_tensor[2]["m"], per_tensor[2]["v"],
                              per_tensor[3]["m"], per_tensor[3]["v"], per_tensor[4].m1, per_tensor[4].m2)):
            np.testing.assert_array_equal(got[k], want[k])
    d = packed_zeros(p)
    assert isinstance(d, Packed) and all(np.shares_memory(v, d.flat) for v in d.values())
    assert all(v.ctypes.data % 64 == 0 for v in d.values())         # each on a cache line
    d["c"] += 1.0                                   # an in-place update stores the same array back
    assert d.flat is not None and np.sum(d.flat) == 103
    d["c"] = np.zeros(103, dtype)                   # a new array: the buffer no longer holds every entry
    assert d.flat is None and flat_buffers(d, packed_zeros(p)) is None
    d = packed_zeros(p)
    d.update(W=np.ones((300, 301), dtype))
    assert d.flat is None


def test_step_cores_keeps_the_faster_and_measures_again():
    """StepCores times `probe` steps on one core and on two, twice, keeps the faster, and
    measures again after `every` steps or as soon as a window is `slack` times slower."""
    import numba
    from rebar_np.training.train import StepCores
    before = numba.get_num_threads()
    speed = {1: 1.0, 2: 0.6}                       # seconds a step takes on n cores
    cores = StepCores(2, probe=3, every=40, window=10, slack=1.5)
    try:
        used, threads = [], set()
        for _ in range(12 + 40):
            used.append(cores.current)
            threads.add(numba.get_num_threads())
            cores.record(speed[cores.current])
        assert used[:12] == [1] * 3 + [2] * 3 + [1] * 3 + [2] * 3     # the probe
        assert used[12:] == [2] * 40
        assert threads == {1, min(2, numba.config.NUMBA_NUM_THREADS)}  # what the kernels are given
        assert cores.plan                                             # every = 40 steps later: measure again
        for _ in range(12):
            cores.record(speed[cores.current])
        speed[2] = 5.0                                               # the second core got busy
        used = []
        for _ in range(10 + 12 + 5):
            used.append(cores.current)
            cores.record(speed[cores.current])
        assert used[:10] == [2] * 10 and used[22:] == [1] * 5         # a slow window, a probe, then one core
        one = StepCores(1)
        assert one.current == 1 and not one.plan
        one.record(1.0)
        assert one.current == 1
    finally:
        cores.close()
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("model", ESTIMATORS)
def test_report_lines_log_every_stat_as_a_number(model):
    """Estimators may hand a stat over as a function computed when read (Estimate.stat); what the
    loop logs and records is its value, the same as the estimate's own."""
    lines = []
    res = train(small_cfg(model=model, steps=20, report_every=10), small_data(), log=lines.append,
                progress=False)
    est = get_estimator(model)
    names = set(est.estimate(res.model, res.params, res.aux, small_data()["train"][:8],
                             rng=np.random.default_rng(0), options=TrainConfig(model=model).estimator_options()).stats)
    assert names, model
    for row in res.history:
        assert names <= set(row), (model, row)
        assert all(type(row[k]) is float and np.isfinite(row[k]) for k in names), (model, row)
    assert all(all(f", {k} " in line for k in names) for line in lines if line.startswith("Step 20:")), lines


@pytest.mark.parametrize("model", ["nvil", "dynamic_rebar"])
def test_same_seed_same_result_and_learning(model):
    data = small_data()
    r1 = train(small_cfg(model=model, steps=120), data, log=lambda s: None, progress=False)
    r2 = train(small_cfg(model=model, steps=120), data, log=lambda s: None, progress=False)
    for k in r1.params:
        np.testing.assert_array_equal(r1.params[k], r2.params[k])
    r3 = train(small_cfg(model=model, steps=120, seed=1), data, log=lambda s: None, progress=False)
    assert any(not np.array_equal(r1.params[k], r3.params[k]) for k in r1.params)
    # the ELBO improves over training
    assert r1.history[-1]["train_elbo"] > r1.history[0]["train_elbo"]


def test_report_lines_and_final_evaluation():
    lines = []
    res = train(small_cfg(model="dynamic_rebar", eval_every=1, eval_samples=5), small_data(),
                log=lines.append, progress=False)
    steps = [l for l in lines if "train ELBO" in l]
    assert steps[0].startswith("Step 20: train ELBO ")
    assert "temperature" in steps[0] and "eta_mean" in steps[0] and "log grad var" in steps[0]
    assert "valid bound (5 samples)" in lines[-1] and "test bound" in lines[-1]
    assert res.evals[-1]["step"] == 60
    assert res.evals[-1]["valid"] < 0


def test_dynamic_rebar_moves_the_temperature_rebar_does_not():
    data = small_data()
    dyn = train(small_cfg(model="dynamic_rebar", steps=100), data, log=lambda s: None, progress=False)
    assert dyn.aux["tau"][0] != pytest.approx(np.log(0.5), abs=1e-4)
    fixed = train(small_cfg(model="rebar", steps=100, temperature=0.3), data, log=lambda s: None, progress=False)
    assert "tau" not in fixed.aux
    assert {row["temperature"] for row in fixed.history} == {0.3}


def test_checkpoint_written_and_readable(tmp_path):
    out = tmp_path / "run"
    res = train(small_cfg(model="nvil", output=str(out)), small_data(), log=lambda s: None, progress=False)
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck["step"] == 60 and ck["config"]["model"] == "nvil"
    for k in res.params:
        np.testing.assert_array_equal(ck["params"][k], res.params[k])
    assert set(ck["opt"]) == {"model", "aux"} and ck["opt"]["model"]["t"] == 60
    assert (out / "config.json").exists()
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "c.h5"
    save_checkpoint(path, 3, {"a": 1}, {"w": np.ones(3)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "c.h5" in str(err.value)


def poison_nvil(monkeypatch, at_call, spoil):
    """Make nvil's estimate number at_call pass its result through spoil (which writes a NaN or inf)."""
    import rebar_np.estimators.nvil as nvil
    real = nvil.estimate
    calls = {"n": 0}

    def poisoned(*a, **k):
        res = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == at_call:
            spoil(res)
        return res
    monkeypatch.setattr(nvil, "estimate", poisoned)


def test_nan_stops_with_step_and_quantity_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    data = small_data()
    cfg = small_cfg(model="nvil", output=str(out), report_every=0, steps=200)   # 25 steps an epoch

    def spoil(res):
        res.grads["p0.W"][0, 0] = np.nan
    poison_nvil(monkeypatch, 37, spoil)
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, data, log=lambda s: None, progress=False)
    assert "step 37" in str(err.value) and "p0.W" in str(err.value)
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck["step"] == 25     # the end of the first epoch: the last good state
    assert all(np.isfinite(v).all() for v in ck["params"].values())


@pytest.mark.parametrize("where", ["baseline.W1", "baseline.c2"])
def test_nan_in_an_estimator_gradient_stops_and_names_it(tmp_path, monkeypatch, where):
    """The aux update's pass (adam_update) finds it, in a big tensor (two halves) or a small one."""

    def spoil(res):
        res.aux_grads[where].reshape(-1)[-1] = -np.inf
    poison_nvil(monkeypatch, 12, spoil)
    with pytest.raises(TrainingDiverged) as err:
        train(small_cfg(model="nvil", n_hidden=50, batch_size=8, steps=30), small_data(d=400),
              log=lambda s: None, progress=False)
    assert str(err.value) == f"non-finite estimator gradient of {where} at step 12"


def test_ctrl_c_stops_between_steps_and_saves(tmp_path, monkeypatch):
    import rebar_np.estimators.nvil as nvil
    out = tmp_path / "run"
    real = nvil.estimate
    calls = {"n": 0}

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 30:     # as if Ctrl-C arrived in the middle of a step
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(nvil, "estimate", interrupting)
    assert threading.current_thread() is threading.main_thread()
    found = signal.getsignal(signal.SIGINT)     # Python's default_int_handler, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model="nvil", output=str(out), steps=500), small_data(), log=lambda s: None,
              progress=False)
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck["step"] == 30      # the interrupted step completed, then the run stopped and saved
    assert signal.getsignal(signal.SIGINT) is found      # the handler it found is back


def test_bad_config_is_a_one_line_error():
    for kw, word in [({"model": "nope"}, "unknown model"), ({"steps": 0}, "steps"),
                     ({"learning_rate": -1.0}, "learning-rate"), ({"relaxation": "x"}, "relaxation")]:
        with pytest.raises(ValueError) as err:
            train(small_cfg(**kw), small_data(), log=lambda s: None, progress=False)
        assert word in str(err.value) and "\n" not in str(err.value)
