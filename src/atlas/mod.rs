//! The `atlas` stage: the on-disk form of a recording (manifest.json + safetensors), written
//! atomically; opening one for per-unit queries; merging shards. See docs/atlas.md.

pub mod summary;
pub mod tensors;
pub mod view;

use crate::corpus::CorpusFile;
use crate::error::user_error;
use crate::model::UnitId;
use crate::record::state::{HistSpec, SiteState, TopSpec};
use crate::record::{Counters, RecordState};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tensors::{Raw, TensorFile};

pub const FORMAT: &str = "ftri-atlas";
/// 2: per-site histogram ranges (`sites[i].hist`, `S.hist_edges`). Format 1 atlases (one range
/// in `settings.hist`) are still read.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub arch: String,
    pub config_sha256: String,
    pub tokenizer_sha256: String,
    /// `model::fingerprint` of the weights (absent in atlases from before it was recorded).
    #[serde(default)]
    pub weights_fingerprint: Option<String>,
    /// The compute dtype of the recording (`f32`, `bf16`, ...).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorpusInfo {
    pub files: Vec<CorpusFile>,
    pub text_field: String,
}

fn default_dtype() -> String {
    "f32".into()
}

/// Everything that changes what is recorded; atlases merge only when these agree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub ctx: usize,
    pub top_k: usize,
    pub context_before: usize,
    pub context_after: usize,
    /// The histogram bins. Its range is every site's when `hist_auto` is false (`--hist-range
    /// LO,HI`, and all format 1 atlases); with `hist_auto` each site has its own range in
    /// `sites[i].hist`, and this one spans them all.
    pub hist: HistSpec,
    /// Each site's histogram range was chosen from the first windows of the corpus.
    #[serde(default)]
    pub hist_auto: bool,
    /// `--max-tokens`: where reading the corpus stopped.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Special tokens may be top examples (`--include-special`); by default they count only in
    /// the statistics.
    #[serde(default)]
    pub special_examples: bool,
}

impl Settings {
    pub fn top(&self) -> TopSpec {
        TopSpec {
            k: self.top_k,
            before: self.context_before,
            after: self.context_after,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteInfo {
    pub name: String,
    pub units: usize,
    /// This site's histogram bins (absent in format 1 atlases, and in a manifest whose recording
    /// has not chosen its ranges yet; `Atlas::hist_spec` resolves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<HistSpec>,
}

/// Which shards of `count` an atlas holds (`indices`); absent for a whole-corpus atlas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shard {
    pub count: usize,
    pub indices: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub ftri_version: String,
    /// False for a checkpoint of an unfinished run.
    pub complete: bool,
    pub model: ModelInfo,
    pub corpus: CorpusInfo,
    pub settings: Settings,
    pub sites: Vec<SiteInfo>,
    pub shard: Option<Shard>,
    /// Tokens, documents and windows read, documents skipped, and where the next one starts.
    #[serde(flatten)]
    pub counts: Counters,
}

impl Manifest {
    /// Copy the counters and the sites' histogram ranges of `state` into the manifest.
    pub fn set_counts(&mut self, s: &RecordState) {
        for (info, site) in self.sites.iter_mut().zip(&s.sites) {
            info.hist = Some(site.spec);
        }
        if self.settings.hist_auto {
            let specs = s.sites.iter().map(|site| site.spec);
            if let Some(lo) = specs.clone().map(|h| h.lo).reduce(f64::min) {
                self.settings.hist.lo = lo;
            }
            if let Some(hi) = specs.map(|h| h.hi).reduce(f64::max) {
                self.settings.hist.hi = hi;
            }
        }
        self.counts = s.counts;
    }

    /// Why `other` cannot be combined with (or resumed as) this atlas, if it cannot.
    pub fn incompatibility(&self, other: &Manifest) -> Option<String> {
        let m = (&self.model, &other.model);
        if m.0.config_sha256 != m.1.config_sha256 || m.0.tokenizer_sha256 != m.1.tokenizer_sha256 {
            return Some(format!(
                "different models ({} vs {}: config.json/tokenizer.json differ)",
                m.0.id, m.1.id
            ));
        }
        if m.0.weights_fingerprint != m.1.weights_fingerprint {
            return Some(format!(
                "different weights ({} vs {}: same config, other checkpoint)",
                m.0.id, m.1.id
            ));
        }
        if m.0.dtype != m.1.dtype {
            return Some(format!(
                "different compute dtypes ({} vs {})",
                m.0.dtype, m.1.dtype
            ));
        }
        let names = |m: &Manifest| {
            m.sites
                .iter()
                .map(|s| (s.name.clone(), s.units))
                .collect::<Vec<_>>()
        };
        if names(self) != names(other) {
            return Some("different hook points".into());
        }
        // Everything but the histogram ranges, which are compared per site below.
        let rest = |s: &Settings| Settings {
            hist: HistSpec {
                lo: 0.0,
                hi: 0.0,
                bins: s.hist.bins,
            },
            ..s.clone()
        };
        if rest(&self.settings) != rest(&other.settings) {
            return Some(format!(
                "different settings ({:?} vs {:?})",
                self.settings, other.settings
            ));
        }
        for (i, site) in self.sites.iter().enumerate() {
            // None: a new recording that has not chosen its ranges yet, which takes the other's
            if let (Some(a), Some(b)) = (self.site_hist(i), other.site_hist(i)) {
                if a != b {
                    return Some(format!(
                        "different histogram ranges ({}: [{}, {}) vs [{}, {}); record every shard with the same --hist-range, or with automatic ranges from the same corpus)",
                        site.name, a.lo, a.hi, b.lo, b.hi
                    ));
                }
            }
        }
        let key = |c: &CorpusInfo| {
            c.files
                .iter()
                .map(|f| (f.size, f.sha256.clone()))
                .collect::<Vec<_>>()
        };
        if key(&self.corpus) != key(&other.corpus)
            || self.corpus.text_field != other.corpus.text_field
        {
            return Some("different corpora (files, contents or --text-field differ)".into());
        }
        None
    }
}

impl Manifest {
    /// Site `i`'s histogram bins, if known: its own, or the one range of a `--hist-range` or
    /// format 1 recording.
    pub fn site_hist(&self, i: usize) -> Option<HistSpec> {
        self.sites[i]
            .hist
            .or((!self.settings.hist_auto).then_some(self.settings.hist))
    }
}

const MANIFEST: &str = "manifest.json";
const STATS: &str = "stats.safetensors";
const TOPK: &str = "topk.safetensors";
const TOKENIZER: &str = "tokenizer.json";

fn stats_tensors(state: &RecordState) -> Vec<(String, Raw)> {
    let mut t = Vec::new();
    // The shared edges, as format 1 wrote them, when every site has the same range.
    if let Some(first) = state.sites.first() {
        if state.sites.iter().all(|s| s.spec == first.spec) {
            let h = first.spec;
            t.push((
                "hist_edges".to_string(),
                Raw::new(&h.edges(), &[h.bins + 1]),
            ));
        }
    }
    for s in &state.sites {
        let hist = &s.spec;
        let u = s.units;
        let count: Vec<i64> = s.count.iter().map(|&c| c as i64).collect();
        let var: Vec<f64> = (0..u).map(|i| s.var(i)).collect();
        let fire: Vec<i64> = s.fire.iter().map(|&c| c as i64).collect();
        let hist_v: Vec<i64> = s.hist.iter().map(|&c| c as i64).collect();
        let n = &s.name;
        t.push((format!("{n}.count"), Raw::new(&count, &[u])));
        t.push((format!("{n}.mean"), Raw::new(&s.mean, &[u])));
        t.push((format!("{n}.var"), Raw::new(&var, &[u])));
        t.push((format!("{n}.min"), Raw::new(&s.min, &[u])));
        t.push((format!("{n}.max"), Raw::new(&s.max, &[u])));
        t.push((format!("{n}.fire"), Raw::new(&fire, &[u])));
        t.push((format!("{n}.hist"), Raw::new(&hist_v, &[u, hist.slots()])));
        t.push((
            format!("{n}.hist_edges"),
            Raw::new(&hist.edges(), &[hist.bins + 1]),
        ));
    }
    t
}

fn topk_tensors(state: &RecordState, top: &TopSpec) -> Vec<(String, Raw)> {
    let mut t = Vec::new();
    for s in &state.sites {
        let (u, k, n) = (s.units, top.k, &s.name);
        t.push((format!("{n}.top_act"), Raw::new(&s.top_act, &[u, k])));
        t.push((format!("{n}.top_doc"), Raw::new(&s.top_doc, &[u, k])));
        t.push((format!("{n}.top_pos"), Raw::new(&s.top_pos, &[u, k])));
        t.push((
            format!("{n}.top_ctx"),
            Raw::new(&s.top_ctx, &[u, k, top.ctx_len()]),
        ));
    }
    t
}

/// Write the atlas files into the existing, empty folder `dir`.
fn write_files(
    dir: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&Path>,
) -> Result<()> {
    let io =
        |p: &Path, e: std::io::Error| user_error(format!("{}: cannot write: {e}", p.display()));
    tensors::write(&dir.join(STATS), &stats_tensors(state))?;
    tensors::write(
        &dir.join(TOPK),
        &topk_tensors(state, &manifest.settings.top()),
    )?;
    if let Some(src) = tokenizer {
        std::fs::copy(src, dir.join(TOKENIZER)).map_err(|e| io(&dir.join(TOKENIZER), e))?;
    }
    // The manifest goes last: a folder without one is never mistaken for an atlas.
    let p = dir.join(MANIFEST);
    std::fs::write(&p, serde_json::to_string_pretty(manifest)?).map_err(|e| io(&p, e))?;
    Ok(())
}

/// Write a finished atlas at `out` (a temporary folder, renamed when complete).
pub fn write(
    out: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&Path>,
) -> Result<()> {
    if out.exists() {
        return Err(user_error(format!(
            "{}: already exists (remove it or choose another --out)",
            out.display()
        )));
    }
    crate::output::write_atomic(out, |tmp| {
        std::fs::create_dir(tmp)
            .map_err(|e| user_error(format!("{}: cannot create: {e}", tmp.display())))?;
        write_files(tmp, manifest, state, tokenizer)
    })
}

/// Where the checkpoints of a run writing `out` live.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn checkpoint_staging(out: &Path) -> PathBuf {
    let mut s = checkpoint_dir(out).into_os_string();
    s.push(".new");
    PathBuf::from(s)
}

/// Replace the checkpoint of `out`. Written beside it and swapped in, so a kill at any moment
/// leaves one complete checkpoint (the old or the new one).
pub fn write_checkpoint(
    out: &Path,
    manifest: &Manifest,
    state: &RecordState,
    tokenizer: Option<&Path>,
) -> Result<()> {
    let dir = checkpoint_dir(out);
    let staging = checkpoint_staging(out);
    let io = |p: &Path, e: std::io::Error| user_error(format!("{}: {e}", p.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| io(&staging, e))?;
    write_files(&staging, manifest, state, tokenizer)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&staging, &dir).map_err(|e| io(&dir, e))?;
    Ok(())
}

/// The newest complete checkpoint of a run writing `out`, if any.
pub fn find_checkpoint(out: &Path) -> Option<PathBuf> {
    [checkpoint_dir(out), checkpoint_staging(out)]
        .into_iter()
        .find(|d| d.join(MANIFEST).is_file())
}

pub fn remove_checkpoints(out: &Path) {
    let _ = std::fs::remove_dir_all(checkpoint_dir(out));
    let _ = std::fs::remove_dir_all(checkpoint_staging(out));
}

/// One unit's record, as `show` and the UI present it.
#[derive(Debug, Clone)]
pub struct UnitRecord {
    pub site: String,
    pub unit: usize,
    /// The bins of `hist` (this unit's site's).
    pub hist_spec: HistSpec,
    pub count: u64,
    pub mean: f64,
    pub var: f64,
    pub min: f32,
    pub max: f32,
    pub fire: u64,
    pub hist: Vec<u64>,
    pub top: Vec<TopExample>,
}

#[derive(Debug, Clone)]
pub struct TopExample {
    pub activation: f32,
    pub doc: u64,
    pub pos: u64,
    /// Token ids around the example; `None` outside the document. The example is at `before`.
    pub context: Vec<Option<u32>>,
}

/// An atlas opened for queries: the manifest parsed, the tensors memory-mapped.
pub struct Atlas {
    pub dir: PathBuf,
    pub manifest: Manifest,
    stats: TensorFile,
    topk: TensorFile,
}

impl Atlas {
    pub fn open(dir: &Path) -> Result<Self> {
        let mp = dir.join(MANIFEST);
        if !dir.is_dir() {
            return Err(user_error(format!(
                "{}: no such atlas folder",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&mp).map_err(|e| {
            user_error(format!(
                "{}: not an atlas ({}: {e})",
                dir.display(),
                MANIFEST
            ))
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| user_error(format!("{}: invalid manifest: {e}", mp.display())))?;
        if manifest.format != FORMAT || manifest.format_version > FORMAT_VERSION {
            return Err(user_error(format!(
                "{}: unsupported atlas format {} v{}",
                mp.display(),
                manifest.format,
                manifest.format_version
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            stats: TensorFile::open(&dir.join(STATS))?,
            topk: TensorFile::open(&dir.join(TOPK))?,
            manifest,
        })
    }

    /// The histogram bins of site `si` (its own range, or the atlas's one range).
    pub fn hist_spec(&self, si: usize) -> HistSpec {
        self.manifest
            .site_hist(si)
            .unwrap_or(self.manifest.settings.hist)
    }

    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        Some(self.dir.join(TOKENIZER)).filter(|p| p.is_file())
    }

    /// Resolve `L.N` (neuron N of `blocks.L.mlp.hook_post`) or `SITE:N` to (site index, unit).
    pub fn resolve(&self, spec: &str) -> Result<(usize, usize)> {
        let bad = || {
            user_error(format!(
                "bad neuron `{spec}` (use L.N for mlp.hook_post neurons, or HOOK:N, e.g. blocks.3.hook_resid_post:17)"
            ))
        };
        let (site, unit) = spec
            .parse::<UnitId>()
            .ok()
            .and_then(|u| u.as_hook())
            .ok_or_else(bad)?;
        let site = site.to_string();
        let si = self
            .manifest
            .sites
            .iter()
            .position(|s| s.name == site)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .manifest
                    .sites
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                user_error(format!(
                    "{}: `{spec}`: hook point {site} was not recorded (recorded: {})",
                    self.dir.display(),
                    names.join(", ")
                ))
            })?;
        let units = self.manifest.sites[si].units;
        if unit >= units {
            return Err(user_error(format!(
                "`{spec}`: unit {unit} out of range ({site} has {units} units, 0..{})",
                units - 1
            )));
        }
        Ok((si, unit))
    }

    /// Refuse a model other than the one this atlas was recorded on: another shape, or (when the
    /// atlas recorded it) other weights. `use_` says what the atlas is for, for the message.
    pub fn check_model(&self, m: &crate::model::Model, use_: &str) -> Result<()> {
        let mi = &self.manifest.model;
        if mi.n_layers != m.cfg.n_layers || mi.d_mlp != m.cfg.d_mlp {
            return Err(user_error(format!(
                "{}: recorded on a model with {} layers × {} neurons, but {} has {} × {} ({use_})",
                self.dir.display(),
                mi.n_layers,
                mi.d_mlp,
                m.id,
                m.cfg.n_layers,
                m.cfg.d_mlp
            )));
        }
        if let Some(fp) = &mi.weights_fingerprint {
            if *fp != m.fingerprint {
                return Err(user_error(format!(
                    "{}: recorded on other weights than {} ({} has the same shape but a different weights fingerprint; {use_})",
                    self.dir.display(),
                    m.id,
                    mi.id
                )));
            }
        }
        Ok(())
    }

    /// Index of `site` among the recorded hook points.
    pub fn site_index(&self, site: crate::model::Site) -> Option<usize> {
        let name = site.to_string();
        self.manifest.sites.iter().position(|s| s.name == name)
    }

    /// One unit's statistics and top examples: reads a few bytes from the mapped files.
    pub fn unit(&self, site: usize, u: usize) -> Result<UnitRecord> {
        let SiteInfo { name, units, .. } = &self.manifest.sites[site];
        let n = *units;
        let st = &self.manifest.settings;
        let top = st.top();
        let hist_spec = self.hist_spec(site);
        let (k, l, slots) = (top.k, top.ctx_len(), hist_spec.slots());
        let one = |f: &str| format!("{name}.{f}");
        let count = self.stats.read::<i64>(&one("count"), &[n], u, 1)?[0] as u64;
        let acts = self.topk.read::<f32>(&one("top_act"), &[n, k], u * k, k)?;
        let docs = self.topk.read::<i64>(&one("top_doc"), &[n, k], u * k, k)?;
        let poss = self.topk.read::<i64>(&one("top_pos"), &[n, k], u * k, k)?;
        let ctx = self
            .topk
            .read::<u32>(&one("top_ctx"), &[n, k, l], u * k * l, k * l)?;
        let top = (0..k)
            .filter(|&r| docs[r] >= 0)
            .map(|r| TopExample {
                activation: acts[r],
                doc: docs[r] as u64,
                pos: poss[r] as u64,
                context: ctx[r * l..(r + 1) * l]
                    .iter()
                    .map(|&t| (t != crate::record::NO_TOKEN).then_some(t))
                    .collect(),
            })
            .collect();
        Ok(UnitRecord {
            site: name.clone(),
            unit: u,
            hist_spec,
            count,
            mean: self.stats.read::<f64>(&one("mean"), &[n], u, 1)?[0],
            var: self.stats.read::<f64>(&one("var"), &[n], u, 1)?[0],
            min: self.stats.read::<f32>(&one("min"), &[n], u, 1)?[0],
            max: self.stats.read::<f32>(&one("max"), &[n], u, 1)?[0],
            fire: self.stats.read::<i64>(&one("fire"), &[n], u, 1)?[0] as u64,
            hist: self
                .stats
                .read::<i64>(&one("hist"), &[n, slots], u * slots, slots)?
                .into_iter()
                .map(|c| c as u64)
                .collect(),
            top,
        })
    }

    /// A per-site statistic for all units (`count`, `mean`, `var`, `min`, `max`, `fire`).
    /// Fraction of tokens with activation > 0, per unit of site `si` (0 for units never seen).
    pub fn fire_rates(&self, si: usize) -> Result<Vec<f64>> {
        let count = self.column_f64(si, "count")?;
        let fire = self.column_f64(si, "fire")?;
        Ok(count
            .iter()
            .zip(&fire)
            .map(|(&c, &f)| if c > 0.0 { f / c } else { 0.0 })
            .collect())
    }

    /// max / std per unit of site `si`: how far a unit's peak stands above its typical spread
    /// (0 where the spread is 0).
    pub fn selectivity(&self, si: usize) -> Result<Vec<f64>> {
        let max = self.column_f64(si, "max")?;
        let var = self.column_f64(si, "var")?;
        Ok(max
            .iter()
            .zip(&var)
            .map(|(&m, &v)| if v > 0.0 { m / v.sqrt() } else { 0.0 })
            .collect())
    }

    pub fn column_f64(&self, site: usize, field: &str) -> Result<Vec<f64>> {
        let SiteInfo { name, units, .. } = &self.manifest.sites[site];
        let key = format!("{name}.{field}");
        let shape = [*units];
        Ok(match field {
            "count" | "fire" => self
                .stats
                .read_all::<i64>(&key, &shape)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            "min" | "max" => self
                .stats
                .read_all::<f32>(&key, &shape)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            _ => self.stats.read_all::<f64>(&key, &shape)?,
        })
    }

    /// The whole recorded state, for merging or resuming.
    pub fn load_state(&self) -> Result<RecordState> {
        let st = &self.manifest.settings;
        let top = st.top();
        let (k, l) = (top.k, top.ctx_len());
        let m = &self.manifest;
        let mut sites = Vec::new();
        for (si, info) in m.sites.iter().enumerate() {
            let (n, name) = (info.units, &info.name);
            let spec = self.hist_spec(si);
            let slots = spec.slots();
            let key = |f: &str| format!("{name}.{f}");
            let count: Vec<u64> = self
                .stats
                .read_all::<i64>(&key("count"), &[n])?
                .into_iter()
                .map(|c| c as u64)
                .collect();
            let var = self.stats.read_all::<f64>(&key("var"), &[n])?;
            let m2 = count
                .iter()
                .zip(&var)
                .map(|(&c, &v)| v * c as f64)
                .collect();
            sites.push(SiteState {
                name: name.clone(),
                units: n,
                spec,
                mean: self.stats.read_all(&key("mean"), &[n])?,
                m2,
                count,
                min: self.stats.read_all(&key("min"), &[n])?,
                max: self.stats.read_all(&key("max"), &[n])?,
                fire: self
                    .stats
                    .read_all::<i64>(&key("fire"), &[n])?
                    .into_iter()
                    .map(|c| c as u64)
                    .collect(),
                hist: self
                    .stats
                    .read_all::<i64>(&key("hist"), &[n, slots])?
                    .into_iter()
                    .map(|c| c as u64)
                    .collect(),
                top_act: self.topk.read_all(&key("top_act"), &[n, k])?,
                top_doc: self.topk.read_all(&key("top_doc"), &[n, k])?,
                top_pos: self.topk.read_all(&key("top_pos"), &[n, k])?,
                top_ctx: self.topk.read_all(&key("top_ctx"), &[n, k, l])?,
            });
        }
        Ok(RecordState {
            sites,
            counts: m.counts,
        })
    }
}

/// Combine shards of one recording into one atlas (manifest and state). Refuses atlases that
/// differ in model, settings or corpus, unfinished ones, and shards that overlap.
pub fn merge(paths: &[PathBuf]) -> Result<(Manifest, RecordState, Option<PathBuf>)> {
    if paths.len() < 2 {
        return Err(user_error("merge needs at least two atlases"));
    }
    let first = Atlas::open(&paths[0])?;
    let mut manifest = first.manifest.clone();
    let tokenizer = first.tokenizer_path();
    let check_complete = |a: &Atlas| {
        if a.manifest.complete {
            Ok(())
        } else {
            Err(user_error(format!(
                "{}: unfinished recording (a checkpoint); finish it with `ftri record --resume`",
                a.dir.display()
            )))
        }
    };
    check_complete(&first)?;
    let mut state = first.load_state()?;
    let top = manifest.settings.top();
    let mut covered: Option<Shard> = manifest.shard.clone();
    for p in &paths[1..] {
        let a = Atlas::open(p)?;
        check_complete(&a)?;
        if let Some(why) = manifest.incompatibility(&a.manifest) {
            return Err(user_error(format!(
                "cannot merge {} with {}: {why}",
                paths[0].display(),
                p.display()
            )));
        }
        let overlap = || {
            user_error(format!(
                "cannot merge {}: it overlaps the atlases before it (merge the shards i/n of one run, each once)",
                p.display()
            ))
        };
        covered = match (covered, &a.manifest.shard) {
            (Some(c), Some(s)) if c.count == s.count => {
                if s.indices.iter().any(|i| c.indices.contains(i)) {
                    return Err(overlap());
                }
                let mut indices = c.indices;
                indices.extend(&s.indices);
                indices.sort_unstable();
                Some(Shard {
                    count: c.count,
                    indices,
                })
            }
            (Some(c), Some(s)) => {
                return Err(user_error(format!(
                    "cannot merge {}: shard of {} runs, the others are of {}",
                    p.display(),
                    s.count,
                    c.count
                )))
            }
            _ => return Err(overlap()),
        };
        state.merge(&a.load_state()?, &top);
    }
    // All shards together are the whole corpus, exactly as one unsharded run.
    manifest.shard = covered.filter(|c| c.indices.len() < c.count);
    manifest.set_counts(&state);
    Ok((manifest, state, tokenizer))
}

/// The name users type for a unit: `L.N` for `blocks.L.mlp.hook_post`, else `HOOK:N`.
pub fn unit_name(site: &str, unit: usize) -> String {
    UnitId::name_of(site, unit)
}
