//! `--archive DIR`: moving an original out of the library once it is safe
//! (uploaded, or transcoded with `--wait`), keeping its relative path. A
//! name already taken in the archive gets a numbered suffix; nothing in the
//! archive is ever overwritten.

use std::io;
use std::path::{Path, PathBuf};

/// Moves `path` to `archive/rel` (renaming when on the same file system,
/// copying, syncing and removing otherwise) and returns where it went.
pub fn archive(path: &Path, archive: &Path, rel: &Path) -> io::Result<PathBuf> {
    let wanted = archive.join(rel);
    if let Some(parent) = wanted.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let dest = free_name(&wanted);
    match std::fs::rename(path, &dest) {
        Ok(()) => Ok(dest),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            copy_then_remove(path, &dest)?;
            Ok(dest)
        }
        Err(e) => Err(e),
    }
}

/// `wanted`, or `name (2).ext`, `name (3).ext`, ... when taken.
fn free_name(wanted: &Path) -> PathBuf {
    if std::fs::symlink_metadata(wanted).is_err() {
        return wanted.to_path_buf();
    }
    let stem = wanted
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = wanted
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (2..)
        .map(|n| wanted.with_file_name(format!("{stem} ({n}){ext}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some numbered name is free")
}

fn copy_then_remove(src: &Path, dest: &Path) -> io::Result<()> {
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)?;
    let result = io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(dest);
        return Err(e);
    }
    std::fs::remove_file(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_keeping_the_relative_path_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        let arch = dir.path().join("archive");
        std::fs::create_dir_all(lib.join("a b")).unwrap();
        std::fs::write(lib.join("a b/c.wmv"), b"one").unwrap();
        let first = archive(&lib.join("a b/c.wmv"), &arch, Path::new("a b/c.wmv")).unwrap();
        assert_eq!(first, arch.join("a b/c.wmv"));
        assert!(!lib.join("a b/c.wmv").exists());
        std::fs::write(lib.join("a b/c.wmv"), b"two").unwrap();
        let second = archive(&lib.join("a b/c.wmv"), &arch, Path::new("a b/c.wmv")).unwrap();
        assert_eq!(second, arch.join("a b/c (2).wmv"));
        assert_eq!(std::fs::read(first).unwrap(), b"one");
        assert_eq!(std::fs::read(second).unwrap(), b"two");
    }
}
