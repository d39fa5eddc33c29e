"""ftri.record and ftri.Atlas against `ftri record`, `ftri show --json` and `ftri atlas --json`."""

import numpy as np
import pandas as pd
import pytest

import ftri
from conftest import FIXTURES, cli, cli_json

CORPUS = [
    "The dog was quiet and the cat slept by the fire.",
    "In 1999, Riverton built a new bridge over the river!",
    "Alice didn't pay $4.5 for 12 pears, but Bob paid 3 dollars.",
    "def add(a, b): return a + b  # a small function",
    "Le chat noir dort sur le canapé depuis ce matin.",
    "She was happy, then sad, then happy again; nobody knew why.",
] * 3


@pytest.fixture(scope="module")
def atlases(tmp_path_factory, llama):
    d = tmp_path_factory.mktemp("atlas")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    settings = dict(sites="blocks.*.mlp.hook_post,blocks.1.hook_resid_post", top_k=5, batch=4)
    summary = ftri.record(llama, corpus, d / "py", progress=False, **settings)
    cli(
        "record", "--model", FIXTURES / "llama", "--corpus", corpus, "--out", d / "cli",
        "--sites", settings["sites"], "--top-k", "5", "--batch", "4",
    )
    return d, summary


def test_record_summary(atlases):
    d, s = atlases
    assert s["docs"] == len(CORPUS) and s["tokens"] > 0 and s["sites"] == 3
    assert s["units"] == 2 * 128 + 64


def test_python_record_equals_cli_record(atlases):
    d, _ = atlases
    py, cl = ftri.Atlas.open(d / "py"), ftri.Atlas.open(d / "cli")
    assert py.sites == cl.sites
    for site in py.sites:
        pd.testing.assert_frame_equal(py.table(site), cl.table(site))
    for u in ["0.3", "1.100", "blocks.1.hook_resid_post:7"]:
        assert py.neuron(u) == cl.neuron(u)


def test_neuron_equals_show_json(atlases):
    d, _ = atlases
    a = ftri.Atlas.open(d / "py")
    for u in ["0.0", "0.77", "1.127", "blocks.1.hook_resid_post:63"]:
        assert a.neuron(u) == cli_json("show", "--atlas", d / "py", "--neuron", u)


def test_table_equals_show_json(atlases):
    d, _ = atlases
    a = ftri.Atlas.open(d / "py")
    t = a.table(1)
    assert list(t.columns) == ["neuron", "unit", "count", "mean", "var", "std", "min", "max", "fire", "fire_rate"]
    assert len(t) == 128 and t.index[5] == "1.5"
    assert t["count"].dtype == np.int64
    for u in [0, 5, 64, 127]:
        show = cli_json("show", "--atlas", d / "py", "--neuron", f"1.{u}")
        row = t.loc[f"1.{u}"]
        assert row["count"] == show["count"]
        for k in ["mean", "std", "min", "max", "fire_rate"]:
            assert row[k] == pytest.approx(show[k], rel=1e-12, abs=0), k
    r = a.table("blocks.1.hook_resid_post")
    assert len(r) == 64 and r.index[0] == "blocks.1.hook_resid_post:0"


def test_top_equals_show_json(atlases):
    d, _ = atlases
    a = ftri.Atlas.open(d / "py")
    show = cli_json("show", "--atlas", d / "py", "--neuron", "0.9")
    top = a.top("0.9")
    assert len(top) == len(show["top"]) == 5
    assert top.to_dict("records") == show["top"]
    assert (np.diff(top["activation"]) <= 0).all()


def test_summary_equals_atlas_json(atlases):
    d, _ = atlases
    assert ftri.Atlas.open(d / "py").summary() == cli_json("atlas", "--atlas", d / "py")


def test_record_progress_and_refusal(tmp_path, llama):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    calls = []
    import ftri._ftri as raw

    raw.record(llama._m, [str(corpus)], str(tmp_path / "a"), {"top_k": 2}, progress=lambda *a: calls.append(a))
    assert calls and calls[-1][0] == calls[-1][1] == corpus.stat().st_size
    with pytest.raises(ftri.FtriError):  # exists, no force
        ftri.record(llama, corpus, tmp_path / "a", progress=False)
    ftri.record(llama, corpus, tmp_path / "a", progress=False, force=True, top_k=2)


def test_mean_intervention_reads_the_atlas(atlases, llama):
    d, _ = atlases
    a = ftri.Atlas.open(d / "py")
    _, c = llama.run_with_cache("the dog barked", names="blocks.0.mlp.hook_post", interventions=[("0.3", "mean")], atlas=d / "py")
    assert np.allclose(c["blocks.0.mlp.hook_post"][0][:, 3], a.table(0).loc["0.3", "mean"], rtol=1e-6)
