"""rebar-np unbiased: the exact-enumeration check as a command, with a verdict a reader can see.

The estimators are tested thoroughly against the independent reference in test_unbiased.py and its
siblings; here the command itself: it passes for the unbiased estimators, fails with a clear verdict
for concrete and for REBAR with the TF reference's conditioning from two layers up, and its own
exact gradient (forward passes and finite differences) agrees with the independent reference's."""
import numpy as np
import pytest
from click.testing import CliRunner

import cli
import reference as R
from rebar_np import estimators as E
from rebar_np.evaluation import unbiased as U


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


UNBIASED = [n for n in E.ESTIMATORS if n != "concrete"]
LAYOUTS = [("--n-layer", 1, "--linear"), ("--n-layer", 2, "--nonlinear"), ("--n-layer", 3, "--linear")]


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimators_pass(name):
    layout = LAYOUTS[UNBIASED.index(name) % len(LAYOUTS)]
    extra = ["--n-hidden", 2] if name in ("vimco", "reinforce_loo") and layout[1] == 3 else []
    res = run("unbiased", "--model", name, *layout, *extra, "--draws", 800)
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1].startswith("UNBIASED:")
    assert res.output.count("  ok") >= 5 and "  BIASED" not in res.output    # a row per parameter tensor


@pytest.mark.parametrize("args,biased", [
    (["--model", "concrete"], ["q0.W", "q1.W", "p0.W"]),      # relaxed samples everywhere
    (["--model", "rebar", "--condition-above"], ["q1.W", "q1.c"]),
    (["--model", "dynamic_rebar", "--condition-above", "--nonlinear"], ["q1.W1"]),
])
def test_biased_estimators_fail_with_a_verdict(args, biased):
    res = run("unbiased", *args, "--n-layer", 2, "--draws", 1500)
    assert res.exit_code == 1, res.output
    verdict = res.output.strip().splitlines()[-1]
    assert verdict.startswith("BIASED:") and "probability below 0.001" in verdict
    flagged = {line.split()[0] for line in res.output.splitlines() if line.rstrip().endswith("BIASED")}
    assert set(biased) <= flagged, res.output
    if "--condition-above" in args:
        # REBAR's generative tensors get the plain gradient of log p, and the layer below the
        # others' switch layers keeps its unbiased control variate: only q1's are flagged
        assert all(t.startswith("q1.") for t in flagged), res.output


def test_the_reference_conditioning_is_unbiased_for_one_layer():
    """With one stochastic layer there is nothing above the switch layer: the variants coincide."""
    res = run("unbiased", "--model", "rebar", "--condition-above", "--n-layer", 1, "--draws", 800)
    assert res.exit_code == 0 and "UNBIASED" in res.output, res.output


@pytest.mark.parametrize("samples", [1, 2])
def test_the_commands_exact_gradient_is_the_independent_references(samples):
    model, params, aux, x = U.tiny_instance("nvil", "sbn", 2, 2, True, 5, 2, seed=3)
    mine = U.exact_gradient(model, params, x, samples)
    theirs = (R.exact_gradient(model, params, x) if samples == 1
              else R.exact_multisample_gradient(model, params, x, samples))
    for k in params:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-7, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("args,words", [
    (["--model", "nvil", "--condition-above"], ["--condition-above", "not nvil"]),
    (["--model", "rebar", "--n-layer", 4, "--n-hidden", 4], ["enumerates"]),
    (["--model", "rebar", "--draws", 1], ["--draws must be at least"]),
    (["--model", "rebar", "--alpha", 2], ["--alpha"]),
    (["--model", "nope"], ["unknown", "nope"]),
])
def test_bad_options_are_one_line(args, words):
    res = run("unbiased", *args)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert all(w in res.output for w in words), res.output
