//! `ftri._ftri`: the Rust half of `import ftri`. Each function calls one library job of the
//! `ftri` crate with the GIL released, and hands back numpy arrays or the job's result as the
//! same JSON the CLI's `--json` prints (the Python half, `python/python/ftri/__init__.py`, turns
//! that into dicts and DataFrames). Errors become `ftri.FtriError` (bad input, a `ValueError`,
//! with the CLI's one-line message) or `RuntimeError` (a bug); a panic never crosses the boundary.

use anyhow::Result;
use candle_core::DType;
use ftri::analyze::localize::{localize as localize_job, parse_layers, Direction, LocalizeRequest};
use ftri::analyze::responses::{read_stimuli, Method, Readout, Reduce, Stimulus};
use ftri::atlas::view::unit_view;
use ftri::atlas::{Atlas, Field};
use ftri::error::{is_user_error, user_error};
use ftri::intervene::eval::{read_eval, EvalItem};
use ftri::intervene::experts::{parse_expert_set, switch_off};
use ftri::intervene::lesion::{build, lesion as lesion_job, open_atlas, LesionRequest};
use ftri::intervene::{parse_neuron_set, Neuron, OpSpec};
use ftri::model::hooks::select_sites;
use ftri::model::{
    HookSet, Intervention, LoadOptions, Model, Op, Site, SiteKind, Tokenizer, UnitId,
};
use ftri::record::session::{Ended, Event, RecordSession, RecordSettings};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

create_exception!(
    _ftri,
    FtriError,
    PyValueError,
    "Bad input to ftri (a path, a file, a unit id, an option): the CLI's one-line message."
);

fn to_py(e: anyhow::Error) -> PyErr {
    if is_user_error(&e) {
        FtriError::new_err(e.to_string())
    } else {
        PyRuntimeError::new_err(format!("{e:#}"))
    }
}

/// Run `f` with the GIL released; an error becomes a Python exception, and so does a panic
/// (as RuntimeError, instead of unwinding into the interpreter).
fn job<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            PyRuntimeError::new_err(format!("internal error in ftri (a bug): {msg}"))
        })?
        .map_err(to_py)
}

/// The JSON `print_json` prints for `--json` (through `serde_json::Value`, as the CLI does, so
/// that numbers read back the same).
fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(&serde_json::to_value(v)?)?)
}

/// A model loaded once and shared by every call (`ftri.Model` wraps it).
#[pyclass(module = "ftri._ftri", name = "Model", frozen)]
struct PyModel {
    inner: Arc<Model>,
}

/// Activations of several texts: one buffer per hook point (right-padded, `[n, t_max, dim]`,
/// zeros at padding), the logits likewise, and each text's length.
struct Cache {
    t_max: usize,
    lengths: Vec<usize>,
    sites: Vec<CachedSite>,
    logits: Option<(usize, Vec<f32>)>,
}

/// One hook point's values for every text, padded to the longest. Per-token sites are
/// `[n, t_max, inner...]` (`inner` = `[d]`, or `[heads, d_head]` for attention's q/k/v/z/result);
/// attention scores and patterns are `[n, heads, t_max, t_max]` (TransformerLens' layouts).
struct CachedSite {
    name: String,
    pattern: bool,
    /// Dimensions after the token axis (per-token sites) or the head count (patterns); known
    /// from the first batch.
    inner: Vec<usize>,
    buf: Vec<f32>,
}

/// The interventions named by `(unit, op)` pairs: `L.N` neurons take every op of
/// `ftri lesion --op` (through the lesion job's builder); `HOOK:N` units take zero, scale, set, add;
/// experts `L.eE` take `off` (switched off as `ftri lesion --experts` does).
fn interventions(
    m: &Model,
    specs: &[(String, String)],
    atlas: Option<&Atlas>,
) -> Result<Vec<Intervention>> {
    let mut out = Vec::new();
    for (unit, op) in specs {
        let u: UnitId = unit.parse().map_err(|e| user_error(format!("{e}")))?;
        if let UnitId::Expert { .. } = u {
            if op != "off" {
                return Err(user_error(format!(
                    "expert `{unit}` takes the op `off` (switch it out of the routing), not `{op}`"
                )));
            }
            out.extend(switch_off(&parse_expert_set(unit, &m.cfg)?, None));
            continue;
        }
        if op == "off" {
            return Err(user_error(format!(
                "op `off` switches experts (L.eE) off; `{unit}` is not an expert"
            )));
        }
        let op = OpSpec::parse(op)?;
        if u.as_neuron().is_some() {
            let n = Neuron::parse(unit, &m.cfg)?;
            out.extend(build(m, &[n], &op, None, atlas)?);
            continue;
        }
        let (site, index) = u.on_model(m)?;
        let op = match op {
            OpSpec::Zero => Op::Zero,
            OpSpec::Scale(f) => Op::Scale(f),
            OpSpec::Set(v) => Op::Set(v),
            OpSpec::Add(v) => Op::Add(v),
            other => {
                return Err(user_error(format!(
                    "op `{other}` applies to MLP neurons (L.N) only; `{unit}` takes zero, scale=F, set=V or add=V"
                )))
            }
        };
        out.push(Intervention {
            site,
            units: Some(vec![index]),
            positions: None,
            op,
        });
    }
    Ok(out)
}

fn run_cache(
    m: &Model,
    texts: &[String],
    names: &[String],
    ivs: &[Intervention],
    want_logits: bool,
    batch_size: usize,
) -> Result<Cache> {
    if texts.is_empty() {
        return Err(user_error("no texts to run"));
    }
    let sites: Vec<Site> = if names.is_empty() {
        vec![]
    } else {
        select_sites(&m.sites(), &names.join(","))?
            .into_iter()
            .filter(|s| *s != Site::Logits)
            .collect()
    };
    let want_logits = want_logits && m.net.unembed.is_some();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| m.encode(t)).collect::<Result<_>>()?;
    let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
    let (n, t_max) = (ids.len(), lengths.iter().copied().max().unwrap_or(0));
    let mut bufs: Vec<CachedSite> = sites
        .iter()
        .map(|s| CachedSite {
            name: s.to_string(),
            pattern: matches!(s, Site::Block(_, SiteKind::Attn(h)) if h.is_pattern_like()),
            inner: vec![],
            buf: vec![],
        })
        .collect();
    let vocab = m.cfg.vocab_size;
    let mut logits = want_logits.then(|| vec![0f32; n * t_max * vocab]);
    let copy_rows = |dst: &mut [f32], src: &[f32], first: usize, tc: usize, d: usize| {
        for (b, len) in lengths[first..]
            .iter()
            .enumerate()
            .take(src.len() / (tc * d))
        {
            let at = (first + b) * t_max * d;
            dst[at..at + len * d].copy_from_slice(&src[b * tc * d..b * tc * d + len * d]);
        }
    };
    for (c, chunk) in ids.chunks(batch_size.max(1)).enumerate() {
        let first = c * batch_size.max(1);
        let batch = m.batch(chunk)?;
        let tc = batch.dims().1;
        let mut hooks = HookSet::capturing(sites.iter().copied());
        hooks.want_logits = want_logits;
        for iv in ivs {
            hooks.intervene(iv.clone());
        }
        let out = m.forward(&batch, &mut hooks)?;
        for (c, s) in bufs.iter_mut().zip(&sites) {
            let x = hooks
                .take(*s)
                .ok_or_else(|| anyhow::anyhow!("hook {} was not reached", c.name))?;
            let dims = x.dims().to_vec();
            let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if c.pattern {
                // [B, H, tc, tc]: each text's [len, len] block of each head
                let h = dims[1];
                if c.buf.is_empty() {
                    c.inner = vec![h];
                    c.buf = vec![0f32; n * h * t_max * t_max];
                }
                for (b, &len) in lengths[first..].iter().enumerate().take(dims[0]) {
                    for hh in 0..h {
                        for q in 0..len {
                            let src = ((b * h + hh) * tc + q) * tc;
                            let dst = (((first + b) * h + hh) * t_max + q) * t_max;
                            c.buf[dst..dst + len].copy_from_slice(&v[src..src + len]);
                        }
                    }
                }
            } else {
                let inner = dims[2..].to_vec();
                let d: usize = inner.iter().product();
                if c.buf.is_empty() {
                    c.inner = inner;
                    c.buf = vec![0f32; n * t_max * d];
                }
                copy_rows(&mut c.buf, &v, first, tc, d);
            }
        }
        if let Some(buf) = logits.as_mut() {
            let x = out.ok_or_else(|| anyhow::anyhow!("the forward pass returned no logits"))?;
            let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            copy_rows(buf, &v, first, tc, vocab);
        }
    }
    Ok(Cache {
        t_max,
        lengths,
        sites: bufs,
        logits: logits.map(|l| (vocab, l)),
    })
}

/// A `[n, t_max, d]` array (zero-copy from the buffer), or a list of `[t_i, d]` arrays.
fn to_numpy<'py>(
    py: Python<'py>,
    buf: Vec<f32>,
    d: usize,
    t_max: usize,
    lengths: &[usize],
    pad: bool,
) -> PyResult<Bound<'py, PyAny>> {
    site_to_numpy(py, buf, &[d], false, t_max, lengths, pad)
}

/// A cached site as numpy: padded, one array `[n, t_max, inner...]` (`[n, heads, t_max, t_max]`
/// for a pattern), zero-copy from the buffer; else a list of `[t_i, inner...]` (`[heads, t_i,
/// t_i]`) arrays.
fn site_to_numpy<'py>(
    py: Python<'py>,
    buf: Vec<f32>,
    inner: &[usize],
    pattern: bool,
    t_max: usize,
    lengths: &[usize],
    pad: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let n = lengths.len();
    let shape = |t: usize, lead: Option<usize>| -> Vec<usize> {
        let mut s: Vec<usize> = lead.into_iter().collect();
        if pattern {
            s.extend([inner[0], t, t]);
        } else {
            s.push(t);
            s.extend_from_slice(inner);
        }
        s
    };
    if pad {
        let a = PyArray1::from_vec(py, buf).reshape(shape(t_max, Some(n)))?;
        return Ok(a.into_any());
    }
    let per_text: usize = shape(t_max, None).iter().product();
    let items: Vec<Bound<'py, PyAny>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let text = &buf[i * per_text..(i + 1) * per_text];
            let v: Vec<f32> = if pattern {
                let h = inner[0];
                let mut v = Vec::with_capacity(h * len * len);
                for hh in 0..h {
                    for q in 0..len {
                        let at = (hh * t_max + q) * t_max;
                        v.extend_from_slice(&text[at..at + len]);
                    }
                }
                v
            } else {
                let d: usize = inner.iter().product();
                text[..len * d].to_vec()
            };
            Ok(PyArray1::from_vec(py, v)
                .reshape(shape(len, None))?
                .into_any())
        })
        .collect::<PyResult<_>>()?;
    Ok(PyList::new(py, items)?.into_any())
}

#[pymethods]
impl PyModel {
    /// Load a checkpoint folder, a GGUF file or a Hugging Face hub id (as `--model`).
    #[staticmethod]
    #[pyo3(signature = (path, dtype = "f32", device = "cpu", threads = None))]
    fn load(
        py: Python<'_>,
        path: String,
        dtype: &str,
        device: &str,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        if let Some(n) = threads {
            ftri::cli::set_threads(n);
        }
        let (dtype, device) = (dtype.to_string(), device.to_string());
        let m = job(py, move || {
            let opts = LoadOptions {
                dtype: ftri::model::parse_dtype(&dtype)?,
                device: ftri::model::parse_device(&device)?,
            };
            Model::load(&path, &opts)
        })?;
        Ok(Self { inner: Arc::new(m) })
    }

    /// `ftri info --json`.
    fn info_json(&self) -> PyResult<String> {
        Ok(ftri::cli::info::info_json(&self.inner).to_string())
    }

    /// Token ids of a text (with the tokenizer's default special tokens, as `run_with_cache`).
    fn tokenize(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.encode(text).map_err(to_py)
    }

    /// Token strings of ids.
    fn token_strings(&self, ids: Vec<u32>) -> Vec<String> {
        ids.iter()
            .map(|&i| self.inner.tokenizer.decode(&[i]))
            .collect()
    }

    /// `(logits, cache, lengths)`: see `ftri.Model.run_with_cache`.
    #[pyo3(signature = (texts, names, interventions = vec![], atlas = None, pad = true, logits = true, batch_size = 16))]
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        names: Vec<String>,
        interventions: Vec<(String, String)>,
        atlas: Option<String>,
        pad: bool,
        logits: bool,
        batch_size: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>, Vec<usize>)> {
        let m = self.inner.clone();
        let c = job(py, move || {
            let atlas = atlas
                .map(|p| -> Result<Atlas> {
                    let a = Atlas::open(Path::new(&p))?;
                    a.check_model(&m, "interventions read its statistics")?;
                    Ok(a)
                })
                .transpose()?;
            let ivs = self::interventions(&m, &interventions, atlas.as_ref())?;
            run_cache(&m, &texts, &names, &ivs, logits, batch_size)
        })?;
        let cache = PyDict::new(py);
        for site in c.sites {
            let a = site_to_numpy(
                py,
                site.buf,
                &site.inner,
                site.pattern,
                c.t_max,
                &c.lengths,
                pad,
            )?;
            cache.set_item(site.name, a)?;
        }
        if pad {
            let n = c.lengths.len();
            let mut mask = vec![0i64; n * c.t_max];
            for (i, &len) in c.lengths.iter().enumerate() {
                mask[i * c.t_max..i * c.t_max + len].fill(1);
            }
            let mask = PyArray1::from_vec(py, mask).reshape([n, c.t_max])?;
            cache.set_item("attention_mask", mask)?;
        }
        let logits = match c.logits {
            Some((v, buf)) => to_numpy(py, buf, v, c.t_max, &c.lengths, pad)?,
            None => py.None().into_bound(py),
        };
        Ok((logits, cache, c.lengths))
    }
}

/// Each stimulus set: a file (as `--target`) or a list of `(text, target continuation)`.
#[derive(FromPyObject)]
enum Stimuli {
    Path(PathBuf),
    List(Vec<(String, Option<String>)>),
}

impl Stimuli {
    fn read(self) -> Result<Vec<Stimulus>> {
        Ok(match self {
            Stimuli::Path(p) => read_stimuli(&p)?,
            Stimuli::List(v) => v
                .into_iter()
                .map(|(text, target)| Stimulus { text, target })
                .collect(),
        })
    }
}

/// An evaluation set: a JSONL file (as `--eval`) or a list of `(prompt, target)`.
#[derive(FromPyObject)]
enum Eval {
    Path(PathBuf),
    List(Vec<(String, String)>),
}

impl Eval {
    fn read(self) -> Result<Vec<EvalItem>> {
        Ok(match self {
            Eval::Path(p) => read_eval(&p)?,
            Eval::List(v) => v
                .into_iter()
                .map(|(prompt, target)| EvalItem { prompt, target })
                .collect(),
        })
    }
}

/// `ftri localize --json`.
#[pyfunction]
#[pyo3(signature = (model, target, control, site = "mlp.hook_post".to_string(), layers = None, reduce = "mean".to_string(), method = "contrast".to_string(), direction = "target".to_string(), paired = false, include_special = false, fdr = 0.05, top = 50, batch = 16))]
#[allow(clippy::too_many_arguments)]
fn localize(
    py: Python<'_>,
    model: &PyModel,
    target: Stimuli,
    control: Stimuli,
    site: String,
    layers: Option<String>,
    reduce: String,
    method: String,
    direction: String,
    paired: bool,
    include_special: bool,
    fdr: f64,
    top: usize,
    batch: usize,
) -> PyResult<String> {
    let m = model.inner.clone();
    job(py, move || {
        let readout = Readout {
            reduce: Reduce::parse(&reduce)?,
            method: Method::parse(&method)?,
            include_special,
            batch,
        };
        let direction = Direction::parse(&direction)?;
        let (target, control) = (target.read()?, control.read()?);
        let site = SiteKind::from_suffix(&site).ok_or_else(|| {
            user_error(format!(
                "--site `{site}` is not a per-block hook point (e.g. mlp.hook_post, hook_resid_post)"
            ))
        })?;
        let layers = parse_layers(layers.as_deref(), m.cfg.n_layers)?;
        let r = localize_job(
            &m,
            &LocalizeRequest {
                target,
                control,
                site,
                layers,
                readout,
                direction,
                paired,
                fdr,
                top,
            },
        )?;
        json(&r)
    })
}

/// `ftri describe --neuron L.N --json`.
#[pyfunction]
#[pyo3(signature = (model, neuron, top = 20))]
fn describe(py: Python<'_>, model: &PyModel, neuron: String, top: usize) -> PyResult<String> {
    let m = model.inner.clone();
    job(py, move || {
        if top == 0 {
            return Err(user_error("--top must be at least 1"));
        }
        let n = Neuron::parse(&neuron, &m.cfg)?;
        // `ftri describe --json` serializes the struct directly (not through a Value)
        let d = ftri::analyze::describe::describe_neuron(&m, n.layer, n.index, top)?;
        Ok(serde_json::to_string(&d)?)
    })
}

/// `ftri lesion --json`.
#[pyfunction]
#[pyo3(signature = (model, neurons, eval, op = "zero".to_string(), control_eval = None, random_baseline = 0, positions = None, atlas = None, seed = 0, experts = None))]
#[allow(clippy::too_many_arguments)]
fn lesion(
    py: Python<'_>,
    model: &PyModel,
    neurons: Option<String>,
    eval: Eval,
    op: String,
    control_eval: Option<Eval>,
    random_baseline: usize,
    positions: Option<Vec<usize>>,
    atlas: Option<PathBuf>,
    seed: u64,
    experts: Option<String>,
) -> PyResult<String> {
    let m = model.inner.clone();
    job(py, move || {
        let op = OpSpec::parse(&op)?;
        let eval = eval.read()?;
        let control_eval = control_eval.map(Eval::read).transpose()?;
        if neurons.is_none() && experts.is_none() {
            return Err(user_error("lesion: give neurons, experts or both"));
        }
        let neurons = match &neurons {
            Some(spec) => parse_neuron_set(spec, &m.cfg)?,
            None => vec![],
        };
        let experts = match &experts {
            Some(spec) => parse_expert_set(spec, &m.cfg)?,
            None => vec![],
        };
        let atlas = open_atlas(atlas.as_deref(), &m, &op)?;
        let r = lesion_job(
            &m,
            &LesionRequest {
                neurons,
                experts,
                heads: vec![],
                op,
                positions,
                eval,
                control_eval,
                random_baseline,
                seed,
                atlas,
            },
        )?;
        json(&r)
    })
}

/// Settings of `ftri record` from keyword arguments (the flags' names with underscores).
fn record_settings(kw: &Bound<'_, PyDict>) -> PyResult<RecordSettings> {
    let mut s = RecordSettings::default();
    for (k, v) in kw.iter() {
        let k: String = k.extract()?;
        match k.as_str() {
            "text_field" => s.text_field = v.extract()?,
            "sites" => s.sites = v.extract()?,
            "top_k" => s.top_k = v.extract()?,
            "ctx" => s.ctx = v.extract()?,
            "batch" => s.batch = v.extract()?,
            "max_tokens" => s.max_tokens = v.extract()?,
            "shard" => s.shard = v.extract()?,
            "context_before" => s.context_before = v.extract()?,
            "context_after" => s.context_after = v.extract()?,
            "hist_bins" => s.hist_bins = v.extract()?,
            "hist_range" => s.hist_range = v.extract()?,
            "resume" => s.resume = v.extract()?,
            "force" => s.force = v.extract()?,
            "checkpoint_every" => s.checkpoint_every = v.extract()?,
            "include_special" => s.include_special = v.extract()?,
            "stop_after_docs" => s.stop_after_docs = v.extract()?,
            other => {
                return Err(FtriError::new_err(format!(
                    "unknown record setting `{other}` (text_field, sites, top_k, ctx, batch, max_tokens, shard, context_before, context_after, hist_bins, hist_range, resume, force, checkpoint_every, include_special)"
                )))
            }
        }
    }
    Ok(s)
}

/// `ftri record --json`; `progress(bytes_read, corpus_bytes, tokens, tokens_per_s)` after each
/// batch (with the GIL taken back for the call).
#[pyfunction]
#[pyo3(signature = (model, corpus, out, settings, progress = None))]
fn record(
    py: Python<'_>,
    model: &PyModel,
    corpus: Vec<PathBuf>,
    out: PathBuf,
    settings: &Bound<'_, PyDict>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let settings = record_settings(settings)?;
    let m = model.inner.clone();
    job(py, move || {
        let session = RecordSession::prepare(&corpus, &out, &settings)?;
        let total = session.corpus_bytes();
        let ended = session.run(&m, &mut |e| {
            if let (
                Event::Progress {
                    state,
                    bytes,
                    tokens_per_s,
                },
                Some(cb),
            ) = (e, progress.as_ref())
            {
                let tokens = state.counts.tokens;
                Python::attach(|py| {
                    if let Err(err) = cb.call1(py, (bytes, total, tokens, tokens_per_s)) {
                        err.print(py);
                    }
                });
            }
        })?;
        Ok(match ended {
            Ended::Finished(s) => json(&s)?,
            Ended::Stopped { docs, checkpoint } => serde_json::json!({
                "stopped_after_docs": docs,
                "checkpoint": checkpoint.display().to_string(),
            })
            .to_string(),
        })
    })
}

/// An atlas opened for queries (`ftri.Atlas` wraps it).
#[pyclass(module = "ftri._ftri", name = "Atlas", frozen)]
struct PyAtlas {
    inner: Atlas,
    tokenizer: Option<Tokenizer>,
}

#[pymethods]
impl PyAtlas {
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let (inner, tokenizer) = job(py, move || {
            let a = Atlas::open(&path)?;
            let tok = a
                .tokenizer_path()
                .and_then(|p| Tokenizer::from_file(&p).ok());
            Ok((a, tok))
        })?;
        Ok(Self { inner, tokenizer })
    }

    /// `ftri show --neuron SPEC --json`.
    fn neuron(&self, spec: &str) -> PyResult<String> {
        let a = &self.inner;
        let (si, u) = a.resolve(spec).map_err(to_py)?;
        let r = a.unit(si, u).map_err(to_py)?;
        json(&unit_view(a, &r, self.tokenizer.as_ref())).map_err(to_py)
    }

    /// `ftri atlas --json`.
    #[pyo3(signature = (top = 5))]
    fn summary(&self, top: usize) -> PyResult<String> {
        let s = ftri::atlas::summary::summary(&self.inner, top).map_err(to_py)?;
        json(&s).map_err(to_py)
    }

    /// `manifest.json`.
    fn manifest(&self) -> PyResult<String> {
        json(&self.inner.manifest).map_err(to_py)
    }

    /// `(name, units)` of each recorded hook point.
    fn sites(&self) -> Vec<(String, usize)> {
        self.inner
            .manifest
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.units))
            .collect()
    }

    /// The per-unit statistics of hook point `site` (a name as `sites()` gives), as float64
    /// columns: count, mean, var, min, max, fire.
    fn columns<'py>(&self, py: Python<'py>, site: &str) -> PyResult<Bound<'py, PyDict>> {
        let a = &self.inner;
        let si = a
            .manifest
            .sites
            .iter()
            .position(|s| s.name == site)
            .ok_or_else(|| {
                let have: Vec<&str> = a.manifest.sites.iter().map(|s| s.name.as_str()).collect();
                FtriError::new_err(format!(
                    "{}: the atlas did not record `{site}` (it has {})",
                    a.dir.display(),
                    have.join(", ")
                ))
            })?;
        let d = PyDict::new(py);
        for f in [
            Field::Count,
            Field::Mean,
            Field::Var,
            Field::Min,
            Field::Max,
            Field::Fire,
        ] {
            let col = a.column_f64(si, f).map_err(to_py)?;
            d.set_item(f.name(), PyArray1::from_vec(py, col))?;
        }
        Ok(d)
    }
}

/// The flags of an `ftri VERB` (`argv`, without the verb) parsed as the CLI parses them; a
/// clap error becomes a user error with clap's one-line message.
fn parse_flags<A: clap::Args + clap::FromArgMatches>(argv: &[String]) -> Result<A> {
    let cmd = A::augment_args(clap::Command::new("ftri").no_binary_name(true));
    let first_line = |e: clap::Error| {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or("").trim();
        user_error(line.strip_prefix("error: ").unwrap_or(line).to_string())
    };
    let m = cmd.try_get_matches_from(argv).map_err(first_line)?;
    A::from_arg_matches(&m).map_err(first_line)
}

/// `ftri VERB FLAGS --json` for the analyses that take their inputs as flags (experts, patch,
/// tune, frequency, align, modules, sparsity, moefy, decompose, celltypes): the same argument
/// parsing and the same job (`ftri::cli::VERB::compute`) as the CLI, on an already loaded model;
/// `progress(stage, done, total)` over tokens for modules, sparsity, moefy and decompose.
#[pyfunction]
#[pyo3(signature = (verb, argv, model = None, progress = None))]
fn analyze(
    py: Python<'_>,
    verb: String,
    argv: Vec<String>,
    model: Option<&PyModel>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use ftri::cli;
    let m = model.map(|m| m.inner.clone());
    job(py, move || {
        // the model is loaded already; `--model` only satisfies the flags' parser
        let mut flags: Vec<String> = Vec::new();
        if let Some(m) = &m {
            flags.push(format!("--model={}", m.id));
        }
        flags.extend(argv);
        let model = || {
            m.as_deref()
                .ok_or_else(|| anyhow::anyhow!("ftri {verb} needs a model"))
        };
        // the corpus verbs' `progress(stage, tokens_done, tokens_total)`, with the GIL taken back
        let mut update = |stage: &str, done: u64, total: u64| {
            if let Some(cb) = progress.as_ref() {
                Python::attach(|py| {
                    if let Err(err) = cb.call1(py, (stage, done, total)) {
                        err.print(py);
                    }
                });
            }
        };
        let f = &flags;
        match verb.as_str() {
            "experts" => json(&cli::experts::compute(&parse_flags(f)?, model()?)?),
            "patch" => json(&cli::patch::compute(&parse_flags(f)?, model()?)?),
            "tune" => json(&cli::tune::compute(&parse_flags(f)?, model()?)?),
            "frequency" => json(&cli::frequency::compute(&parse_flags(f)?, model()?)?),
            "align" => json(&cli::align::compute(&parse_flags(f)?, model()?)?),
            "modules" => json(&cli::modules::compute(
                &parse_flags(f)?,
                model()?,
                &mut update,
            )?),
            "sparsity" => json(&cli::sparsity::compute(
                &parse_flags(f)?,
                model()?,
                &mut update,
            )?),
            "moefy" => json(&cli::moefy::compute(
                &parse_flags(f)?,
                model()?,
                &mut update,
            )?),
            "decompose" => json(&cli::decompose::compute(
                &parse_flags(f)?,
                model()?,
                &mut update,
            )?),
            "celltypes" => json(&cli::celltypes::compute(&parse_flags(f)?)?),
            other => Err(anyhow::anyhow!("no analysis `{other}`")),
        }
    })
}

#[pymodule]
fn _ftri(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FtriError", m.py().get_type::<FtriError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyModel>()?;
    m.add_class::<PyAtlas>()?;
    m.add_function(wrap_pyfunction!(localize, m)?)?;
    m.add_function(wrap_pyfunction!(describe, m)?)?;
    m.add_function(wrap_pyfunction!(lesion, m)?)?;
    m.add_function(wrap_pyfunction!(record, m)?)?;
    m.add_function(wrap_pyfunction!(analyze, m)?)?;
    Ok(())
}
