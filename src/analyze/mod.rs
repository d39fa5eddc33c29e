//! The `analyze` stage: how units respond to stimuli (responses), localize (contrasts,
//! attribution, FDR), describe (weights → tokens), functional modules (co-activation clusters),
//! sparsity (lazy neurons, exact and statistical top-k), MoEfication (experts from a dense FFN),
//! semi-NMF decompositions, functional cell types (most discriminative stimuli), and the statistics, corpus passes and clustering math they share.

pub mod celltypes;
pub mod cluster;
pub mod decompose;
pub mod describe;
pub mod localize;
pub mod modules;
pub mod moefy;
pub mod pass;
pub mod responses;
pub mod sparsity;
pub mod stats;
