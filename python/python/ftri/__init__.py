"""ftri from Python: run a transformer with TransformerLens-named hook points, record atlases,
localize, describe and lesion neurons, and the CLI's other analyses (experts, patch, tune,
frequency, align, modules, sparsity, moefy, decompose, celltypes). The work is done in Rust (the
``ftri`` crate) with the GIL released; results are numpy arrays, dicts equal to the CLI's
``--json`` output, and pandas DataFrames where the data is a table.

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
__all__ = [
    "Model",
    "Atlas",
    "FtriError",
    "record",
    "localize",
    "describe",
    "lesion",
    "experts",
    "patch",
    "tune",
    "frequency",
    "align",
    "modules",
    "sparsity",
    "moefy",
    "decompose",
    "celltypes",
]


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


# --- the analyses that take flags: the same parser and job as `ftri VERB ... --json` ------------


def _flags(opts):
    """Keyword arguments as the CLI's flags (``top_k=3`` -> ``--top-k=3``): ``None``/``False``
    left out, ``True`` a bare flag, lists joined with commas (``corpus`` repeated instead)."""
    argv = []
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif k == "corpus":
            for c in [v] if isinstance(v, (str, _os.PathLike)) else v:
                argv.append(f"{flag}={_path(c)}")
        elif k == "concept":
            # two values (target file, control file) after one flag
            argv += [flag, *(str(_path(x)) for x in v)]
        else:
            if k == "layers":
                v = _layers(v)
            elif isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            argv.append(f"{flag}={_path(v)}")
    return argv


def _lines_file(items, tmp, name, key="target"):
    """A stimulus list written as the file the CLI reads (JSONL: texts, ``{"text", ...}`` dicts or
    ``(text, KEY)`` pairs); a path is passed through."""
    if items is None or isinstance(items, (str, _os.PathLike)):
        return _path(items)
    path = _os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        for x in items:
            if isinstance(x, str):
                x = {"text": x}
            elif not isinstance(x, dict):
                text, other = x
                x = {"text": text, key: other}
            f.write(_json.dumps(x) + "\n")
    return path


def _array_file(a, tmp, name):
    """A numpy array saved as ``.npy`` for the CLI's reader; a path is passed through."""
    if a is None or isinstance(a, (str, _os.PathLike)):
        return _path(a)
    import numpy as np

    path = _os.path.join(tmp, name + ".npy")
    np.save(path, np.asarray(a))
    return path


def _analyze(verb, model, frames, as_frame, opts, progress=False):
    m = _model(model)._m if model is not None else None
    bar = _progress_bar(None, verb) if progress else None
    cb = None
    if bar is not None:
        bar.unit, bar.unit_scale = "tok", False

        def cb(stage, done, total):
            if bar.desc != stage or bar.total != total:
                bar.set_description(stage, refresh=False)
                bar.reset(total=total)
            bar.n = done
            bar.refresh()

    try:
        r = _json.loads(_ftri.analyze(verb, _flags(opts), model=m, progress=cb))
    finally:
        if bar is not None:
            bar.close()
    if as_frame:
        for key in frames:
            if isinstance(r.get(key), list):
                r[key] = _df(r[key])
    return r


def _tmp():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="ftri-")


def experts(
    model,
    target,
    control,
    measure="rate",
    layers=None,
    fdr=0.05,
    top=20,
    batch=16,
    as_frame=True,
):
    """``ftri experts --json``: the experts of a mixture-of-experts model that target stimuli are
    routed to more than control ones. ``target``/``control`` as in ``localize``; ``measure`` rate or
    weight. With ``as_frame`` the ``experts`` list is a DataFrame."""
    with _tmp() as d:
        opts = dict(
            target=_lines_file(target, d, "target.jsonl"),
            control=_lines_file(control, d, "control.jsonl"),
            measure=measure,
            layers=layers,
            fdr=fdr,
            top=top,
            batch=batch,
        )
        return _analyze("experts", model, ["experts"], as_frame, opts)


def patch(
    model,
    clean,
    corrupt=None,
    target=None,
    sites="resid_pre,attn_out,mlp_out",
    layers=None,
    metric="logit_diff",
    method="exact",
    foil=None,
    align=None,
    noise=None,
    subject=None,
    seeds=5,
    seed=0,
    out=None,
    as_frame=True,
):
    """``ftri patch --json``: activation patching of ``clean`` with ``corrupt`` (or ROME-style
    causal tracing with ``noise=SIGMA`` on ``subject``), read by ``metric`` on ``target``'s first
    token; ``method`` exact or attribution; ``align`` left/right for prompts of different lengths;
    ``out`` also writes the CSV. With ``as_frame`` the ``cells`` are a DataFrame (site, layer,
    position, head, recovered[, attribution])."""
    if target is None:
        raise TypeError("patch() needs target: the continuation the metric reads, e.g. ' Paris'")
    opts = dict(
        clean=clean,
        corrupt=corrupt,
        target=target,
        sites=sites,
        layers=layers,
        metric=metric,
        method=method,
        foil=foil,
        align=align,
        noise=noise,
        subject=subject,
        seeds=seeds,
        seed=seed,
        out=out,
    )
    if noise is None:
        # --seeds/--seed only apply to --noise (the CLI leaves them at their defaults)
        opts.pop("seeds")
        opts.pop("seed")
    return _analyze("patch", model, ["cells"], as_frame, opts)


def tune(
    model,
    stimuli,
    site="mlp.hook_post",
    layers=None,
    reduce="mean",
    include_special=False,
    folds=5,
    top=50,
    batch=16,
    out=None,
    as_frame=True,
):
    """``ftri tune --json``: tuning curves of units to a numeric value. ``stimuli`` is
    ``"builtin:NAME"``, a JSONL file of ``{"text", "value"}`` or a list of such dicts or
    ``(text, value)`` pairs. With ``as_frame`` ``units`` and ``decoding`` are DataFrames."""
    with _tmp() as d:
        if not (isinstance(stimuli, str) and stimuli.startswith("builtin:")):
            stimuli = _lines_file(stimuli, d, "stimuli.jsonl", key="value")
        opts = dict(
            stimuli=stimuli,
            site=site,
            layers=layers,
            reduce=reduce,
            include_special=include_special,
            folds=folds,
            top=top,
            batch=batch,
            out=out,
        )
        return _analyze("tune", model, ["units", "decoding"], as_frame, opts)


def frequency(
    model,
    levels="syllable=1,word=2,phrase=4,sentence=8",
    stimuli=None,
    streams=24,
    cycles=8,
    site="mlp.hook_post",
    layers=None,
    fdr=0.05,
    top=50,
    seed=0,
    batch=8,
    out=None,
    as_frame=True,
):
    """``ftri frequency --json``: frequency tagging of units by the ``levels`` of structured token
    streams (built-in ones, or ``stimuli``: a file or a list of streams). With ``as_frame`` the
    ``units`` are a DataFrame."""
    with _tmp() as d:
        if stimuli is not None and not isinstance(stimuli, (str, _os.PathLike)):
            path = _os.path.join(d, "streams.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(s.replace("\n", " ") + "\n" for s in stimuli))
            stimuli = path
        opts = dict(
            levels=levels,
            stimuli=stimuli,
            streams=streams,
            cycles=cycles,
            site=site,
            layers=layers,
            fdr=fdr,
            top=top,
            seed=seed,
            batch=batch,
            out=out,
        )
        return _analyze("frequency", model, ["units"], as_frame, opts)


def align(
    model,
    stimuli,
    brain,
    brain_key=None,
    repeats=None,
    methods="ridge,rsa,cka",
    folds=5,
    site="blocks.*.hook_resid_post",
    layers=None,
    reduce="mean",
    include_special=False,
    permutations=1000,
    seed=0,
    batch=16,
    out=None,
    as_frame=True,
):
    """``ftri align --json``: how well each layer predicts (ridge), shares geometry with (RSA) and
    resembles (CKA) a brain matrix ``[stimuli x units]`` -- a numpy array or a .npy, .safetensors,
    .csv or .parquet path (``brain_key`` picks a safetensors tensor); ``repeats``
    ``[k x stimuli x units]`` likewise for the noise ceiling. With ``as_frame`` the ``layers`` are
    a DataFrame."""
    with _tmp() as d:
        opts = dict(
            stimuli=_lines_file(stimuli, d, "stimuli.jsonl"),
            brain=_array_file(brain, d, "brain"),
            brain_key=brain_key,
            repeats=_array_file(repeats, d, "repeats"),
            methods=methods,
            folds=folds,
            site=site,
            layers=layers,
            reduce=reduce,
            include_special=include_special,
            permutations=permutations,
            seed=seed,
            batch=batch,
            out=out,
        )
        return _analyze("align", model, ["layers"], as_frame, opts)


def _corpus_verb(verb, model, out, suffix, frames, as_frame, opts, progress):
    """A verb over a corpus: a tqdm bar over tokens when ``progress`` (and tqdm is installed);
    its files into ``out``, or a temporary folder when ``out`` is None (``suffix``: a file)."""
    if out is not None or suffix is None:
        return _analyze(verb, model, frames, as_frame, dict(opts, out=out), progress)
    with _tmp() as d:
        return _analyze(
            verb,
            model,
            frames,
            as_frame,
            dict(opts, out=_os.path.join(d, verb + suffix)),
            progress,
        )


def modules(
    model,
    corpus,
    layers=None,
    k=32,
    auto=False,
    max_k=64,
    power=6.0,
    top=10,
    promotes=10,
    seed=0,
    out=None,
    text_field="text",
    ctx=128,
    batch=8,
    max_tokens=None,
    as_frame=True,
    progress=True,
):
    """``ftri modules --json``: modules of co-activating neurons over ``corpus`` (a path or a list
    of paths). ``out`` also keeps ``modules.json`` and ``module-ID.json`` (else a temporary folder).
    With ``as_frame`` the ``modules`` are a DataFrame. Like ``sparsity``, ``moefy`` and
    ``decompose``, shows a tqdm bar over tokens when tqdm is installed and ``progress`` is true."""
    opts = dict(
        corpus=corpus,
        text_field=text_field,
        ctx=ctx,
        batch=batch,
        max_tokens=max_tokens,
        layers=layers,
        k=None if auto else k,
        auto=auto,
        max_k=max_k,
        power=power,
        top=top,
        promotes=promotes,
        seed=seed,
    )
    return _corpus_verb("modules", model, out, "", ["modules"], as_frame, opts, progress)


def sparsity(
    model,
    corpus,
    layers=None,
    eps=0.01,
    keep="5,10,25,50",
    text_field="text",
    ctx=128,
    batch=8,
    max_tokens=None,
    as_frame=True,
    progress=True,
):
    """``ftri sparsity --json``: how many MLP neurons are active per token, and the loss when only
    the top ``keep`` percent are kept. With ``as_frame`` ``layers`` and ``topk`` are DataFrames."""
    opts = dict(
        corpus=corpus,
        text_field=text_field,
        ctx=ctx,
        batch=batch,
        max_tokens=max_tokens,
        layers=layers,
        eps=eps,
        keep=keep,
    )
    return _corpus_verb("sparsity", model, None, None, ["layers", "topk"], as_frame, opts, progress)


def moefy(
    model,
    corpus,
    experts,
    method="keys",
    layers=None,
    r=None,
    seed=0,
    out=None,
    text_field="text",
    ctx=128,
    batch=8,
    max_tokens=None,
    as_frame=True,
    progress=True,
):
    """``ftri moefy --json``: split each dense MLP into ``experts`` groups of neurons (MoEfication)
    and the held-out loss when only the best ``r`` are kept. ``out`` also keeps ``experts.json`` and
    ``moefy.json``. With ``as_frame`` the ``curve`` is a DataFrame."""
    opts = dict(
        corpus=corpus,
        text_field=text_field,
        ctx=ctx,
        batch=batch,
        max_tokens=max_tokens,
        experts=experts,
        method=method,
        layers=layers,
        r=r,
        seed=seed,
    )
    return _corpus_verb("moefy", model, out, "", ["curve"], as_frame, opts, progress)


def decompose(
    model,
    corpus,
    site,
    k=64,
    iterations=300,
    tolerance=1e-5,
    top=8,
    seed=0,
    out=None,
    text_field="text",
    ctx=128,
    batch=8,
    max_tokens=None,
    concept=None,
    component=None,
    scales=None,
    as_frame=True,
    progress=True,
):
    """``ftri decompose --json``: semi-NMF of an MLP layer's activations into ``k`` components.
    ``out`` also keeps the ``F`` matrix as safetensors. ``concept=(target_file, control_file)``
    adds steering with a component (``component``, default the most aligned) against
    difference-in-means at ``scales``. With ``as_frame`` the ``components`` are a DataFrame."""
    opts = dict(
        corpus=corpus,
        text_field=text_field,
        ctx=ctx,
        batch=batch,
        max_tokens=max_tokens,
        site=site,
        k=k,
        iterations=iterations,
        tolerance=tolerance,
        top=top,
        seed=seed,
        concept=concept,
        component=component,
        scales=scales,
    )
    return _corpus_verb(
        "decompose",
        model,
        out,
        ".safetensors",
        ["components"],
        as_frame,
        opts,
        progress,
    )


def celltypes(atlas, k=12, as_frame=True):
    """``ftri celltypes --json``: functional cell types from an atlas's top examples. With
    ``as_frame`` the ``types`` are a DataFrame."""
    atlas = atlas.path if isinstance(atlas, Atlas) else _path(atlas)
    return _analyze("celltypes", None, ["types"], as_frame, dict(atlas=atlas, k=k))
