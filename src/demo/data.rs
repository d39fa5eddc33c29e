//! The demo's built-in data (written for ftri, see data/README.md): the corpus it records, the
//! concept localizers (matched target/control lines), the evaluation sets its lesions are scored
//! on, and the prompt its steering generates from.

/// Varied sentences, code and several languages.
pub const CORPUS: &str = include_str!("../../data/demo_corpus.txt");

/// One concept: its localizer and, where there is one, the behaviour its neurons should carry.
pub struct Concept {
    pub name: &'static str,
    pub target: &'static str,
    pub control: &'static str,
    /// `{"prompt", "target"}` lines whose continuation needs the concept (JSONL, as `--eval`).
    pub eval: Option<&'static str>,
}

macro_rules! concept {
    ($name:literal) => {
        Concept {
            name: $name,
            target: include_str!(concat!("../../data/concepts/", $name, "/target.txt")),
            control: include_str!(concat!("../../data/concepts/", $name, "/control.txt")),
            eval: None,
        }
    };
    ($name:literal, eval) => {
        Concept {
            eval: Some(include_str!(concat!("../../data/eval/", $name, ".jsonl"))),
            ..concept!($name)
        }
    };
}

pub const CONCEPTS: &[Concept] = &[
    concept!("animals"),
    concept!("places"),
    concept!("years"),
    concept!("negation", eval),
    concept!("code"),
    concept!("emotion"),
    concept!("french", eval),
];

/// Plain English continuations the concept lesions should leave alone.
pub const CONTROL_EVAL: &str = include_str!("../../data/eval/english.jsonl");

/// The concept whose neurons the demo clamps while generating, and the prompt it generates from.
pub const STEER_CONCEPT: &str = "french";
pub const STEER_PROMPT: &str = "Every morning, my grandmother";
