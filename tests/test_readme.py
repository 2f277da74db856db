"""The README's Python example runs as written and does what it says."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no Python example"
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    res, params = scope["res"], scope["params"]
    assert set(res.grads) == set(params)
    assert all(res.grads[k].shape == params[k].shape for k in params)
    assert res.elbo.shape == (24,) and np.all(np.isfinite(res.elbo))
    assert "tau" in res.aux_grads and any(k.startswith("psi.") for k in res.aux_grads)


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert "rebar-np train --model dynamic_rebar --task sbn" in text
    test_cmd = "python -m pytest -q"
    assert test_cmd in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == test_cmd
