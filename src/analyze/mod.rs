//! The `analyze` stage: how units respond to stimuli (responses), localize (contrasts,
//! attribution, FDR), describe (weights → tokens), expert imaging (routing contrasts), activation
//! patching (patch), tuning curves (tune), frequency tagging, model–brain alignment (align),
//! functional modules (co-activation clusters), sparsity (lazy neurons, exact and statistical
//! top-k), MoEfication (experts from a dense FFN), semi-NMF decompositions, functional cell types
//! (most discriminative stimuli), and the statistics, numerics (ridge, Spearman, folds), corpus
//! passes and clustering math they share.

pub mod align;
pub mod celltypes;
pub mod cluster;
pub mod decompose;
pub mod describe;
pub mod experts;
pub mod frequency;
pub mod localize;
pub mod modules;
pub mod moefy;
pub mod numerics;
pub mod pass;
pub mod patch;
pub mod responses;
pub mod sparsity;
pub mod stats;
pub mod steering;
pub mod tune;
