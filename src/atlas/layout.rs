//! Where everything of an atlas lives on disk: the file names, and the one table of per-site
//! tensor names (`S.count`, `S.top_act`, ...) that the writer and every reader use.

/// The atlas's files inside its folder.
pub const MANIFEST: &str = "manifest.json";
pub const STATS: &str = "stats.safetensors";
pub const TOPK: &str = "topk.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";

/// One per-unit quantity of a site, stored as the tensor `SITE.<name>` (docs/atlas.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Count,
    Mean,
    Var,
    Min,
    Max,
    Fire,
    Hist,
    HistEdges,
    TopAct,
    TopDoc,
    TopPos,
    TopCtx,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Count => "count",
            Field::Mean => "mean",
            Field::Var => "var",
            Field::Min => "min",
            Field::Max => "max",
            Field::Fire => "fire",
            Field::Hist => "hist",
            Field::HistEdges => "hist_edges",
            Field::TopAct => "top_act",
            Field::TopDoc => "top_doc",
            Field::TopPos => "top_pos",
            Field::TopCtx => "top_ctx",
        }
    }

    /// The tensor's name for hook point `site`.
    pub fn key(self, site: &str) -> String {
        format!("{site}.{}", self.name())
    }

    /// The file holding it: `topk.safetensors` for the examples, else `stats.safetensors`.
    pub fn file(self) -> &'static str {
        match self {
            Field::TopAct | Field::TopDoc | Field::TopPos | Field::TopCtx => TOPK,
            _ => STATS,
        }
    }
}

/// Format 1's histogram edges shared by every site (still written when all sites share a range).
pub const SHARED_HIST_EDGES: &str = "hist_edges";
