//! One unit of an atlas as people read it: statistics, histogram and top examples rendered as
//! text. `ftri show --json`, the server's `/api/neuron/ID` and the demo's report serialize this.

use super::{unit_name, Atlas, UnitRecord};
use crate::model::Tokenizer;
use crate::render::{marked, separator, token_texts};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    pub underflow: u64,
    pub overflow: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub activation: f32,
    pub doc: u64,
    pub pos: u64,
    /// The example token's text.
    pub token: Option<String>,
    pub token_id: Option<u32>,
    /// The context with the example token marked «like this».
    pub context: String,
    pub context_ids: Vec<Option<u32>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitView {
    pub neuron: String,
    pub site: String,
    pub unit: usize,
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f32,
    pub max: f32,
    pub fire_rate: f64,
    pub histogram: Histogram,
    pub top: Vec<Example>,
}

impl Histogram {
    /// The histogram of unit record `r`, split into its bins and tails.
    pub fn of(r: &UnitRecord) -> Self {
        let n = r.hist.len();
        Histogram {
            edges: r.hist_spec.edges(),
            counts: r.hist[1..n - 1].to_vec(),
            underflow: r.hist[0],
            overflow: r.hist[n - 1],
        }
    }
}

/// The top examples of unit record `r`, their contexts rendered with `tok`.
pub fn examples(a: &Atlas, r: &UnitRecord, tok: Option<&Tokenizer>) -> Vec<Example> {
    let before = a.manifest.settings.context_before;
    r.top
        .iter()
        .map(|e| {
            let texts = token_texts(tok, &e.context);
            Example {
                activation: e.activation,
                doc: e.doc,
                pos: e.pos,
                token: texts[before].clone(),
                token_id: e.context[before],
                context: marked(&texts, before, separator(tok, &e.context)),
                context_ids: e.context.clone(),
            }
        })
        .collect()
}

/// The view of unit record `r` of atlas `a`; contexts rendered with `tok` (the atlas's tokenizer).
pub fn unit_view(a: &Atlas, r: &UnitRecord, tok: Option<&Tokenizer>) -> UnitView {
    UnitView {
        neuron: unit_name(&r.site, r.unit),
        site: r.site.clone(),
        unit: r.unit,
        count: r.count,
        mean: r.mean,
        std: r.var.sqrt(),
        min: r.min,
        max: r.max,
        fire_rate: if r.count == 0 {
            0.0
        } else {
            r.fire as f64 / r.count as f64
        },
        histogram: Histogram::of(r),
        top: examples(a, r, tok),
    }
}
