"""The command line: one-line errors with exit code 2, gradcheck's table and exit codes, help."""
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli.main, list(args))


def assert_one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args,words", [
    (["train", "--model", "nope"], ["unknown model", "nope"]),
    (["train", "--task", "imagenet"], ["unknown task", "imagenet"]),
    (["train", "--n-layer", "0"], ["n-layer"]),
    (["train", "--n-hidden", "-3"], ["n-hidden"]),
    (["train", "--steps", "abc"], ["steps"]),
    (["train", "--relaxation", "gumbel"], ["relaxation"]),
    (["train", "--binarization", "sometimes"], ["binarization"]),
    (["train", "--bogus-flag"], ["bogus"]),
    (["gradcheck", "--model", "nope"], ["unknown model"]),
    (["eval", "/nonexistent/run"], ["no checkpoint"]),
    (["eval", "/nonexistent/run", "--split", "dev"], ["split"]),
    (["data", "import", "cifar", "/tmp"], ["cifar"]),
    (["nonsense"], ["nonsense"]),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    assert_one_line_error(run(*args), *words)


def test_gradcheck_prints_a_table_and_passes():
    res = run("gradcheck", "--model", "dynamic_rebar", "--n-layer", "2", "--n-hidden", "3", "--n-input", "6",
              "--batch-size", "3")
    assert res.exit_code == 0, res.output
    assert "max abs err" in res.output and "max rel err" in res.output
    rows = [l for l in res.output.splitlines() if l.endswith("pass") or l.endswith("FAIL")]
    assert rows and all(l.endswith("pass") for l in rows)
    assert any(l.startswith("aux:tau") for l in rows) and any(l.startswith("q1.W") for l in rows)


def test_gradcheck_exits_nonzero_on_a_failure(monkeypatch):
    import rebar_np.estimators.nvil as nvil
    real = nvil.estimate

    def wrong(*a, **k):
        res = real(*a, **k)
        res.grads["p0.W"] = res.grads["p0.W"] * 1.001
        return res
    monkeypatch.setattr(nvil, "estimate", wrong)
    res = run("gradcheck", "--model", "nvil", "--n-hidden", "3", "--n-input", "6")
    assert res.exit_code == 1
    assert any(l.startswith("p0.W") and l.endswith("FAIL") for l in res.output.splitlines())


def test_help_explains_options_with_defaults():
    res = run("train", "--help")
    assert res.exit_code == 0
    for opt in ["--model", "--task", "--n-layer", "--learning-rate", "--steps", "--eval-every", "--seed",
                "--temperature", "--relaxation", "--output"]:
        assert opt in res.output
    assert "default: dynamic_rebar" in res.output and "default: 0.0003" in res.output


def test_console_entry_point_gives_one_line_not_a_traceback():
    proc = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "train", "--model", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("Error: unknown model 'nope'; choose one of reinforce, nvil,")
    assert len(proc.stderr.strip().splitlines()) == 1
