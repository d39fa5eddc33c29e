//! Parsing a GGUF file from a memory map: header, metadata, tensor table; and dequantizing one
//! tensor to f32 with candle's block decoders.
//!
//! Why our own parser rather than `candle_core::quantized::gguf_file::Content::read`: that reader
//! trusts the counts and lengths it reads (it sizes buffers from them before it knows the bytes are
//! there, and its block decoders read a tensor's bytes through a pointer cast that assumes they
//! exist and are aligned), so a corrupt or truncated file can abort the process, and its errors do
//! not say which file or tensor is wrong. This parser never allocates from an unchecked number:
//! - every string or array length is checked against the bytes left in the file before use (an
//!   array element takes at least one byte, so a count can never exceed what remains), and arrays
//!   nest at most [`MAX_DEPTH`] deep;
//! - the metadata and tensor counts are capped by the bytes left (an entry takes at least
//!   [`MIN_KV_BYTES`] / [`MIN_TENSOR_BYTES`] bytes), a tensor has 1..=4 dimensions, element counts
//!   are computed with overflow checks, and every tensor's byte range lies inside the file and
//!   starts on the file's alignment;
//! - a tensor type candle cannot decode is refused at open time, naming the tensor and the type.
//!
//! Metadata values come out as candle's public [`Value`] enum, in a `HashMap` keyed by name
//! ([`GgufFile::metadata`]): the type the GGUF tokenizer builder consumes.
//!
//! Invariants after [`GgufFile::open`]: `tensors[i].start + tensors[i].len <= file size`, `len`
//! is exactly the size the type and dimensions imply, names are unique, and `dims` are GGUF's
//! order (`ne[0]`, the fastest axis, first; [`TensorInfo::shape`] gives PyTorch's order).

use crate::error::user_error;
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How deep arrays of arrays may nest.
pub const MAX_DEPTH: usize = 8;
/// The fewest bytes one metadata entry takes: key length (8), one key byte, value type (4), and
/// a value of at least one byte.
pub const MIN_KV_BYTES: usize = 14;
/// The fewest bytes one tensor-table entry takes: name length (8), one name byte, dimension
/// count (4), one dimension (8), type (4), offset (8).
pub const MIN_TENSOR_BYTES: usize = 33;
const MAGIC: &[u8; 4] = b"GGUF";

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF's dimensions, `ne[0]` (the fastest-varying axis) first.
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte range of its data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    /// The PyTorch shape: GGUF's dimensions reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// Bytes `[0, table_end)` are the header, the metadata and the tensor table.
    pub table_end: usize,
}

/// GGML's name of a tensor type id (for messages; also the types we cannot decode).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES
        .get(id as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("type {id}"))
}

/// The tensor types we dequantize (those candle decodes, minus its internal Q8_1/Q8_K).
fn supported_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        30 => GgmlDType::BF16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        _ => return None,
    })
}

/// A bounds-checked little-endian cursor over the mapped bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

/// Why parsing stopped (turned into a user error naming the file by `GgufFile::open`).
struct Short(String);

type Parse<T> = std::result::Result<T, Short>;

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Parse<&'a [u8]> {
        if n > self.left() {
            return Err(Short(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Parse<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A count or length of items of at least `min_bytes` each, checked against what is left.
    fn count(&mut self, min_bytes: usize, what: &str) -> Parse<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > (self.left() / min_bytes.max(1)) as u64 {
            return Err(Short(format!(
                "truncated or corrupt: {what} at offset {at} is {n}, more than the {} bytes left can hold",
                self.left()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Parse<String> {
        let n = self.count(1, what)?;
        let s = self.take(n, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Parse<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => Value::Bool(self.arr::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(Short(format!(
                        "metadata `{key}` nests arrays more than {MAX_DEPTH} deep"
                    )));
                }
                let elem = self.u32(key)?;
                let n = self.count(1, &format!("length of metadata array `{key}`"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            other => {
                return Err(Short(format!(
                    "metadata `{key}` has unknown value type {other} (corrupt file?)"
                )))
            }
        })
    }
}

impl GgufFile {
    /// Map and parse `path`; any structural problem is one user error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| user_error(format!("{}: cannot open: {e}", path.display())))?;
        // SAFETY: read-only mapping; a file changing underneath a running process is outside
        // what we defend against (as in every mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| user_error(format!("{}: cannot map: {e}", path.display())))?;
        let parsed = Self::parse(&mmap)
            .map_err(|Short(m)| user_error(format!("{}: {m}", path.display())))?;
        let (version, metadata, tensors, table_end) = parsed;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            table_end,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(b: &[u8]) -> Parse<(u32, HashMap<String, Value>, Vec<TensorInfo>, usize)> {
        let mut c = Cursor { b, pos: 0 };
        if b.len() < 4 || &b[..4] != MAGIC {
            return Err(Short(
                "not a GGUF file (it does not start with the magic bytes `GGUF`)".into(),
            ));
        }
        c.pos = 4;
        let version = c.u32("the version")?;
        if version == 0x0300_0000 || version == 0x0200_0000 {
            return Err(Short(
                "a big-endian GGUF file; only little-endian GGUF files are supported".into(),
            ));
        }
        if !(2..=3).contains(&version) {
            return Err(Short(format!(
                "GGUF version {version} is not supported (only versions 2 and 3)"
            )));
        }
        let n_tensors = c.count(MIN_TENSOR_BYTES, "the tensor count")?;
        let n_kv = c.count(MIN_KV_BYTES, "the metadata count")?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, 0, &key)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(Short(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) if a.is_power_of_two() => *a as usize,
            Some(v) => {
                return Err(Short(format!(
                    "`general.alignment` must be a power of two (u32), not {v:?}"
                )))
            }
        };
        let mut raw = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)?;
            if !(1..=4).contains(&n_dims) {
                return Err(Short(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                dims.push(
                    usize::try_from(d).map_err(|_| {
                        Short(format!("tensor `{name}` has dimension {d}, too large"))
                    })?,
                );
            }
            let ty = c.u32(&name)?;
            let offset = c.u64(&name)?;
            if !names.insert(name.clone()) {
                return Err(Short(format!("tensor `{name}` appears twice")));
            }
            raw.push((name, dims, ty, offset));
        }
        let table_end = c.pos;
        let data_start = table_end.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let dtype = supported_type(ty).ok_or_else(|| {
                Short(format!(
                    "tensor `{name}` has type {} which ftri cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                    ggml_type_name(ty)
                ))
            })?;
            let elems = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Short(format!("tensor `{name}`: dimensions {dims:?} overflow")))?;
            if dims[0] % dtype.block_size() != 0 {
                return Err(Short(format!(
                    "tensor `{name}`: its rows of {} elements are not a multiple of {}'s block of {}",
                    dims[0],
                    ggml_type_name(ty),
                    dtype.block_size()
                )));
            }
            let len = (elems / dtype.block_size())
                .checked_mul(dtype.type_size())
                .ok_or_else(|| Short(format!("tensor `{name}`: size overflows")))?;
            if offset % alignment as u64 != 0 {
                return Err(Short(format!(
                    "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start));
            match start.and_then(|s| s.checked_add(len).map(|e| (s, e))) {
                Some((s, e)) if e <= b.len() => tensors.push(TensorInfo {
                    name,
                    dims,
                    dtype,
                    start: s,
                    len,
                }),
                _ => {
                    return Err(Short(format!(
                        "truncated: tensor `{name}`'s data ({len} bytes at data offset {offset}) lies past the end of the file ({} bytes)",
                        b.len()
                    )))
                }
            }
        }
        Ok((version, metadata, tensors, table_end))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The header, metadata and tensor table bytes.
    pub fn table_bytes(&self) -> &[u8] {
        &self.mmap[..self.table_end]
    }

    /// A tensor's raw (quantized) bytes.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.start..t.start + t.len]
    }

    /// The tensor dequantized to f32 on the CPU, in PyTorch's shape; its mapped pages are then
    /// dropped so they do not count twice.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Tensor> {
        let bytes = self.data(t);
        let shape = t.shape();
        let err = |e: candle_core::Error| {
            user_error(format!(
                "{}: cannot dequantize tensor `{}`: {e}",
                self.path.display(),
                t.name
            ))
        };
        let out = match t.dtype {
            GgmlDType::F32 => Tensor::from_raw_buffer(bytes, DType::F32, &shape, &Device::Cpu),
            GgmlDType::F16 => Tensor::from_raw_buffer(bytes, DType::F16, &shape, &Device::Cpu)
                .and_then(|x| x.to_dtype(DType::F32)),
            GgmlDType::BF16 => Tensor::from_raw_buffer(bytes, DType::BF16, &shape, &Device::Cpu)
                .and_then(|x| x.to_dtype(DType::F32)),
            q => {
                // candle reads the blocks through a pointer cast: give it aligned bytes of
                // exactly the right length (the length is an invariant of `open`).
                let buf: Vec<u128>;
                let bytes = if (bytes.as_ptr() as usize).is_multiple_of(16) {
                    bytes
                } else {
                    let mut b = vec![0u128; bytes.len().div_ceil(16)];
                    // SAFETY: `b` holds at least `bytes.len()` bytes; u8 needs no alignment
                    unsafe {
                        let p = b.as_mut_ptr() as *mut u8;
                        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
                    }
                    buf = b;
                    // SAFETY: as above; `buf` lives to the end of this arm
                    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, bytes.len()) }
                };
                qtensor_from_ggml(q, bytes, shape.clone(), &Device::Cpu)
                    .and_then(|qt| qt.dequantize(&Device::Cpu))
            }
        }
        .map_err(err)?;
        // SAFETY: the range lies within the mapping and no reference into it outlives this call.
        unsafe {
            let page = 4096;
            let start = t.start / page * page;
            let _ = self.mmap.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                start,
                t.start + t.len - start,
            );
        }
        Ok(out)
    }
}
