//! Plain safetensors files of 1-3-d arrays: written from slices, read by memory map so one unit's
//! row is a few byte reads (no whole-file parse beyond the header).

use crate::error::user_error;
use anyhow::Result;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo, View};
use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A number type stored in the atlas (little-endian, as safetensors requires).
pub trait Elem: Copy {
    const DTYPE: Dtype;
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! elem {
    ($t:ty, $d:expr) => {
        impl Elem for $t {
            const DTYPE: Dtype = $d;
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline]
            fn read(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap())
            }
            #[inline]
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
elem!(f32, Dtype::F32);
elem!(f64, Dtype::F64);
elem!(i64, Dtype::I64);
elem!(u32, Dtype::U32);

/// An owned tensor ready to serialize.
pub struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Raw {
    pub fn new<T: Elem>(values: &[T], shape: &[usize]) -> Self {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let mut data = Vec::with_capacity(values.len() * T::SIZE);
        for &v in values {
            v.write(&mut data);
        }
        Self {
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

pub fn write(path: &Path, tensors: &[(String, Raw)]) -> Result<()> {
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, path)
        .map_err(|e| user_error(format!("{}: cannot write: {e}", path.display())))
}

/// A memory-mapped safetensors file.
pub struct TensorFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    infos: HashMap<String, TensorInfo>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |e: String| user_error(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: atlas files are written once and renamed into place, never modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
        let (n, meta): (usize, Metadata) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let infos = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start: 8 + n,
            infos,
        })
    }

    /// The tensor's bytes, checked to be of type T with the given shape.
    fn bytes<T: Elem>(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        let info = self.infos.get(name).ok_or_else(|| {
            user_error(format!("{}: missing tensor `{name}`", self.path.display()))
        })?;
        if info.dtype != T::DTYPE || info.shape != shape {
            return Err(user_error(format!(
                "{}: tensor `{name}` is {:?} {:?}, expected {:?} {:?}",
                self.path.display(),
                info.dtype,
                info.shape,
                T::DTYPE,
                shape
            )));
        }
        let (a, b) = info.data_offsets;
        self.map
            .get(self.data_start + a..self.data_start + b)
            .ok_or_else(|| user_error(format!("{}: truncated", self.path.display())))
    }

    /// Elements `[start, start + len)` of a tensor of the given shape.
    pub fn read<T: Elem>(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        let b = self.bytes::<T>(name, shape)?;
        let s = T::SIZE;
        Ok(b[start * s..(start + len) * s]
            .chunks_exact(s)
            .map(T::read)
            .collect())
    }

    pub fn read_all<T: Elem>(&self, name: &str, shape: &[usize]) -> Result<Vec<T>> {
        let n = shape.iter().product();
        self.read(name, shape, 0, n)
    }
}
