"""Bad input raises ftri.FtriError (a ValueError) with the CLI's one-line message."""

import pytest

import ftri
from conftest import FIXTURES, cli_error

LLAMA = FIXTURES / "llama"


def test_is_value_error():
    assert issubclass(ftri.FtriError, ValueError)


def test_missing_model_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ftri.FtriError) as e:
        ftri.Model.load(missing)
    assert str(e.value) == cli_error("info", "--model", missing)


def test_bad_neuron_id(llama):
    with pytest.raises(ftri.FtriError) as e:
        ftri.describe(llama, "abc")
    assert str(e.value) == cli_error("describe", "--model", LLAMA, "--neuron", "abc")


def test_layer_out_of_range(llama):
    with pytest.raises(ftri.FtriError) as e:
        ftri.describe(llama, "99.1")
    assert str(e.value) == cli_error("describe", "--model", LLAMA, "--neuron", "99.1")
    assert "out of range" in str(e.value)
    with pytest.raises(ftri.FtriError, match="out of range"):
        llama.run_with_cache("hi", interventions=[("5.1", "zero")])
    with pytest.raises(ftri.FtriError, match="out of range"):
        llama.run_with_cache("hi", interventions=[("1.4096", "zero")])


def test_bad_inputs_to_run(llama):
    with pytest.raises(ftri.FtriError, match="matches no hook point"):
        llama.run_with_cache("hi", names=["blocks.9.*"])
    with pytest.raises(ftri.FtriError, match="unknown --op"):
        llama.run_with_cache("hi", interventions=[("0.1", "explode")])
    with pytest.raises(ftri.FtriError, match="needs --atlas"):
        llama.run_with_cache("hi", interventions=[("0.1", "mean")])
    with pytest.raises(ftri.FtriError, match="context"):
        llama.run_with_cache("word " * 500)
    with pytest.raises(ftri.FtriError):
        llama.run_with_cache([])


def test_bad_atlas_and_options(tmp_path, llama):
    with pytest.raises(ftri.FtriError, match="no such atlas folder"):
        ftri.Atlas.open(tmp_path / "missing")
    with pytest.raises(ftri.FtriError, match="unknown record setting"):
        ftri.record(llama, tmp_path / "c.txt", tmp_path / "a", progress=False, topk=3)
    with pytest.raises(ftri.FtriError, match="(?i)cannot read|no such file"):
        ftri.record(llama, tmp_path / "c.txt", tmp_path / "a", progress=False)
    with pytest.raises(ftri.FtriError):
        ftri.localize(llama, ["a"], ["b"], reduce="median")
    with pytest.raises(ftri.FtriError):
        ftri.Model.load(LLAMA, dtype="f8")
