//! A plain directory as storage: a NAS or NFS mount shared by the workers.
//!
//! Keys are paths relative to the root. They are confined to it: absolute
//! paths, `..` and symbolic links that lead outside are refused. Inputs are
//! read in place; outputs are written to a hidden temporary name beside
//! their key, synced, and renamed into place, so a partial output is never
//! visible under its key. Metadata, which a file system cannot hold
//! portably, goes in a hidden sidecar `.<name>.meta.json` beside the file,
//! written after the file itself. Listing and pruning the folder tree is
//! in tree.rs.

use std::path::{Component, Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{Listed, LocalInput, ObjectInfo, StorageError, Transferred};
use tree::{remove_empty, walk};

mod tree;

/// A storage root directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

fn local(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Local(format!("{}: {e}", path.display()))
}

impl DirStore {
    /// Uses `root`, which must exist.
    pub fn new(root: &Path) -> Result<DirStore, StorageError> {
        let root = root
            .canonicalize()
            .map_err(|e| StorageError::Unavailable(format!("{}: {e}", root.display())))?;
        Ok(DirStore { root })
    }

    pub(super) fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    pub(super) fn check_key(&self, key: &str) -> Result<(), StorageError> {
        self.join(key).map(|_| ())
    }

    /// Checks `key` lexically and joins it to the root.
    fn join(&self, key: &str) -> Result<PathBuf, StorageError> {
        let refuse = |reason: &str| StorageError::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if key.contains('\0') {
            return Err(refuse("it contains a NUL byte"));
        }
        let path = Path::new(key);
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse("'..' is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(refuse("absolute paths are not allowed"))
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(refuse("it names no file"));
        }
        Ok(self.root.join(clean))
    }

    /// Resolves symbolic links of an existing path and checks it stays inside the root.
    fn confine(&self, key: &str, path: &Path) -> Result<PathBuf, StorageError> {
        let real = path.canonicalize().map_err(|e| local(path, e))?;
        self.check_inside(key, &real)?;
        Ok(real)
    }

    /// Refuses `key` when its resolved path `real` is outside the root.
    fn check_inside(&self, key: &str, real: &Path) -> Result<(), StorageError> {
        if real.starts_with(&self.root) {
            Ok(())
        } else {
            Err(StorageError::InvalidKey {
                key: key.to_string(),
                reason: "it leads outside the storage directory".to_string(),
            })
        }
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.join(key)?;
        match tokio::fs::symlink_metadata(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(local(&path, e)),
            Ok(_) => {}
        }
        let real = self.confine(key, &path)?;
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|e| local(&real, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(ObjectInfo {
            size: meta.len(),
            metadata: read_sidecar(&sidecar(&real)).await,
            version: Some(file_version(&meta)),
        }))
    }

    /// Every regular file under the root whose key starts with `prefix`,
    /// walking only the folder the prefix names. Hidden files and folders
    /// (names starting with `.`: this backend's temporary files and
    /// metadata sidecars) and symbolic links are left out, and so are
    /// names that are not UTF-8 (no key can name them).
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let folder = match prefix.rfind('/') {
            Some(end) => self.join(&prefix[..end])?,
            None => self.root.clone(),
        };
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || walk(&root, &folder, &prefix))
            .await
            .map_err(|e| StorageError::Local(format!("listing {}: {e}", self.describe())))?
    }

    /// The file under `key`, read in place, which [`DirStore::head`] has
    /// just described as `size` bytes: its size and metadata are not read
    /// again. Its path is resolved again (symbolic links, confinement to
    /// the root), and it must still be a regular file: one that has gone or
    /// become something else since is [`StorageError::NotFound`].
    pub(super) async fn fetch(&self, key: &str, size: u64) -> Result<LocalInput, StorageError> {
        let gone = || StorageError::NotFound {
            key: key.to_string(),
            store: self.describe(),
        };
        let path = self.join(key)?;
        let real = match tokio::fs::canonicalize(&path).await {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
            Err(e) => return Err(local(&path, e)),
        };
        self.check_inside(key, &real)?;
        match tokio::fs::metadata(&real).await {
            Ok(meta) if meta.is_file() => Ok(LocalInput { path: real, size }),
            Ok(_) => Err(gone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone()),
            Err(e) => Err(local(&real, e)),
        }
    }

    pub(super) async fn store(
        &self,
        src: &Path,
        key: &str,
        metadata: &[(String, String)],
        counter: &Transferred,
    ) -> Result<(), StorageError> {
        let dest = self.join(key)?;
        let parent = dest
            .parent()
            .expect("a joined key has a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| local(&parent, e))?;
        let parent = self.confine(key, &parent)?;
        let name = dest.file_name().expect("a joined key has a file name");
        let dest = parent.join(name);
        if let Ok(meta) = tokio::fs::symlink_metadata(&dest).await {
            if meta.file_type().is_symlink() || meta.is_dir() {
                return Err(StorageError::InvalidKey {
                    key: key.to_string(),
                    reason: "it names a symbolic link or a directory".to_string(),
                });
            }
        }
        let partial = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4()
        ));
        let result = copy_synced(src, &partial, counter).await;
        let result = match result {
            Ok(()) => tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| local(&dest, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result?;
        write_sidecar(&sidecar(&dest), metadata).await
    }

    /// Stores the small object `bytes` under `key`, whole or not at all
    /// (written beside it, then renamed).
    pub(super) async fn put_small(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.put_small_as(key, bytes, false).await.map(|_| ())
    }

    /// Stores `bytes` under `key` unless a file is there (it is written
    /// beside it, then hard-linked into place, which fails when the name is
    /// taken); `true` when this call made it.
    pub(super) async fn put_small_new(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<bool, StorageError> {
        self.put_small_as(key, bytes, true).await
    }

    /// Writes `bytes` beside `key`, then renames it into place, or with
    /// `only_new` links it into place unless the name is taken.
    async fn put_small_as(
        &self,
        key: &str,
        bytes: &[u8],
        only_new: bool,
    ) -> Result<bool, StorageError> {
        let dest = self.join(key)?;
        let parent = dest
            .parent()
            .expect("a joined key has a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| local(&parent, e))?;
        let parent = self.confine(key, &parent)?;
        let name = dest.file_name().expect("a joined key has a file name");
        let partial = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4()
        ));
        let written = tokio::fs::write(&partial, bytes)
            .await
            .map_err(|e| local(&partial, e));
        let target = parent.join(name);
        let result = match written {
            Ok(()) if only_new => match tokio::fs::hard_link(&partial, &target).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(local(&dest, e)),
            },
            Ok(()) => tokio::fs::rename(&partial, &target)
                .await
                .map(|_| true)
                .map_err(|e| local(&dest, e)),
            Err(e) => Err(e),
        };
        if only_new || result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// The small file `key` (at most `limit` bytes), or `None`.
    pub(super) async fn get_small(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(info) = self.head(key).await? else {
            return Ok(None);
        };
        if info.size > limit as u64 {
            return Err(StorageError::Local(format!(
                "{key:?} is larger than {limit} bytes"
            )));
        }
        let path = self.confine(key, &self.join(key)?)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(local(&path, e)),
        }
    }

    /// Up to `max` keys of the folder `prefix` (which ends in `/`) that sort
    /// after `start_after`, in order. Files only, not the ones of sub-folders.
    pub(super) async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        let folder = self.join(prefix.trim_end_matches('/'))?;
        let mut entries = match tokio::fs::read_dir(&folder).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(local(&folder, e)),
        };
        let mut keys = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| local(&folder, e))? {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !entry.file_type().await.is_ok_and(|t| t.is_file()) {
                continue;
            }
            let key = format!("{prefix}{name}");
            if start_after.is_none_or(|after| key.as_str() > after) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        keys.truncate(max);
        Ok(keys)
    }

    /// Deletes `key` and its metadata sidecar (no error when there is none).
    pub(super) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.join(key)?;
        for file in [sidecar(&path), path] {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(local(&file, e)),
            }
        }
        Ok(())
    }

    /// Removes the folder of `prefix` and the empty folders inside it,
    /// deepest first, unless a file is left in them (not the root).
    pub(super) async fn remove_empty_folder(&self, prefix: &str) -> Result<(), StorageError> {
        let folder = self.join(prefix.trim_end_matches('/'))?;
        if folder == self.root {
            return Ok(());
        }
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(folder) = folder.canonicalize() else {
                return Ok(()); // gone already
            };
            if !folder.starts_with(&root) || folder == root {
                return Ok(());
            }
            remove_empty(&folder)
        })
        .await
        .map_err(|e| StorageError::Local(format!("removing empty folders: {e}")))?
    }

    /// Whether the root is (still) an existing directory.
    pub(super) async fn exists(&self) -> Result<bool, StorageError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(meta) => Ok(meta.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(local(&self.root, e)),
        }
    }
}

/// A file's version: its size and modification time, which a rewrite
/// changes (the directory backend has no content hash to offer).
fn file_version(meta: &std::fs::Metadata) -> String {
    format!("{}-{}", meta.len(), modified_nanos(meta))
}

/// A file's modification time in nanoseconds since the epoch (0 if unknown).
fn modified_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The metadata sidecar of `file`.
fn sidecar(file: &Path) -> PathBuf {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    file.with_file_name(format!(".{name}.meta.json"))
}

/// Writes `metadata` to `path` (through a temporary name), or removes a
/// stale sidecar when there is none.
async fn write_sidecar(path: &Path, metadata: &[(String, String)]) -> Result<(), StorageError> {
    if metadata.is_empty() {
        let _ = tokio::fs::remove_file(path).await;
        return Ok(());
    }
    let map: std::collections::BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let json = serde_json::to_vec_pretty(&map).expect("metadata serializes");
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, json)
        .await
        .map_err(|e| local(&tmp, e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| local(path, e))
}

/// Reads a sidecar; a missing or unreadable one means no metadata.
async fn read_sidecar(path: &Path) -> Vec<(String, String)> {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return Vec::new();
    };
    serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&bytes)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// Copies `src` to the new file `dest` in chunks, counting bytes, and syncs it.
async fn copy_synced(src: &Path, dest: &Path, counter: &Transferred) -> Result<(), StorageError> {
    let mut reader = tokio::fs::File::open(src)
        .await
        .map_err(|e| local(src, e))?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(|e| local(dest, e))?;
    let mut writer =
        tokio_util::io::InspectWriter::new(file, |bytes| counter.add(bytes.len() as u64));
    tokio::io::copy(&mut reader, &mut writer)
        .await
        .map_err(|e| local(dest, e))?;
    let mut file = writer.into_inner();
    file.flush().await.map_err(|e| local(dest, e))?;
    file.sync_all().await.map_err(|e| local(dest, e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
