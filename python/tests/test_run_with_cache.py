"""run_with_cache against transformers' activations (the fixtures' expected.safetensors) and
against `ftri trace` (the CLI writing the same hook points to safetensors)."""

import json
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors import safe_open

import ftri
from conftest import FIXTURES, MODEL_FIXTURES, cli


def tol(expected):
    # the parity criterion of tests/parity.rs: max|diff| <= 1e-5 * max|expected| (+ tiny floor)
    return 1e-5 * float(np.abs(expected).max()) + 1e-6


def text_of(path):
    with safe_open(str(path), "np") as f:
        return f.metadata()


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_matches_transformers(name):
    d = FIXTURES / name
    expected = load_file(str(d / "expected.safetensors"))
    text = text_of(d / "expected.safetensors")["text"]
    m = ftri.Model.load(d)
    assert m.tokenize(text) == expected["input_ids"].tolist()
    logits, cache = m.run_with_cache(text, names="*")
    hooks = [k for k in expected if k not in ("input_ids", "logits")]
    assert sorted(hooks) == sorted(k for k in cache if k != "attention_mask" and ".attn." not in k)
    assert cache["attention_mask"].tolist() == [[1] * len(expected["input_ids"])]
    for k in hooks:
        got = cache[k][0]
        assert got.dtype == np.float32 and got.shape == expected[k].shape, k
        assert np.abs(got - expected[k]).max() <= tol(expected[k]), k
    if "logits" in expected:
        assert np.abs(logits[0] - expected["logits"]).max() <= tol(expected["logits"])
    else:
        assert logits is None


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_attention_matches_transformers(name):
    """Attention internals in TransformerLens' layouts: q/k/v/z [tokens, heads, d_head], scores and
    pattern [heads, q, k] (masked scores -inf), against transformers' eager attention."""
    path = FIXTURES / name / "attn_expected.safetensors"
    expected = load_file(str(path))
    text = text_of(path)["text"]
    m = ftri.Model.load(FIXTURES / name)
    assert m.tokenize(text) == expected["input_ids"].tolist()
    _, cache = m.run_with_cache(text, names="blocks.*.attn.*", return_logits=False)
    hooks = [k for k in expected if k != "input_ids"]
    extra = {k for k in cache if k != "attention_mask"} - set(hooks)
    assert set(hooks) <= set(cache) and all(k.endswith(".attn.hook_result") for k in extra), extra
    for k in hooks:
        got, want = cache[k][0], expected[k]
        assert got.dtype == np.float32 and got.shape == want.shape, (k, got.shape, want.shape)
        masked = np.isinf(want)
        assert np.array_equal(np.isinf(got), masked), k
        assert np.abs(got[~masked] - want[~masked]).max() <= tol(want[~masked]), k


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "gemma2", "gpt_neox"])
def test_matches_ftri_trace(name, tmp_path):
    d = FIXTURES / name
    text = text_of(d / "expected.safetensors")["text"]
    out = tmp_path / "trace.safetensors"
    cli("trace", "--model", d, "--text", text, "--out", out, "--hooks", "*")
    want = load_file(str(out))
    logits, cache = ftri.Model.load(d).run_with_cache([text], names=["*"])
    for k, v in want.items():
        if k == "input_ids":
            continue
        got = logits[0] if k == "logits" else cache[k][0]
        assert got.shape == v.shape, (k, got.shape, v.shape)
        # the same code path: identical up to the summation order of a thread split
        scale = max(1.0, np.abs(v[np.isfinite(v)]).max())
        np.testing.assert_allclose(got, v, rtol=0, atol=1e-6 * scale, err_msg=k)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_padded_batch_matches_transformers(name):
    d = FIXTURES / name
    path = d / "batch_expected.safetensors"
    expected = load_file(str(path))
    texts = json.loads(text_of(path)["texts"])
    names = sorted({k.split(".", 1)[1] for k in expected if k.startswith("b0.")} - {"input_ids", "logits"})
    m = ftri.Model.load(d)
    logits, cache = m.run_with_cache(texts, names=names, batch_size=2)
    lens = [len(expected[f"b{i}.input_ids"]) for i in range(len(texts))]
    t = max(lens)
    mask = cache["attention_mask"]
    assert mask.shape == (len(texts), t) and mask.sum(1).tolist() == lens
    for i, n in enumerate(lens):
        for k in names:
            a = cache[k]
            assert a.shape[:2] == (len(texts), t)
            e = expected[f"b{i}.{k}"]
            assert np.abs(a[i, :n] - e).max() <= tol(e), (i, k)
            assert not a[i, n:].any(), "padding is zero"
        if f"b{i}.logits" in expected:
            e = expected[f"b{i}.logits"]
            assert np.abs(logits[i, :n] - e).max() <= tol(e)
    # batch_size=1 (each text alone) and pad=False give the same values
    _, alone = m.run_with_cache(texts, names=names, batch_size=1)
    lists_logits, lists = m.run_with_cache(texts, names=names, pad=False)
    assert "attention_mask" not in lists
    for k in names:
        np.testing.assert_allclose(alone[k], cache[k], atol=1e-5)
        for i, n in enumerate(lens):
            assert lists[k][i].shape == (n, cache[k].shape[2])
            np.testing.assert_array_equal(lists[k][i], cache[k][i, :n])


def test_interventions(llama):
    text = "Alice didn't pay $4.5 for 12 pears."
    base_logits, base = llama.run_with_cache(text, names="blocks.*.mlp.hook_post")
    logits, cache = llama.run_with_cache(
        text,
        names="blocks.*.mlp.hook_post",
        interventions=[("0.17", "zero"), ("1.5", "scale=2")],
    )
    h0, b0 = cache["blocks.0.mlp.hook_post"][0], base["blocks.0.mlp.hook_post"][0]
    assert not h0[:, 17].any() and b0[:, 17].any()
    np.testing.assert_array_equal(np.delete(h0, 17, 1), np.delete(b0, 17, 1))
    # layer 1 sees the lesioned layer 0 and its neuron 5 doubled
    assert not np.allclose(logits, base_logits)
    _, only_scale = llama.run_with_cache(text, names="blocks.1.mlp.hook_post", interventions=[("1.5", "scale=2")])
    np.testing.assert_allclose(only_scale["blocks.1.mlp.hook_post"][0][:, 5], 2 * base["blocks.1.mlp.hook_post"][0][:, 5], rtol=1e-6)
    # a unit of another hook point
    _, c = llama.run_with_cache(text, names="blocks.0.hook_resid_post", interventions=[("blocks.0.hook_resid_post:3", "set=7")])
    assert (c["blocks.0.hook_resid_post"][0][:, 3] == 7).all()


def test_gil_released_during_runs(llama):
    texts = ["Alice didn't pay $4.5 for 12 pears. " * 4] * 64
    ticks = 0
    done = threading.Event()
    errors = []

    def work():
        try:
            for _ in range(3):
                llama.run_with_cache(texts, names="*")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    th = threading.Thread(target=work)
    t0 = time.perf_counter()
    th.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    th.join()
    elapsed = time.perf_counter() - t0
    assert not errors, errors
    # with the GIL held during a run the loop could tick only between the three calls
    print(f"GIL test: {ticks} ticks in {elapsed:.2f} s")
    assert ticks >= 20, (ticks, elapsed)


def test_info_matches_cli(llama):
    from conftest import cli_json

    assert llama.info() == cli_json("info", "--model", FIXTURES / "llama")


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_expert_switch_off_equals_transformers(name):
    """("L.eE", "off") takes the experts out of the routing exactly as transformers does with
    their router column at -inf (the fixture scripts/make_fixtures.py wrote)."""
    import ftri
    from safetensors.numpy import load_file
    from safetensors import safe_open

    path = FIXTURES / name / "switch_off_expected.safetensors"
    want = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    model = ftri.Model.load(FIXTURES / name)
    ivs = [(e, "off") for e in meta["experts"].split(",")]
    logits, cache = model.run_with_cache(
        [meta["text"]], names=["blocks.*.mlp.hook_expert_indices"], interventions=ivs
    )
    got = logits[0]
    scale = max(1.0, float(np.abs(want["logits"]).max()))
    assert np.abs(got - want["logits"]).max() <= 1e-4 * scale
    for key, value in want.items():
        if key.endswith("hook_expert_indices"):
            assert np.array_equal(cache[key][0], value), key
    # And it changes something: the plain run differs.
    plain, _ = model.run_with_cache([meta["text"]], names=[])
    assert np.abs(plain[0] - want["logits"]).max() > 1e-3


def test_expert_ops_are_checked():
    import ftri

    model = ftri.Model.load(FIXTURES / "mixtral")
    with pytest.raises(ftri.FtriError, match="takes the op `off`"):
        model.run_with_cache(["a b"], names=[], interventions=[("0.e1", "zero")])
    with pytest.raises(ftri.FtriError, match="not an expert"):
        model.run_with_cache(["a b"], names=[], interventions=[("0.1", "off")])
    with pytest.raises(ftri.FtriError, match="out of range|no expert|experts"):
        model.run_with_cache(["a b"], names=[], interventions=[("0.e99", "off")])


def test_attention_sites_padded_and_unpadded():
    """Attention sites in a padded batch equal each text run alone; patterns [n, heads, t, t]."""
    m = ftri.Model.load(FIXTURES / "llama")
    texts = ["the dog barked at the cat", "a cat"]
    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.0.attn.hook_k"]
    _, padded = m.run_with_cache(texts, names=names, return_logits=False)
    _, lists = m.run_with_cache(texts, names=names, return_logits=False, pad=False)
    lens = padded["attention_mask"].sum(1)
    n_heads = padded["blocks.1.attn.hook_pattern"].shape[1]
    assert padded["blocks.1.attn.hook_pattern"].shape == (2, n_heads, lens.max(), lens.max())
    for i, text in enumerate(texts):
        _, alone = m.run_with_cache([text], names=names, return_logits=False)
        t = lens[i]
        for k in names:
            a = alone[k][0]
            p = padded[k][i][:, :t, :t] if k.endswith("pattern") else padded[k][i][:t]
            assert lists[k][i].shape == a.shape, k
            np.testing.assert_allclose(p, a, atol=1e-5, err_msg=k)
            np.testing.assert_allclose(lists[k][i], a, atol=1e-5, err_msg=k)
        rows = alone["blocks.1.attn.hook_pattern"][0].sum(-1)
        np.testing.assert_allclose(rows, 1.0, atol=1e-5)
