//! Unit ids: the one grammar for every spelling users type for "a unit of the model".
//!
//! - `L.N`: neuron N of layer L, i.e. unit N of `blocks.L.mlp.hook_post`;
//! - `HOOK:N`: unit N (last-dimension index) of any hook point, e.g. `blocks.3.hook_resid_post:17`;
//! - `L.hH`: attention head H of layer L;
//! - `L.eE`: expert E of layer L's mixture-of-experts block.
//!
//! Parsing checks the syntax only; whether the unit exists is a question for whoever holds the
//! shapes (a model: [`UnitId::on_model`]; an atlas: `Atlas::resolve`). `Display` writes the
//! shortest spelling, so `parse(display(u)) == u`.

use super::hooks::{AttnHook, Site, SiteKind};
use super::Model;
use crate::error::user_error;
use anyhow::Result;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitId {
    /// Unit `index` of a hook point's last dimension.
    Hook { site: Site, index: usize },
    /// Attention head `head` of layer `layer`.
    Head { layer: usize, head: usize },
    /// Expert `expert` of layer `layer`.
    Expert { layer: usize, expert: usize },
}

/// Why a string is not a unit id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUnitId(pub String);

impl fmt::Display for BadUnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad unit `{}` (use L.N for an MLP neuron, L.hH for a head, L.eE for an expert, or HOOK:N, e.g. blocks.3.hook_resid_post:17)",
            self.0
        )
    }
}

impl std::error::Error for BadUnitId {}

impl UnitId {
    /// Neuron `index` of layer `layer` (`blocks.L.mlp.hook_post`).
    pub fn neuron(layer: usize, index: usize) -> Self {
        UnitId::Hook {
            site: Site::Block(layer, SiteKind::MlpPost),
            index,
        }
    }

    /// `(layer, index)` when this is an MLP neuron `L.N`.
    pub fn as_neuron(&self) -> Option<(usize, usize)> {
        match *self {
            UnitId::Hook {
                site: Site::Block(l, SiteKind::MlpPost),
                index,
            } => Some((l, index)),
            _ => None,
        }
    }

    /// `(site, index)` when this unit is one entry of a hook point.
    pub fn as_hook(&self) -> Option<(Site, usize)> {
        match *self {
            UnitId::Hook { site, index } => Some((site, index)),
            _ => None,
        }
    }

    /// The unit's name from a hook point's name as stored in an atlas manifest (`L.N` for MLP
    /// neurons, `L.hH` for the heads of a recorded `attn.hook_z`, `HOOK:N` otherwise, also for
    /// names this build does not know).
    pub fn name_of(site: &str, index: usize) -> String {
        match Site::parse(site) {
            // an atlas records hook_z per head (its output norm): unit H is head L.hH
            Some(Site::Block(layer, SiteKind::Attn(AttnHook::Z))) => {
                UnitId::Head { layer, head: index }.to_string()
            }
            Some(site) => UnitId::Hook { site, index }.to_string(),
            None => format!("{site}:{index}"),
        }
    }

    /// The hook point and index of this unit in `model`, checked against the model's shapes.
    pub fn on_model(&self, model: &Model) -> Result<(Site, usize)> {
        let Some((site, n)) = self.as_hook() else {
            return Err(user_error(format!(
                "`{self}`: heads and experts are not units of a hook point; use L.N or HOOK:N"
            )));
        };
        let site = model.parse_site(&site.to_string())?;
        let dim = model.site_dim(site);
        if n >= dim {
            return Err(user_error(format!(
                "`{self}`: unit {n} out of range ({site} has {dim} units)"
            )));
        }
        Ok((site, n))
    }
}

fn layer_dot(s: &str) -> Option<(usize, &str)> {
    let (l, rest) = s.split_once('.')?;
    Some((l.parse().ok()?, rest))
}

impl FromStr for UnitId {
    type Err = BadUnitId;

    fn from_str(s: &str) -> Result<Self, BadUnitId> {
        let bad = || BadUnitId(s.to_string());
        let t = s.trim();
        if let Some((hook, n)) = t.rsplit_once(':') {
            let site = Site::parse(hook).ok_or_else(bad)?;
            let index = n.parse().map_err(|_| bad())?;
            return Ok(UnitId::Hook { site, index });
        }
        let (layer, rest) = layer_dot(t).ok_or_else(bad)?;
        let num = |x: &str| x.parse::<usize>().map_err(|_| bad());
        if let Some(h) = rest.strip_prefix('h') {
            return Ok(UnitId::Head {
                layer,
                head: num(h)?,
            });
        }
        if let Some(e) = rest.strip_prefix('e') {
            return Ok(UnitId::Expert {
                layer,
                expert: num(e)?,
            });
        }
        Ok(UnitId::neuron(layer, num(rest)?))
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((l, n)) = self.as_neuron() {
            return write!(f, "{l}.{n}");
        }
        match self {
            UnitId::Hook { site, index } => write!(f, "{site}:{index}"),
            UnitId::Head { layer, head } => write!(f, "{layer}.h{head}"),
            UnitId::Expert { layer, expert } => write!(f, "{layer}.e{expert}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_round_trips() {
        let cases = [
            ("3.17", UnitId::neuron(3, 17)),
            (
                "blocks.2.hook_resid_post:40",
                UnitId::Hook {
                    site: Site::Block(2, SiteKind::ResidPost),
                    index: 40,
                },
            ),
            (
                "hook_embed:3",
                UnitId::Hook {
                    site: Site::Embed,
                    index: 3,
                },
            ),
            ("7.h1", UnitId::Head { layer: 7, head: 1 }),
            (
                "5.e12",
                UnitId::Expert {
                    layer: 5,
                    expert: 12,
                },
            ),
        ];
        for (text, want) in cases {
            let got: UnitId = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
        // the HOOK:N spelling of an MLP neuron is the same unit as L.N and displays as L.N
        let u: UnitId = "blocks.4.mlp.hook_post:9".parse().unwrap();
        assert_eq!(u, UnitId::neuron(4, 9));
        assert_eq!(u.to_string(), "4.9");
        assert_eq!(u.as_neuron(), Some((4, 9)));
        assert_eq!(UnitId::name_of("blocks.1.mlp.hook_post", 5), "1.5");
        assert_eq!(
            UnitId::name_of("blocks.1.hook_mlp_out", 5),
            "blocks.1.hook_mlp_out:5"
        );
        assert_eq!(UnitId::name_of("future.site", 2), "future.site:2");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "3",
            "3.",
            ".4",
            "a.b",
            "3.x",
            "3.h",
            "3.e-1",
            "-1.2",
            "nohook:3",
            "blocks.1.mlp.hook_post:x",
            "3.17.2",
        ] {
            assert!(bad.parse::<UnitId>().is_err(), "{bad:?} parsed");
        }
    }
}
