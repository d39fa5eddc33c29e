//! The `analyze` stage: how units respond to stimuli (responses), localize (contrasts,
//! attribution, FDR), describe (weights → tokens), expert imaging (routing contrasts), activation
//! patching (patch), tuning curves (tune), frequency tagging, model–brain alignment (align), and
//! the statistics and numerics (ridge, Spearman, folds) they share.

pub mod align;
pub mod describe;
pub mod experts;
pub mod frequency;
pub mod localize;
pub mod numerics;
pub mod patch;
pub mod responses;
pub mod stats;
pub mod tune;
