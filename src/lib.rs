//! ftri — functional Token Resonance Imaging for transformers.
//!
//! Pipeline (see docs/architecture.md): `model` loads checkpoints and runs them with hook points;
//! later stages (corpus, record, atlas, analyze, intervene, serve) build on it; every job is a
//! library call with a typed result, and `cli` only parses flags and prints.

pub mod analyze;
pub mod atlas;
pub mod cli;
pub mod corpus;
pub mod demo;
pub mod error;
pub mod hash;
pub mod intervene;
pub mod model;
pub mod output;
pub mod record;
pub mod render;
pub mod rng;
pub mod serve;
pub mod sys;
