//! The `analyze` stage: localize (contrasts, attribution, FDR), describe (weights → tokens), and
//! the statistics they share.

pub mod describe;
pub mod localize;
pub mod stats;
