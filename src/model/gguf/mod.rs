//! GGUF checkpoints (llama.cpp's single-file format): the config, the weights and the tokenizer
//! all come from one file, read the way transformers' GGUF loader reads it, so that a `.gguf`
//! model gives the numbers `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` gives.

pub mod config;
pub mod reader;
pub mod tensors;
pub mod tokenizer;
