//! Locating a model folder and the files in it.
//!
//! A model folder holds `model.safetensors`, `tokenizer.json` and
//! `config.json` (the layout of Hugging Face's all-MiniLM-L6-v2 and of
//! `scripts/fetch-model.sh`). [`ModelFiles::locate`] checks they are there and
//! says which one is missing.

use std::path::{Path, PathBuf};

use crate::error::{NnError, Result};

/// File name of the weights inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the tokenizer inside a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// File name of the config inside a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Paths of the files of one model folder, each checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The model folder.
    pub dir: PathBuf,
    /// `dir/model.safetensors`.
    pub weights: PathBuf,
    /// `dir/tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `dir/config.json`.
    pub config: PathBuf,
}

impl ModelFiles {
    /// Checks that `dir` is a folder holding all three model files.
    pub fn locate(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::require_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            weights: Self::require_file(dir, WEIGHTS_FILE)?,
            tokenizer: Self::require_file(dir, TOKENIZER_FILE)?,
            config: Self::require_file(dir, CONFIG_FILE)?,
        })
    }

    /// Like [`locate`](Self::locate) but needs only the weights and config
    /// (`tokenizer` is set to where it would be, unchecked).
    pub fn locate_weights(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::require_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            weights: Self::require_file(dir, WEIGHTS_FILE)?,
            tokenizer: dir.join(TOKENIZER_FILE),
            config: Self::require_file(dir, CONFIG_FILE)?,
        })
    }

    /// `Ok` if `dir` is an existing folder, else [`NnError::ModelDirMissing`].
    pub(crate) fn require_dir(dir: &Path) -> Result<()> {
        if dir.is_dir() {
            Ok(())
        } else {
            Err(NnError::ModelDirMissing {
                path: dir.to_path_buf(),
            })
        }
    }

    /// `dir/file` if it is an existing file, else [`NnError::ModelFileMissing`].
    pub(crate) fn require_file(dir: &Path, file: &str) -> Result<PathBuf> {
        let path = dir.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(NnError::ModelFileMissing {
                dir: dir.to_path_buf(),
                file: file.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dir_and_file_are_named() {
        let err = ModelFiles::locate("/no/such/model/dir").expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("/no/such/model/dir") && msg.contains("fetch-model.sh"),
            "{msg}"
        );

        let dir = std::env::temp_dir().join(format!("lanes-nn-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join(WEIGHTS_FILE), b"").expect("write");
        let err = ModelFiles::locate(&dir).expect_err("tokenizer missing");
        assert!(matches!(&err, NnError::ModelFileMissing { file, .. } if file == TOKENIZER_FILE));
        assert!(err.to_string().contains(TOKENIZER_FILE), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
