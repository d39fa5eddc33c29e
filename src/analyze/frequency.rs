//! Frequency tagging (HFTP, hierarchical frequency tagging): token streams whose linguistic
//! levels (words, phrases, sentences, …) repeat at known periods; a unit that tracks a level
//! shows power in its activation-over-positions spectrum at 1/period cycles per token.
//!
//! Per stream and unit, the activation over the stream's first N non-special tokens (N the same
//! for every stream, a multiple of every tested period) is mean-removed and its power computed by a
//! direct DFT at each tagged bin k = N/period and its neighbours k±1, k±2 (within 1..N/2; a handful
//! of bins, so no FFT is needed). SNR = power at k / mean power of the neighbours, with power
//! averaged over streams. The control is each stream with its tokens shuffled (same tokens, no
//! structure; special tokens stay in place). Significance: a paired t-test across streams of
//! ln SNR(structured) against ln SNR(shuffled), one-sided (structured larger); Benjamini–Hochberg
//! q over every unit × level tested. A unit is tagged at a level when q ≤ fdr.
//!
//! Invariants: a period of 1 token is the sampling rate, its frequency aliases to 0 (the mean), so
//! such a level is listed with `testable: false` and never tested; streams shorter than
//! 4 × lcm(periods) are an error; shuffles are seeded, so runs repeat exactly.

use super::responses::token_activations;
use super::stats::{bh_qvalues, order, paired};
use crate::error::user_error;
use crate::model::{Model, Site, SiteKind, UnitId};
use crate::rng::Rng;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub name: String,
    /// In tokens.
    pub period: usize,
    /// 1/period, cycles per token.
    pub frequency: f64,
    /// False for a period of 1 (the sampling rate: it aliases to frequency 0).
    pub testable: bool,
}

/// `name=period,...`, e.g. `syllable=1,word=2,phrase=4,sentence=8`.
pub fn parse_levels(spec: &str) -> Result<Vec<Level>> {
    let bad = |why: &str| {
        user_error(format!(
            "--levels `{spec}`: {why} (expected NAME=PERIOD,... with periods in tokens, e.g. word=2,phrase=4,sentence=8)"
        ))
    };
    let mut out: Vec<Level> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, period) = part
            .split_once('=')
            .ok_or_else(|| bad(&format!("`{part}` has no `=`")))?;
        let name = name.trim();
        let period: usize = period
            .trim()
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| bad(&format!("`{part}`: the period must be a whole number ≥ 1")))?;
        if name.is_empty() {
            return Err(bad(&format!("`{part}` has no name")));
        }
        if out.iter().any(|l| l.name == name) {
            return Err(bad(&format!("level `{name}` given twice")));
        }
        out.push(Level {
            name: name.to_string(),
            period,
            frequency: 1.0 / period as f64,
            testable: period >= 2,
        });
    }
    if !out.iter().any(|l| l.testable) {
        return Err(bad("no level with a period of 2 tokens or more"));
    }
    Ok(out)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The built-in stream's 8-token cycle: two 4-word sentences of two 2-word phrases,
/// `[ADJ NOUN][VERB ADV] [CONJ PRON][VERB ADV]`: structure at periods 2, 4 and 8 tokens.
const CYCLE: [&[&str]; 8] = [
    &[
        "old", "young", "big", "small", "happy", "tired", "quiet", "angry", "brave", "busy",
    ],
    &[
        "dogs", "cats", "kids", "men", "birds", "cows", "girls", "boys", "friends", "horses",
    ],
    &[
        "run", "sleep", "sing", "eat", "walk", "swim", "play", "work", "talk", "wait",
    ],
    &[
        "fast", "well", "now", "here", "there", "often", "again", "too", "away", "late",
    ],
    &["and", "but", "so", "then", "yet"],
    &["they", "we", "you", "some", "all"],
    &[
        "jump", "read", "cook", "rest", "smile", "laugh", "move", "stay", "fight", "dance",
    ],
    &[
        "today", "alone", "together", "inside", "outside", "quickly", "slowly", "early", "soon",
        "home",
    ],
];

/// Built-in streams for `model`: `n` streams of `cycles` 8-token cycles, each word one token
/// (words the tokenizer splits or does not know are left out of their pools).
pub fn builtin_streams(model: &Model, n: usize, cycles: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    let tok = &model.tokenizer;
    let pools: Vec<Vec<u32>> = CYCLE
        .iter()
        .map(|pool| {
            pool.iter()
                .filter_map(|w| {
                    let ids = tok.encode_plain(&format!(" {w}")).ok()?;
                    (ids.len() == 1 && !tok.is_special(ids[0]) && tok.decode(&ids).trim() == *w)
                        .then_some(ids[0])
                })
                .collect()
        })
        .collect();
    if let Some(i) = pools.iter().position(|p| p.len() < 2) {
        return Err(user_error(format!(
            "the model's vocabulary has fewer than 2 of the built-in stream's words for slot {} ({}); give your own streams with --stimuli",
            i + 1,
            CYCLE[i].join(", ")
        )));
    }
    // Special tokens the tokenizer puts around a text (BOS, [CLS] … [SEP]), found around one word.
    let probe = tok.encode_plain(" dogs")?;
    let full = tok.encode(" dogs")?;
    let at = full
        .windows(probe.len().max(1))
        .position(|w| w == probe.as_slice())
        .unwrap_or(0);
    let (prefix, suffix) = (full[..at].to_vec(), full[at + probe.len()..].to_vec());
    let mut rng = Rng::new(seed);
    let len = prefix.len() + suffix.len() + 8 * cycles;
    if len > model.cfg.n_ctx {
        return Err(user_error(format!(
            "built-in streams of {len} tokens do not fit the model's context of {}",
            model.cfg.n_ctx
        )));
    }
    Ok((0..n)
        .map(|_| {
            let mut s = prefix.clone();
            for _ in 0..cycles {
                for pool in &pools {
                    s.push(pool[rng.below(pool.len())]);
                }
            }
            s.extend(&suffix);
            s
        })
        .collect())
}

/// The same tokens with the non-special ones shuffled (Fisher–Yates), special ones in place.
pub fn shuffled(model: &Model, seq: &[u32], rng: &mut Rng) -> Vec<u32> {
    let pos: Vec<usize> = (0..seq.len())
        .filter(|&i| !model.tokenizer.is_special(seq[i]))
        .collect();
    let mut vals: Vec<u32> = pos.iter().map(|&i| seq[i]).collect();
    for i in (1..vals.len()).rev() {
        vals.swap(i, rng.below(i + 1));
    }
    let mut out = seq.to_vec();
    pos.iter().zip(vals).for_each(|(&i, v)| out[i] = v);
    out
}

/// What to analyze.
#[derive(Debug, Clone)]
pub struct FrequencyRequest {
    pub levels: Vec<Level>,
    /// User streams, one text each; None for the built-in streams.
    pub streams: Option<Vec<String>>,
    /// Built-in streams: how many, and how many 8-token cycles each.
    pub n_builtin: usize,
    pub cycles: usize,
    pub site: SiteKind,
    pub layers: Vec<usize>,
    pub batch: usize,
    pub fdr: f64,
    /// How many tagged (unit, level) pairs to list (0: all).
    pub top: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaggedUnit {
    pub neuron: String,
    pub layer: usize,
    pub index: usize,
    pub level: String,
    pub frequency: f64,
    /// Power at the level's frequency over the neighbouring bins' mean, averaged over streams.
    pub snr: f64,
    /// The same on the shuffled control streams.
    pub control_snr: f64,
    pub p: f64,
    pub q: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerTagging {
    pub layer: usize,
    /// Per level, the share of the layer's units tagged at it.
    pub tagged: BTreeMap<String, f64>,
}

/// `ftri frequency --json`.
#[derive(Debug, Clone, Serialize)]
pub struct FrequencyTagging {
    pub site: String,
    pub n_streams: usize,
    /// Positions (non-special tokens) analysed per stream.
    pub n_positions: usize,
    pub fdr: f64,
    pub units_tested: usize,
    pub levels: Vec<Level>,
    /// Tagged units (q ≤ fdr), by SNR.
    pub units: Vec<TaggedUnit>,
    pub layers: Vec<LayerTagging>,
}

/// Power at the requested bins of every unit, from one stream's activations [rows x units].
struct Spectra {
    n: usize,
    bins: Vec<usize>,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl Spectra {
    fn new(n: usize, bins: Vec<usize>) -> Self {
        let mut cos = Vec::with_capacity(bins.len() * n);
        let mut sin = Vec::with_capacity(bins.len() * n);
        for &k in &bins {
            for t in 0..n {
                let a = 2.0 * std::f64::consts::PI * (k * t % n) as f64 / n as f64;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { n, bins, cos, sin }
    }

    /// [units x bins] power of the first n rows of `acts`.
    #[allow(clippy::needless_range_loop)] // x, cos and sin share the index t
    fn power(&self, acts: &[f32], units: usize) -> Vec<f64> {
        let (n, nb) = (self.n, self.bins.len());
        let mut out = vec![0.0; units * nb];
        let mut x = vec![0.0f64; n];
        for u in 0..units {
            for (t, xt) in x.iter_mut().enumerate() {
                *xt = acts[t * units + u] as f64;
            }
            let m = x.iter().sum::<f64>() / n as f64;
            x.iter_mut().for_each(|v| *v -= m);
            for b in 0..nb {
                let (c, s) = (&self.cos[b * n..(b + 1) * n], &self.sin[b * n..(b + 1) * n]);
                let (mut re, mut im) = (0.0, 0.0);
                for t in 0..n {
                    re += x[t] * c[t];
                    im -= x[t] * s[t];
                }
                out[u * nb + b] = re * re + im * im;
            }
        }
        out
    }
}

/// The bins a level reads: its own and up to two neighbours each side within 1..=n/2.
fn level_bins(n: usize, period: usize) -> (usize, Vec<usize>) {
    let k = n / period;
    let nb: Vec<usize> = [k.wrapping_sub(2), k.wrapping_sub(1), k + 1, k + 2]
        .into_iter()
        .filter(|&b| b >= 1 && b <= n / 2 && b != k)
        .collect();
    (k, nb)
}

/// Run structured and shuffled streams and tag units by level.
pub fn frequency(model: &Model, r: &FrequencyRequest) -> Result<FrequencyTagging> {
    let testable: Vec<&Level> = r.levels.iter().filter(|l| l.testable).collect();
    let lcm = testable
        .iter()
        .fold(1usize, |a, l| a / gcd(a, l.period) * l.period);
    let streams: Vec<Vec<u32>> = match &r.streams {
        None => {
            if let Some(l) = testable.iter().find(|l| 8 % l.period != 0) {
                return Err(user_error(format!(
                    "--levels: the built-in streams have structure at periods 1, 2, 4 and 8 tokens, not {} (`{}`); give streams with that structure with --stimuli",
                    l.period, l.name
                )));
            }
            builtin_streams(model, r.n_builtin, r.cycles, r.seed)?
        }
        Some(lines) => lines
            .iter()
            .map(|l| model.encode(l))
            .collect::<Result<_>>()?,
    };
    if streams.len() < 2 {
        return Err(user_error(format!(
            "{} streams: frequency tagging needs at least 2 (one per line)",
            streams.len()
        )));
    }
    let shortest = streams
        .iter()
        .map(|s| {
            s.iter()
                .filter(|&&t| !model.tokenizer.is_special(t))
                .count()
        })
        .min()
        .unwrap_or(0);
    let n = shortest / lcm * lcm;
    if n < 4 * lcm {
        return Err(user_error(format!(
            "the shortest stream has {shortest} tokens; the levels' periods (least common multiple {lcm}) need at least {} per stream",
            4 * lcm
        )));
    }
    let mut rng = Rng::new(r.seed ^ 0x5eed);
    let controls: Vec<Vec<u32>> = streams
        .iter()
        .map(|s| shuffled(model, s, &mut rng))
        .collect();
    let sites: Vec<Site> = r.layers.iter().map(|&l| Site::Block(l, r.site)).collect();
    for s in &sites {
        model.parse_site(&s.to_string())?;
    }
    let units: usize = sites.iter().map(|s| model.site_dim(*s)).sum();
    // every bin any level reads, and where each level's own and neighbour bins sit in that list
    let mut bins: Vec<usize> = Vec::new();
    let per_level: Vec<(usize, Vec<usize>)> =
        testable.iter().map(|l| level_bins(n, l.period)).collect();
    for (k, nb) in &per_level {
        for b in std::iter::once(k).chain(nb) {
            if !bins.contains(b) {
                bins.push(*b);
            }
        }
    }
    let slot = |b: usize| bins.iter().position(|&x| x == b).unwrap_or(0);
    let spectra = Spectra::new(n, bins.clone());
    let nb = bins.len();
    let run = |seqs: &[Vec<u32>]| -> Result<Vec<Vec<f64>>> {
        let mut out = vec![Vec::new(); seqs.len()];
        token_activations(model, seqs, &sites, r.batch, &mut |i, acts, _rows| {
            out[i] = spectra.power(acts, units);
            Ok(())
        })?;
        Ok(out)
    };
    let pow_s = run(&streams)?;
    let pow_c = run(&controls)?;
    let s_count = streams.len();
    let mut tests: Vec<(usize, usize, f64, f64, f64)> = Vec::new(); // unit, level, snr, control, p
    for u in 0..units {
        for (li, (k, nbrs)) in per_level.iter().enumerate() {
            let snr_of = |pw: &[f64]| -> f64 {
                let peak = pw[u * nb + slot(*k)];
                let noise =
                    nbrs.iter().map(|&b| pw[u * nb + slot(b)]).sum::<f64>() / nbrs.len() as f64;
                if noise > 0.0 {
                    peak / noise
                } else if peak > 0.0 {
                    f64::INFINITY
                } else {
                    f64::NAN
                }
            };
            let avg = |pows: &[Vec<f64>]| -> Vec<f64> {
                let mut a = vec![0.0; nb];
                for pw in pows {
                    for b in 0..nb {
                        a[b] += pw[u * nb + b] / s_count as f64;
                    }
                }
                a
            };
            // avg over streams laid out as a one-unit spectrum
            let snr_avg = |pows: &[Vec<f64>]| -> f64 {
                let a = avg(pows);
                let peak = a[slot(*k)];
                let noise = nbrs.iter().map(|&b| a[slot(b)]).sum::<f64>() / nbrs.len() as f64;
                if noise > 0.0 {
                    peak / noise
                } else {
                    f64::NAN
                }
            };
            // a floor keeps ln finite for a silent stream; far below any real power ratio
            let ln = |x: f64| (x.max(1e-12)).ln();
            let a: Vec<f64> = pow_s.iter().map(|pw| ln(snr_of(pw))).collect();
            let b: Vec<f64> = pow_c.iter().map(|pw| ln(snr_of(pw))).collect();
            let p = if a.iter().chain(&b).any(|x| x.is_nan()) {
                f64::NAN
            } else {
                match paired(&a, &b) {
                    Ok(c) if c.t > 0.0 => c.p / 2.0,
                    Ok(c) if c.t.is_nan() => f64::NAN,
                    Ok(c) => 1.0 - c.p / 2.0,
                    Err(_) => f64::NAN,
                }
            };
            tests.push((u, li, snr_avg(&pow_s), snr_avg(&pow_c), p));
        }
    }
    let q = bh_qvalues(&tests.iter().map(|t| t.4).collect::<Vec<_>>());
    let mut ids = Vec::with_capacity(units);
    for s in &sites {
        for i in 0..model.site_dim(*s) {
            ids.push((*s, i));
        }
    }
    let mut tagged: Vec<TaggedUnit> = Vec::new();
    let mut counts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (t, q) in tests.iter().zip(&q) {
        if q.is_nan() || *q > r.fdr {
            continue;
        }
        let (s, i) = ids[t.0];
        let layer = s.layer().unwrap_or(0);
        *counts.entry((layer, t.1)).or_default() += 1;
        let l = testable[t.1];
        tagged.push(TaggedUnit {
            neuron: UnitId::Hook { site: s, index: i }.to_string(),
            layer,
            index: i,
            level: l.name.clone(),
            frequency: l.frequency,
            snr: t.2,
            control_snr: t.3,
            p: t.4,
            q: *q,
        });
    }
    tagged.sort_by(|a, b| order(-a.snr, -b.snr).then(order(a.p, b.p)));
    if r.top > 0 {
        tagged.truncate(r.top);
    }
    let layers = sites
        .iter()
        .map(|s| {
            let layer = s.layer().unwrap_or(0);
            let dim = model.site_dim(*s) as f64;
            LayerTagging {
                layer,
                tagged: testable
                    .iter()
                    .enumerate()
                    .map(|(li, l)| {
                        let c = counts.get(&(layer, li)).copied().unwrap_or(0);
                        (l.name.clone(), c as f64 / dim)
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(FrequencyTagging {
        site: r.site.suffix().to_string(),
        n_streams: s_count,
        n_positions: n,
        fdr: r.fdr,
        units_tested: units,
        levels: r.levels.clone(),
        units: tagged,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_bad_strings_are_user_errors() {
        let l = parse_levels("syllable=1,word=2,phrase=4,sentence=8").unwrap();
        assert_eq!(l.len(), 4);
        assert!(!l[0].testable && l[2].testable);
        assert_eq!(l[2].frequency, 0.25);
        for bad in [
            "",
            "word",
            "word=0",
            "word=x",
            "a=2,a=4",
            "=2",
            "syllable=1",
        ] {
            let e = parse_levels(bad).unwrap_err();
            assert!(crate::error::is_user_error(&e), "{bad}");
        }
    }

    #[test]
    fn an_impulse_train_has_its_power_at_its_period() {
        let n = 64;
        let acts: Vec<f32> = (0..n).map(|t| if t % 4 == 3 { 1.0 } else { 0.0 }).collect();
        let (k, nb) = level_bins(n, 4);
        assert_eq!((k, nb.clone()), (16, vec![14, 15, 17, 18]));
        let s = Spectra::new(n, vec![16, 15, 8]);
        let p = s.power(&acts, 1);
        assert!(p[0] > 100.0 && p[1] < 1e-9 && p[2] < 1e-9, "{p:?}");
        assert_eq!(level_bins(64, 2), (32, vec![30, 31]));
    }
}
