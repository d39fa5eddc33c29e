//! Writing results: always to a temporary name beside the target, renamed when complete, so a
//! killed run never leaves a file that looks finished.

pub mod table;

use crate::error::user_error;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Run `write` on a temporary path, then rename it to `path`.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(user_error(format!(
                "{}: directory {} does not exist",
                path.display(),
                parent.display()
            )));
        }
    }
    let tmp = temp_path(path);
    let result = write(&tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))?;
    Ok(())
}

/// Write named tensors as one safetensors file (readable with `safetensors.numpy.load_file`).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, |tmp| {
        let cpu: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| {
                Ok::<_, anyhow::Error>((
                    n.as_str(),
                    t.to_device(&candle_core::Device::Cpu)?.contiguous()?,
                ))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(cpu.iter().map(|(n, t)| (*n, t)), metadata, tmp)
            .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))?;
        Ok(())
    })
}

/// Print a result as the pretty JSON of `--json`. Keys come out sorted (through
/// `serde_json::Value`), the same whatever order a struct declares them in.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", to_pretty_json(value)?);
    Ok(())
}

/// The pretty JSON `print_json` prints.
pub fn to_pretty_json<T: serde::Serialize>(value: &T) -> Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::to_value(value)?)?)
}
