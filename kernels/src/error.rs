//! Errors of the GPU layer. Every failure a user can cause or meet (no adapter, a missing
//! feature, a bad shape, a shader that does not compile, a GPU that runs out of memory or is
//! lost) is a value of [`Error`], never a panic.

use std::fmt;

/// What went wrong in the GPU layer, with the input or resource at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No GPU adapter at all; the message says what to install.
    NoAdapter(String),
    /// The adapter lacks something vlsa needs.
    Unsupported(String),
    /// Shapes that do not fit together; the message names both.
    Shape(String),
    /// A buffer or dispatch would exceed one of the device's limits.
    Limit { what: String, needed: u64, limit: u64 },
    /// A WGSL shader failed to parse, validate or compile.
    Shader { file: String, message: String },
    /// wgpu reported a validation error.
    Validation(String),
    /// The device ran out of memory.
    OutOfMemory(String),
    /// The device was lost (driver reset, GPU removed, timeout).
    DeviceLost(String),
    /// Reading a buffer back to the host failed.
    Readback(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            Error::Unsupported(m) => write!(f, "the GPU adapter is not supported: {m}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::Limit { what, needed, limit } => write!(
                f,
                "{what} needs {needed} but the device allows at most {limit} (over by {})",
                needed.saturating_sub(*limit)
            ),
            Error::Shader { file, message } => write!(f, "shader {file} is invalid: {message}"),
            Error::Validation(m) => write!(f, "GPU validation error: {m}"),
            Error::OutOfMemory(m) => write!(f, "GPU out of memory: {m}"),
            Error::DeviceLost(m) => write!(f, "GPU device lost: {m}"),
            Error::Readback(m) => write!(f, "reading GPU memory back failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result of the GPU layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Returns a [`Error::Shape`] error with the formatted message.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { Err($crate::Error::Shape(format!($($arg)*))) };
}
