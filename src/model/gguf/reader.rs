//! Parsing a GGUF file: header, metadata, tensor table (filled in by the GGUF loader work).
