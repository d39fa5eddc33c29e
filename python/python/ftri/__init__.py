"""ftri from Python: run a transformer with TransformerLens-named hook points, record atlases,
localize, describe and lesion neurons. The work is done in Rust (the ``ftri`` crate) with the GIL
released; results are numpy arrays, dicts equal to the CLI's ``--json`` output, and pandas
DataFrames where the data is a table.

    import ftri
    model = ftri.Model.load("models/all-MiniLM-L6-v2")
    logits, cache = model.run_with_cache(["a cat", "the dog barked"])
    cache["blocks.3.mlp.hook_post"].shape      # (2, tokens, 1536), zeros past each text's end
"""

import json as _json
import os as _os

from . import _ftri
from ._ftri import FtriError

__version__ = _ftri.__version__
__all__ = ["Model", "Atlas", "FtriError", "record", "localize", "describe", "lesion"]


def _path(p):
    return _os.fspath(p) if isinstance(p, _os.PathLike) else p


def _names(names):
    if names is None:
        return ["*"]
    if isinstance(names, str):
        return [names]
    return list(names)


class Model:
    """A loaded model. ``Model.load(path_or_hub_id, dtype="f32", device="cpu", threads=None)``."""

    def __init__(self, inner, spec):
        self._m = inner
        self.spec = spec

    @classmethod
    def load(cls, path_or_hub_id, dtype="f32", device="cpu", threads=None):
        """A checkpoint folder, a GGUF file or a Hugging Face hub id, as ``ftri --model``.
        ``threads`` sets the CPU worker threads (before the first model run of the process)."""
        spec = _path(path_or_hub_id)
        if not isinstance(spec, str):
            raise TypeError(f"Model.load takes a path or a hub id, not {type(spec).__name__}")
        return cls(_ftri.Model.load(spec, dtype=dtype, device=device, threads=threads), spec)

    def info(self):
        """Architecture, sizes and hook points: the dict of ``ftri info --json``."""
        return _json.loads(self._m.info_json())

    @property
    def hook_points(self):
        return self.info()["hook_points"]

    def tokenize(self, text):
        """Token ids of ``text`` (with the tokenizer's default special tokens)."""
        return self._m.tokenize(text)

    def to_str_tokens(self, text):
        """The tokens of ``text`` as strings."""
        return self._m.token_strings(self._m.tokenize(text))

    def run_with_cache(
        self,
        texts,
        names=("blocks.*.mlp.hook_post",),
        interventions=(),
        pad=True,
        atlas=None,
        return_logits=True,
        batch_size=16,
    ):
        """Run ``texts`` (a string or a list) and return ``(logits, cache)``, as TransformerLens'
        ``run_with_cache``.

        - ``names``: globs over TransformerLens hook names (``"blocks.*.mlp.hook_post"``,
          ``"blocks.3.hook_resid_post"``, ``"*"`` for all); ``[]`` for none.
        - ``cache``: a dict of float32 numpy arrays keyed by hook name, right-padded to
          ``[batch, tokens, dim]`` with zeros past each text's end, plus
          ``cache["attention_mask"]`` (int64 ``[batch, tokens]``, 1 on real tokens). With
          ``pad=False`` each entry is a list of ``[tokens_i, dim]`` arrays, one per text, and there
          is no mask.
        - ``logits``: float32 ``[batch, tokens, vocab]`` (a list with ``pad=False``); ``None`` for a
          model without an LM head or with ``return_logits=False``.
        - ``interventions``: ``[("3.17", "zero"), ("5.2040", "scale=2")]`` -- neurons ``L.N`` with
          the ops of ``ftri lesion --op`` (zero, mean, scale=F, set=V, add=V; ``mean`` reads the
          corpus means from ``atlas``), ``HOOK:N`` units with zero/scale/set/add, or experts
          ``L.eE`` with ``off`` (switched out of the routing, as ``ftri lesion --experts``). Captured
          activations are the values after the intervention.
        - Texts run in batches of ``batch_size``; each text's activations equal running it alone.
        """
        if isinstance(texts, str):
            texts = [texts]
        ivs = [(str(u), str(op)) for u, op in interventions]
        logits, cache, _ = self._m.run(
            list(texts),
            _names(names),
            interventions=ivs,
            atlas=_path(atlas),
            pad=pad,
            logits=return_logits,
            batch_size=batch_size,
        )
        return logits, cache

    def __call__(self, texts, **kw):
        """The logits of ``texts`` (``run_with_cache`` capturing nothing)."""
        return self.run_with_cache(texts, names=[], **kw)[0]

    def __repr__(self):
        i = self.info()
        return (
            f"ftri.Model({self.spec!r}: {i['architecture']}, {i['layers']} layers, "
            f"d_model {i['d_model']}, d_mlp {i['d_mlp']})"
        )


def _model(model, **load):
    if isinstance(model, Model):
        return model
    return Model.load(model, **load)


def _df(rows, columns=None):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


class Atlas:
    """An atlas written by ``ftri record`` or ``ftri.record``: ``Atlas.open(path)``."""

    def __init__(self, inner, path):
        self._a = inner
        self.path = path

    @classmethod
    def open(cls, path):
        return cls(_ftri.Atlas.open(_path(path)), _path(path))

    @property
    def manifest(self):
        return _json.loads(self._a.manifest())

    @property
    def sites(self):
        """The recorded hook points' names."""
        return [name for name, _ in self._a.sites()]

    def neuron(self, unit):
        """One unit (``"3.17"`` or ``"HOOK:N"``): the dict of ``ftri show --json``."""
        return _json.loads(self._a.neuron(str(unit)))

    def summary(self, top=5):
        """Per hook point fire rates, dead and most selective units: ``ftri atlas --json``."""
        return _json.loads(self._a.summary(top))

    def _site(self, site):
        if isinstance(site, int):
            return f"blocks.{site}.mlp.hook_post"
        return site

    def table(self, site):
        """Per-unit statistics of a hook point (a name, or a layer number for its
        ``mlp.hook_post``) as a DataFrame: ``neuron``, ``unit`` and the atlas fields ``count``,
        ``mean``, ``var``, ``min``, ``max``, ``fire``, with ``std`` and ``fire_rate`` as
        ``ftri show`` computes them."""
        import numpy as np

        name = self._site(site)
        c = self._a.columns(name)
        n = len(c["count"])
        from_name = name[len("blocks.") :].split(".", 1) if name.startswith("blocks.") else None
        if from_name and from_name[1] == "mlp.hook_post":
            neurons = [f"{from_name[0]}.{u}" for u in range(n)]
        else:
            neurons = [f"{name}:{u}" for u in range(n)]
        count = c["count"].astype(np.int64)
        fire = c["fire"].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            fire_rate = np.where(count > 0, fire / np.maximum(count, 1), 0.0)
        df = _df(
            {
                "neuron": neurons,
                "unit": np.arange(n),
                "count": count,
                "mean": c["mean"],
                "var": c["var"],
                "std": np.sqrt(c["var"]),
                "min": c["min"].astype(np.float32),
                "max": c["max"].astype(np.float32),
                "fire": fire,
                "fire_rate": fire_rate,
            }
        )
        return df.set_index("neuron", drop=False)

    def top(self, unit):
        """A unit's top examples as a DataFrame: ``activation``, ``doc``, ``pos``, ``token``,
        ``token_id``, ``context`` (the example marked «like this») and ``context_ids``."""
        cols = ["activation", "doc", "pos", "token", "token_id", "context", "context_ids"]
        return _df(self.neuron(unit)["top"], columns=cols)

    def __repr__(self):
        m = self.manifest
        return f"ftri.Atlas({self.path!r}: {len(self.sites)} hook points, {m.get('tokens_seen', '?')} tokens)"


def _progress_bar(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc)


def record(model, corpus, out, progress=True, dtype="f32", device="cpu", threads=None, **settings):
    """Record an atlas: ``ftri record --model MODEL --corpus CORPUS... --out OUT``. ``model`` is a
    ``Model`` or a path/hub id; ``corpus`` a path or a list of paths; ``settings`` are the flags
    with underscores (``sites="blocks.*.mlp.hook_post"``, ``top_k=20``, ``ctx``, ``batch=8``,
    ``max_tokens``, ``shard="0/2"``, ``hist_bins``, ``hist_range``, ``resume``, ``force``,
    ``include_special``, ``text_field``, ``context_before``, ``context_after``). Shows a tqdm bar
    when tqdm is installed and ``progress`` is true. Returns the dict of ``ftri record --json``."""
    m = _model(model, dtype=dtype, device=device, threads=threads)
    if isinstance(corpus, (str, _os.PathLike)):
        corpus = [corpus]
    corpus = [_path(c) for c in corpus]
    bar = _progress_bar(None, "record") if progress else None
    cb = None
    if bar is not None:

        def cb(done, total, tokens, tps):
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.set_postfix_str(f"{tokens} tokens, {tps:.0f} tokens/s", refresh=False)
            bar.refresh()

    try:
        r = _ftri.record(m._m, corpus, _path(out), settings, progress=cb)
    finally:
        if bar is not None:
            bar.close()
    return _json.loads(r)


def _stimuli(s):
    if isinstance(s, (str, _os.PathLike)):
        return _path(s)
    out = []
    for x in s:
        if isinstance(x, str):
            out.append((x, None))
        elif isinstance(x, dict):
            out.append((x["text"], x.get("target")))
        else:
            text, target = x
            out.append((text, target))
    return out


def _layers(layers):
    if layers is None or isinstance(layers, str):
        return layers
    if isinstance(layers, int):
        return str(layers)
    if isinstance(layers, range) and layers.step == 1 and len(layers):
        return f"{layers.start}-{layers.stop - 1}"
    return ",".join(str(int(x)) for x in layers)


def localize(model, target, control, as_frame=True, **opts):
    """``ftri localize --json``: ``target``/``control`` are files (one stimulus per line, or JSONL
    with ``text``) or lists of texts (or ``{"text", "target"}`` dicts). Options as the flags:
    ``site="mlp.hook_post"``, ``layers`` ("0-5", [1, 3], range(2, 4)), ``reduce``, ``method``,
    ``direction``, ``paired``, ``include_special``, ``fdr``, ``top``, ``batch``. The result is the
    CLI's dict; with ``as_frame`` its ``neurons`` list is a DataFrame."""
    m = _model(model)
    if "layers" in opts:
        opts["layers"] = _layers(opts["layers"])
    r = _json.loads(_ftri.localize(m._m, _stimuli(target), _stimuli(control), **opts))
    if as_frame:
        first = ["neuron", "layer", "index", "score", "effect_size", "auroc", "p", "q"]
        rows = r["neurons"]
        cols = first + sorted({k for x in rows for k in x} - set(first))
        r["neurons"] = _df(rows, columns=cols)
    return r


def describe(model, neuron, top=20):
    """``ftri describe --neuron L.N --json``: the tokens a neuron promotes, suppresses and reads."""
    return _json.loads(_ftri.describe(_model(model)._m, str(neuron), top))


def _eval(e):
    if e is None or isinstance(e, (str, _os.PathLike)):
        return _path(e)
    out = []
    for x in e:
        if isinstance(x, dict):
            out.append((x["prompt"], x["target"]))
        else:
            prompt, target = x
            out.append((prompt, target))
    return out


def lesion(model, neurons=None, eval=None, op="zero", control_eval=None, atlas=None, experts=None, **opts):
    """``ftri lesion --json``: ``neurons`` is "3.17,5.2040", a list of ids or a file; ``experts``
    ("3.e5,7.e1" or a list) switches experts of a mixture-of-experts model off (their router logit
    to -inf before the top-k), with or without neurons; ``eval``/``control_eval`` a JSONL file of
    ``{"prompt", "target"}`` or a list of such dicts or (prompt, target) pairs; ``op`` as
    ``--op``; options ``random_baseline``, ``positions`` (a list), ``seed``; ``atlas`` for
    ``mean``/``adjust``."""
    if eval is None:
        raise TypeError("lesion() needs eval: a JSONL file or a list of {prompt, target}")
    if neurons is not None and not isinstance(neurons, (str, _os.PathLike)):
        neurons = ",".join(str(n) for n in neurons)
    if experts is not None and not isinstance(experts, str):
        experts = ",".join(str(e) for e in experts)
    return _json.loads(
        _ftri.lesion(
            _model(model)._m,
            _path(neurons) if neurons is not None else None,
            _eval(eval),
            op=op,
            control_eval=_eval(control_eval),
            atlas=_path(atlas),
            experts=experts,
            **opts,
        )
    )
