//! Safetensors I/O: a model (or checkpoint) file is a set of named f32 tensors plus metadata,
//! with the configuration JSON under `vlsa.config`. f16, bf16 and f64 tensors are converted to
//! f32 on load. Writes go to a temporary file that is renamed into place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::config::Config;
use crate::error::{Error, Result};

/// The metadata key holding the configuration JSON.
pub const CONFIG_KEY: &str = "vlsa.config";

/// One tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from shape and data (lengths must agree).
    pub fn new(shape: &[usize], data: Vec<f32>) -> HostTensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape: shape.to_vec(), data }
    }
}

/// The contents of a safetensors file: tensors by name and the metadata strings.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Tensors by name (sorted).
    pub tensors: BTreeMap<String, HostTensor>,
    /// Metadata strings.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads a safetensors file; every problem is an error naming the file (and tensor).
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        TensorFile::parse(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `source` names them in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<TensorFile> {
        let format = |message: String| Error::Format { path: source.to_string(), message };
        let st = SafeTensors::deserialize(bytes).map_err(|e| format(format!("not a valid safetensors file ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format(format!("not a valid safetensors file ({e})")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
                other => return Err(format(format!("tensor {name} has dtype {other:?}; vlsa reads F32, F16, BF16 and F64"))),
            };
            tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(TensorFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }

    /// The configuration stored in the metadata.
    pub fn config(&self, source: &str) -> Result<Config> {
        let text = self
            .metadata
            .get(CONFIG_KEY)
            .ok_or_else(|| Error::Format { path: source.to_string(), message: format!("no `{CONFIG_KEY}` entry in the metadata; this is not a vlsa model") })?;
        Config::from_json(text, source)
    }

    /// Serializes to safetensors bytes (f32, or f16 storage when `f16` is set).
    pub fn to_bytes(&self, f16: bool) -> Result<Vec<u8>> {
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes = if f16 {
                    t.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
                } else {
                    t.data.iter().flat_map(|&v| v.to_le_bytes()).collect()
                };
                (name.clone(), t.shape.clone(), bytes)
            })
            .collect();
        let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
        let views = encoded
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).map(|v| (name.as_str(), v)).map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = if self.metadata.is_empty() { None } else { Some(self.metadata.clone()) };
        safetensors::serialize(views, meta).map_err(|e| Error::Invalid(format!("cannot serialize tensors: {e}")))
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn write(&self, path: &Path, f16: bool) -> Result<()> {
        let bytes = self.to_bytes(f16)?;
        crate::io::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32_and_f16() {
        let mut f = TensorFile::default();
        f.tensors.insert("a.weight".into(), HostTensor::new(&[2, 3], vec![1.0, -2.0, 0.5, 0.25, 3.0, -0.125]));
        f.tensors.insert("b".into(), HostTensor::new(&[1], vec![7.0]));
        f.metadata.insert("k".into(), "v".into());
        let back = TensorFile::parse(&f.to_bytes(false).unwrap(), "mem").unwrap();
        assert_eq!(back.tensors, f.tensors);
        assert_eq!(back.metadata["k"], "v");
        let half = TensorFile::parse(&f.to_bytes(true).unwrap(), "mem").unwrap();
        assert_eq!(half.tensors, f.tensors, "these values are exact in f16");
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_source() {
        for bytes in [&b""[..], &b"\x05\x00\x00\x00\x00\x00\x00\x00{}"[..], &[0xffu8; 8][..], &b"\x02\x00\x00\x00\x00\x00\x00\x00{x"[..]] {
            let e = TensorFile::parse(bytes, "bad.safetensors").unwrap_err().to_string();
            assert!(e.starts_with("bad.safetensors:"), "{e}");
        }
        let e = TensorFile::default().config("m.safetensors").unwrap_err().to_string();
        assert!(e.contains("vlsa.config"), "{e}");
    }
}
