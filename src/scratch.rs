//! The scratch folder: where each attempt gets a folder of its own for its
//! input copy and output (`job-<pid>-XXXX`, removed when the attempt ends
//! however it ends), where folders of worker processes that no longer run
//! are removed at start, and whose free space is checked before a
//! download.

use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, JobError};

/// The folder per-attempt folders are made in.
#[derive(Debug, Clone)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Makes `dir` if needed and removes the folders that killed worker
    /// processes left in it.
    pub fn open(dir: PathBuf) -> std::io::Result<Scratch> {
        std::fs::create_dir_all(&dir)?;
        clean_stale(&dir);
        Ok(Scratch { dir })
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A new folder for one attempt; removed when dropped.
    pub fn attempt_folder(&self) -> Result<tempfile::TempDir, JobError> {
        tempfile::Builder::new()
            .prefix(&prefix())
            .tempdir_in(&self.dir)
            .map_err(|e| {
                JobError::new(
                    ErrorKind::Internal,
                    format!("cannot make a scratch folder: {e}"),
                )
            })
    }

    /// Bytes free in the folder's file system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        free_space(&self.dir)
    }

    /// Fails as [`ErrorKind::NoSpace`] unless the file system of the
    /// folder has `needed` bytes plus `reserve_mb` MiB free.
    pub fn check_free_space(&self, needed: u64, reserve_mb: u64) -> Result<(), JobError> {
        let dir = &self.dir;
        let free = free_space(dir).map_err(|e| {
            JobError::new(
                ErrorKind::Internal,
                format!("cannot read the free space of {}: {e}", dir.display()),
            )
        })?;
        let want = needed.saturating_add(reserve_mb.saturating_mul(1 << 20));
        if free < want {
            return Err(JobError::new(
                ErrorKind::NoSpace,
                format!(
                    "not enough free space in {}: {} MiB free, {} MiB needed",
                    dir.display(),
                    free >> 20,
                    want >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// Prefix of this process's per-attempt folders: `job-<pid>-`.
fn prefix() -> String {
    format!("job-{}-", std::process::id())
}

/// Removes the per-attempt folders of worker processes that no longer run
/// (a killed worker cannot clean up after itself).
fn clean_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("job-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            tracing::info!(folder = %entry.path().display(), "removing the scratch folder of a worker that is gone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Bytes free for unprivileged users on the file system of `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_dead_processes_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // Far above any pid_max: no such process.
        let dead = dir.path().join("job-2147483000-abc");
        let mine = dir.path().join(format!("job-{}-abc", std::process::id()));
        let other = dir.path().join("unrelated");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let scratch = Scratch::open(dir.path().to_path_buf()).unwrap();
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
        let folder = scratch.attempt_folder().unwrap();
        assert!(folder.path().starts_with(dir.path()));
        assert!(scratch.check_free_space(0, 0).is_ok());
        let err = scratch.check_free_space(u64::MAX / 2, 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSpace);
    }
}
