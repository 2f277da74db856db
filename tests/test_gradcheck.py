"""rebar_np.evaluation.gradcheck: every REINFORCE / NVIL gradient passes it, and it has teeth
(a corrupted analytic gradient is flagged, and only where it is corrupted)."""
import numpy as np
import pytest

from rebar_np import estimators as E
from rebar_np import kernels as K
from rebar_np.model import sbn as M
from rebar_np.evaluation.gradcheck import compare, finite_difference, random_instance, run_checks

CONFIGS = [(est, task, L, nl) for est in ("reinforce", "nvil") for task in ("sbn", "omni", "sp")
           for nl in (False, True) for L in (1, 2, 3)]


def describe(rows):
    return "\n".join(f"  {'ok  ' if r.passed else 'FAIL'} {r.tensor:<16} abs {r.max_abs_err:.2e} "
                     f"rel {r.max_rel_err:.2e} ({r.n_checked} entries)" for r in rows)


@pytest.mark.parametrize("est,task,L,nl", CONFIGS)
def test_run_checks_passes(est, task, L, nl):
    rows = run_checks(est, task, L, 4, nl)
    failing = [r for r in rows if not r.passed]
    assert not failing, f"{est} {task} L={L} nonlinear={nl}: failing rows\n{describe(failing)}"
    # every model parameter (and every baseline parameter for nvil) was checked, on every entry
    model, params, *_ = random_instance(task, L, 4, nl)
    checked = {r.tensor: r.n_checked for r in rows}
    for k, v in params.items():
        assert checked.get(k) == v.size, f"{k}: checked {checked.get(k)} of {v.size} entries"
    aux = E.get(est).init_aux(model, 0, np.float64)
    assert sorted(k for k in checked if k.startswith("aux:")) == sorted("aux:" + k for k in aux)
    assert any(k.startswith("logp/") for k in checked)


def _reinforce_rows(grads_hook=None, task="sbn", L=2, nl=True):
    model, params, x, u, rng = random_instance(task, L, 3, nl, n_input=8, batch_size=4, seed=3)
    est = E.get("reinforce")
    res = est.estimate(model, params, {}, x, u)
    fd = finite_difference(lambda: est.surrogate(model, params, {}, x, u, res.frozen)[0], params)
    grads = {k: v.copy() for k, v in res.grads.items()}
    if grads_hook:
        grads_hook(grads)
    return compare(grads, fd)


def test_compare_flags_one_corrupted_entry():
    assert all(r.passed for r in _reinforce_rows()), describe(_reinforce_rows())

    def corrupt(g):
        scale = np.max(np.abs(g["q1.W2"]))
        g["q1.W2"][1, 2] += 1e-3 * scale          # 0.1% of the tensor's scale, in one entry
    rows = _reinforce_rows(corrupt)
    assert [r.tensor for r in rows if not r.passed] == ["q1.W2"], describe(rows)
    bad = next(r for r in rows if r.tensor == "q1.W2")
    assert 5e-4 < bad.max_rel_err < 2e-3, describe([bad])


def test_gradcheck_catches_a_wrong_tanh_derivative(monkeypatch):
    """dL/dpre = dL/dh (1 - h) instead of (1 - h^2): every tensor *below* a tanh is wrong."""
    monkeypatch.setattr(K, "tanh_backward", lambda h, dh: dh * (1.0 - h))
    rows = run_checks("reinforce", "sbn", 2, 3, True, n_input=8, batch_size=4)
    failing = {r.tensor for r in rows if not r.passed}
    below_tanh = {f"{t}.{w}{k}" for t in ("q0", "q1", "p0", "p1") for w in "Wc" for k in "12"}
    # the relaxed-sample check of log p: p's tensors below a tanh, and d log p / d s of both layers
    # (s_l enters T_pl through its input, below the tanhs)
    relaxed = {f"logp/{k}" for k in below_tanh if k.startswith("p")} | {"logp/s0", "logp/s1"}
    assert failing == below_tanh | relaxed, describe(rows)
    # the linear model has no tanh, so nothing changes
    rows = run_checks("reinforce", "sbn", 2, 3, False, n_input=8, batch_size=4)
    assert all(r.passed for r in rows), describe(rows)


def test_gradcheck_catches_a_wrong_score(monkeypatch):
    """A 1% error in the score weights: exactly the recognition tensors fail."""
    real = M.score_backward
    monkeypatch.setattr(M, "score_backward",
                        lambda model, params, grads, layers, dlogq, accumulate=True:
                        real(model, params, grads, layers, dlogq * 1.01, accumulate))
    rows = run_checks("nvil", "sp", 2, 3, False, n_input=8, batch_size=4)
    failing = {r.tensor for r in rows if not r.passed}
    assert failing == {"q0.W", "q0.c", "q1.W", "q1.c"}, describe(rows)


def test_gradcheck_catches_a_wrong_baseline_gradient(monkeypatch):
    """NVIL's baseline gradient with the wrong factor (1/B instead of 2/B): only aux rows fail."""
    import rebar_np.estimators.nvil as nvil
    real = nvil.squared_signal_loss
    monkeypatch.setattr(nvil, "squared_signal_loss", lambda s: (real(s)[0], real(s)[1] / 2))
    rows = run_checks("nvil", "sbn", 1, 3, False, n_input=8, batch_size=4)
    failing = {r.tensor for r in rows if not r.passed}
    assert failing == {"aux:baseline.W1", "aux:baseline.c1", "aux:baseline.W2", "aux:baseline.c2"}, \
        describe(rows)
