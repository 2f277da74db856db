"""Command-line edges found beyond the issue's list: an empty --data-dir (an unset shell variable)
is refused by every command that takes one, and a closed pipe (`rebar-np ... | head`) ends a command
quietly with success, as Unix tools do."""
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

COMMANDS_WITH_DATA_DIR = [["train"], ["eval", "RUN"], ["samples", "RUN"], ["variance"], ["compare"],
                          ["data", "info"], ["data", "prepare"], ["data", "import", "omniglot", "x.mat"],
                          ["data", "download", "mnist-grey"]]


@pytest.mark.parametrize("command", COMMANDS_WITH_DATA_DIR, ids=lambda c: " ".join(c))
def test_an_empty_data_dir_is_refused(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.main, [*command, "--data-dir", ""])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "--data-dir" in res.output and "empty" in res.output
    assert list(tmp_path.iterdir()) == []                       # nothing made


def test_a_closed_pipe_ends_quietly(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("[grid]\nestimator = [\"nvil\"]\nseed = [%s]\n[settings]\nsteps = 10\n"
                    % ", ".join(map(str, range(1500))))          # ~100 KB of --dry-run lines: more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "cli", "sweep", str(grid), "--dry-run"],
                            cwd=Path(cli.__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"new")
    proc.stdout.close()                                          # the reader goes away, as `| head -1` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()
