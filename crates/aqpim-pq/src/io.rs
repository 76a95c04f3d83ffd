//! Crash-safe file writing shared by every on-disk format of the workspace.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PqError, Result};

/// Writes `bytes` to `path` atomically: the data goes to a temporary file in
/// the same directory, is flushed to disk, and then renamed over `path`. A
/// crash midway leaves the old file (if any) intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| PqError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> PqError + 'a {
        move |source| PqError::Io {
            op,
            path: p.to_path_buf(),
            source,
        }
    }
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        // Make the rename itself durable where the platform allows it.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file, naming the path in the error.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PqError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}
