//! `manifest.json`: what an atlas recorded and how — the model (hashes, weights fingerprint,
//! dtype), the corpus files, the settings, the sites and their histogram ranges, the shard, the
//! counters, the mixture-of-experts layers — and the one rule for which atlases may be merged or resumed together.

use crate::corpus::CorpusFile;
use crate::record::routing::ExpertLayer;
use crate::record::state::HistSpec;
use crate::record::{Counters, RecordState, Recording};
use serde::{Deserialize, Serialize};

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
    pub settings: Recording,
    pub sites: Vec<SiteInfo>,
    /// The mixture-of-experts layers whose routing was recorded (`blocks.L.mlp.experts.*`
    /// tensors; see `record::routing`). Absent for dense models and in atlases from before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<ExpertLayer>,
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
        if self.experts != other.experts {
            return Some("different mixture-of-experts layers".into());
        }
        // Everything but the histogram ranges, which are compared per site below.
        let rest = |s: &Recording| Recording {
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
