//! The `atlas` stage: the on-disk form of a recording (manifest.json + safetensors), written
//! atomically; opening one for per-unit queries; merging shards. See docs/atlas.md.
//!
//! `manifest` says what was recorded, `layout` where each tensor lives, `write` and `merge` make
//! atlases, this module reads them (a unit's record in microseconds, whole columns, the state to
//! resume from), `view`, `experts` and `summary` are what people read.

pub mod experts;
pub mod layout;
pub mod manifest;
mod merge;
pub mod summary;
pub mod tensors;
pub mod view;
mod write;

pub use layout::Field;
pub use manifest::*;
pub use merge::merge;
pub use write::{checkpoint_dir, find_checkpoint, remove_checkpoints, write, write_checkpoint};

use crate::error::user_error;
use crate::model::UnitId;
use crate::record::state::{HistSpec, SiteState};
use crate::record::RecordState;
use anyhow::Result;
use layout::{MANIFEST, STATS, TOKENIZER, TOPK};
use std::path::{Path, PathBuf};
use tensors::TensorFile;

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
                "bad neuron `{spec}` (use L.N for mlp.hook_post neurons, L.hH for a head of a recorded attn.hook_z, or HOOK:N, e.g. blocks.3.hook_resid_post:17)"
            ))
        };
        let id = spec.parse::<UnitId>().map_err(|_| bad())?;
        let (site, unit) = match id {
            UnitId::Expert { .. } => {
                return Err(user_error(format!(
                    "`{spec}` is an expert, not a unit of a hook point (`ftri show --neuron {spec}` shows it; its neurons are blocks.L.mlp.experts.E.hook_post:N)"
                )))
            }
            // a head is unit H of its layer's recorded hook_z (reduced to head norms)
            UnitId::Head { layer, head } => (
                crate::model::Site::Block(
                    layer,
                    crate::model::SiteKind::Attn(crate::model::AttnHook::Z),
                ),
                head,
            ),
            u => u.as_hook().ok_or_else(bad)?,
        };
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
        self.read_unit(name, *units, self.hist_spec(site), u)
    }

    /// Expert `e` of the routing state `xi` (`manifest.experts[xi]`): tokens routed to it (count),
    /// their routing weights (mean, var, min, max, hist) and the tokens routed with the highest
    /// weight (top, with `activation` = the weight).
    pub fn expert(&self, xi: usize, e: usize) -> Result<UnitRecord> {
        let x = &self.manifest.experts[xi];
        let spec = crate::record::routing::weight_hist(self.manifest.settings.hist.bins);
        self.read_unit(&x.name(), x.experts, spec, e)
    }

    /// Unit `u` of the `n` units stored under `name` (a hook point or a routing state).
    fn read_unit(&self, name: &str, n: usize, hist_spec: HistSpec, u: usize) -> Result<UnitRecord> {
        let st = &self.manifest.settings;
        let top = st.top();
        let (k, l, slots) = (top.k, top.ctx_len(), hist_spec.slots());
        let count = self
            .stats
            .read::<i64>(&Field::Count.key(name), &[n], u, 1)?[0] as u64;
        let acts = self
            .topk
            .read::<f32>(&Field::TopAct.key(name), &[n, k], u * k, k)?;
        let docs = self
            .topk
            .read::<i64>(&Field::TopDoc.key(name), &[n, k], u * k, k)?;
        let poss = self
            .topk
            .read::<i64>(&Field::TopPos.key(name), &[n, k], u * k, k)?;
        let ctx = self
            .topk
            .read::<u32>(&Field::TopCtx.key(name), &[n, k, l], u * k * l, k * l)?;
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
            site: name.to_string(),
            unit: u,
            hist_spec,
            count,
            mean: self.stats.read::<f64>(&Field::Mean.key(name), &[n], u, 1)?[0],
            var: self.stats.read::<f64>(&Field::Var.key(name), &[n], u, 1)?[0],
            min: self.stats.read::<f32>(&Field::Min.key(name), &[n], u, 1)?[0],
            max: self.stats.read::<f32>(&Field::Max.key(name), &[n], u, 1)?[0],
            fire: self.stats.read::<i64>(&Field::Fire.key(name), &[n], u, 1)?[0] as u64,
            hist: self
                .stats
                .read::<i64>(&Field::Hist.key(name), &[n, slots], u * slots, slots)?
                .into_iter()
                .map(|c| c as u64)
                .collect(),
            top,
        })
    }

    /// A per-site statistic for all units (`count`, `mean`, `var`, `min`, `max`, `fire`).
    /// Fraction of tokens with activation > 0, per unit of site `si` (0 for units never seen).
    pub fn fire_rates(&self, si: usize) -> Result<Vec<f64>> {
        let count = self.column_f64(si, Field::Count)?;
        let fire = self.column_f64(si, Field::Fire)?;
        Ok(count
            .iter()
            .zip(&fire)
            .map(|(&c, &f)| if c > 0.0 { f / c } else { 0.0 })
            .collect())
    }

    /// max / std per unit of site `si`: how far a unit's peak stands above its typical spread
    /// (0 where the spread is 0).
    pub fn selectivity(&self, si: usize) -> Result<Vec<f64>> {
        let max = self.column_f64(si, Field::Max)?;
        let var = self.column_f64(si, Field::Var)?;
        Ok(max
            .iter()
            .zip(&var)
            .map(|(&m, &v)| if v > 0.0 { m / v.sqrt() } else { 0.0 })
            .collect())
    }

    pub fn column_f64(&self, site: usize, field: Field) -> Result<Vec<f64>> {
        let SiteInfo { name, units, .. } = &self.manifest.sites[site];
        let key = field.key(name);
        let shape = [*units];
        Ok(match field {
            Field::Count | Field::Fire => self
                .stats
                .read_all::<i64>(&key, &shape)?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            Field::Min | Field::Max => self
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
        let m = &self.manifest;
        let mut sites = Vec::new();
        for (si, info) in m.sites.iter().enumerate() {
            sites.push(self.load_site(&info.name, info.units, self.hist_spec(si))?);
        }
        let weights = crate::record::routing::weight_hist(m.settings.hist.bins);
        let mut experts = Vec::new();
        for x in &m.experts {
            experts.push(self.load_site(&x.name(), x.experts, weights)?);
        }
        Ok(RecordState {
            sites,
            experts,
            counts: m.counts,
        })
    }

    /// The state of the `n` units stored under `name`.
    fn load_site(&self, name: &str, n: usize, spec: HistSpec) -> Result<SiteState> {
        let top = self.manifest.settings.top();
        let (k, l) = (top.k, top.ctx_len());
        let slots = spec.slots();
        let count: Vec<u64> = self
            .stats
            .read_all::<i64>(&Field::Count.key(name), &[n])?
            .into_iter()
            .map(|c| c as u64)
            .collect();
        let var = self.stats.read_all::<f64>(&Field::Var.key(name), &[n])?;
        let m2 = count
            .iter()
            .zip(&var)
            .map(|(&c, &v)| v * c as f64)
            .collect();
        Ok(SiteState {
            name: name.to_string(),
            units: n,
            spec,
            mean: self.stats.read_all(&Field::Mean.key(name), &[n])?,
            m2,
            count,
            min: self.stats.read_all(&Field::Min.key(name), &[n])?,
            max: self.stats.read_all(&Field::Max.key(name), &[n])?,
            fire: self
                .stats
                .read_all::<i64>(&Field::Fire.key(name), &[n])?
                .into_iter()
                .map(|c| c as u64)
                .collect(),
            hist: self
                .stats
                .read_all::<i64>(&Field::Hist.key(name), &[n, slots])?
                .into_iter()
                .map(|c| c as u64)
                .collect(),
            top_act: self.topk.read_all(&Field::TopAct.key(name), &[n, k])?,
            top_doc: self.topk.read_all(&Field::TopDoc.key(name), &[n, k])?,
            top_pos: self.topk.read_all(&Field::TopPos.key(name), &[n, k])?,
            top_ctx: self.topk.read_all(&Field::TopCtx.key(name), &[n, k, l])?,
        })
    }

    /// Resolve an expert id `L.eE` to (index in `manifest.experts`, expert).
    pub fn resolve_expert(&self, spec: &str) -> Result<(usize, usize)> {
        let Ok(UnitId::Expert { layer, expert }) = spec.parse::<UnitId>() else {
            return Err(user_error(format!(
                "bad expert `{spec}` (use L.eE, e.g. 3.e5: expert 5 of layer 3)"
            )));
        };
        let m = &self.manifest;
        if m.experts.is_empty() {
            return Err(user_error(format!(
                "{}: `{spec}` is an expert, but this atlas has no experts (recorded on the dense {} model {})",
                self.dir.display(),
                m.model.arch,
                m.model.id
            )));
        }
        let xi = m.experts.iter().position(|x| x.layer == layer).ok_or_else(|| {
            let layers: Vec<String> = m.experts.iter().map(|x| x.layer.to_string()).collect();
            user_error(format!(
                "`{spec}`: layer {layer} has no experts in this atlas (mixture-of-experts layers: {})",
                layers.join(", ")
            ))
        })?;
        let n = m.experts[xi].experts;
        if expert >= n {
            return Err(user_error(format!(
                "`{spec}`: expert {expert} out of range (layer {layer} has {n} experts, numbered from 0)"
            )));
        }
        Ok((xi, expert))
    }

    /// Tokens routed to each expert of routing state `xi`.
    pub fn expert_counts(&self, xi: usize) -> Result<Vec<u64>> {
        let x = &self.manifest.experts[xi];
        Ok(self
            .stats
            .read_all::<i64>(&Field::Count.key(&x.name()), &[x.experts])?
            .into_iter()
            .map(|c| c as u64)
            .collect())
    }

    /// Mean routing weight (over routed tokens) of each expert of routing state `xi`.
    pub fn expert_mean_weights(&self, xi: usize) -> Result<Vec<f64>> {
        let x = &self.manifest.experts[xi];
        self.stats
            .read_all::<f64>(&Field::Mean.key(&x.name()), &[x.experts])
    }
}

/// The name users type for a unit: `L.N` for `blocks.L.mlp.hook_post`, else `HOOK:N`.
pub fn unit_name(site: &str, unit: usize) -> String {
    UnitId::name_of(site, unit)
}
