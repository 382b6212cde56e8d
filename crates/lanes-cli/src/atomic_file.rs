//! An output file that appears whole or not at all.
//!
//! [`AtomicFile::create`] makes a temporary file beside the target, exclusively
//! (`O_CREAT | O_EXCL` under a random name: an existing file or a symlink planted
//! there makes the attempt fail and another name is tried; nothing is followed).
//! Everything is written there; [`AtomicFile::commit`] syncs it, gives it the mode
//! the target already had (a new target gets `0666` less the umask, like any
//! created file) and renames it over the target. Dropped without a commit (an
//! error, a panic), the temporary file is removed and the target is untouched.

use std::fs::Permissions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// A file being written beside its target, renamed over it on [`commit`](Self::commit).
pub struct AtomicFile {
    target: PathBuf,
    temp: BufWriter<NamedTempFile>,
    mode: Option<Permissions>,
}

impl AtomicFile {
    /// Starts replacing `target`: creates the temporary file in its folder.
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .with_context(|| format!("output path {} has no file name", target.display()))?;
        // The mode to keep: the existing target's (through a symlink: its file's).
        let mode = match std::fs::metadata(target) {
            Ok(m) => Some(m.permissions()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect {}", target.display()))
            }
        };
        let prefix = format!(".{}.partial.", name.to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).rand_bytes(12);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(Permissions::from_mode(0o666));
        }
        let temp = builder.tempfile_in(dir).with_context(|| {
            format!(
                "cannot create a temporary file in {} for {}",
                dir.display(),
                target.display()
            )
        })?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp: BufWriter::with_capacity(1 << 16, temp),
            mode,
        })
    }

    /// The temporary file's path.
    #[cfg(test)]
    pub fn temp_path(&self) -> &Path {
        self.temp.get_ref().path()
    }

    /// Flushes, syncs, sets the kept mode and renames the file over the target.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let temp = self
            .temp
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", target.display()))?;
        if let Some(mode) = self.mode {
            temp.as_file()
                .set_permissions(mode)
                .with_context(|| format!("cannot set the mode of {}", temp.path().display()))?;
        }
        temp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", target.display()))?;
        temp.persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot replace {}", target.display()))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.temp.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_target_appears_only_on_commit_and_a_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"half").unwrap();
        assert!(!target.exists());
        drop(f);
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"whole\n").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole\n");
        assert_eq!(entries(dir.path()), vec!["out.jsonl"]);
    }

    #[cfg(unix)]
    #[test]
    fn replacing_keeps_the_mode_and_temp_names_are_not_predictable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o640)).unwrap();
        let a = AtomicFile::create(&target).unwrap();
        let b = AtomicFile::create(&target).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        drop(b);
        let mut a = a;
        a.write_all(b"new").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }
}
