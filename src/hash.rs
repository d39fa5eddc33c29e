//! Content hashes of files (corpus files, config.json, tokenizer.json) recorded in atlas manifests,
//! so that merging and resuming can refuse data from somewhere else.

use crate::error::UserContext;
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Size and SHA-256 (hex) of a file, read in 1 MiB pieces.
pub fn sha256_file(p: &Path) -> Result<(u64, String)> {
    let mut f = File::open(p).user_context(|| format!("{}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .user_context(|| format!("{}", p.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, format!("{:x}", h.finalize())))
}
