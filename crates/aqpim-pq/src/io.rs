//! Crash-safe file writing shared by every on-disk format of the workspace.
//!
//! [`write_atomic`] writes to a temporary file in the target's folder and
//! renames it over the target. The temporary is created exclusively
//! (`O_CREAT | O_EXCL`, which never follows a symlink) under an unpredictable
//! name, `.NAME.aqpim-tmp-PID-RANDOM`, so a file or symlink planted in the
//! folder can neither be written through nor make the output a symlink; the
//! rename replaces a symlink at the destination itself rather than the file
//! it points to. On every error path the temporary is removed.
//!
//! A process killed mid-write (SIGKILL cannot be caught) leaves its temporary
//! behind. Rather than a signal handler, which would not cover SIGKILL or a
//! power cut, the next write to the same target removes temporaries of this
//! naming scheme whose process is gone (on Linux, no `/proc/PID`) and says
//! so on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PqError, Result};

/// The part of a temporary's name after `.NAME`.
const TMP_TAG: &str = ".aqpim-tmp-";
/// The pre-0.1 naming scheme (`.NAME.tmp-PID`), also cleaned when stale.
const LEGACY_TAG: &str = ".tmp-";

fn io_err<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> PqError + 'a {
    move |source| PqError::Io {
        op,
        path: p.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: the data goes to a fresh temporary
/// file in the same directory, is flushed to disk, and then renamed over
/// `path`. A crash midway leaves the old file (if any) intact.
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
    let name = name.to_string_lossy();
    for stale in clean_stale_temporaries(&dir, &name) {
        eprintln!(
            "note: removed {}, a temporary left by an interrupted write",
            stale.display()
        );
    }
    let (tmp, mut f) = create_temporary(&dir, &name)?;
    let result = (|| {
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(f);
        // rename(2) replaces the directory entry at `path`, a symlink
        // included; it never writes through one.
        std::fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
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

/// Creates `.NAME.aqpim-tmp-PID-RANDOM` in `dir` exclusively, retrying on the
/// (astronomically unlikely, or planted) case that the name exists.
fn create_temporary(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(
            ".{name}{TMP_TAG}{pid}-{:016x}",
            rand::random::<u64>()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            // The error names the user's path (the temporary beside it is
            // an implementation detail): a missing or read-only folder.
            Err(e) => return Err(io_err("writing", &dir.join(name))(e)),
        }
    }
    let (_, e) = last.expect("the loop ran");
    Err(io_err("writing", &dir.join(name))(e))
}

/// Removes temporaries of `name` (this module's naming schemes) in `dir`
/// whose writing process no longer runs; returns the paths removed. Only the
/// directory entries are removed (a symlink is unlinked, never followed).
/// Where liveness cannot be checked (no `/proc`), nothing is removed.
pub fn clean_stale_temporaries(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !Path::new("/proc/self").exists() {
        return removed;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    let own = std::process::id();
    let prefix = format!(".{name}");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(prefix.as_str()))
        else {
            continue;
        };
        let pid = if let Some(r) = rest.strip_prefix(TMP_TAG) {
            match r.split_once('-') {
                Some((pid, random))
                    if random.len() == 16 && random.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    pid
                }
                _ => continue,
            }
        } else if let Some(pid) = rest.strip_prefix(LEGACY_TAG) {
            pid
        } else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == own || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let p = entry.path();
        // Only plain files and symlinks; never a directory.
        let is_file_or_link = std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir());
        if is_file_or_link && std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Reads a whole file, naming the path in the error.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PqError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect()
    }

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(temporaries(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_planted_under_temporary_names_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let pid = std::process::id();
        // The old predictable name, and names of the new scheme.
        for n in [
            format!(".out.bin.tmp-{pid}"),
            format!(".out.bin.aqpim-tmp-{pid}-0000000000000000"),
            format!(".out.bin.aqpim-tmp-{pid}-ffffffffffffffff"),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(n)).unwrap();
        }
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // PIDs above the kernel's maximum (2^22) belong to no process.
        let stale = [
            ".out.bin.aqpim-tmp-4294967295-0123456789abcdef".to_string(),
            ".out.bin.tmp-4294967294".to_string(),
        ];
        for n in &stale {
            std::fs::write(dir.path().join(n), b"half").unwrap();
        }
        let live = format!(".out.bin.aqpim-tmp-{}-0123456789abcdef", std::process::id());
        std::fs::write(dir.path().join(&live), b"mine").unwrap();
        std::fs::write(dir.path().join(".other.tmp-4294967295"), b"x").unwrap();
        write_atomic(&dir.path().join("out.bin"), b"new").unwrap();
        let mut left = temporaries(dir.path());
        left.sort();
        if Path::new("/proc/self").exists() {
            assert_eq!(left, vec![".other.tmp-4294967295".to_string(), live]);
        }
    }

    #[test]
    fn a_failed_write_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"x").unwrap();
        assert!(write_atomic(&p, b"data").is_err());
        assert!(temporaries(dir.path()).is_empty());
    }
}
