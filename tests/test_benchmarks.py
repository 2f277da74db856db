"""The benchmark's own claims: its multiply-add count is the products rebar_np runs, its
JAX reference computes the same estimator as rebar_np (float64, every gradient) and the
same hard ELBO in its float32 training step, and its command line behaves.

The JAX tests are skipped only when jax is not installed, and say so."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import macs as M  # noqa: E402
from rebar_np import estimators as E  # noqa: E402
from rebar_np.model.sbn import SBN, draw_noise, init_params  # noqa: E402

JAX_MISSING = "jax is not installed (pip install -e '.[bench]'); the JAX reference tests are skipped"


def x64():
    """float64 in JAX for the duration of a with-block (jax.enable_x64, or the older experimental form)."""
    import jax
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()


def need_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        warnings.warn(JAX_MISSING)
        pytest.skip(JAX_MISSING)


@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize("n_layer", [1, 2, 3])
@pytest.mark.parametrize("name", M.COUNTED_ESTIMATORS)
def test_mac_count_is_what_rebar_np_runs(name, n_layer, nonlinear):
    want = M.counted(M.step_products(name, n_layer, nonlinear, 5, D=12, H=7))
    got = M.traced_products(name, n_layer, nonlinear, 5, D=12, H=7)
    assert got == want, (f"{name} L={n_layer} nonlinear={nonlinear}: rebar_np runs {got}, "
                         f"benchmarks/macs.py counts {want}: update step_products")


def test_mac_count_covers_every_estimator():
    assert set(M.COUNTED_ESTIMATORS) == set(E.ESTIMATORS)
    assert set(M.K_SAMPLE) == set(E.K_SAMPLE_ESTIMATORS)


@pytest.mark.parametrize("name, options", [("vimco", {"samples": 3}), ("reinforce_loo", {"samples": 2}),
                                           ("relax", {"hidden": 5}), ("relax", {"context": False}),
                                           ("rebar", {"relaxation": "concrete"})])
@pytest.mark.parametrize("arch", [(1, False), (2, True)])
def test_mac_count_with_options_is_what_rebar_np_runs(name, options, arch):
    n_layer, nonlinear = arch
    want = M.counted(M.step_products(name, n_layer, nonlinear, 5, D=12, H=7, options=options))
    got = M.traced_products(name, n_layer, nonlinear, 5, D=12, H=7, options=options)
    assert got == want, f"{name} {options} L={n_layer} nonlinear={nonlinear}: runs {got}, counted {want}"


def test_mac_count_refuses_what_it_does_not_count():
    with pytest.raises(ValueError):
        M.step_products("rebar", 2, False, 5, options={"joint": True})
    with pytest.raises(ValueError):
        M.step_products("nope", 2, False, 5)


def test_mac_tracer_sees_the_control_networks_plain_products():
    # relax's r_l multiplies with plain `@` besides the dense kernels: the trace must show them
    traced = dict(M.traced_products("relax", 1, False, 5, D=12, H=7))
    M_ = 32                                  # relax's default "hidden"
    assert traced[("@", 5, 12, M_)] == 1     # ctx @ V1 (context of layer 0: x - mean_x)
    assert traced[("@", 5, M_, 1)] == 1      # h @ w2
    assert traced[("@", 1, 5, M_)] == 1      # c @ h
    assert traced[("fwd", 7, M_)] == 1 and traced[("dh", 7, M_)] == 1   # z W1 and rho, dense kernels


def test_mac_count_of_the_issue_set_up():
    # 2-layer linear 784-200-200 at batch 24 (issue 6): hand-checked totals
    B, q0, q1 = 24, 24 * 784 * 200, 24 * 200 * 200
    hard = 2 * (q0 + q1)                     # q0, q1, p0, p1 forward
    assert M.step_macs("reinforce", 2, False, B) == 2 * hard
    # 63,405,600 before the tangents along G and eta G shared their product (minus q0 + q1), and before
    # the Gram route (minus E's dW, the tangent h G_W and the score part's own dW of q0 and q1, plus
    # the two Gram products B^2 (n_in + n_out) of each)
    gram = B * B * (784 + 200) + B * B * (200 + 200)
    dynamic_rebar = 63_405_600 - (q0 + q1) - 3 * (q0 + q1) + (q0 + q1) + gram
    assert M.step_macs("dynamic_rebar", 2, False, B) == dynamic_rebar == 50_033_184
    # arm, disarm: reinforce + antithetic branches (l = 0: q1, p0, p1; l = 1: p1; p0 costs what q0 does)
    assert M.step_macs("arm", 2, False, B) == M.step_macs("disarm", 2, False, B) == 2 * hard + (q0 + 3 * q1)
    # vimco, reinforce_loo: reinforce on B K = 120 rows
    assert M.step_macs("vimco", 2, False, B) == M.step_macs("reinforce_loo", 2, False, B) == 5 * 2 * hard
    # relax: dynamic_rebar + R's dW of q0, q1 + r_0, r_1 (M = 32, contexts 784 and 984 wide):
    # forward 3 products, rho 1, tangent backward 5 (one of them (1, B) @ (B, M))
    r = sum(B * 32 * (200 * 2 + 1 + ctx) + B * 32 * (200 * 3 + 1 + ctx) for ctx in (784, 984))
    # (relax keeps the score part's dW, E and the tangent products: the Gram route is REBAR's alone)
    dynamic_rebar_without_gram = dynamic_rebar + 2 * (q0 + q1) - gram
    assert M.step_macs("relax", 2, False, B) == dynamic_rebar_without_gram + (q0 + q1) + r
    assert M.step_macs("relax", 2, False, B) == 67_660_320


@pytest.mark.parametrize("products", ["tables", "matrix"])
@pytest.mark.parametrize("n_layer, nonlinear", [(1, False), (2, False), (3, True)])
def test_bound_mac_count_is_what_iw_bound_runs(n_layer, nonlinear, products, monkeypatch):
    """The bound's count (per example q_0, per sample the transforms fed by samples, in passes of
    at most 100 samples) is the products iw_bound computes, as table sums or as matrix products."""
    from rebar_np.kernels import tables
    if products == "matrix":
        monkeypatch.setattr(tables, "TABLE_MAX_BYTES", 0)
    want = M.counted_rows(M.bound_products(n_layer, nonlinear, 3, 250, D=12, H=7))
    got = M.traced_bound_products(n_layer, nonlinear, 3, 250, D=12, H=7)
    assert got == want, f"L={n_layer} nonlinear={nonlinear}: iw_bound runs {got}, benchmarks/macs.py counts {want}"
    per_sample = 7 * 7 * (n_layer - 1) + 7 * 7 * (n_layer - 1) + 7 * 12 if not nonlinear else None
    if per_sample:                              # by hand: q_l, p_l for l > 0 are H x H, p_0 is H x D
        assert M.bound_macs(n_layer, nonlinear, 3, 250, D=12, H=7) == 3 * 12 * 7 + 3 * 250 * per_sample


def small_instance(n_layer, nonlinear, seed=0, D=20, H=6, B=5):
    rng = np.random.default_rng(seed)
    mean_x = rng.uniform(0.1, 0.9, D)
    model = SBN("sbn", n_layer, H, nonlinear, mean_x)
    params = init_params(model, seed, np.float64)
    for v in params.values():
        if v.ndim == 1:
            v[:] = rng.normal(0, 0.5, v.shape)
    x = (rng.random((B, D)) < mean_x).astype(np.float64)
    return model, params, x, draw_noise(model, B, rng, np.float64), rng


@pytest.mark.parametrize("arch", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("name", ["nvil", "concrete", "rebar", "dynamic_rebar"])
def test_jax_reference_matches_rebar_np_float64(name, arch):
    need_jax()
    from benchmarks.jax_reference import JaxReference
    n_layer, nonlinear = arch
    model, params, x, u, rng = small_instance(n_layer, nonlinear)
    est = E.get(name)
    aux = est.init_aux(model, 1, np.float64)
    for k, v in aux.items():
        if v.ndim == 1 and k != "tau":     # eta != 1 and a baseline far from 0, so no term hides
            v[:] = rng.normal(0, 0.5, v.shape)
    want = est.estimate(model, params, aux, x, u)
    with x64():
        G, aux_grads, f = JaxReference(name, model.mean_x, n_layer, model.n_hidden, nonlinear).estimate(
            params, aux, x, u)
    np.testing.assert_allclose(np.asarray(f), want.elbo, rtol=1e-12, atol=1e-10)
    for got, ref in ((G, want.grads), (aux_grads, want.aux_grads)):
        assert set(got) == set(ref)
        for k in ref:
            scale = max(float(np.max(np.abs(ref[k]))), 1e-12)
            err = float(np.max(np.abs(np.asarray(got[k]) - ref[k]))) / scale
            assert err < 1e-10, f"{name} {k}: relative difference {err:.2e}"


@pytest.mark.parametrize("name", ["nvil", "dynamic_rebar"])
def test_jax_step_elbo_matches_rebar_np_float32(name):
    """The timed float32 step itself, on the issue's set-up: its hard ELBO for the noise it draws."""
    need_jax()
    import jax
    from benchmarks.jax_reference import JaxReference
    rng = np.random.default_rng(0)
    x = (rng.random((24, 784)) < 0.13).astype(np.float32)
    model = SBN("sbn", 2, 200, False, np.clip(x.mean(axis=0, dtype=np.float64), 0.02, 0.98))
    est = E.get(name)
    params, aux = init_params(model, 0, np.float32), est.init_aux(model, 1, np.float32)
    ref = JaxReference(name, model.mean_x, 2, 200, False)
    state = ref.init_state(params, aux, seed=3)
    u = [np.asarray(ul) for ul in ref.draw_noise(jax.random.split(state["key"])[1], 24)]
    state, (f, bad) = ref.step(state, x)
    want = est.estimate(model, params, aux, x, u=u).elbo
    assert int(bad) == 0
    np.testing.assert_allclose(np.asarray(f), want, rtol=2e-5)
    assert int(state["t"]) == 1


def run_benchmarks(*args, env=None):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_jax_flag_without_jax_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "jax"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('jax blocked for this test')\n")
    r = run_benchmarks("--jax", "--estimators", "nvil", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "jax" in r.stderr


@pytest.mark.parametrize("args", [["--estimators", "nope"], ["--arch", "linear9"], ["--repeats", "0"],
                                  ["--scaling", "--batches", "0"], ["--bound", "--samples", "0"],
                                  ["--bound", "--examples", "0"], ["--bound", "--scaling"],
                                  ["--bound", "--run", "/nonexistent/run"], ["--run", "."]])
def test_bad_options_are_one_line_and_exit_2(args):
    r = run_benchmarks(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_small_run_writes_json(tmp_path):
    import json
    out = tmp_path / "r.json"
    r = run_benchmarks("--estimators", "nvil,dynamic_rebar", "--arch", "linear1", "--repeats", "1",
                       "--window", "0.02", "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [row["estimator"] for row in rows] == ["nvil", "dynamic_rebar"]
    assert isinstance(result["meta"]["cpu_model"], str)      # runs on different machines are told apart
    for row in rows:
        assert row["macs"] == M.step_macs(row["estimator"], 1, False, 24) and row["macs_count_matches_trace"]
        assert row["steps_per_s"] > 0 and 0 < row["fraction_of_matmul"] and 0 < row["ceiling"]
    table = run_benchmarks("--markdown", str(out))
    assert table.returncode == 0 and "| frac | ceiling |" in table.stdout, table.stdout


def test_a_small_bound_run_writes_json_and_its_table(tmp_path):
    import json
    out = tmp_path / "b.json"
    r = run_benchmarks("--bound", "--samples", "30", "--examples", "4", "--repeats", "1", "--window", "0.01",
                       "--threads", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())["bound"]
    assert (row["arch"], row["samples"], row["examples"], row["workers"]) == ("linear2", 30, 4, 2)
    assert row["macs"] == M.bound_macs(2, False, 4, 30) and row["macs_count_matches_trace"]
    assert row["samples_per_s"] > 0 and row["fraction_of_matmul"] > 0
    table = run_benchmarks("--markdown", str(out))
    per_sample = f"{M.bound_macs(2, False, 4, 30) / (4 * 30) / 1e6:.3f}"      # q_0's share included
    assert table.returncode == 0 and f"| linear2 | 30 | 4 | 2 | {per_sample} |" in table.stdout, table.stdout
    assert "| untrained" in table.stdout, table.stdout


def test_scaling_prints_a_markdown_table():
    r = run_benchmarks("--scaling", "--estimators", "nvil", "--batches", "4,8", "--widths", "16",
                       "--repeats", "1", "--window", "0.01")
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| arch | width | batch | nvil ms/step") and len(table) == 4


@pytest.mark.parametrize("n_layer, task", [(1, "sbn"), (2, "sbn"), (3, "omni")])
def test_fused_nvil_estimate_gives_rebar_nps_gradients(n_layer, task):
    """benchmarks/fused_nvil.py's one-function NVIL estimate (a measurement of the Python between
    kernels) computes nvil's ELBO, gradients and baseline loss, float32, for the same noise."""
    from benchmarks import fused_nvil
    rng = np.random.default_rng(n_layer)
    x = (rng.random((7, 784)) < 0.2).astype(np.float32)
    model = SBN(task, n_layer, 40, False, np.clip(x.mean(axis=0, dtype=np.float64), 0.02, 0.98))
    est = E.get("nvil")
    params, aux = init_params(model, 0, np.float32), est.init_aux(model, 1, np.float32)
    for k in params:          # nonzero biases and prior, so that every term is exercised
        params[k] += (0.1 * rng.standard_normal(params[k].shape)).astype(np.float32)
    u = draw_noise(model, 7, rng)
    want, got = est.estimate(model, params, aux, x, u=u), fused_nvil.estimate(model, params, aux, x, u=u)
    np.testing.assert_allclose(got.elbo, want.elbo, rtol=1e-5)
    assert abs(got.stat("baseline_loss") - want.stat("baseline_loss")) <= 1e-5 * want.stat("baseline_loss")
    for mine, theirs in ((got.grads, want.grads), (got.aux_grads, want.aux_grads)):
        assert mine.keys() == theirs.keys()
        for k in theirs:
            scale = float(np.max(np.abs(theirs[k])))
            assert scale > 0, k
            err = float(np.max(np.abs(mine[k] - theirs[k]))) / scale
            assert err < 1e-5, f"{k}: relative difference {err:.2e}"


def test_fused_nvil_refuses_what_it_does_not_cover():
    from benchmarks import fused_nvil
    x = np.zeros((2, 784), np.float32)
    for model, dtype in ((SBN("sbn", 1, 8, True, np.full(784, 0.3)), np.float32),
                         (SBN("sp", 1, 8, False, np.full(784, 0.3)), np.float32),
                         (SBN("sbn", 1, 8, False, np.full(784, 0.3)), np.float64)):
        params = init_params(model, 0, dtype)
        with pytest.raises(ValueError, match="fused NVIL estimate"):
            fused_nvil.estimate(model, params, E.get("nvil").init_aux(model, 1, dtype), x.astype(dtype))


def test_the_performance_docs_tables_are_the_saved_runs():
    """docs/performance.md's tables are rebuilt from the benchmark JSON they name, never typed."""
    from benchmarks.report import MARKER, update_docs
    doc = ROOT / "docs" / "performance.md"
    named = MARKER.findall(doc.read_text())
    assert named and all((ROOT / f).exists() for f in named)
    assert update_docs(doc, check=True) is False, "stale tables: python -m benchmarks --update-docs docs/performance.md"
