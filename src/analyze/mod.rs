//! The `analyze` stage: how units respond to stimuli (responses), localize (contrasts,
//! attribution, FDR), describe (weights → tokens), expert imaging (routing contrasts), and the
//! statistics they share.

pub mod describe;
pub mod experts;
pub mod localize;
pub mod responses;
pub mod stats;
