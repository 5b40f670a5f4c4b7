//! Where model code reads tensors from, whatever the file format: a Hugging Face
//! checkpoint directory, or a GGUF file whose names are mapped to Hugging Face names.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::load::safetensors::Checkpoint;
use crate::tensor::HostTensor;

/// Tensors by (Hugging Face) name.
pub trait TensorSource: Sync {
    /// The directory or file, for messages.
    fn location(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The stored shape (outermost first) without reading the data.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// The file that holds `name`, for messages.
    fn path_of(&self, name: &str) -> PathBuf;
    fn names(&self) -> Vec<String>;
    /// Bytes `name` takes in the file (for the memory estimate), where known.
    fn stored_bytes(&self, _name: &str) -> Option<u64> {
        None
    }
}

/// Shapes equal once size-1 dimensions are dropped (a `[c, 1, 3, 3]` conv kernel that a
/// converter squeezed to `[c, 3, 3]`, a 1×1 conv stored as a matrix).
fn same_squeezed(a: &[usize], b: &[usize]) -> bool {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    squeeze(a) == squeeze(b)
}

/// The tensor `name`, which must have `expected` shape (up to size-1 dimensions, which
/// are restored); it comes back with exactly `expected` as its shape.
pub fn tensor_shaped(src: &dyn TensorSource, name: &str, expected: &[usize]) -> Result<HostTensor> {
    let actual = src.shape(name).ok_or_else(|| Error::MissingTensor {
        path: src.location().to_path_buf(),
        name: name.to_string(),
    })?;
    if actual != expected && !same_squeezed(&actual, expected) {
        return Err(Error::ShapeMismatch {
            path: src.path_of(name),
            name: name.to_string(),
            expected: expected.to_vec(),
            actual,
        });
    }
    let t = src.tensor(name)?;
    Ok(if t.shape == expected {
        t
    } else {
        t.reshape(expected.to_vec())
    })
}

impl TensorSource for Checkpoint {
    fn location(&self) -> &Path {
        self.dir()
    }
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entry(name).map(|e| e.shape.clone())
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Checkpoint::tensor(self, name)
    }
    fn path_of(&self, name: &str) -> PathBuf {
        Checkpoint::path_of(self, name).to_path_buf()
    }
    fn names(&self) -> Vec<String> {
        Checkpoint::names(self).map(str::to_string).collect()
    }
    fn stored_bytes(&self, name: &str) -> Option<u64> {
        self.entry(name).map(|e| (e.end - e.start) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezing_ignores_unit_dims_only() {
        assert!(same_squeezed(&[8, 1, 3, 3], &[8, 3, 3]));
        assert!(same_squeezed(&[8, 8, 1, 1], &[8, 8]));
        assert!(!same_squeezed(&[8, 9], &[9, 8]));
    }
}
