//! One error type for the whole engine. Every variant that comes from a file names the file
//! and says what is wrong with it, so a CLI user sees one readable line and a GUI can show
//! the same text; tests match on the variant (the error's kind).

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A model file (safetensors header, index, tensor data) is malformed or truncated.
    #[error("{}: invalid model file: {reason}", path.display())]
    BadModelFile { path: PathBuf, reason: String },

    /// config.json lacks a key the model needs.
    #[error("{}: missing key `{key}`", path.display())]
    MissingConfigKey { path: PathBuf, key: String },

    /// config.json has a key with a value we cannot use (wrong type, out of range, unknown).
    #[error("{}: key `{key}`: {reason}", path.display())]
    BadConfigValue {
        path: PathBuf,
        key: String,
        reason: String,
    },

    /// The checkpoint's architecture / model_type is not one we implement.
    #[error("{}: unsupported architecture `{arch}` (supported: {supported})", path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// A pickle-based checkpoint (pytorch_model.bin) names a Python callable outside the
    /// tensor-rebuilding allowlist (`global` is `module.name`). Python would run it while
    /// loading, so the file is refused rather than partly trusted.
    #[error(
        "{}: the pickle calls `{global}`, which is not a tensor constructor; refusing to load it (pickles can run code)",
        path.display()
    )]
    UnsafePickle { path: PathBuf, global: String },

    #[error("{}: tensor `{name}` not found", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: tensor `{name}` has shape {actual:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{}: tensor `{name}` has dtype {dtype}, which is not supported here", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{}: tokenizer: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    /// An image could not be decoded: unreadable data, an unsupported format, or a size
    /// over the decoder's limits. `kind` says which, `reason` the details.
    #[error("{}: {kind}: {reason}", path.display())]
    Image {
        path: PathBuf,
        kind: ImageErrorKind,
        reason: String,
    },

    #[error("chat template: {0}")]
    Template(String),

    /// The prompt (plus the tokens to generate) does not fit in the model's context window.
    #[error("prompt is {prompt} tokens but the context window holds {context}")]
    ContextOverflow { prompt: usize, context: usize },

    /// `--backend gpu` was asked for and no usable GPU adapter/device exists.
    #[error("GPU backend unavailable: {0}")]
    GpuUnavailable(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The model would not fit in memory; `detail` says why and what to try.
    #[error("not enough memory to load this model: {detail}")]
    OutOfMemory {
        needed: u64,
        available: u64,
        detail: String,
    },

    #[error("no model is loaded")]
    NoModel,

    #[error("cancelled")]
    Cancelled,

    /// The engine thread stopped (it panicked or was shut down).
    #[error("engine thread stopped: {0}")]
    EngineStopped(String),
}

/// Why an image was refused (see [`Error::Image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageErrorKind {
    /// Not an image format we decode (or not an image at all, e.g. text named `.png`).
    Unsupported,
    /// A known format whose data is damaged, truncated or empty.
    Corrupt,
    /// Dimensions or decoded size over the limits (see `image::DecodeLimits`).
    TooLarge,
}

impl std::fmt::Display for ImageErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageErrorKind::Unsupported => "unsupported image",
            ImageErrorKind::Corrupt => "corrupt image",
            ImageErrorKind::TooLarge => "image too large",
        })
    }
}

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn bad_file(path: &Path, reason: impl Into<String>) -> Self {
        Error::BadModelFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn image(path: &Path, kind: ImageErrorKind, reason: impl Into<String>) -> Self {
        Error::Image {
            path: path.to_path_buf(),
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_value(path: &Path, key: &str, reason: impl Into<String>) -> Self {
        Error::BadConfigValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
