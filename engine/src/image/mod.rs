//! PLACEHOLDER until the image module lands (merged from its branch).
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::spec::ProcessorSpec;

pub fn preprocess_file(path: &Path, _spec: &ProcessorSpec) -> Result<Vec<f32>> {
    Err(Error::InvalidArgument(format!(
        "{}: image preprocessing is not built yet",
        path.display()
    )))
}
