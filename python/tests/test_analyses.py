"""experts, patch, tune, frequency, align, modules, sparsity, moefy, decompose and celltypes return
what the CLI's --json prints on the same inputs, and raise FtriError with the CLI's message."""

import json
import math

import numpy as np
import pandas as pd
import pytest

import ftri
from conftest import FIXTURES, cli, cli_error, cli_json

LLAMA = FIXTURES / "llama"
MIXTRAL = FIXTURES / "mixtral"
TARGET = ["the dog barked", "a puppy ran", "dogs and cats", "my dog sleeps", "the dog is here", "a big dog"]
CONTROL = ["in 1999 a bridge", "12 pears cost $4", "the year 2001", "pay 3 dollars", "bridges in 1850", "4.5 and 12"]
CORPUS = [
    "The dog barked at the cat while the children played in the garden.",
    "In 1999 the bridge over the river was rebuilt with steel and stone.",
    "She paid 12 dollars for the pears and 4 dollars for the bread.",
    "Dogs and cats sleep most of the day, but puppies run around.",
] * 3


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("an")
    (d / "t.txt").write_text("\n".join(TARGET) + "\n")
    (d / "c.txt").write_text("\n".join(CONTROL) + "\n")
    (d / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    tune = [{"text": f"I counted {n} apples", "value": n} for n in range(1, 13)]
    (d / "tune.jsonl").write_text("".join(json.dumps(x) + "\n" for x in tune))
    return d


@pytest.fixture(scope="module")
def mixtral():
    return ftri.Model.load(MIXTRAL)


def records(df):
    """A DataFrame's rows as the JSON list (NaN back to None, as the JSON has null)."""
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # noqa: E731
    return [{k: None if nan(v) else v for k, v in row.items()} for row in df.to_dict("records")]


def test_experts(mixtral, d):
    want = cli_json("experts", "--model", MIXTRAL, "--target", d / "t.txt", "--control", d / "c.txt", "--measure", "weight", "--top", "5")
    assert ftri.experts(mixtral, d / "t.txt", d / "c.txt", measure="weight", top=5, as_frame=False) == want
    r = ftri.experts(mixtral, TARGET, CONTROL, measure="weight", top=5)
    assert isinstance(r["experts"], pd.DataFrame)
    assert r["experts"].to_dict("records") == want["experts"]
    msg = cli_error("experts", "--model", MIXTRAL, "--target", d / "t.txt", "--control", d / "c.txt", "--measure", "foo")
    with pytest.raises(ftri.FtriError) as e:
        ftri.experts(mixtral, TARGET, CONTROL, measure="foo")
    assert str(e.value) == msg


def test_patch(llama, tmp_path):
    args = ["--clean", "The dog was", "--corrupt", "The cat was", "--target", " quiet", "--layers", "0-1"]
    want = cli_json("patch", "--model", LLAMA, *args, "--method", "attribution")
    got = ftri.patch(llama, "The dog was", "The cat was", " quiet", layers="0-1", method="attribution", out=tmp_path / "p.csv")
    assert isinstance(got["cells"], pd.DataFrame)
    assert records(got["cells"]) == want["cells"]
    assert ftri.patch(llama, "The dog was", "The cat was", " quiet", layers=[0, 1], method="attribution", as_frame=False) == want
    assert (tmp_path / "p.csv").read_text().startswith("site,layer,position,head,recovered,attribution")
    noise = ["--clean", "The dog was", "--target", " quiet", "--noise", "3", "--seeds", "2", "--sites", "resid_pre"]
    want = cli_json("patch", "--model", LLAMA, *noise)
    assert ftri.patch(llama, "The dog was", target=" quiet", noise=3, seeds=2, sites="resid_pre", as_frame=False) == want
    msg = cli_error("patch", "--model", LLAMA, *args, "--metric", "bogus")
    with pytest.raises(ftri.FtriError) as e:
        ftri.patch(llama, "The dog was", "The cat was", " quiet", metric="bogus")
    assert str(e.value) == msg


def test_tune(llama, d):
    want = cli_json("tune", "--model", LLAMA, "--stimuli", d / "tune.jsonl", "--top", "5", "--folds", "3")
    assert ftri.tune(llama, d / "tune.jsonl", top=5, folds=3, as_frame=False) == want
    pairs = [(f"I counted {n} apples", n) for n in range(1, 13)]
    r = ftri.tune(llama, pairs, top=5, folds=3)
    assert records(r["units"]) == want["units"]
    assert records(r["decoding"]) == want["decoding"]
    msg = cli_error("tune", "--model", LLAMA, "--stimuli", "builtin:nope")
    with pytest.raises(ftri.FtriError) as e:
        ftri.tune(llama, "builtin:nope")
    assert str(e.value) == msg


STREAMS = [
    "the dog ran home the cat sat down a bird flew off my fish swam away",
    "a big dog barked the old cat slept one small bird sang her red fish hid",
    "the cat ran home a dog sat down my fish flew off the bird swam away",
    "one old dog slept a big cat barked the red bird hid my small fish sang",
]


def test_frequency(llama, d):
    (d / "streams.txt").write_text("\n".join(STREAMS) + "\n")
    want = cli_json("frequency", "--model", LLAMA, "--stimuli", d / "streams.txt", "--levels", "word=1,phrase=4", "--top", "5")
    got = ftri.frequency(llama, stimuli=STREAMS, levels="word=1,phrase=4", top=5)
    assert records(got["units"]) == want["units"]
    assert ftri.frequency(llama, stimuli=d / "streams.txt", levels="word=1,phrase=4", top=5, as_frame=False) == want
    msg = cli_error("frequency", "--model", LLAMA, "--levels", "word=two")
    with pytest.raises(ftri.FtriError) as e:
        ftri.frequency(llama, levels="word=two")
    assert str(e.value) == msg


def test_align(llama, d):
    brain = np.load(FIXTURES / "align" / "brain.npy")
    texts = [f"stimulus number {i} is a dog" for i in range(brain.shape[0])]
    (d / "s.txt").write_text("\n".join(texts) + "\n")
    want = cli_json("align", "--model", LLAMA, "--stimuli", d / "s.txt", "--brain", FIXTURES / "align" / "brain.npy", "--permutations", "20")
    assert ftri.align(llama, d / "s.txt", FIXTURES / "align" / "brain.npy", permutations=20, as_frame=False) == want
    r = ftri.align(llama, texts, brain, permutations=20)
    assert isinstance(r["layers"], pd.DataFrame)
    assert records(r["layers"]) == want["layers"]
    np.save(d / "b3.npy", brain[:3])
    msg = cli_error("align", "--model", LLAMA, "--stimuli", d / "s.txt", "--brain", d / "b3.npy")
    with pytest.raises(ftri.FtriError) as e:
        ftri.align(llama, d / "s.txt", d / "b3.npy")
    assert str(e.value) == msg


CORPUS_FLAGS = ["--ctx", "16", "--max-tokens", "600"]


def test_modules(llama, d, tmp_path):
    want = cli_json("modules", "--model", LLAMA, "--corpus", d / "corpus.txt", *CORPUS_FLAGS, "--layers", "1", "--k", "4", "--out", tmp_path / "cli")
    got = ftri.modules(llama, d / "corpus.txt", ctx=16, max_tokens=600, layers=1, k=4, out=tmp_path / "py")
    assert records(got["modules"]) == want["modules"]
    plain = ftri.modules(llama, [d / "corpus.txt"], ctx=16, max_tokens=600, layers="1", k=4, as_frame=False)
    assert plain.pop("speed").keys() == want.pop("speed").keys()  # timings
    assert plain == want
    files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "py").iterdir()) and "modules.json" in files
    msg = cli_error("modules", "--model", LLAMA, "--corpus", d / "corpus.txt", "--auto", "--max-k", "1", "--out", tmp_path / "x")
    with pytest.raises(ftri.FtriError) as e:
        ftri.modules(llama, d / "corpus.txt", auto=True, max_k=1)
    assert str(e.value) == msg


def test_sparsity(llama, d):
    want = cli_json("sparsity", "--model", LLAMA, "--corpus", d / "corpus.txt", *CORPUS_FLAGS, "--keep", "10,50")
    got = ftri.sparsity(llama, d / "corpus.txt", ctx=16, max_tokens=600, keep=[10, 50])
    assert records(got["layers"]) == want["layers"]
    assert ftri.sparsity(llama, d / "corpus.txt", ctx=16, max_tokens=600, keep="10,50", as_frame=False) == want
    msg = cli_error("sparsity", "--model", LLAMA, "--corpus", d / "corpus.txt", "--keep", "x")
    with pytest.raises(ftri.FtriError) as e:
        ftri.sparsity(llama, d / "corpus.txt", keep="x")
    assert str(e.value) == msg


def test_progress_and_flag_errors(llama, d):
    seen = []
    flags = ["--corpus", str(d / "corpus.txt"), "--ctx=16", "--max-tokens=600"]
    ftri._ftri.analyze("sparsity", flags, model=llama._m, progress=lambda *a: seen.append(a))
    assert seen and seen[-1][1] == seen[-1][2] > 0 and isinstance(seen[-1][0], str)
    assert ftri.sparsity(llama, d / "corpus.txt", ctx=16, max_tokens=600, progress=True)["tokens"] > 0
    # clap's errors: its first line, as the CLI prints it
    r = cli("patch", "--model", LLAMA, "--clean", "a", "--corrupt", "b", "--noise", "3", "--target", " c", check=False)
    assert r.returncode == 2
    with pytest.raises(ftri.FtriError) as e:
        ftri.patch(llama, "a", "b", " c", noise=3)
    assert "error: " + str(e.value) == r.stderr.splitlines()[0]


def test_moefy(llama, d, tmp_path):
    want = cli_json("moefy", "--model", LLAMA, "--corpus", d / "corpus.txt", *CORPUS_FLAGS, "--experts", "4", "--r", "1,2", "--out", tmp_path / "cli")
    got = ftri.moefy(llama, d / "corpus.txt", 4, r=[1, 2], ctx=16, max_tokens=600, as_frame=False)
    assert got == want
    msg = cli_error("moefy", "--model", LLAMA, "--corpus", d / "corpus.txt", "--experts", "4", "--r", "a", "--out", tmp_path / "x")
    with pytest.raises(ftri.FtriError) as e:
        ftri.moefy(llama, d / "corpus.txt", 4, r="a")
    assert str(e.value) == msg


def test_decompose(llama, d, tmp_path):
    flags = ["--site", "blocks.1.mlp.hook_post", "--k", "4", "--iterations", "20"]
    want = cli_json("decompose", "--model", LLAMA, "--corpus", d / "corpus.txt", *CORPUS_FLAGS, *flags, "--out", tmp_path / "f.safetensors")
    got = ftri.decompose(llama, d / "corpus.txt", "blocks.1.mlp.hook_post", k=4, iterations=20, ctx=16, max_tokens=600)
    assert records(got["components"]) == want["components"]
    got["components"] = want["components"]
    assert got == want
    msg = cli_error("decompose", "--model", LLAMA, "--corpus", d / "corpus.txt", "--site", "blocks.1.mlp.hook_post", "--iterations", "0", "--out", tmp_path / "x")
    with pytest.raises(ftri.FtriError) as e:
        ftri.decompose(llama, d / "corpus.txt", "blocks.1.mlp.hook_post", iterations=0)
    assert str(e.value) == msg


def test_decompose_steering(llama, d, tmp_path):
    (tmp_path / "t.txt").write_text("the dog barked\na puppy ran\nmy dog sleeps\n")
    (tmp_path / "c.txt").write_text("in 1999 a bridge\n12 pears cost $4\nthe year 2001\npay 3 dollars\n")
    flags = ["--site", "blocks.1.mlp.hook_post", "--k", "4", "--iterations", "20", "--scales", "1,2"]
    want = cli_json("decompose", "--model", LLAMA, "--corpus", d / "corpus.txt", *CORPUS_FLAGS, *flags,
                    "--concept", tmp_path / "t.txt", tmp_path / "c.txt", "--out", tmp_path / "f.safetensors")
    got = ftri.decompose(llama, d / "corpus.txt", "blocks.1.mlp.hook_post", k=4, iterations=20, ctx=16,
                         max_tokens=600, scales=[1, 2], concept=(tmp_path / "t.txt", tmp_path / "c.txt"))
    assert got["steering"] == want["steering"] and len(want["steering"]["component_effect"]) == 2


def test_celltypes(llama, d, tmp_path):
    ftri.record(llama, d / "corpus.txt", tmp_path / "atlas", progress=False, ctx=16, top_k=5)
    want = cli_json("celltypes", "--atlas", tmp_path / "atlas", "--k", "3")
    assert ftri.celltypes(tmp_path / "atlas", k=3, as_frame=False) == want
    r = ftri.celltypes(ftri.Atlas.open(tmp_path / "atlas"), k=3)
    assert records(r["types"]) == want["types"]
    msg = cli_error("celltypes", "--atlas", tmp_path / "nope")
    with pytest.raises(ftri.FtriError) as e:
        ftri.celltypes(tmp_path / "nope")
    assert str(e.value) == msg
