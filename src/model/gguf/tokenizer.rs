//! The tokenizer of a GGUF file, built from its `tokenizer.ggml.*` metadata.
