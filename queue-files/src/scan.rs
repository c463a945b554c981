//! Walking the folders: every regular file under each path, in name order,
//! with its path relative to the scanned folder, filtered by the
//! `--include` / `--exclude` globs (globset). Hidden files and folders
//! (names starting with `.`, such as the worker's partial outputs) and
//! queue markers (`*.queued.json`) are left out silently; symbolic links
//! are not followed. For `--watch`,
//! [`Stability`] tells whether a file stayed the same between two scans.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::inspect::SkipReason;

/// The `--include` and `--exclude` globs. As in `.gitignore`, a pattern
/// without `/` matches a file or folder name at any depth (`*.wmv`,
/// `tmp`); a pattern with `/` matches the whole path relative to the
/// scanned folder, with `/` between components (`2023/**/*.avi`).
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<Globs>,
    exclude: Globs,
}

/// Name patterns and path patterns.
#[derive(Debug, Clone)]
struct Globs {
    names: GlobSet,
    paths: GlobSet,
}

impl Globs {
    fn new(patterns: &[String], option: &str) -> Result<Globs, String> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern.trim_start_matches("./"))
                .map_err(|e| format!("{option} {pattern:?} is not a glob: {e}"))?;
            if pattern.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| format!("{option}: {e}"));
        Ok(Globs {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    fn is_match(&self, rel: &Path) -> bool {
        self.paths.is_match(rel) || rel.file_name().is_some_and(|n| self.names.is_match(n))
    }
}

impl Filter {
    /// Compiles the globs.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, String> {
        Ok(Filter {
            include: if include.is_empty() {
                None
            } else {
                Some(Globs::new(include, "--include")?)
            },
            exclude: Globs::new(exclude, "--exclude")?,
        })
    }

    /// Whether a file at `rel` is taken.
    pub fn admits(&self, rel: &Path) -> bool {
        if self.exclude.is_match(rel) {
            return false;
        }
        match &self.include {
            Some(include) => include.is_match(rel),
            None => true,
        }
    }

    /// Whether a whole folder at `rel` is left out.
    pub fn prunes(&self, rel: &Path) -> bool {
        self.exclude.is_match(rel)
    }
}

/// One entry of a scan.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A regular file to look at.
    File {
        /// Where it is.
        path: PathBuf,
        /// Its path relative to the scanned folder.
        rel: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Its modification time.
        modified: Option<SystemTime>,
    },
    /// An entry left out, and why.
    Skipped {
        /// Where it is.
        path: PathBuf,
        /// Its path relative to the scanned folder.
        rel: PathBuf,
        /// Why.
        reason: SkipReason,
    },
    /// An entry that could not be read.
    Error {
        /// Where it is.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Scans `root` (a folder, walked recursively, or a single file), leaving
/// out everything under the folders in `prune` (canonical paths: the
/// archive, the outputs). Blocking.
pub fn scan(root: &Path, filter: &Filter, prune: &[PathBuf]) -> Vec<Found> {
    let mut found = Vec::new();
    let single_file = root.is_file();
    let base = if single_file {
        root.parent().unwrap_or(Path::new("/")).to_path_buf()
    } else {
        root.to_path_buf()
    };
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            if entry.depth() == 0 {
                return true;
            }
            if is_hidden(entry.file_name()) || prune.iter().any(|p| p == entry.path()) {
                return false;
            }
            if entry.file_type().is_dir() {
                let rel = entry.path().strip_prefix(&base).unwrap_or(entry.path());
                return !filter.prunes(rel);
            }
            true
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(Path::to_path_buf).unwrap_or_default();
                let vanished = e
                    .io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                if vanished {
                    found.push(Found::Skipped {
                        rel: path.strip_prefix(&base).unwrap_or(&path).to_path_buf(),
                        path,
                        reason: SkipReason::Vanished,
                    });
                } else {
                    found.push(Found::Error {
                        path,
                        message: format!(
                            "cannot read: {}",
                            e.io_error()
                                .map_or_else(|| e.to_string(), |io| io.to_string())
                        ),
                    });
                }
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(crate::record::MARKER_SUFFIX)
        {
            // Our own queue markers, beside outputs in the storage directory.
            continue;
        }
        let path = entry.path().to_path_buf();
        let rel = path.strip_prefix(&base).unwrap_or(&path).to_path_buf();
        if !filter.admits(&rel) {
            found.push(Found::Skipped {
                path,
                rel,
                reason: SkipReason::Excluded,
            });
            continue;
        }
        if !file_type.is_file() {
            found.push(Found::Skipped {
                path,
                rel,
                reason: SkipReason::NotRegular,
            });
            continue;
        }
        match entry.metadata() {
            Ok(meta) => found.push(Found::File {
                path,
                rel,
                size: meta.len(),
                modified: meta.modified().ok(),
            }),
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                found.push(Found::Skipped {
                    path,
                    rel,
                    reason: SkipReason::Vanished,
                })
            }
            Err(e) => found.push(Found::Error {
                path,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    found
}

/// Remembers the size and modification time of every file of the previous
/// scan, so `--watch` leaves a file alone while it is still growing.
#[derive(Debug, Default)]
pub struct Stability {
    previous: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    current: HashMap<PathBuf, (u64, Option<SystemTime>)>,
}

impl Stability {
    /// Records the file for this scan; true when the previous scan saw it
    /// with the same size and modification time.
    pub fn observe(&mut self, path: &Path, size: u64, modified: Option<SystemTime>) -> bool {
        self.current.insert(path.to_path_buf(), (size, modified));
        self.previous.get(path) == Some(&(size, modified))
    }

    /// Starts the next scan: this scan becomes the previous one.
    pub fn next_scan(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(found: &[Found]) -> Vec<(String, Option<SkipReason>)> {
        found
            .iter()
            .map(|f| match f {
                Found::File { rel, .. } => (rel.display().to_string(), None),
                Found::Skipped { rel, reason, .. } => (rel.display().to_string(), Some(*reason)),
                Found::Error { path, .. } => (path.display().to_string(), None),
            })
            .collect()
    }

    #[test]
    fn walks_recursively_with_globs_hidden_files_and_pruned_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in [
            "a.wmv",
            "sub dir/b'c.avi",
            "sub dir/deeper/-d.mov",
            "sub dir/notes.txt",
            ".hidden/x.wmv",
            ".partial.mp4",
            "archive/old.wmv",
            "skip/e.wmv",
            "a.mp4.queued.json",
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("a.wmv"), root.join("link.wmv")).unwrap();
        let filter = Filter::new(&[], &["skip".into(), "*.txt".into()]).unwrap();
        let found = scan(root, &filter, &[root.join("archive")]);
        assert_eq!(
            rels(&found),
            [
                ("a.wmv".to_string(), None),
                ("link.wmv".to_string(), Some(SkipReason::NotRegular)),
                ("sub dir/b'c.avi".to_string(), None),
                ("sub dir/deeper/-d.mov".to_string(), None),
                ("sub dir/notes.txt".to_string(), Some(SkipReason::Excluded)),
            ]
        );

        let only_avi = Filter::new(&["*.avi".into()], &[]).unwrap();
        let found = scan(root, &only_avi, &[]);
        let taken: Vec<_> = rels(&found)
            .into_iter()
            .filter(|(_, r)| r.is_none())
            .collect();
        assert_eq!(taken, [("sub dir/b'c.avi".to_string(), None)]);

        let by_path = Filter::new(&["sub dir/**/*.mov".into()], &[]).unwrap();
        let taken: Vec<_> = rels(&scan(root, &by_path, &[]))
            .into_iter()
            .filter(|(_, r)| r.is_none())
            .collect();
        assert_eq!(taken, [("sub dir/deeper/-d.mov".to_string(), None)]);

        let single = scan(&root.join("a.wmv"), &Filter::new(&[], &[]).unwrap(), &[]);
        assert_eq!(rels(&single), [("a.wmv".to_string(), None)]);
    }

    #[test]
    fn a_file_is_stable_once_two_scans_agree() {
        let mut s = Stability::default();
        let p = Path::new("/x");
        assert!(!s.observe(p, 10, None));
        s.next_scan();
        assert!(!s.observe(p, 20, None));
        s.next_scan();
        assert!(s.observe(p, 20, None));
        s.next_scan();
        s.next_scan();
        assert!(!s.observe(p, 20, None), "forgotten after a scan without it");
    }
}
