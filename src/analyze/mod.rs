//! The `analyze` stage: how units respond to stimuli (responses), localize (contrasts,
//! attribution, FDR), describe (weights → tokens), activation patching (patch), and the
//! statistics they share.

pub mod describe;
pub mod localize;
pub mod patch;
pub mod responses;
pub mod stats;
