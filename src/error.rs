//! Errors of the vlsa library: GPU errors from `vlsa-kernels`, plus files, formats and
//! configurations, each naming the file, tensor, key or value at fault.

use std::fmt;

/// What went wrong, in one sentence.
#[derive(Debug)]
pub enum Error {
    /// From the GPU layer (adapter, shapes, limits, validation, memory, device loss).
    Gpu(crate::kernels::Error),
    /// A file could not be read or written.
    Io { path: String, message: String },
    /// A file's contents are not what vlsa expects (corrupt safetensors, bad image, ...).
    Format { path: String, message: String },
    /// A model configuration is invalid.
    Config(String),
    /// A model file's tensors do not match its configuration.
    Weights(String),
    /// A value given by the user is invalid.
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Gpu(e) => write!(f, "{e}"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Weights(m) => write!(f, "invalid model weights: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::kernels::Error> for Error {
    fn from(e: crate::kernels::Error) -> Self {
        Error::Gpu(e)
    }
}

/// Result of the vlsa library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), message: e.to_string() }
    }
}
