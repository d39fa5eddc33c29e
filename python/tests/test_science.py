"""localize, describe and lesion return what the CLI's --json prints."""

import json

import pandas as pd
import pytest

import ftri
from conftest import FIXTURES, cli_json

LLAMA = FIXTURES / "llama"
TARGET = ["the dog barked", "a puppy ran", "dogs and cats", "my dog sleeps", "the dog is here", "a big dog"]
CONTROL = ["in 1999 a bridge", "12 pears cost $4", "the year 2001", "pay 3 dollars", "bridges in 1850", "4.5 and 12"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sci")
    (d / "t.txt").write_text("\n".join(TARGET) + "\n")
    (d / "c.txt").write_text("\n".join(CONTROL) + "\n")
    ev = [{"prompt": "The dog was", "target": " quiet"}, {"prompt": "In 1999,", "target": " Riverton"}]
    (d / "e.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    return d, ev


def test_localize_equals_cli(llama, files):
    d, _ = files
    want = cli_json("localize", "--model", LLAMA, "--target", d / "t.txt", "--control", d / "c.txt", "--top", "10", "--layers", "0-1")
    got = ftri.localize(llama, d / "t.txt", d / "c.txt", top=10, layers=range(0, 2), as_frame=False)
    assert got == want
    # lists of texts give the same; as a DataFrame by default
    r = ftri.localize(llama, TARGET, CONTROL, top=10)
    assert isinstance(r["neurons"], pd.DataFrame)
    assert r["neurons"].to_dict("records") == want["neurons"]
    paired = ftri.localize(llama, TARGET, CONTROL, paired=True, direction="both", top=5)
    want = cli_json("localize", "--model", LLAMA, "--target", d / "t.txt", "--control", d / "c.txt", "--paired", "--direction", "both", "--top", "5")
    assert paired["neurons"].to_dict("records") == want["neurons"]


def test_describe_equals_cli(llama):
    for n in ["0.3", "1.127"]:
        assert ftri.describe(llama, n, top=5) == cli_json("describe", "--model", LLAMA, "--neuron", n, "--top", "5")


def test_lesion_equals_cli(llama, files):
    d, ev = files
    want = cli_json("lesion", "--model", LLAMA, "--neurons", "0.3,1.17", "--op", "scale=0", "--eval", d / "e.jsonl", "--random-baseline", "3")
    got = ftri.lesion(llama, ["0.3", "1.17"], ev, op="scale=0", random_baseline=3)
    assert got == want
    assert ftri.lesion(llama, "0.3,1.17", d / "e.jsonl", op="scale=0", random_baseline=3) == want


def test_model_path_instead_of_model(files):
    assert ftri.describe(str(LLAMA), "0.3", top=3)["neuron"] == "0.3"


def test_expert_lesion_equals_cli(files):
    d, ev = files
    mixtral = FIXTURES / "mixtral"
    want = cli_json("lesion", "--model", mixtral, "--experts", "0.e1,1.e2", "--eval", d / "e.jsonl", "--random-baseline", "3")
    got = ftri.lesion(mixtral, experts=["0.e1", "1.e2"], eval=ev, random_baseline=3)
    assert got == want
    with pytest.raises(ftri.FtriError, match="no mixture-of-experts"):
        ftri.lesion(LLAMA, experts="0.e1", eval=ev)
