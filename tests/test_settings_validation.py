"""Every training setting, from every source (flags, --config, sweep grid files, --hparams, a resumed
run's config.json), goes through one typed check: a bad one is one line naming the option and the file,
exit code 2, before anything is printed or any folder made."""
import json
import os
import shutil
from dataclasses import fields

import pytest
from click.testing import CliRunner

import cli
from rebar_np.experiments import sweep as S
from rebar_np.training import train as T
from rebar_np.training.train import SettingError, TrainConfig, check_setting


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def tiny(data_dir):
    return ["--task", "omni", "--data-dir", data_dir, "--n-hidden", 8, "--steps", 2, "--eval-every", 0,
            "--no-progress"]


def assert_refused(res, *words, made=()):
    """Exit 2, one line naming what was wrong, nothing announced, no folder in `made` created."""
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert str(w) in lines[0], lines[0]
    assert "Traceback" not in res.output and "Training" not in res.output and "Resuming" not in res.output
    for path in made:
        assert not os.path.exists(path), path


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    res = run("train", *tiny(tiny_data_dir), "--model", "nvil", "--output", out)
    assert res.exit_code == 0, res.output
    return out


def resumed_with(finished_run, tmp_path, edit):
    """A copy of finished_run whose config.json is edit(its settings) (a JSON text); the files it holds."""
    out = tmp_path / "resumed"
    shutil.copytree(finished_run, out)
    record = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(edit(record))
    return out, sorted(os.listdir(out))


# key, value as JSON, value as TOML, what the message says
TYPED = [("steps", "300.7", "300.7", "an integer"), ("n_hidden", "20.5", "20.5", "an integer"),
         ("steps", "true", "true", "an integer"), ("nonlinear", '"false"', '"false"', "true or false"),
         ("n_hidden", '"abc"', '"abc"', "an integer"), ("learning_rate", '"0.001"', '"0.001"', "a number"),
         ("model", "3", "3", "a string")]


@pytest.mark.parametrize("source", ["config", "sweep", "resume"])
@pytest.mark.parametrize("key,as_json,as_toml,rule", TYPED)
def test_wrongly_typed_settings_from_files_name_the_file_and_key(source, key, as_json, as_toml, rule,
                                                                tiny_data_dir, finished_run, tmp_path):
    out = tmp_path / "out"
    if source == "config":
        f = tmp_path / "settings.json"
        f.write_text(f'{{"{key}": {as_json}}}')
        res = run("train", *tiny(tiny_data_dir), "--config", f, "--output", out)
        assert_refused(res, f, f"{key} must be {rule}", made=[out])
    elif source == "sweep":
        f = tmp_path / "g.toml"
        f.write_text(f'data_dir = "{tiny_data_dir}"\n[grid]\nseed = [0]\n[settings]\n{key} = {as_toml}\n')
        res = run("sweep", f)
        assert_refused(res, f, f"[settings] {key} must be {rule}", made=[tmp_path / "g"])
    else:
        run_dir, before = resumed_with(finished_run, tmp_path,
                                       lambda r: json.dumps(r)[:-1] + f', "{key}": {as_json}}}')
        res = run("train", "--resume", run_dir, "--steps", 4)
        assert_refused(res, run_dir / "config.json", f"{key} must be {rule}")
        assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize("args,words", [
    (["--steps", "2.5"], ["--steps"]),                                    # click's own types
    (["--hparams", "n_hidden=20.5"], ["n_hidden=20.5", "integer"]),
    (["--hparams", "nonlinear=maybe"], ["nonlinear=maybe"]),
])
def test_wrongly_typed_flags_and_hparams(args, words, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    assert_refused(run("train", *tiny(tiny_data_dir), *args, "--output", out), *words, made=[out])


@pytest.mark.parametrize("source", ["config", "resume"])
@pytest.mark.parametrize("text,kind", [("[1, 2]", "a list"), ("null", "null"), ('"hello"', "a string"),
                                       ("3", "a number")])
def test_settings_files_that_are_not_json_objects(source, text, kind, tiny_data_dir, finished_run, tmp_path):
    out = tmp_path / "out"
    if source == "config":
        f = tmp_path / "settings.json"
        f.write_text(text)
        assert_refused(run("train", *tiny(tiny_data_dir), "--config", f, "--output", out),
                       f, f"must hold a JSON object of settings, not {kind}", made=[out])
    else:
        run_dir, before = resumed_with(finished_run, tmp_path, lambda r: text)
        assert_refused(run("train", "--resume", run_dir), run_dir / "config.json", "JSON object", kind)
        assert sorted(os.listdir(run_dir)) == before


@pytest.mark.parametrize("args,words", [
    (["--learning-rate", "inf"], ["--learning-rate", "finite", "inf"]),
    (["--learning-rate", "nan"], ["--learning-rate", "nan"]),
    (["--model", "dynamic_rebar", "--temperature", "1e-50"], ["--temperature", "between 1e-06 and 1e+06"]),
    (["--model", "rebar", "--temperature", "1e-50"], ["--temperature"]),
    (["--model", "concrete", "--temperature", "1e-50"], ["--temperature"]),
    (["--temperature", "inf"], ["--temperature", "inf"]),
    (["--beta2", "2"], ["--beta2", "[0, 1)"]),
    (["--beta2", "nan"], ["--beta2", "nan"]),
    (["--beta2", "0.9999999999"], ["--beta2", "below 1 in float32"]),
    (["--seed", "-1"], ["--seed", "0 or more"]),
    (["--seed", str(2 ** 32)], ["--seed", "at most 4294967295"]),
    (["--hparams", "learning_rate=nan"], ["--hparams: learning_rate", "nan"]),
    (["--hparams", "trial=-1"], ["--hparams: trial", "0 or more"]),
    (["--config", {"ema_decay": 1.0}], ["ema_decay must be in (0, 1)"]),
    (["--config", {"adam_eps": 0}], ["adam_eps must be a positive finite number"]),
    (["--config", {"aux_lr_scale": -1}], ["aux_lr_scale must be a positive"]),
    (["--config", {"beta1": 1}], ["beta1 must be in [0, 1)"]),
    (["--config", {"learning_rate": 1e-50}], ["learning_rate must be representable in float32"]),
    (["--config", {"task": "imagenet"}], ["settings.json: unknown task 'imagenet'"]),
])
def test_non_finite_and_out_of_range_values_are_refused_before_a_folder_is_made(args, words, tiny_data_dir,
                                                                                tmp_path):
    out = tmp_path / "out"
    if args[0] == "--config":
        f = tmp_path / "settings.json"
        f.write_text(json.dumps(args[1]))
        args = ["--config", f]
        words = [f, *words]
    assert_refused(run("train", *tiny(tiny_data_dir), *args, "--output", out), *words, made=[out])


def test_a_resumed_run_and_a_sweep_check_ranges_too(tiny_data_dir, finished_run, tmp_path):
    run_dir, before = resumed_with(finished_run, tmp_path, lambda r: json.dumps({**r, "temperature": 0}))
    assert_refused(run("train", "--resume", run_dir), run_dir / "config.json", "temperature must be between")
    assert sorted(os.listdir(run_dir)) == before
    run_dir = finished_run
    assert_refused(run("train", "--resume", run_dir, "--steps", 4, "--eval-samples", 0), "--eval-samples")
    f = tmp_path / "g.toml"
    f.write_text(f'data_dir = "{tiny_data_dir}"\n[grid]\nlearning_rate = [1e-3, nan]\n')
    assert_refused(run("sweep", f), f, "run lrnan", "learning-rate must be a positive finite number",
                   made=[tmp_path / "g"])


@pytest.mark.parametrize("command,args,words", [
    ("train", ["--n-hidden", "100000000"], ["--n-hidden must be smaller", "GiB of memory, this machine has"]),
    ("train", ["--n-layer", "100000000"], ["--n-layer must be at most 100"]),
    ("train", ["--model", "vimco", "--samples", "100000000"], ["--samples must be smaller", "GiB"]),
    ("train", ["--batch-size", "97"], ["--batch-size 97 is larger than the training set (96 examples)"]),
    ("variance", ["--n-hidden", "100000000"], ["--n-hidden must be smaller"]),
    ("compare", ["--n-hidden", "100000000"], ["--n-hidden must be smaller"]),
])
def test_sizes_that_cannot_fit_are_refused_before_allocating(command, args, words, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    common = tiny(tiny_data_dir) if command == "train" else ["--task", "omni", "--data-dir", tiny_data_dir]
    if command == "variance":
        res = run(command, *common, *args)
    else:
        res = run(command, *common, *args, "--output", out)
    assert_refused(res, *words, made=[out])


def test_the_memory_estimate_counts_the_model_and_refuses_what_the_machine_cannot_hold(monkeypatch):
    small, wide = TrainConfig(n_hidden=200), TrainConfig(n_hidden=2000)
    # the parameters alone (2 layers: q0 784x2000, q1 2000x2000, p1, p0 2000x784) and their copies
    n_params = 2 * 784 * 2000 + 2 * 2000 * 2000
    assert T.memory_needed(wide) > 4 * n_params * 4 > T.memory_needed(small)
    monkeypatch.setattr(T, "machine_memory", lambda: T.memory_needed(small) * 2)
    small.validate()
    with pytest.raises(SettingError, match="n-hidden must be smaller.*needs about"):
        wide.validate()


@pytest.mark.parametrize("args", [
    ["--seed", "-1"], ["--batch-size", "97"], ["--learning-rate", "nan"], ["--model", "nope"],
])
def test_nothing_is_printed_or_made_inside_a_file_or_before_a_refusal(args, tiny_data_dir, tmp_path):
    out = tmp_path / "runs" / "new"
    assert_refused(run("train", *tiny(tiny_data_dir), *args, "--output", out), made=[tmp_path / "runs"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_refused(run("train", *tiny(tiny_data_dir), "--output", blocker / "run"), "--output",
                   f"{blocker} is a file, not a folder")


@pytest.mark.parametrize("body,words", [
    ('workers = "abc"\n[grid]\nseed = [0]\n', ["workers must be an integer of at least 1", "'abc'"]),
    ("workers = 0\n[grid]\nseed = [0]\n", ["workers must be an integer"]),
    ('engine = 3\n[grid]\nseed = [0]\n', ["engine must be a string"]),
    ("[grid]\nsteps = [300.7]\n", ["[grid] steps must be an integer, got 300.7"]),
    ('[grid]\nestimator = ["mine"]\n[estimators]\nmine = { model = "rebar", temperature = "0.3" }\n',
     ["[estimators] mine: temperature must be a number"]),
    ('[grid]\nseed = [0]\n[architectures]\ndeep = { n_layer = 2.5 }\n', ["[architectures] deep: n_layer"]),
    ("[grid]\nseed = [0, -1]\n", ["run seed1: seed must be 0 or more, got -1"]),
    ("grid = 3\n", ["grid must be a table"]),
    ('[grid]\nestimator = [1]\n', ["estimator must list names"]),
    (b"[grid]\nseed = [0]\n# \xff\n", ["is not UTF-8 text"]),
])
def test_sweep_files_name_the_file_and_key(body, words, tmp_path):
    f = tmp_path / "g.toml"
    f.write_bytes(body if isinstance(body, bytes) else body.encode())
    assert_refused(run("sweep", f), f, *words, made=[tmp_path / "g"])


def test_integral_floats_are_counts_and_every_setting_is_typed(tmp_path):
    cfg = TrainConfig(steps=2e6, n_hidden=200.0)
    cfg.validate()
    assert cfg.steps == 2_000_000 and type(cfg.steps) is int and type(cfg.n_hidden) is int
    f = tmp_path / "g.toml"
    f.write_text("[grid]\nseed = [0]\n[settings]\nsteps = 2e6\nlearning_rate = 1\n")
    spec, = S.expand(S.load_grid(f))
    assert spec.settings["steps"] == 2_000_000 and type(spec.settings["steps"]) is int
    assert type(spec.settings["learning_rate"]) is float
    # the one schema covers every field, with its type from TrainConfig's annotations
    for f in fields(TrainConfig):
        wrong = 3 if f.type is str else "x"
        with pytest.raises(SettingError, match=f"^{f.name.replace('_', '-')} must be "):
            check_setting(f.name, wrong)
