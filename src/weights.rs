//! Safetensors I/O: a model (or checkpoint) file is a set of named f32 tensors plus metadata,
//! with the configuration JSON under `vlsa.config`. f16, bf16 and f64 tensors are converted to
//! f32 on load. Writes go to a temporary file that is renamed into place.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensorError, SafeTensors};

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
        if path.is_dir() {
            return Err(Error::Format {
                path: path.display().to_string(),
                message: "is a folder, not a safetensors file; give the .safetensors file itself".into(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        TensorFile::parse(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `source` names them in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<TensorFile> {
        let format = |message: String| Error::Format { path: source.to_string(), message };
        check_header_length(bytes).map_err(format)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| format(explain(bytes, e)))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format(explain(bytes, e)))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::F64 => {
                    raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
                }
                other => {
                    return Err(format(format!("tensor {name} has dtype {other:?}; vlsa reads F32, F16, BF16 and F64")))
                }
            };
            tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
        }
        Ok(TensorFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }

    /// The configuration stored in the metadata.
    pub fn config(&self, source: &str) -> Result<Config> {
        let text = self.metadata.get(CONFIG_KEY).ok_or_else(|| Error::Format {
            path: source.to_string(),
            message: format!("no `{CONFIG_KEY}` entry in the metadata; this is not a vlsa model"),
        })?;
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
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))
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

/// The tensor `name` of `tensors`, checked as every loader of model and optimizer tensors checks
/// it: present, of `shape`, every value finite. `what` names the kind in the error ("tensor",
/// "optimizer tensor"), `source` the file.
pub fn checked_tensor<'a>(
    tensors: &'a BTreeMap<String, HostTensor>,
    name: &str,
    shape: &[usize],
    what: &str,
    source: &str,
) -> Result<&'a HostTensor> {
    let t = tensors.get(name).ok_or_else(|| missing_tensor(name, shape, what, source))?;
    check_shape(&t.shape, name, shape, what, source)?;
    check_finite(&t.data, name, what, source)?;
    Ok(t)
}

/// The shape check of [`checked_tensor`], for loaders that see a tensor's shape before its values.
pub fn check_shape(found: &[usize], name: &str, shape: &[usize], what: &str, source: &str) -> Result<()> {
    if found != shape {
        return Err(Error::Weights(format!("{source}: {what} {name} has shape {found:?} but {shape:?} is needed")));
    }
    Ok(())
}

/// The error of [`checked_tensor`] for a tensor the file does not hold, for loaders that look
/// tensors up elsewhere (a safetensors view).
pub fn missing_tensor(name: &str, shape: &[usize], what: &str, source: &str) -> Error {
    Error::Weights(format!("{source}: {what} {name} {shape:?} is missing"))
}

/// The value check of [`checked_tensor`]: every value finite.
pub fn check_finite(data: &[f32], name: &str, what: &str, source: &str) -> Result<()> {
    if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Weights(format!("{source}: {what} {name} holds a non-finite value at element {bad}")));
    }
    Ok(())
}

/// Bytes of the little-endian u64 header length that opens a safetensors file.
const LENGTH_BYTES: usize = 8;
/// The largest JSON header the safetensors format allows (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Checks the 8-byte header length against the file before anything is parsed, so a truncated
/// file or a garbage length (huge, or negative read as signed) gets a sentence that says which.
fn check_header_length(bytes: &[u8]) -> std::result::Result<(), String> {
    // A safetensors header is JSON, so byte 8 opens it with `{`; a file whose length field is
    // wrong and that does not have one is something else altogether (an image, a text file).
    header_length_problem(bytes).map_err(|problem| match bytes.get(LENGTH_BYTES) {
        Some(&b) if b != b'{' => format!("is not a safetensors file ({}); give a model file", file_kind(bytes)),
        _ => problem,
    })
}

/// What a file that is not safetensors looks like, from its first bytes.
fn file_kind(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "it is a PNG image"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "it is a JPEG image"
    } else if bytes.starts_with(b"PK\x03\x04") {
        "it is a zip archive, e.g. a PyTorch .bin or .pt file"
    } else if std::str::from_utf8(&bytes[..bytes.len().min(256)]).is_ok() {
        "it is text"
    } else {
        "it does not start with a header length and a JSON header"
    }
}

fn header_length_problem(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(head) = bytes.get(..LENGTH_BYTES) else {
        return Err(format!(
            "the file is {} bytes long, too short for a safetensors header (an 8-byte length, then JSON)",
            bytes.len()
        ));
    };
    let length = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    let rest = (bytes.len() - LENGTH_BYTES) as u64;
    if length as i64 <= 0 {
        return Err(format!(
            "the header length is {} (read as a signed number), not a positive size; this is not a safetensors file",
            length as i64
        ));
    }
    if length > MAX_HEADER {
        return Err(format!("the header length is {length} bytes, over the {MAX_HEADER}-byte limit of the safetensors format; the file is corrupt"));
    }
    if length > rest {
        return Err(format!(
            "the header length is {length} bytes but only {rest} bytes follow it; the file is truncated or corrupt"
        ));
    }
    Ok(())
}

/// Turns a safetensors parse error into one sentence, naming the tensor at fault where the
/// error concerns one (the safetensors crate leaves some of them unnamed).
fn explain(bytes: &[u8], e: SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeader(e) => format!("the header is not UTF-8 text ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            format!("the header is not a valid safetensors JSON table ({e})")
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor {name} does not start where the previous tensor ends (overlapping, out-of-order or gapped data offsets)")
        }
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow | SafeTensorError::MisalignedSlice => {
            match first_inconsistent_tensor(bytes) {
                Some(why) => why,
                None => format!("a tensor's data offsets do not match its shape and dtype ({e})"),
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => match data_extent(bytes) {
            Some((end, have)) if end > have => format!("the tensors' data ends at byte {end} of the data section but the file holds only {have} bytes there; the file is truncated"),
            Some((end, have)) => format!("the tensors' data ends at byte {end} of the data section but the file holds {have} bytes there; the file has {} trailing bytes", have - end),
            None => "the tensors' data offsets do not end at the end of the file; the file is truncated or has trailing bytes".to_string(),
        },
        other => format!("not a valid safetensors file ({other})"),
    }
}

/// Where the header says the tensor data ends, and how many bytes follow the header.
fn data_extent(bytes: &[u8]) -> Option<(u64, u64)> {
    let length = u64::from_le_bytes(bytes.get(..LENGTH_BYTES)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(LENGTH_BYTES..LENGTH_BYTES.checked_add(length)?)?).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let end = header.values().filter_map(|info| info.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
    Some((end, (bytes.len() - LENGTH_BYTES - length) as u64))
}

/// Finds the first tensor of the header whose byte range disagrees with shape x dtype and says
/// why, or `None` when the header cannot be read that far.
fn first_inconsistent_tensor(bytes: &[u8]) -> Option<String> {
    let length = u64::from_le_bytes(bytes.get(..LENGTH_BYTES)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(LENGTH_BYTES..LENGTH_BYTES.checked_add(length)?)?).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    for (name, info) in header.iter().filter(|(name, _)| name.as_str() != "__metadata__") {
        let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let shape: Vec<usize> = serde_json::from_value(info.get("shape")?.clone()).ok()?;
        let offsets: (usize, usize) = serde_json::from_value(info.get("data_offsets")?.clone()).ok()?;
        let Some(bits) =
            shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|n| n.checked_mul(dtype.bitsize()))
        else {
            return Some(format!("tensor {name} has shape {shape:?}, whose size overflows"));
        };
        let declared = offsets.1.checked_sub(offsets.0);
        if bits % 8 != 0 || declared != Some(bits / 8) {
            return Some(format!(
                "tensor {name} has shape {shape:?} of {dtype:?} ({} bytes) but data offsets {offsets:?}",
                bits as f64 / 8.0
            ));
        }
    }
    None
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
        for bytes in [
            &b""[..],
            &b"\x05\x00\x00\x00\x00\x00\x00\x00{}"[..],
            &[0xffu8; 8][..],
            &b"\x02\x00\x00\x00\x00\x00\x00\x00{x"[..],
        ] {
            let e = TensorFile::parse(bytes, "bad.safetensors").unwrap_err().to_string();
            assert!(e.starts_with("bad.safetensors:"), "{e}");
        }
        let e = TensorFile::default().config("m.safetensors").unwrap_err().to_string();
        assert!(e.contains("vlsa.config"), "{e}");
    }
}
