"""The TF reference's hparams strings: the mapping, its errors, and that a string runs what the flags run."""
import pytest
from click.testing import CliRunner

import cli
from rebar_np.training.hparams import HparamsError, hparams_settings, parse_hparams


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.mark.parametrize("reference,ours", [
    ("SBN", "reinforce"), ("SBNNVIL", "nvil"), ("SBNMuProp", "muprop"), ("SBNSimpleMuProp", "simple_muprop"),
    ("SBNRebar", "rebar"), ("SBNDynamicRebar", "dynamic_rebar"), ("SBNGumbel", "concrete")])
def test_model_names(reference, ours):
    assert hparams_settings(f"model={reference}") == {"model": ours}


def test_every_key_maps_to_a_setting():
    text = ("model=SBNRebar, n_hidden=50,n_input=784,n_layer=3,nonlinear=True,learning_rate=1e-3,temperature=0.1,"
            "n_samples=1,batch_size=32,muprop_relaxation=False,dynamic_b=true,quadratic=False,beta2=0.999,"
            "task=omni,trial=4")
    assert hparams_settings(text) == {
        "model": "rebar", "n_hidden": 50, "n_layer": 3, "nonlinear": True, "learning_rate": 1e-3,
        "temperature": 0.1, "batch_size": 32, "relaxation": "concrete", "binarization": "dynamic", "joint": True,
        "beta2": 0.999, "task": "omni", "seed": 4}
    assert parse_hparams("quadratic=1,dynamic_b=0") == {"quadratic": True, "dynamic_b": False}
    # quadratic=True is the reference's per-layer estimator, conditioning included (biased from two layers)
    assert hparams_settings("muprop_relaxation=True,quadratic=True") == {"relaxation": "muprop", "joint": False,
                                                                          "condition_above": True}


@pytest.mark.parametrize("text,words", [
    ("model=SBNDynamicRebar,lerning_rate=0.1", ["unknown hparams key 'lerning_rate'", "learning_rate"]),
    ("model=SBNFoo", ["unknown hparams model 'SBNFoo'"]),
    ("n_layer=two", ["n_layer=two", "integer"]),
    ("nonlinear=maybe", ["nonlinear=maybe", "True or False"]),
    ("n_input=100", ["n_input=100", "784"]),
    ("n_samples=5", ["n_samples=5"]),
    ("n_layer=2,n_layer=3", ["twice"]),
    ("n_layer", ["name=value"]),
    ("model=SBNTrackGradVariances,n_layer=2",
     ["rebar-np variance --follow simple_muprop", "--n-layer 2"]),
])
def test_bad_strings_are_one_line_errors(text, words):
    with pytest.raises(HparamsError) as err:
        hparams_settings(text)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    res = run("train", "--hparams", text)
    assert res.exit_code == 2 and res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1


def test_hparams_string_runs_the_same_configuration_as_the_flags(tmp_path):
    common = ["--n-hidden", 8, "--steps", 2, "--eval-every", 0, "--no-progress"]
    a, b = tmp_path / "hparams", tmp_path / "flags"
    res = run("train", "--hparams", "model=SBNDynamicRebar,learning_rate=0.0003,n_layer=2,task=sbn", *common,
              "--output", a)
    assert res.exit_code == 0, res.output
    res = run("train", "--model", "dynamic_rebar", "--learning-rate", "0.0003", "--n-layer", 2, "--task", "sbn",
              *common, "--output", b)
    assert res.exit_code == 0, res.output
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    assert '"model": "dynamic_rebar"' in (a / "config.json").read_text()


def test_a_setting_given_twice_is_refused():
    res = run("train", "--hparams", "model=SBNNVIL", "--model", "rebar")
    assert res.exit_code == 2 and "--model and --hparams both set model" in res.output
