//! The folder tree under a storage root: listing its files by key
//! prefix, and removing folders left empty.

use std::path::Path;

use super::{file_version, local, modified_nanos};
use crate::storage::{Listed, StorageError};

/// Removes `folder` and its subfolders, deepest first, where they are
/// empty (a folder that is not empty, or is written to meanwhile, stays).
pub(super) fn remove_empty(folder: &Path) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(local(folder, e)),
    };
    for entry in entries.flatten() {
        // Subfolders only, never through a symbolic link.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty(&entry.path())?;
        }
    }
    match std::fs::remove_dir(folder) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(local(folder, e)),
    }
}

/// The files under `folder` (inside `root`) whose keys start with `prefix`.
pub(super) fn walk(root: &Path, folder: &Path, prefix: &str) -> Result<Vec<Listed>, StorageError> {
    let mut found = Vec::new();
    if !folder.is_dir() {
        return Ok(found);
    }
    let hidden = |entry: &walkdir::DirEntry| {
        entry.depth() > 0 && entry.file_name().to_string_lossy().starts_with('.')
    };
    for entry in walkdir::WalkDir::new(folder)
        .into_iter()
        .filter_entry(|e| !hidden(e))
    {
        let entry =
            entry.map_err(|e| StorageError::Local(format!("listing {}: {e}", folder.display())))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        let Some(key) = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join("/"))
        else {
            tracing::warn!(path = %entry.path().display(), "leaving out a file whose name is not UTF-8");
            continue;
        };
        if !key.starts_with(prefix) {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| local(entry.path(), e.into()))?;
        found.push(Listed {
            key,
            size: meta.len(),
            version: Some(file_version(&meta)),
            modified: modified_nanos(&meta).to_string(),
        });
    }
    Ok(found)
}
